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
    r = subprocess.run([ruff, "check", "flock_node", "flock_tui", "tests", "benchmarks",
                        "examples"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_agent_and_library_type_check():
    """flock_node is the public Python API (Flock, the DSL): mypy keeps its hints honest."""
    r = subprocess.run([sys.executable, "-m", "mypy", "flock_node"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
