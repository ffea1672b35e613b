"""Issue 11: an agent's memory. `cryptography` (about 11 MB of an agent's 44 MB) is loaded
only by agents that need it (TLS: certificates, the CA's revocation list, signed statements);
an agent on a flock key never loads it. Real agents; the check reads /proc/PID/maps, where the
library's compiled core (`_rust.abi3.so`) shows once it is imported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FlockEnv, free_port, wait_for

from flock_node.client import Flock

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")


def _has_cryptography(pid: int) -> bool:
    return "/cryptography/" in Path(f"/proc/{pid}/maps").read_text()


def test_a_keyed_agent_never_loads_cryptography_and_a_tls_one_does(flock_env: FlockEnv):
    env = flock_env
    tmp_path = env.root
    key = tmp_path / "flock.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    pa, pb = free_port(), free_port()
    a = env.start("a", "--listen", f"tcp://127.0.0.1:{pa}", "--key-file", str(key))
    b = env.start("b", "--listen", f"tcp://127.0.0.1:{pb}", "--key-file", str(key),
                  "--seed", f"tcp://127.0.0.1:{pa}")
    with Flock.connect(seeds=[f"tcp://127.0.0.1:{pa}"], runtime_dir=env.runtime_dir,
                       key_file=str(key)) as f:
        # gossip has run both ways (statements signed and checked with the key)
        wait_for(lambda: {m["name"] for m in f.refresh()} >= {"a", "b"}, 10,
                 what="a to see b")
        assert f["b"].flock_api.status()["name"] == "b"
    assert not _has_cryptography(a.proc.pid), "a keyed agent loaded cryptography"
    assert not _has_cryptography(b.proc.pid), "a keyed agent loaded cryptography"

    from flock_node.trust import ca

    ca.init(env.config_dir / "ca")
    ca.issue(env.config_dir / "ca", "t", "node", tmp_path / "certs")
    t = env.start("t", "--listen", f"tls+tcp://127.0.0.1:{free_port()}",
                  "--tls-dir", str(tmp_path / "certs"))
    assert _has_cryptography(t.proc.pid)  # the probe sees it where it is needed


def test_cryptography_is_imported_at_module_level_only_by_the_ca():
    """The rule the test above checks at run time, as a readable message: outside the CA's
    tooling (`flockctl ca`), `cryptography` is imported inside the functions that need it
    (or for type checking only), never when a module loads."""
    import ast

    root = Path(__file__).resolve().parent.parent / "flock_node"
    allowed = {root / "trust" / "ca.py"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path in allowed:
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; `if TYPE_CHECKING:` blocks are skipped
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "cryptography" or n.startswith("cryptography.") for n in names):
                offenders.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    assert not offenders, ("cryptography imported as the module loads (an agent on a flock "
                           "key would carry its 11 MB): " + ", ".join(offenders))


def test_flockctl_and_the_console_start_without_cryptography():
    """Only `flockctl ca ...` needs the CA's library (~35 ms and ~11 MB to load): every other
    command, run once per call from operators' scripts, and the console start without it."""
    import subprocess
    import sys

    probe = ("import sys, flock_tui.main, flock_tui.app; "
             "from flock_node.cli import parse; parse(['nodes']); "
             "print('cryptography' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False", "flockctl or the console loaded cryptography"
