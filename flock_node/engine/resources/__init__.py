"""Resource types, one module each, on a common base (load current state / decide /
converge). Importing this package registers the built-in types in `TYPES`; a new type is a
`Resource` subclass with a `type` name in a module imported here."""

from flock_node.engine.resources.base import (
    CALLABLE,
    ID_RE,
    RUN_ENV,
    TYPES,
    Decision,
    Notify,
    RemoteNotify,
    RemoteSubscribe,
    Resource,
    Wait,
    command_env,
    converge_by,
    fail_os,
    parse_id,
    up_to_date,
)
from flock_node.engine.resources.directory import Directory
from flock_node.engine.resources.execute import Execute
from flock_node.engine.resources.file import File
from flock_node.engine.resources.log import Log
from flock_node.engine.resources.python_block import PythonBlock

__all__ = [
    "CALLABLE", "ID_RE", "RUN_ENV", "TYPES", "Decision", "Directory", "Execute", "File", "Log",
    "Notify", "PythonBlock", "RemoteNotify", "RemoteSubscribe", "Resource", "Wait",
    "command_env", "converge_by", "fail_os", "parse_id", "up_to_date",
]
