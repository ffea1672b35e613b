"""directory[path]: create (default), delete; mode, recursive."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from typing import ClassVar

from flock_node.engine.errors import ResourceFailure
from flock_node.engine.resources.base import (
    Decision,
    Resource,
    converge_by,
    fail_os,
    up_to_date,
)
from flock_node.engine.resources.file import chmod_by, mode_change
from flock_node.engine.resources.props import _bool, _mode


@dataclass(slots=True)
class DirState:
    """What is at the path now."""

    exists: bool
    is_dir: bool = False
    mode: int = 0


class Directory(Resource):
    type = "directory"
    actions = ("create", "delete", "nothing")
    default_action = "create"
    props_spec: ClassVar = {"mode": (_mode, None), "recursive": (_bool, False)}

    def load_current_resource(self, action: str) -> DirState:
        try:
            # create follows a symlink to a directory; delete looks at the link itself
            st = os.lstat(self.name) if action == "delete" else os.stat(self.name)
        except FileNotFoundError:
            return DirState(False)
        return DirState(True, stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode))

    def decide_create(self, cur: DirState) -> Decision:
        path, mode = self.name, self.props["mode"]
        if not cur.exists:
            return converge_by(f"{path} does not exist", self._mkdir)
        if not cur.is_dir:
            raise ResourceFailure(f"{path} exists and is not a directory")
        chmod = mode_change(cur.mode, mode)
        if not chmod:
            return up_to_date("exists" + (", mode as wanted" if mode is not None else ""))
        return chmod_by(path, mode, chmod)

    def _mkdir(self) -> str:
        path, mode = self.name, self.props["mode"]
        try:
            if self.props["recursive"]:
                os.makedirs(path)
            else:
                os.mkdir(path)
            if mode is not None:
                os.chmod(path, mode)
        except FileNotFoundError:
            raise ResourceFailure(
                f"parent directory {os.path.dirname(os.path.abspath(path))} does not exist "
                "(use recursive=True)"
            ) from None
        except OSError as e:
            raise fail_os(f"cannot create {path}", e) from None
        return f"created {path}"

    def decide_delete(self, cur: DirState) -> Decision:
        path = self.name
        if not cur.exists:
            return up_to_date(f"{path} does not exist")
        if not cur.is_dir:
            raise ResourceFailure(f"{path} is not a directory")

        def delete() -> str:
            try:
                if self.props["recursive"]:
                    shutil.rmtree(path)
                else:
                    os.rmdir(path)
            except OSError as e:
                hint = " (use recursive=True)" if e.errno in (39, 66) else ""
                raise fail_os(f"cannot delete {path}{hint}", e) from None
            return f"deleted {path}"

        return converge_by(f"{path} exists", delete)
