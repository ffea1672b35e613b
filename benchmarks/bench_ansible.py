"""What an `ansible` resource costs next to an `execute` making the same change.

    .venv/bin/python benchmarks/bench_ansible.py [--resources 20] [--repeat 5]

Each converge brings N small files to their content, once with `ansible.builtin.copy`
resources and once with `execute` resources (`cp`, guarded by `cmp -s`, the hand-written way),
both unchanged (the files are right) and changed (each file was tampered with before the
converge). Printed: milliseconds per resource (best of --repeat, the cost of an empty converge
subtracted), the start of the run's Ansible worker (paid once per converge that has an
`ansible` resource), and for scale one `ansible localhost -m copy` process (what a resource
would cost if each started Ansible itself) and a one-task `playbook`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flock_node.engine import Engine, RunContext
from flock_node.store import Store

ANSIBLE = """
from flock_node.dsl import ansible
for i in range({n}):
    ansible(f"f{{i}}", module="ansible.builtin.copy",
            args={{"content": f"content of file {{i}}\\n", "dest": {d!r} + f"/a{{i}}"}})
"""
EXECUTE = """
from flock_node.dsl import execute
for i in range({n}):
    src, dst = {d!r} + f"/src{{i}}", {d!r} + f"/e{{i}}"
    execute(f"f{{i}}", command=f"cp {{src}} {{dst}}", not_if=f"cmp -s {{src}} {{dst}}")
"""
EMPTY = "from flock_node.dsl import log\n"


class Bench:
    def __init__(self, root: Path, n: int):
        self.root, self.n, self.run = root, n, 0
        self.files = root / "files"
        self.files.mkdir()
        for i in range(n):
            (self.files / f"src{i}").write_text(f"content of file {i}\n")

    def engine(self, name: str, text: str) -> Engine:
        recipe = self.root / f"{name}.py"
        recipe.write_text(text.format(n=self.n, d=str(self.files)))
        store = Store(self.root / name / "flock.db", node="bench")
        return Engine("bench", [recipe], store)

    def converge(self, eng: Engine, tamper: str | None = None) -> float:
        if tamper:
            for i in range(self.n):
                (self.files / f"{tamper}{i}").write_text("tampered\n")
        self.run += 1
        t0 = time.perf_counter()
        r = eng.converge(RunContext(run_id=f"r{self.run}"))
        dt = time.perf_counter() - t0
        if r["status"] != "ok":
            raise SystemExit(f"converge failed: {r['error']}")
        return dt


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    return min(fn() for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resources", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    n = a.resources
    with tempfile.TemporaryDirectory(prefix="flock-bench-ansible-") as tmp:
        b = Bench(Path(tmp), n)
        empty = b.engine("empty", EMPTY)
        ans = b.engine("ansible", ANSIBLE)
        exe = b.engine("execute", EXECUTE)
        b.converge(ans)
        b.converge(exe)
        base = best(lambda: b.converge(empty), a.repeat)
        one = b.engine("one", ANSIBLE.replace("range({n})", "range(1)"))
        b.converge(one)
        one_s = best(lambda: b.converge(one), a.repeat)
        worker = one_s - base
        # Past the first module, what one more costs: the worker is already up.
        per = {
            "ansible unchanged": (best(lambda: b.converge(ans), a.repeat) - one_s) / (n - 1),
            "ansible changed": (best(lambda: b.converge(ans, "a"), a.repeat) - one_s) / (n - 1),
            "execute unchanged": (best(lambda: b.converge(exe), a.repeat) - base) / n,
            "execute changed": (best(lambda: b.converge(exe, "e"), a.repeat) - base) / n,
        }
        dest = b.files / "adhoc"
        adhoc = [sys.executable, "-m", "ansible.cli.adhoc", "localhost", "-c", "local",
                 "-m", "ansible.builtin.copy", "-a", f"content=x dest={dest}"]
        env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="0",
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                   ANSIBLE_LOCAL_TEMP=str(b.files / "lt"), ANSIBLE_REMOTE_TEMP=str(b.files / "rt"))

        def run_adhoc() -> float:
            t0 = time.perf_counter()
            subprocess.run(adhoc, env=env, check=True, capture_output=True)
            return time.perf_counter() - t0

        adhoc_s = best(run_adhoc, min(a.repeat, 3))
        pb = b.files / "one.yml"
        pb.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                      f"    - ansible.builtin.copy: {{content: x, dest: {shlex.quote(str(dest))}}}\n")
        play = b.engine("play", f"from flock_node.dsl import playbook\nplaybook('p', path={str(pb)!r})\n")
        b.converge(play)
        play_s = best(lambda: b.converge(play), min(a.repeat, 3)) - base
    print(f"{n} resources per converge, best of {a.repeat}; empty converge {base * 1000:.1f} ms")
    for k, v in per.items():
        print(f"  {k:<20} {v * 1000:7.1f} ms per resource")
    print(f"  ansible / execute: unchanged {per['ansible unchanged'] / per['execute unchanged']:.2f}x,"
          f" changed {per['ansible changed'] / per['execute changed']:.2f}x")
    print(f"  worker start + first module (once per converge) {worker * 1000:7.1f} ms")
    print(f"  for scale: one `ansible localhost -m copy` process {adhoc_s * 1000:7.1f} ms;"
          f" a one-task playbook resource {play_s * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
