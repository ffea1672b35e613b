"""The audit trail says how a caller was known: a certificate (its identity, as on TLS), a flock
key that verified the frame `(key)`, a local socket with no key `(local)`, or a TCP frame
nobody checked `(insecure)`. Real agents on ipc and tcp; the label is one pure function."""

from __future__ import annotations

import json

from conftest import free_port


def _audit(env, node: str, *flags: str, text: bool = True) -> tuple[str, list[dict]]:
    r = env.cli(*flags, "run-chef", node)
    assert r.returncode == 0, r.stderr
    shown = env.cli(*flags, "audit", node) if text else None
    assert shown is None or shown.returncode == 0, shown.stderr
    return (shown.stdout if shown else ""), json.loads(
        env.cli(*flags, "--json", "audit", node).stdout)


def test_each_mode_names_how_the_caller_was_known(flock_env):
    env = flock_env
    key = env.root / "flock.key"
    assert env.cli("keygen", str(key)).returncode == 0
    port = free_port()
    procs = [env.start("loc", wait=False),  # ipc, and no flock key: nobody holds a key
             env.start("keyed", "--key-file", str(key), wait=False),
             env.start("open", "--listen", f"tcp://127.0.0.1:{port}", "--insecure",
                       wait=False)]
    for p in procs:
        env.wait_up(p)

    text, rows = _audit(env, "loc")
    assert rows[0]["call"] == "flock_api.run_chef" and rows[0]["via"] == "local", rows
    assert "(local)" in text and "(key)" not in text, text

    text, rows = _audit(env, "keyed", "--key-file", str(key))
    assert rows[0]["via"] == "key" and "(key)" in text and "(local)" not in text, text

    _, rows = _audit(env, "open", "--seed", f"tcp://127.0.0.1:{port}", "--insecure",
                     text=False)
    assert rows[0]["via"] == "insecure", rows


def test_the_label_of_each_row():
    from flock_node.store.audit import caller_label

    row = {"caller": "client-1", "verified": False}
    assert caller_label({**row, "via": "key"}) == "client-1 (key)"
    assert caller_label({**row, "via": "local"}) == "client-1 (local)"
    assert caller_label({**row, "via": "insecure"}) == "client-1 (insecure)"
    # A row written before `via` was kept: how it was known is not known.
    assert caller_label(row) == "client-1 (unverified)"
    assert caller_label({"caller": "operator:alice", "verified": True,
                         "via": "certificate"}) == "operator:alice"
    assert caller_label({"caller": "node-b", "verified": True}) == "node-b"
    assert caller_label({}) == "? (unverified)"


def test_a_trail_kept_before_via_still_opens_and_reads(tmp_path):
    import sqlite3

    from flock_node.store import Store
    from flock_node.store.audit import caller_label

    path = tmp_path / "flock.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
            caller TEXT NOT NULL, role TEXT NOT NULL, verified INTEGER NOT NULL,
            call TEXT NOT NULL, args TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT);
        INSERT INTO audit (at, caller, role, verified, call, args, outcome)
            VALUES (1.0, 'client-9', 'operator', 0, 'flock_api.run_chef', '{}', 'ok');
    """)
    old.commit()
    old.close()
    store = Store(path, node="a")
    store.audit.record("client-1", "operator", False, "flock_api.retry", {}, "ok", via="local")
    new, before = store.audit.recent(10)
    assert (new.via, before.via) == ("local", None)
    assert caller_label({"caller": before.caller, "verified": before.verified,
                         "via": before.via}) == "client-9 (unverified)"
    store.close()


def test_a_seed_the_operator_names_is_asked_even_when_a_local_member_answered(flock_env):
    """A local SWIM member speaks for its flock, but a `--seed` the operator names that is
    not among its members (another flock, or one not joined yet) is asked too: its node
    shows in `nodes` and takes calls by name."""
    env = flock_env
    port = free_port()
    env.start("loc")
    env.start("far", "--listen", f"tcp://127.0.0.1:{port}", "--insecure",
              "--runtime-dir", str(env.root / "elsewhere"))
    flags = ("--seed", f"tcp://127.0.0.1:{port}", "--insecure")
    r = env.cli(*flags, "--json", "nodes")
    assert r.returncode == 0, r.stderr
    assert {"loc", "far"} <= {n["name"] for n in json.loads(r.stdout)}, r.stdout
    r = env.cli(*flags, "run-chef", "far")
    assert r.returncode == 0, r.stderr
