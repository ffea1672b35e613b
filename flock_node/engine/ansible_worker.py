"""The Ansible worker: one process per converge that runs every `ansible` resource's module.

    python -c 'runpy.run_path(".../ansible_worker.py")'   (started by ansible_session)

Requests and answers are JSON lines on stdin/stdout. Ansible's own machinery is imported once,
here; each module then runs in a fork of this warm process the way AnsiballZ runs it on a
managed host (module_utils.basic reads its arguments from `_ANSIBLE_ARGS`, the module runs as
`__main__` and prints one JSON result). A fork costs a few milliseconds where a fresh
interpreter importing Ansible costs a few hundred, and a module's global state, its exit() and
its crashes stay in the fork. What Ansible does on the controller side for a few modules (the
"action plugins") is done here before the fork: `copy` with `content` or a local `src`, and
`template` (rendered with Ansible's own Templar, so its filters work).

This module imports Ansible: nothing in the agent imports it.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import select
import shutil
import signal
import sys
import tempfile
from typing import Any

STREAM_LIMIT = 16 * 1024  # bytes of a module's stdout noise / stderr kept
RESULT_LIMIT = 1024 * 1024  # a module result larger than this is cut (the agent bounds again)

# Arguments the template action plugin consumes itself; the rest go to the copy module.
_TEMPLATE_ONLY = {
    "src", "newline_sequence", "block_start_string", "block_end_string",
    "variable_start_string", "variable_end_string", "comment_start_string",
    "comment_end_string", "trim_blocks", "lstrip_blocks", "output_encoding",
}


# Controller-side actions (no module code runs on the host): meaningful only in a playbook.
CONTROLLER_ONLY = {
    "add_host", "assert", "debug", "fail", "fetch", "gather_facts", "group_by", "import_playbook",
    "import_role", "import_tasks", "include_role", "include_tasks", "include_vars", "meta",
    "pause", "raw", "reboot", "script", "set_fact", "set_stats", "validate_argument_spec",
    "wait_for_connection",
}


def module_fqn(module: str) -> str:
    """The Python module that implements Ansible module `module` (short or FQCN)."""
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 3 and parts[:2] == ["ansible", "builtin"]):
        return "ansible.modules." + parts[-1]
    if len(parts) == 3:
        return f"ansible_collections.{parts[0]}.{parts[1]}.plugins.modules.{parts[2]}"
    raise ValueError(f"not an Ansible module name: {module!r}")


def _short(module: str) -> str:
    return module_fqn(module).rsplit(".", 1)[-1] if module_fqn(module).startswith(
        "ansible.modules.") else ""


def _render_template(src: str, variables: dict[str, Any], args: dict[str, Any]) -> str:
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    with open(src, encoding="utf-8") as f:
        text = f.read()
    templar = Templar(loader=DataLoader(), variables=dict(variables))
    overrides = {k: args[k] for k in ("trim_blocks", "lstrip_blocks") if k in args}
    if overrides:
        templar = templar.copy_with_new_env(**overrides)
    out = templar.template(trust_as_template(text), escape_backslashes=False)
    nl = args.get("newline_sequence")
    if isinstance(nl, str) and nl != "\n":
        out = str(out).replace("\n", nl.encode().decode("unicode_escape"))
    return str(out)


def prepare(module: str, args: dict[str, Any], variables: dict[str, Any], tmp: str
            ) -> tuple[str, dict[str, Any]]:
    """(python module, its args): what the controller's action plugin would hand the host."""
    short = _short(module)
    args = dict(args)
    if short == "template":
        src = args.get("src")
        if not isinstance(src, str):
            raise ValueError("template needs args src= (the template file)")
        rendered = os.path.join(tmp, "rendered")
        with open(rendered, "w", encoding="utf-8") as f:
            f.write(_render_template(src, variables, args))
        rest = {k: v for k, v in args.items() if k not in _TEMPLATE_ONLY}
        return "ansible.modules.copy", {**rest, "src": rendered, "remote_src": True,
                                        "_original_basename": os.path.basename(src)}
    if short in CONTROLLER_ONLY:
        raise ValueError(f"{module} is an action of Ansible's controller, not a module a host "
                         "runs: use it in a playbook resource")
    if short == "package":  # the action plugin picks the node's package manager
        use = args.pop("use", None) or next(
            (m for m, tool in (("apt", "apt-get"), ("dnf", "dnf"), ("yum", "yum"),
                               ("apk", "apk"), ("zypper", "zypper")) if shutil.which(tool)),
            None)
        if not use:
            raise ValueError("package: no known package manager on this node (set use=)")
        return module_fqn(str(use)), args
    if short == "shell":  # an action plugin over the command module, in Ansible too
        return "ansible.modules.command", {**args, "_uses_shell": True}
    if short == "copy" and not args.get("remote_src"):
        if "content" in args:
            content = args.pop("content")
            path = os.path.join(tmp, "content")
            with open(path, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else
                        json.dumps(content).encode())
            args.update(src=path, _original_basename="content")
        elif isinstance(args.get("src"), str):
            args["_original_basename"] = os.path.basename(args["src"].rstrip("/"))
        # The module alone moves `src` into place (it expects a copy the controller sent);
        # remote_src makes it copy instead, so the recipe's source file stays.
        args["remote_src"] = True
    return module_fqn(module), args


