"""file[path]: create (default), create_if_missing, delete, touch; content, mode."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from typing import ClassVar

from flock_node.engine.errors import ResourceFailure
from flock_node.engine.resources.base import (
    DEFAULT_FILE_MODE,
    Decision,
    Resource,
    converge_by,
    fail_os,
    up_to_date,
)
from flock_node.engine.resources.props import _content, _mode


def write_atomic(path: str, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a temp file in the same directory and os.replace."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".flock-", suffix=".tmp")
    except FileNotFoundError:
        raise ResourceFailure(f"parent directory {parent} does not exist") from None
    except OSError as e:
        raise fail_os(f"cannot create a file in {parent}", e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise fail_os(f"cannot write {path}", e) from None


def mode_change(cur: int, want: int | None) -> str:
    """"mode 0644 -> 0600", or "" when the mode is as wanted (or not managed)."""
    return f"mode {cur:04o} -> {want:04o}" if want is not None and want != cur else ""


def chmod_by(path: str, mode: int, why: str) -> Decision:
    """A decision to change only the mode of `path` (file or directory)."""

    def change_mode() -> str:
        try:
            os.chmod(path, mode)
        except OSError as e:
            raise fail_os(f"cannot chmod {path}", e) from None
        return why

    return converge_by(why, change_mode)


# The usual answer of a converge, made once (a Decision is never changed once made).
_AS_WANTED = up_to_date("content and mode as wanted")
_EXISTS = up_to_date("exists")


@dataclass(slots=True)
class FileState:
    """What is at the path now."""

    exists: bool
    is_dir: bool = False
    mode: int = 0
    same_content: bool = True  # or no content is managed


class File(Resource):
    type = "file"
    actions = ("create", "create_if_missing", "delete", "touch", "nothing")
    default_action = "create"
    props_spec: ClassVar = {"content": (_content, None), "mode": (_mode, None)}

    def setup(self) -> None:
        c = self.props["content"]
        self._data = c.encode() if isinstance(c, str) else c

    def load_current_resource(self, action: str) -> FileState:
        path = self.name
        if action == "delete":
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return FileState(False)
            return FileState(True, stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode))
        if action == "touch":
            return FileState(os.path.lexists(path))
        data = self._data
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                same = (action == "create_if_missing" or data is None
                        or (st.st_size == len(data) and f.read() == data))
        except FileNotFoundError:
            return FileState(False)
        except IsADirectoryError:
            return FileState(True, is_dir=True)
        except OSError as e:
            raise fail_os(f"cannot read {path}", e) from None
        return FileState(True, False, stat.S_IMODE(st.st_mode), same)

    def _create_new(self) -> str:
        mode = self.props["mode"]
        write_atomic(self.name, self._data or b"", DEFAULT_FILE_MODE if mode is None else mode)
        return f"created {self.name}"

    def decide_create(self, cur: FileState) -> Decision:
        path, mode = self.name, self.props["mode"]
        if cur.is_dir:
            raise ResourceFailure(f"{path} is a directory")
        if not cur.exists:
            return converge_by(f"{path} does not exist", self._create_new)
        chmod = mode_change(cur.mode, mode)
        if not cur.same_content:
            why = "content differs" + (f", {chmod}" if chmod else "")

            def rewrite() -> str:
                write_atomic(path, self._data, cur.mode if mode is None else mode)
                return why.replace("differs", "changed", 1)

            return converge_by(why, rewrite)
        if chmod:
            return chmod_by(path, mode, chmod)
        return _AS_WANTED if self._data is not None else _EXISTS

    def decide_create_if_missing(self, cur: FileState) -> Decision:
        return self.decide_create(cur)

    def decide_delete(self, cur: FileState) -> Decision:
        path = self.name
        if not cur.exists:
            return up_to_date(f"{path} does not exist")
        if cur.is_dir:
            raise ResourceFailure(f"{path} is a directory")

        def delete() -> str:
            try:
                os.unlink(path)
            except OSError as e:
                raise fail_os(f"cannot delete {path}", e) from None
            return f"deleted {path}"

        return converge_by(f"{path} exists", delete)

    def decide_touch(self, cur: FileState) -> Decision:
        path = self.name

        def touch() -> str:
            if not cur.exists:
                self._create_new()
            try:
                os.utime(path)
            except OSError as e:
                raise fail_os(f"cannot touch {path}", e) from None
            return f"created {path}" if not cur.exists else f"touched {path}"

        return converge_by(f"{path} does not exist" if not cur.exists
                           else "touch always updates the times", touch)
