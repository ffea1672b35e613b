"""bender2, another web node: waits on bender0 before it acts (wait_until / wait_while)."""

import os

from flock_node.dsl import directory, execute, file, flock

base = os.environ.get("FLOCK_DEMO_DIR", "/tmp/flock-demo")
directory(f"{base}/bender2", recursive=True)

# Don't write the gated file while bender0 converges: wait until it is idle.
gate = file(f"{base}/bender2/gated", content="x")
gate.wait_until(lambda: not flock["bender0"].flock_api.active(), interval=0.5, timeout=300)

# The same, the other way round.
warm = execute("warm caches", command=f"sleep 0.5; touch {base}/bender2/warm",
               creates=f"{base}/bender2/warm")
warm.wait_while(lambda: flock["bender0"].flock_api.active(), interval=0.5, timeout=300)
