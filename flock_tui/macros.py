"""Console macros: `[[macros]]` in console.toml, each an ordered list of `flockctl` commands.

    [[macros]]
    name = "deploy-web"
    key = "D"
    description = "converge the web nodes, then wait for them"
    steps = ["run-chef web-* --wait", "wait-until web-* idle --timeout 600"]
    confirm = true

`{node}` is the cursor node (headless: --node); a step using `{marked}` runs once per marked
node (headless: --marked a,b). `flockctl macro NAME` runs the steps exactly as the `flockctl`
commands would, and stops at the first one that exits non-zero, with its exit code.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import threading
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec

from flock_node import cli, paths
from flock_tui.keys import builtin_keys

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
KEY_RE = re.compile(r"^[A-Za-z0-9_+\-]+$|^.$")
# Commands a macro step may run; `macro`/`demo` would recurse or start processes.
STEP_COMMANDS = set(cli.COMMANDS) - {"keygen"}
READ_ONLY_COMMANDS = {"nodes", "status", "outbox", "active", "resources", "history", "subscriptions",
                      "wait-until", "wait-while", "paths"}


def _doc(text: str) -> msgspec.Meta:
    """A field's description in the JSON schema (`flockctl config schema`); no constraint."""
    return msgspec.Meta(description=text)


class Macro(msgspec.Struct, forbid_unknown_fields=True):
    """A key bound to ordered steps, each a `flockctl` command without `flockctl`."""

    name: Annotated[str, _doc("unique; letters, digits, '.', '_' or '-' (max 63); "
                              "`flockctl macro NAME` runs it headless")]
    key: Annotated[str, _doc('the console key, e.g. "D", "ctrl+d", "f5"')]
    steps: Annotated[list[str], _doc(
        "flockctl commands run in order, stopping at the first failure; {node} is the cursor "
        "node, a step with {marked} runs once per marked node")]
    description: Annotated[str, _doc("shown in help and the command palette")] = ""
    confirm: Annotated[bool, _doc("ask before running")] = False
    override: Annotated[bool, _doc("allow a key that is a built-in console binding")] = False

    @property
    def binding_id(self) -> str:
        return f"macro.{self.name}"

    @property
    def changes_things(self) -> bool:
        """True if any step could change the flock (hidden by --read-only)."""
        for s in self.steps:
            try:
                words = shlex.split(s)
            except ValueError:
                return True
            cmd = next((w for w in words if not w.startswith("-")), "")
            if cmd not in READ_ONLY_COMMANDS:
                return True
        return False


class ConsoleConfig(msgspec.Struct, forbid_unknown_fields=True):
    """console.toml: the flockctl console's macros and key remapping."""

    macros: Annotated[list[Macro], _doc("[[macros]] tables")] = []
    keymap: Annotated[dict[str, str], _doc(
        'binding id to key(s), e.g. "flock.run_chef" = "R" (the console\'s `?` help lists '
        "the ids)")] = {}


class ConfigError(Exception):
    """A malformed console.toml: the message names the file, line and field."""


class StepError(Exception):
    """A macro step that is not a valid `flockctl` command."""


class MacroCancelled(Exception):
    pass


# --- loading and validation ------------------------------------------------------------------


def _macro_lines(text: str) -> list[int]:
    """1-based line numbers of each `[[macros]]` header, in order."""
    return [i + 1 for i, line in enumerate(text.splitlines())
            if re.match(r"^\s*\[\[\s*macros\s*\]\]", line)]


def _field_line(text: str, start: int, field: str | None) -> int:
    """The line of `field = ...` inside the table starting at line `start`."""
    if not field:
        return start
    lines = text.splitlines()
    for i in range(start, len(lines)):
        line = lines[i]
        if re.match(r"^\s*\[", line):
            break
        if re.match(rf"^\s*{re.escape(field)}\s*=", line) or re.match(
                rf"^\s*[\"']{re.escape(field)}[\"']\s*=", line):
            return i + 1
    return start


def _where(path: Path, text: str, index: int | None, field: str | None) -> str:
    heads = _macro_lines(text)
    if index is None or index >= len(heads):
        line = 1
        if field:
            for i, ln in enumerate(text.splitlines()):
                if re.match(rf"^\s*\[?\[?\s*{re.escape(field)}\b", ln):
                    line = i + 1
                    break
        return f"{path}:{line}"
    return f"{path}:{_field_line(text, heads[index], field)}"


