"""Extra demo nodes (flockctl demo --nodes N, N > 3): a little work on each converge."""

import os
import socket

from flock_node.dsl import directory, execute, file

base = os.environ.get("FLOCK_DEMO_DIR", "/tmp/flock-demo")
me = os.environ.get("FLOCK_NODE", socket.gethostname())
directory(f"{base}/{me}", recursive=True)
file(f"{base}/{me}/motd", content=f"welcome to {me}\n")
execute("compile assets", command="sleep 0.3")