DIFF_LIMIT = 64 * 1024  # bigger files get no content diff, as in Ansible (max_diff_size)


def _text(path: str) -> str | None:
    """A small text file's content; None when missing, big or binary."""
    try:
        with open(path, "rb") as f:
            data = f.read(DIFF_LIMIT + 1)
    except OSError:
        return None
    if len(data) > DIFF_LIMIT or b"\0" in data:
        return None
    return data.decode("utf-8", "replace")


def content_diff(fqn: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """The before/after diff the copy action plugin would show (the module gives none)."""
    if fqn != "ansible.modules.copy" or not isinstance(args.get("src"), str) or \
            not isinstance(args.get("dest"), str):
        return None
    dest = args["dest"]
    if os.path.isdir(dest):
        dest = os.path.join(dest, str(args.get("_original_basename") or ""))
    after = _text(args["src"])
    if after is None:
        return None
    before = _text(dest) if os.path.exists(dest) else ""
    if before is None:
        return None
    return {"before": before, "after": after, "before_header": dest,
            "after_header": str(args.get("_original_basename") or args["src"])}


def _child(fqn: str, params: bytes, out_fd: int, err_fd: int, env: dict[str, str]) -> None:
    """In the fork: run the module as __main__, its output to the given files; never returns."""
    code = 1
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.update(env)  # the run's FLOCK_RUN_ID, FLOCK_NOTIFICATION...
        import warnings

        from ansible.module_utils import basic

        # The module was imported by the parent (to warm its imports): runpy warns about it.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
        basic._ANSIBLE_ARGS = params
        basic._ANSIBLE_PROFILE = "legacy"
        # As AnsiballZ's loader: modules that respawn under another Python (apt, dnf) need to
        # know their name and where ansible's code lives.
        import ansible

        modlib = os.path.dirname(os.path.dirname(os.path.abspath(ansible.__file__)))
        runpy.run_module(fqn, run_name="__main__", alter_sys=True,
                         init_globals={"_module_fqn": fqn, "_modlib_path": modlib})
        print(json.dumps({"failed": True, "msg": f"module {fqn} did not report a result"}))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except ImportError as e:
        print(json.dumps({"failed": True, "msg": f"no such module {fqn}: {e}"}))
    except BaseException as e:
        print(json.dumps({"failed": True, "msg": f"module crashed: {type(e).__name__}: {e}"}))
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _warm(fqn: str) -> None:
    """Import the module here once, so every later fork finds its imports loaded."""
    if fqn in sys.modules:
        return
    try:
        importlib.import_module(fqn)
    except BaseException:  # the fork reports it; a module may even exit at import
        sys.modules.pop(fqn, None)


def _tail(path: str, limit: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - limit))
        return f.read()


