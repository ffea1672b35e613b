"""The converge engine: compile Python recipes, converge their resources in order, record
every result and queue remote notifications through the store.

    engine = Engine(node="bender0", recipes=[Path("web.py")], store=store, hooks=hooks)
    engine.converge(RunContext(run_id="r-1"))
"""

from flock_node.engine.errors import RecipeError, ResourceFailure, UnknownAction, UnknownResource
from flock_node.engine.limits import Interrupted, Kill
from flock_node.engine.runner import Engine, Hooks, RunContext

__all__ = [
    "Engine",
    "Hooks",
    "Interrupted",
    "Kill",
    "RunContext",
    "RecipeError",
    "ResourceFailure",
    "UnknownAction",
    "UnknownResource",
]
