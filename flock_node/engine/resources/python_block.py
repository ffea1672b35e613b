"""python_block[name]: run (default) the callable `block`, within `timeout` seconds."""

from __future__ import annotations

from typing import ClassVar

from flock_node.engine.errors import RecipeError, ResourceFailure
from flock_node.engine.limits import CallTimedOut, call_with_limit
from flock_node.engine.resources.base import Decision, Resource, converge_by
from flock_node.engine.resources.props import _callable, _limit


class PythonBlock(Resource):
    type = "python_block"
    actions = ("run", "nothing")
    default_action = "run"
    # Like execute's default: a block stuck in a loop cannot hold the node for ever.
    props_spec: ClassVar = {"block": (_callable, None), "timeout": (_limit, 3600.0)}

    def setup(self) -> None:
        if self.props["block"] is None and not self.restored:
            raise RecipeError(
                f"{self.source}: {self.id}: property 'block' (a callable) is required"
            )

    def decide_run(self, current: None) -> Decision:
        if not callable(self.props["block"]):
            raise ResourceFailure(
                "the block is not available: the recipe does not compile, and a python_block "
                "cannot be restored from the store"
            )
        return converge_by("the block would run", self._run)

    def _run(self) -> str:
        block, limit = self.props["block"], self.props["timeout"]
        try:
            result = call_with_limit(block, limit)
        except CallTimedOut as e:
            how = "the block was stopped" if e.stopped else (
                "the block did not stop: it is stuck in a call Python cannot interrupt, "
                "and goes on in the background"
            )
            raise ResourceFailure(f"timed out after {limit:g} s ({how})") from None
        except ResourceFailure:
            raise  # Interrupted: the stop timeout ran out
        except Exception as e:
            raise ResourceFailure(f"block raised {type(e).__name__}: {e}") from None
        return "" if result is None else str(result)
