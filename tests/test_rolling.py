"""Rolling runs on five real agents: `flockctl run-chef 'r*' --max-parallel N [--max-fail K]
--wait`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FlockEnv, on_a_terminal, wait_for
from test_cli import RECIPE  # ok, fail or sleep S, read from a per-node mode file

from flock_node.cli.rolling import Roll

NODES = ("r0", "r1", "r2", "r3", "r4")


class Five:
    def __init__(self, env: FlockEnv):
        self.env = env

    def modes(self, **modes: str) -> None:
        for n in NODES:
            (self.env.root / f"{n}.mode").write_text(modes.get(n, "ok"))

    def roll(self, *flags: str):
        r = self.env.cli("--json", "run-chef", "r*", "--wait", *flags)
        return r.returncode, json.loads(r.stdout), r

    def runs_since(self, t0: float) -> dict[str, list[dict]]:
        with self.env.flock() as f:
            return {n: [h for h in f[n].flock_api.history() if h["started"] >= t0]
                    for n in NODES}


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    env = FlockEnv(Path(tmp_path_factory.mktemp("r", numbered=True)))
    try:
        env.start_moded(NODES, RECIPE)
        yield Five(env)
    finally:
        env.stop_all()


def _max_overlap(runs: list[dict]) -> int:
    edges = sorted([(r["started"], 1) for r in runs] + [(r["finished"], -1) for r in runs],
                   key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


def test_never_more_than_n_at_once_in_name_order(five):
    import time

    five.modes(**{n: "sleep 0.4" for n in NODES})
    t0 = time.time()
    code, out, r = five.roll("--max-parallel", "2")
    assert code == 0, r.stderr
    assert (out["ok"], out["failed"], out["skipped"], out["unreachable"]) == (5, 0, 0, 0)
    assert [o["node"] for o in out["nodes"]] == list(NODES)
    runs = five.runs_since(t0)
    assert all(len(v) == 1 and v[0]["status"] == "ok" for v in runs.values())
    flat = [v[0] for v in runs.values()]
    assert _max_overlap(flat) == 2  # two at once, never three
    starts = [runs[n][0]["started"] for n in NODES]
    assert starts[2] >= min(runs["r0"][0]["finished"], runs["r1"][0]["finished"])


def test_the_first_failure_stops_the_roll(five):
    five.modes(r0="sleep 1", r1="fail")
    code, out, _ = five.roll("--max-parallel", "2")
    assert code == 1
    got = {o["node"]: o["outcome"] for o in out["nodes"]}
    # r0 was already converging: it finishes; nothing new starts after r1 failed
    assert got == {"r0": "ok", "r1": "failed", "r2": "skipped", "r3": "skipped",
                   "r4": "skipped"}
    assert "exited 7" in out["nodes"][1]["error"]
    assert out["max_fail"] == 1 and (out["ok"], out["failed"], out["skipped"]) == (1, 1, 3)


def test_max_fail_k_then_plain_lines_without_a_terminal(five):
    five.modes(r1="fail", r3="fail")
    r = five.env.cli("run-chef", "r*", "--wait", "--max-parallel", "1", "--max-fail", "2")
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines if ": started" not in ln][:5] == list(NODES)
    assert lines[-1].startswith("rolling run: 2 ok, 2 failed, 1 skipped, 0 unreachable")
    assert "r4: skipped (not started: 2 failed (--max-fail 2))" in r.stdout
    assert "\x1b[" not in r.stdout  # no terminal, no escape codes


def test_max_fail_without_max_parallel_is_a_usage_error(five):
    r = five.env.cli("run-chef", "r*", "--max-fail", "2")
    assert r.returncode == 2 and "--max-parallel" in r.stderr


def test_roll_rules_without_io():
    roll = Roll(["c", "a", "b", "d"], max_parallel=2, max_fail=1)
    assert roll.next_to_start() == "a"
    roll.nodes["a"].outcome = "running"
    assert roll.next_to_start() == "b"
    roll.nodes["b"].outcome = "unreachable"  # not a failed converge: the roll goes on
    assert roll.next_to_start() == "c"
    roll.nodes["c"].outcome = "running"
    assert roll.next_to_start() is None  # two running
    roll.nodes["c"].outcome = "failed"
    assert roll.stopping and roll.next_to_start() is None
    assert roll.skip_the_rest() == ["d"] and not roll.done
    roll.nodes["a"].outcome = "ok"
    assert roll.done and roll.exit_code() == 1
    only_gone = Roll(["x"], 1, 1)
    only_gone.nodes["x"].outcome = "unreachable"
    assert only_gone.exit_code() == 3


def _scripted(fates: dict[str, str]):
    """Calls of a flock whose nodes' runs end as `fates` says ("ok", "failed") or whose
    calls fail with that error code; the calls made, in order."""
    from flock_node.transport import RpcError

    calls: list[tuple[str, str]] = []

    async def call(n: str, method: str, args: dict, timeout: float):
        calls.append((n, method))
        if fates[n] not in ("ok", "failed"):
            raise RpcError(fates[n], f"{n} is away")
        if method == "run_chef":
            return {"run_id": f"r-{n}"}
        return {"status": fates[n], "updated": 1, "duration": 0.1, "error": None}

    return call, calls


def test_the_cli_and_the_console_roll_with_one_driver():
    """One core drives both rolls (issue 9): blocking calls one by one (the CLI), or a step's
    calls together on a loop (the console); the same outcomes, and a stop by the operator."""
    import asyncio

    from flock_node.blocking import run_now
    from flock_node.cli.rolling import Driver
    from flock_tui.roll import STOPPED, RollDriver

    fates = {"a": "ok", "b": "unreachable", "c": "failed", "d": "ok"}

    async def pause(seconds: float) -> None:
        pass

    outcomes = []
    for at_once in (False, True):
        call, calls = _scripted(fates)
        roll = Roll(list(fates), max_parallel=2, max_fail=1)
        driver = Driver(call, roll, lambda o: None, pause=pause, at_once=at_once)
        run_now(driver.drive()) if not at_once else asyncio.run(driver.drive())
        outcomes.append({n: o.outcome for n, o in roll.nodes.items()})
        assert ("d", "run_chef") not in calls  # c failed: the roll stopped before d
    assert outcomes[0] == outcomes[1] == {"a": "ok", "b": "unreachable", "c": "failed",
                                          "d": "skipped"}

    class Flock:  # AsyncFlock's `call`, as the console's driver uses it
        def __init__(self) -> None:
            self.call_, self.calls = _scripted(fates)

        async def call(self, n, actor, method, args, timeout):
            assert actor == "flock_api"
            return await self.call_(n, method, args, timeout)

    roll = Roll(list(fates), max_parallel=1, max_fail=2)
    flock = Flock()
    asyncio.run(RollDriver(flock, roll, lambda o: None, lambda: bool(flock.calls)).drive())
    assert flock.calls == [("a", "run_chef"), ("a", "run")]  # stopped: a finishes, no more
    assert roll.nodes["b"].outcome == "skipped" and roll.nodes["b"].error == STOPPED


def test_a_terminal_gets_a_progress_bar(five):
    """On a terminal: a rich progress bar while nodes converge, a line per node as it ends,
    then the summary with every node's outcome."""
    five.modes(**{n: "sleep 0.3" for n in NODES})
    code, screen = on_a_terminal(["run-chef", "r*", "--wait", "--max-parallel", "3"],
                                 five.env.env)
    assert code == 0
    assert "converging r0" in screen and "/5" in screen  # the bar: who converges, m of n
    assert "rolling run: 5 ok, 0 failed, 0 skipped, 0 unreachable" in screen
    for n in NODES:
        assert f"{n}: ok in" in screen


