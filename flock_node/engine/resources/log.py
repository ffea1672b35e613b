"""log[name]: write (default); message (default: the name), level."""

from __future__ import annotations

import logging
from typing import ClassVar

from flock_node.engine.resources.base import Decision, Resource, converge_by
from flock_node.engine.resources.props import _LEVELS, _level, _str

log = logging.getLogger("flock.recipe")


class Log(Resource):
    type = "log"
    actions = ("write", "nothing")
    default_action = "write"
    props_spec: ClassVar = {"message": (_str, lambda r: r.name), "level": (_level, "info")}

    def decide_write(self, current: None) -> Decision:
        msg: str = self.props["message"]
        level: str = self.props["level"]

        def write() -> str:
            log.log(_LEVELS[level], "%s", msg)
            return msg

        # Not "updated" (Chef's count_log_resource_updates=false): a log line changes nothing,
        # and a second converge of an unchanged recipe should update nothing.
        return converge_by(f"would log at {level}: {msg}", write, updates=False)
