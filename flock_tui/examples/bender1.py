"""bender1, a web node: reacts to bender0 (remote_subscribes) and is notified by it."""

import os

from flock_node.dsl import directory, execute, file

base = os.environ.get("FLOCK_DEMO_DIR", "/tmp/flock-demo")
directory(f"{base}/bender1", recursive=True)

# Runs only when notified: bender0's file[.../fubar] notifies it.
execute("kill all humans", command=f"echo done >> {base}/humans", action="nothing")

# Whenever bender0's schema file is updated, touch our app config (remote_subscribes):
# registered with bender0 durably when this recipe compiles.
conf = file(f"{base}/bender1/app.conf", content="workers = 4\n")
conf.remote_subscribes("touch", f"file[{base}/bender0/schema.sql]", node="bender0")

execute("restart app", command="sleep 0.5; echo restarted", action="nothing")
conf.notifies("run", "execute[restart app]", timing="delayed")
