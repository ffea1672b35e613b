"""Running a macro's steps in the console: each step as its `flockctl` command would run,
output to the log, progress to the macro bar; stops at the first failure, or when cancelled."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text

from flock_tui import macros as macros_mod
from flock_tui.context import err_text
from flock_tui.macros import Macro, StepError
from flock_tui.model import Styles

CANCELLED = 130


def run_steps(macro: Macro, steps: list[str], global_args: list[str], st: Styles,
              log: Callable[[Text], None], error: Callable[[str], None],
              progress: Callable[[str, int, int, str], None],
              cancelled: Callable[[], bool]) -> int:
    """Run `steps` (already expanded); returns the exit code of the step that stopped it, 0
    when all ran, 130 when cancelled. The callbacks are called from this (worker) thread."""
    code = 0
    log(Text(f"▶ macro {macro.name}: {len(steps)} step(s)", style=f"bold {st.accent}"))
    for i, step in enumerate(steps, 1):
        if cancelled():
            code = CANCELLED
            break
        progress(macro.name, i, len(steps), step)
        log(Text(f"$ flockctl {step}", style=f"bold {st.accent}"))
        try:
            args = macros_mod.parse_step(step, global_args)
        except StepError as e:
            error(f"macro {macro.name}: step {i} {step!r}: {e}")
            code = 2
            break
        out = macros_mod.LineWriter(lambda s: log(Text(s)))
        try:
            code = macros_mod.run_step(args, out, error, cancelled)
        except macros_mod.MacroCancelled:
            code = CANCELLED
            break
        except Exception as e:  # noqa: BLE001 - never a traceback
            error(f"macro {macro.name}: step {i}: {err_text(e)}")
            code = 1
            break
        if code != 0:
            error(f"macro {macro.name} stopped at step {i}/{len(steps)} (exit {code})")
            break
    if code == CANCELLED:
        log(Text(f"■ macro {macro.name} cancelled", style=f"bold {st.warning}"))
    elif code == 0:
        log(Text(f"✓ macro {macro.name} done", style=f"bold {st.success}"))
    return code