def split_output(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """(the module's JSON result, the other lines it printed) from its stdout."""
    text = raw.decode("utf-8", "replace")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("{"):
            try:
                result = json.loads("\n".join(lines[i:]))
            except ValueError:
                continue
            if isinstance(result, dict):
                return result, "\n".join(lines[:i]).strip()
    return None, text.strip()


def _wait(pid: int, stdin_fd: int) -> int:
    """The fork's exit status; if the agent goes away meanwhile, kill our group and exit."""
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            ready, _, _ = select.select([pidfd, stdin_fd], [], [])
            if pidfd in ready:
                return os.waitpid(pid, 0)[1]
            # Data or EOF on stdin while a module runs: the agent is gone (it sends one request
            # at a time), so nothing may outlive it.
            os.killpg(0, signal.SIGKILL)
    finally:
        os.close(pidfd)


def run_one(req: dict[str, Any], stdin_fd: int) -> dict[str, Any]:
    """Run one request: {module, args, vars, check, diff, no_log} -> {result, stderr, noise}."""
    tmp = tempfile.mkdtemp(prefix="flock-ansible-")
    try:
        try:
            fqn, args = prepare(req["module"], req.get("args") or {}, req.get("vars") or {}, tmp)
        except Exception as e:
            return {"result": {"failed": True, "msg": f"{type(e).__name__}: {e}"}}
        args.update(
            _ansible_check_mode=bool(req.get("check")),
            _ansible_diff=bool(req.get("diff", True)),
            _ansible_no_log=bool(req.get("no_log")),
            _ansible_tmpdir=tmp,
            _ansible_remote_tmp=tmp,
            _ansible_keep_remote_files=False,
            _ansible_socket=None,
            _ansible_verbosity=0,
            _ansible_debug=False,
        )
        params = json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode()
        diff = content_diff(fqn, args) if req.get("diff", True) else None
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o600)
        err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT, 0o600)
        _warm(fqn)
        pid = os.fork()
        if pid == 0:
            os.chdir(tmp)
            _child(fqn, params, out_fd, err_fd,
                   {str(k): str(v) for k, v in (req.get("env") or {}).items()})
        os.close(out_fd)
        os.close(err_fd)
        status = _wait(pid, stdin_fd)
        with open(out_path, "rb") as f:
            raw = f.read(RESULT_LIMIT)
        result, noise = split_output(raw)
        stderr = _tail(err_path, STREAM_LIMIT).decode("utf-8", "replace").strip()
        if result is None:
            code = os.waitstatus_to_exitcode(status)
            why = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
            result = {"failed": True, "msg": f"module printed no result ({why})"}
        if diff is not None and result.get("changed") and "diff" not in result:
            result["diff"] = diff
        return {"result": result, "stderr": stderr, "noise": noise[-STREAM_LIMIT:]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    """Serve requests until stdin closes."""
    # Our stdout is the answer channel: anything else printing there would corrupt it.
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    stdin_fd = sys.stdin.fileno()
    # As AnsiballZ does: a module named like a stdlib one (copy) must not shadow it.
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    from ansible.module_utils import basic  # noqa: F401  (imported once, shared by the forks)

    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    buf = b""
    while True:
        chunk = os.read(stdin_fd, 65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                answer = run_one(json.loads(line), stdin_fd)
            except Exception as e:
                answer = {"result": {"failed": True, "msg": f"worker: {type(e).__name__}: {e}"}}
            answers.write(json.dumps(answer, default=str) + "\n")
            answers.flush()


if __name__ == "__main__":
    main()
