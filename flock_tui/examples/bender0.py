"""bender0, the database node: its schema change makes bender1 act (remote_notifies)."""

import os

from flock_node.dsl import directory, execute, file, log

base = os.environ.get("FLOCK_DEMO_DIR", "/tmp/flock-demo")
directory(f"{base}/bender0", recursive=True)

# The seed README's remote notification: when this file changes, bender1 runs its
# "kill all humans" execute resource, out of band, exactly once.
fubar = file(f"{base}/bender0/fubar", action="create", content="foobar")
fubar.remote_notifies("run", "execute[kill all humans]", node="bender1")

# The schema file: bender1 subscribes to it (see bender1.py).
file(f"{base}/bender0/schema.sql", content="CREATE TABLE humans (id int);\n")

execute("migrate", command="sleep 1; echo migrated", creates=None)
log("bender0 converged")