def load_config(path: Path | None = None,
                builtin_keys: Iterable[str] = ()) -> ConsoleConfig:
    """Read and validate console.toml; a missing file is an empty config."""
    path = path or paths.console_config()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ConsoleConfig()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        loc = f"{path}:{m.group(1)}:{m.group(2)}" if m else str(path)
        raise ConfigError(f"{loc}: invalid TOML: {msg}") from None
    try:
        cfg = msgspec.convert(data, ConsoleConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(_validation_message(path, text, data, str(e))) from None
    _check(path, text, cfg, set(builtin_keys))
    return cfg


def _validation_message(path: Path, text: str, data: dict[str, Any], err: str) -> str:
    m = re.search(r" - at `\$(.*)`$", err)
    msg = re.sub(r" - at `\$.*`$", "", err)
    loc = m.group(1) if m else ""
    idx = None
    field = None
    mi = re.match(r"^\.macros\[(\d+)\](?:\.(\w+))?", loc)
    if mi:
        idx = int(mi.group(1))
        field = mi.group(2)
    elif loc.startswith("."):
        field = loc[1:].split(".")[0].split("[")[0]
    um = re.search(r"unknown field `([^`]+)`", msg)
    if um:
        field = um.group(1)
    missing = re.search(r"missing required field `([^`]+)`", msg)
    name = ""
    if idx is not None:
        try:
            n = data["macros"][idx].get("name")
            name = f" (name {n!r})" if isinstance(n, str) else ""
        except (KeyError, IndexError, AttributeError, TypeError):
            pass
    what = f"macros[{idx}]{name}" if idx is not None else "config"
    fname = field or (missing.group(1) if missing else None)
    where = _where(path, text, idx, field)
    return f"{where}: {what}: field `{fname or '?'}`: {msg}"


def _check(path: Path, text: str, cfg: ConsoleConfig, builtin: set[str]) -> None:
    seen_names: dict[str, int] = {}
    seen_keys: dict[str, str] = {}

    def fail(i: int, m: Macro, field: str, msg: str) -> None:
        raise ConfigError(f"{_where(path, text, i, field)}: macros[{i}] (name {m.name!r}): "
                          f"field `{field}`: {msg}")

    for i, m in enumerate(cfg.macros):
        if not NAME_RE.match(m.name):
            fail(i, m, "name", "must be letters, digits, '.', '_' or '-' (max 63)")
        if m.name in seen_names:
            fail(i, m, "name", f"duplicate macro name (also macros[{seen_names[m.name]}])")
        seen_names[m.name] = i
        if not m.key or not KEY_RE.match(m.key):
            fail(i, m, "key", f"{m.key!r} is not a key name (e.g. \"D\", \"ctrl+d\", \"f5\")")
        if m.key in seen_keys:
            fail(i, m, "key", f"key {m.key!r} is already bound to macro {seen_keys[m.key]!r}")
        if m.key in builtin and not m.override:
            fail(i, m, "key", f"key {m.key!r} is a built-in console binding; pick another key "
                              "or set `override = true`")
        seen_keys[m.key] = m.name
        if not m.steps:
            fail(i, m, "steps", "needs at least one step")
        for j, step in enumerate(m.steps):
            try:
                parse_step(step.replace("{node}", "n").replace("{marked}", "n"))
            except StepError as e:
                fail(i, m, "steps", f"steps[{j}] {step!r}: {e}")


# --- running steps -----------------------------------------------------------------------------


def _raising_parser() -> argparse.ArgumentParser:
    p = cli.build_parser()

    def error(message: str) -> NoReturn:
        raise StepError(message)

    def exit_(status: int = 0, message: str | None = None) -> NoReturn:
        raise StepError(message or "exits")

    parsers = [p]
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            parsers.extend(a.choices.values())
    for q in parsers:
        q.error = error  # type: ignore[method-assign]
        q.exit = exit_  # type: ignore[method-assign]
    return p


def parse_step(step: str, global_args: list[str] | None = None) -> argparse.Namespace:
    """A step as the `flockctl` command line would parse it; StepError if it is not valid."""
    try:
        words = shlex.split(step)
    except ValueError as e:
        raise StepError(str(e)) from None
    if not words:
        raise StepError("empty step")
    args = _raising_parser().parse_args(cli.two_word_commands((global_args or []) + words))
    if args.command not in STEP_COMMANDS:
        raise StepError(f"{args.command or 'the console'} cannot be a macro step; "
                        f"use one of: {', '.join(sorted(STEP_COMMANDS))}")
    return args


def expand(steps: list[str], node: str | None, marked: list[str]) -> list[str]:
    """Substitute {node} and {marked}: a step with {marked} runs once per marked node."""
    out: list[str] = []
    for s in steps:
        if "{node}" in s:
            if not node:
                raise StepError(f"step {s!r} uses {{node}} but there is no node (--node)")
            s = s.replace("{node}", shlex.quote(node))
        if "{marked}" in s:
            if not marked:
                raise StepError(f"step {s!r} uses {{marked}} but no node is marked (--marked)")
            out.extend(s.replace("{marked}", shlex.quote(n)) for n in marked)
        else:
            out.append(s)
    return out


def global_args(args: argparse.Namespace) -> list[str]:
    """The global `flockctl` options of this invocation, passed on to every step."""
    g: list[str] = []
    for s in getattr(args, "seed", None) or []:
        g += ["--seed", s]
    if getattr(args, "runtime_dir", None):
        g += ["--runtime-dir", str(args.runtime_dir)]
    if getattr(args, "key_file", None):
        g += ["--key-file", str(args.key_file)]
    if getattr(args, "insecure", False):
        g.append("--insecure")
    if getattr(args, "tls_dir", None):
        g += ["--tls-dir", str(args.tls_dir)]
    if getattr(args, "json", False):
        g.append("--json")
    if getattr(args, "connect_timeout", None) is not None:
        g += ["--connect-timeout", str(args.connect_timeout)]
    return g


class _CancellableFlock:
    """Proxy that aborts a step at its next flock call once the macro is cancelled: waits
    and `run-chef --wait` poll the flock, so cancel takes effect within one poll."""

    def __init__(self, flock: Any, cancelled: Callable[[], bool]):
        self._flock, self._cancelled = flock, cancelled

    def __getattr__(self, name: str) -> Any:
        if self._cancelled():
            raise MacroCancelled()
        attr = getattr(self._flock, name)
        if not callable(attr):
            return attr

        def call(*a: Any, **kw: Any) -> Any:
            if self._cancelled():
                raise MacroCancelled()
            return attr(*a, **kw)

        return call


class _Ctx(cli.Ctx):
    def __init__(self, args: argparse.Namespace, out: Any, cancelled: Callable[[], bool]):
        super().__init__(args, out)
        self._cancelled = cancelled

    @property
    def flock(self) -> Any:
        return _CancellableFlock(cli.Ctx.flock.fget(self), self._cancelled)  # type: ignore[attr-defined]


def run_step(args: argparse.Namespace, out: Any, err: Callable[[str], None],
             cancelled: Callable[[], bool] = lambda: False) -> int:
    """`cli.run_command`, with errors sent to `err` and cancellation between flock calls."""
    c = _Ctx(args, out, cancelled)
    try:
        return cli.COMMANDS[args.command](c)
    except cli.CliError as e:
        err(f"flockctl: {e}")
        return e.code
    finally:
        c.close()


class LineWriter:
    """A file-like `out` for commands that hands complete lines to a callback (any thread)."""

    def __init__(self, emit: Callable[[str], None]):
        self.emit = emit
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            self._buf += s
            *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self.emit(line)
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# --- headless: `flockctl macro NAME` ------------------------------------------------------------


def find_macro(cfg: ConsoleConfig, name: str) -> Macro:
    for m in cfg.macros:
        if m.name == name:
            return m
    known = ", ".join(m.name for m in cfg.macros) or "none"
    raise ConfigError(f"no macro named {name!r} in {paths.console_config()} (known: {known})")


def run_macro_headless(args: argparse.Namespace) -> int:
    """`flockctl macro NAME`: run the macro's steps as `flockctl` commands, stop at the first
    failure. Each step is announced first (`▶ step 2/3: flockctl ...`): on stdout, or on stderr
    with --json so that stdout stays one JSON document a line."""
    try:
        cfg = load_config(builtin_keys=builtin_keys())
        macro = find_macro(cfg, args.name)
        marked = [n for n in (args.marked or "").split(",") if n.strip()]
        steps = expand(macro.steps, args.node, marked)
    except (ConfigError, StepError) as e:
        return _headless_error(args, str(e), cli.USAGE)
    g = global_args(args)
    for i, step in enumerate(steps, 1):
        try:
            step_args = parse_step(step, g)
        except StepError as e:
            return _headless_error(args, f"macro {macro.name}: step {i} {step!r}: {e}", cli.USAGE)
        step_args.json_lines = True  # several documents: one per line (JSON Lines)
        print(f"▶ step {i}/{len(steps)}: flockctl {step}",
              file=sys.stderr if args.json else sys.stdout, flush=True)
        code = cli.run_command(step_args)
        if code != 0:
            print(f"flockctl: macro {macro.name} stopped at step {i}/{len(steps)} ({step}): "
                  f"exit {code}", file=sys.stderr)
            return code
    return cli.OK


def _headless_error(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"flockctl: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}), flush=True)
    return code
