"""Flock node agent and Python client."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy so `import flock_node.dsl` in a recipe does not pull in sockets.
    if name in ("Flock", "AsyncFlock", "FlockError"):
        from flock_node import client

        return getattr(client, name)
    raise AttributeError(name)
