"""The agent's process: signals (SIGTERM/SIGINT stop it gracefully, SIGHUP reopens the log
file), the GIL switch interval, process groups a previous agent left, and the exit code."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from flock_node import logs
from flock_node.agent import Agent, AgentConfig

log = logging.getLogger("flock.agent")


def run_agent(cfg: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT; exit code 0 on a clean stop."""
    from flock_node.engine.shell import children

    agent = Agent(cfg)
    # After Agent(): it holds our name, so the groups in the file are no live agent's.
    killed = children.use_file(cfg.state_dir / "children")
    if killed:
        log.warning("killed %d process group(s) left running by the previous agent", len(killed))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.request_stop)
        # SIGHUP: with a log file, logrotate renamed it (reopen); else the terminal closed,
        # and a graceful stop beats the default abrupt death.
        loop.add_signal_handler(signal.SIGHUP, logs.reopen if logs.has_log_file()
                                else agent.request_stop)
        await agent.run()

    # The converge worker and the loop share the GIL: with the default 5 ms switch interval
    # every nng or SQLite call that releases it can wait 5 ms to get it back.
    sys.setswitchinterval(0.0005)
    asyncio.run(main())
    if agent.work.abandoned:
        # The stuck worker thread would keep the interpreter from exiting: flush, then leave.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if agent.crashed else 0)
    return 1 if agent.crashed else 0

