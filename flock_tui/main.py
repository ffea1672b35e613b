"""`flockctl`: no command opens the console; commands run headless for scripts."""

from __future__ import annotations

import sys

from flock_node.cli import USAGE, parse, run_command


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    if args.command is None:
        from flock_tui.app import run_console

        return run_console(args)
    if args.command == "demo":
        from flock_tui.demo import run_demo

        return run_demo(args)
    if args.command == "config":
        from flock_tui.config_schema import run_config

        return run_config(args)
    if args.command == "macro":
        from flock_tui.macros import run_macro_headless

        return run_macro_headless(args)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "USAGE"]