def test_rich_comes_without_textual():
    import subprocess
    import sys

    code = ("import sys, flock_node.cli.rolling, rich.progress\n"
            "print(any(m == 'textual' or m.startswith('textual.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_a_macro_step_can_roll(five):
    five.modes(r2="fail")
    (five.env.config_dir / "console.toml").write_text(
        '[[macros]]\nname = "roll"\nkey = "x"\n'
        'steps = ["run-chef r* --max-parallel 2 --wait", "active r0"]\n')
    r = five.env.cli("--json", "macro", "roll")
    assert r.returncode == 1 and "stopped at step 1/2" in r.stderr
    (doc,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert doc["failed"] == 1 and doc["nodes"][2]["outcome"] == "failed"


def test_a_node_killed_mid_roll_is_unreachable_and_the_roll_goes_on(five):
    """Last in this module: it kills r2 (and starts it again for good measure)."""
    import subprocess
    import sys

    five.modes(r2="sleep 30")
    proc = subprocess.Popen([sys.executable, "-m", "flock_tui.main", "--json", "run-chef", "r*",
                             "--wait", "--max-parallel", "2", "--timeout", "4"],
                            env=five.env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        with five.env.flock() as f:
            wait_for(lambda: f["r2"].flock_api.active(), 15, what="r2 converging")
        five.env.nodes["r2"].kill9()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    got = {o["node"]: o["outcome"] for o in json.loads(out)["nodes"]}
    assert got == {"r0": "ok", "r1": "ok", "r2": "unreachable", "r3": "ok", "r4": "ok"}
    five.modes()
    five.env.restart("r2", recipes=[five.env.root / "r2.py"])


def _cli_roll(env: FlockEnv):
    """`flockctl --json run-chef q* --max-parallel 2 --wait` in the background; its summary."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "flock_tui.main", "--json", "run-chef", "q*",
                             "--wait", "--max-parallel", "2", "--max-fail", "2", "--timeout",
                             "30"], env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)

    def result() -> tuple[int, list[dict]]:
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert out, err
        return proc.returncode, json.loads(out)["nodes"]

    return result


def _console_roll(env: FlockEnv):
    """The console's RollDriver (the same Roll, over AsyncFlock) on a thread of its own."""
    import asyncio
    import threading
    from dataclasses import asdict

    from flock_node.client import AsyncFlock
    from flock_tui.roll import RollDriver

    got: list[Roll] = []

    async def go() -> None:
        flock = await AsyncFlock.connect(runtime_dir=env.runtime_dir)
        try:
            got.append(await RollDriver(flock, Roll(["q0", "q1"], 2, 2, 30.0),
                                        lambda o: None).drive())
        finally:
            flock.close()

    t = threading.Thread(target=asyncio.run, args=(go(),), daemon=True)
    t.start()

    def result() -> tuple[int, list[dict]]:
        t.join(60)
        assert got, "the console's roll did not end"
        return got[0].exit_code(), [asdict(o) for o in got[0].nodes.values()]

    return result


@pytest.mark.parametrize(("how", "roller"), [("kill -9", _cli_roll), ("SIGTERM", _cli_roll),
                                             ("kill -9", _console_roll),
                                             ("kill -9 mid-run", _cli_roll)])
def test_a_node_restarted_mid_roll_ends_failed_at_once(flock_env, how, roller):
    """q0's run waits behind a converge when q0 is killed (or stopped) and started again: the
    new process never heard of that run. The roll (the CLI's, the console's) says so and goes
    on instead of waiting for --timeout. Killed mid-run, the run is recorded interrupted."""
    import signal
    import time

    env = flock_env
    gate = env.root / "gate"
    env.start_moded(("q0", "q1"), RECIPE)
    (env.root / "q0.mode").write_text(f"gate {gate}")
    with env.flock() as f:
        mid_run = how.endswith("mid-run")
        if not mid_run:
            f["q0"].flock_api.run_chef()  # converging until the gate opens
            wait_for(lambda: f["q0"].flock_api.status()["current_run"], 10,
                     what="q0 converging")
        result = roller(env)
        wait_for(lambda: f["q0"].flock_api.status()["current_run" if mid_run else "queued"],
                 15, what="the roll's run on q0")
    q0 = env.nodes["q0"].proc
    q0.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    gate.touch()  # SIGTERM: the converge in progress ends, the queued run is dropped
    q0.wait(15)
    (env.root / "q0.mode").write_text("ok")
    env.restart("q0", recipes=[env.root / "q0.py"])
    t0 = time.monotonic()
    code, outcomes = result()
    took = time.monotonic() - t0
    print(f"{how}: the roll ended {took:.2f}s after q0 was back")
    nodes = {o["node"]: o for o in outcomes}
    assert code == 1, nodes
    assert nodes["q1"]["outcome"] == "ok" and nodes["q0"]["outcome"] == "failed", nodes
    if mid_run:
        assert "interrupted" in nodes["q0"]["error"], nodes
    else:
        assert "restarted" in nodes["q0"]["error"] and "run it again" in nodes["q0"]["error"]
    assert took < 10, f"the roll took {took:.1f}s after q0 came back"


def test_roll_tells_a_queued_run_from_one_a_restart_lost():
    roll = Roll(["a", "b"], max_parallel=2, max_fail=2, timeout=60)
    roll.started("a", 0.0, "run-a")
    roll.started("b", 0.0, "run-b")
    queued = {"queued": ["run-a"], "current_run": {"id": "other"}}
    assert not roll.polled("a", 1.0, None, status=queued)  # waits behind another run
    assert not roll.polled("a", 1.1, None, status={"queued": [], "current_run": {"id": "run-a"}})
    gone = {"queued": [], "current_run": None}  # a new process: it never heard of run-a
    assert not roll.polled("a", 1.2, None, status=gone)  # it may have just ended: look again
    assert roll.polled("a", 1.3, {"status": "ok", "updated": 1, "duration": 0.2})
    assert roll.nodes["a"].outcome == "ok"  # it had: recorded at the next poll
    assert not roll.polled("b", 1.0, None, status=gone)
    assert not roll.polled("b", 1.1, None)  # status unanswered: two in a row must say gone
    assert not roll.polled("b", 1.2, None, status=gone)
    assert roll.polled("b", 1.3, None, status=gone)
    o = roll.nodes["b"]
    assert o.outcome == "failed" and o.error == ("run run-b is gone: b restarted before it "
                                                 "started; run it again")
    assert roll.done and roll.exit_code() == 1
