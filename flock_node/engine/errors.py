"""The errors the engine raises to its caller (the agent) or records in a run."""

from __future__ import annotations


class RecipeError(Exception):
    """A recipe failed to compile; the message names the recipe file and line."""


class UnknownResource(LookupError):
    """run_action on a resource id that no compile (nor the store) knows."""

    code = "unknown_resource"

    def __init__(self, resource_id: str):
        super().__init__(f"unknown resource {resource_id!r}")
        self.resource_id = resource_id


class UnknownAction(LookupError):
    """run_action with an action the resource's type does not have."""

    code = "unknown_action"

    def __init__(self, resource_id: str, action: str, allowed: list[str]):
        super().__init__(
            f"{resource_id}: unknown action {action!r} (allowed: {', '.join(allowed)})"
        )
        self.resource_id = resource_id
        self.action = action
        self.allowed = list(allowed)


class ResourceFailure(Exception):
    """An action failed; `output` is what the action printed (kept in the run record)."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output
