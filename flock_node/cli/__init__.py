"""The `flockctl` scripting commands (the console itself lives in flock_tui).

Exit codes: 0 success, 1 the thing asked for failed (a run failed, a wait timed out),
2 usage error, 3 a node could not be reached, 4 refused (unauthorized).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import TextIO

from flock_node.cli.args import (
    FAILED,
    OK,
    UNREACHABLE,
    USAGE,
    CliError,
    build_parser,
    parse,
    positive_int,
    positive_seconds,
    seconds_or_zero,
    seed_url,
    two_word_commands,
)
from flock_node.cli.ca import cmd_audit, cmd_ca
from flock_node.cli.commands import (
    cmd_active,
    cmd_history,
    cmd_keygen,
    cmd_nodes,
    cmd_notify,
    cmd_outbox,
    cmd_outbox_discard,
    cmd_paths,
    cmd_resources,
    cmd_retry,
    cmd_status,
    cmd_subscribe,
    cmd_subscriptions,
    cmd_unsubscribe,
)
from flock_node.cli.context import Ctx, _cli_error, select
from flock_node.cli.runs import cmd_run_chef, cmd_wait
from flock_node.cli.text import ago

__all__ = ["COMMANDS", "FAILED", "OK", "UNREACHABLE", "USAGE", "CliError", "Ctx", "_cli_error",
           "ago", "build_parser", "parse", "positive_int", "positive_seconds", "run_command",
           "seconds_or_zero", "seed_url", "select", "two_word_commands"]

COMMANDS: dict[str, Callable[[Ctx], int]] = {
    "nodes": cmd_nodes, "status": cmd_status, "run-chef": cmd_run_chef, "active": cmd_active,
    "resources": cmd_resources, "history": cmd_history, "notify": cmd_notify,
    "outbox": cmd_outbox, "outbox-discard": cmd_outbox_discard, "retry": cmd_retry,
    "subscribe": cmd_subscribe, "subscriptions": cmd_subscriptions,
    "unsubscribe": cmd_unsubscribe, "wait-until": cmd_wait, "wait-while": cmd_wait,
    "keygen": cmd_keygen, "paths": cmd_paths, "ca": cmd_ca, "audit": cmd_audit,
}


def run_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one scripting command; errors print one line to stderr and set the exit code."""
    c = Ctx(args, out)
    try:
        return COMMANDS[args.command](c)
    except CliError as e:
        print(f"flockctl: {e}", file=sys.stderr)
        if args.json:  # scripts reading stdout get an answer too
            c.emit_json({"error": str(e), "exit_code": e.code})
        return e.code
    except KeyboardInterrupt:
        if args.command == "run-chef":
            print("\nflockctl: interrupted; the runs already started go on on their nodes "
                  "(`flockctl nodes` shows them)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `flockctl history x | head`: the reader is gone, so are we
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        c.close()
