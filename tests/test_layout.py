"""Contracts on the code base itself: the agent never pulls in the console, and lint is clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_agent_modules_do_not_import_textual():
    code = (
        "import sys, pkgutil, importlib, flock_node\n"
        "for m in pkgutil.walk_packages(flock_node.__path__, 'flock_node.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'textual' or n.startswith('textual.'))\n"
        "print(len(bad)); print(bad[:3])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[0] == "0", out.stdout


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: `make test` installs it with the test extras")
    r = subprocess.run([ruff, "check", "flock_node", "flock_tui", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_agent_and_library_type_check():
    """mypy --strict (pyproject) on both packages: flock_node is the public Python API
    (Flock, the DSL), and the console is typed the same way."""
    r = subprocess.run([sys.executable, "-m", "mypy", "flock_node", "flock_tui"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_installed_flock_starts_its_demo(tmp_path):
    """`pip install .` (not editable) carries the demo recipes: `flockctl demo --no-console` runs
    from the installed copy, far from the checkout."""
    import os
    import signal
    import time

    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", str(target), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target / "flock_tui" / "examples" / "bender0.py").exists()
    assert (target / "flock_tui" / "console.tcss").exists()  # the console's styles
    assert (target / "flock_node" / "py.typed").exists()
    # the operator command is `flockctl`; nothing may shadow util-linux's `flock`
    assert (target / "bin" / "flockctl").exists() and (target / "bin" / "flock-node").exists()
    assert not (target / "bin" / "flock").exists()
    env = dict(os.environ, PYTHONPATH=str(target), FLOCK_CONFIG_DIR=str(tmp_path / "cfg"))
    env.pop("FLOCK_RUNTIME_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "flock_tui.main", "demo", "--no-console",
                             "--nodes", "2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        out = ""
        while time.monotonic() < deadline and "demo flock up" not in out:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line and proc.poll() is not None:
                break
            out += line
        assert "demo flock up" in out, out
        where = __import__("flock_tui").__file__
        assert where is not None and str(target) not in where  # the test itself: checkout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        # Read what it says while it stops (a full pipe would hold it forever); a deadline:
        # traced by `make cov`, on a loaded machine, the agents took over 30 s to stop.
        proc.communicate(timeout=90)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The project modules `module` imports, at any level (in functions too), except under
    `if TYPE_CHECKING:`."""
    import ast

    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            out |= subs if len(subs) == len(node.names) else subs | {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return (out & modules) - {module}


def test_no_import_cycles():
    """No module imports (directly or through others) a module that imports it back."""
    files = {}
    for pkg in ("flock_node", "flock_tui"):
        for p in (ROOT / pkg).rglob("*.py"):
            if "examples" in p.parts:
                continue
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = p
    graph = {m: _imports(p, m, set(files)) for m, p in files.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for n in graph[m]:
                if n == goal:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return False

    cycles = sorted(f"{a} -> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert not cycles, "import cycles: " + ", ".join(cycles)


def test_no_module_over_500_lines_and_no_class_over_300():
    """Issue 9's house rule: a part that grows past this is doing two jobs."""
    import ast

    too_big = []
    for pkg in ("flock_node", "flock_tui"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > 500:
                too_big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300:
                    too_big.append(f"{path.relative_to(ROOT)}: class {node.name} "
                                   f"{node.end_lineno - node.lineno + 1} lines")
    assert not too_big, too_big
