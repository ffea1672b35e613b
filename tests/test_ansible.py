"""Ansible modules and playbooks as resources: real modules, real playbooks, only temporary
directories touched."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgspec
import pytest

from flock_node.engine import Engine, RunContext
from flock_node.engine.ansible_resources import fired_selectors
from flock_node.engine.ansible_session import keep_result, mask_args
from flock_node.store import Store
from tests.conftest import wait_for, write_recipe

_runs = iter(range(1, 1_000_000))


class Env:
    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.store = Store(tmp_path / "state" / "flock.db", node="bender0")
        self.recipe = tmp_path / "recipe.py"

    def write(self, body: str) -> None:
        head = f"from flock_node.dsl import *\nD = {str(self.dir)!r}\n"
        self.recipe.write_text(head + textwrap.dedent(body))

    def converge(self, body: str | None = None, **kw):
        if body is not None:
            self.write(body)
        eng = Engine("bender0", [self.recipe], self.store)
        c = RunContext(run_id=f"run-{next(_runs)}", **kw)
        r = eng.converge(c)
        return r, msgspec.to_builtins(self.store.runs.get(c.run_id))


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.store.close()


def rows(run):
    return {r["resource"]: r for r in run["resources"]}


def test_file_modules_change_then_settle(env):
    """copy (content and src), template, lineinfile, file (mode, owner/group, link): the first
    converge updates each, the second updates none; one worker serves the whole run."""
    (env.dir / "src.txt").write_text("from a file\n")
    (env.dir / "conf.j2").write_text("port={{ port }}\n{% for n in names %}{{ n | upper }}\n"
                                     "{% endfor %}")
    (env.dir / "hosts").write_text("127.0.0.1 localhost\n")
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    env.write(f"""
        ansible("motd", module="ansible.builtin.copy",
                args={{"content": "hello\\n", "dest": D + "/motd", "mode": "0640"}})
        ansible("copy src", module="copy", args={{"src": D + "/src.txt", "dest": D + "/copied"}})
        ansible("conf", module="ansible.builtin.template",
                args={{"src": D + "/conf.j2", "dest": D + "/app.conf"}},
                vars={{"port": 8080, "names": ["a", "b"]}})
        ansible("hosts line", module="ansible.builtin.lineinfile",
                args={{"path": D + "/hosts", "line": "10.0.0.2 db"}})
        ansible("owner", module="ansible.builtin.file",
                args={{"path": D + "/copied", "owner": {user!r}, "group": {group!r},
                       "mode": "0600"}})
        ansible("link", module="ansible.builtin.file",
                args={{"src": D + "/app.conf", "dest": D + "/current", "state": "link"}})
    """)
    r1, run1 = env.converge()
    assert r1["status"] == "ok", run1
    assert r1["updated"] == 6, [(x["resource"], x["result"], x["output"]) for x in run1["resources"]]
    assert (env.dir / "motd").read_text() == "hello\n"
    assert stat.S_IMODE(os.stat(env.dir / "motd").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(env.dir / "copied").st_mode) == 0o600
    assert (env.dir / "copied").read_text() == "from a file\n"
    assert (env.dir / "src.txt").exists()  # the recipe's source stays where it is
    assert (env.dir / "app.conf").read_text() == "port=8080\nA\nB\n"
    assert (env.dir / "hosts").read_text() == "127.0.0.1 localhost\n10.0.0.2 db\n"
    assert os.readlink(env.dir / "current") == str(env.dir / "app.conf")
    motd = rows(run1)["ansible[motd]"]["output"]
    assert motd.startswith("ansible.builtin.copy: changed") and '"changed": true' in motd
    r2, run2 = env.converge()
    assert r2["status"] == "ok" and r2["updated"] == 0, [
        (x["resource"], x["result"], x["output"]) for x in run2["resources"]]
    assert {x["result"] for x in run2["resources"]} == {"up_to_date"}
    # the template changes when its variables do
    env.write((env.recipe.read_text().split("\n", 2)[2]).replace("8080", "9090"))
    r3, run3 = env.converge()
    assert r3["updated"] == 1 and (env.dir / "app.conf").read_text().startswith("port=9090")


def test_check_mode_changes_nothing_and_reports_the_diff(env):
    (env.dir / "conf").write_text("a=1\n")
    r, run = env.converge("""
        ansible("conf", module="ansible.builtin.copy", check=True,
                args={"content": "a=2\\n", "dest": D + "/conf"})
        ansible("new", module="ansible.builtin.file", check=True,
                args={"path": D + "/new", "state": "directory"})
        ansible("bash", module="ansible.builtin.package", args={"name": "bash"}, check=True)
        execute("after", command="true", action="nothing")
    """)
    assert r["status"] == "ok" and r["updated"] == 0
    assert (env.dir / "conf").read_text() == "a=1\n" and not (env.dir / "new").exists()
    out = rows(run)["ansible[conf]"]["output"]
    assert out.startswith("ansible.builtin.copy: would change")
    assert "a=1" in out and "a=2" in out  # the diff: before and after
    assert rows(run)["ansible[new]"]["output"].startswith("ansible.builtin.file: would change")
    # package: the node's own manager (apt here), respawned under the system Python
    assert rows(run)["ansible[bash]"]["output"].startswith(
        "ansible.builtin.package: would not change")


def test_failing_module_fails_the_resource_with_its_message(env):
    r, run = env.converge("""
        ansible("bad", module="ansible.builtin.copy",
                args={"src": D + "/missing", "dest": D + "/x"}, retries=1, retry_delay=0)
        ansible("never", module="ansible.builtin.file", args={"path": D + "/n", "state": "touch"})
    """)
    assert r["status"] == "failed"
    row = rows(run)["ansible[bad]"]
    assert row["result"] == "failed"
    assert "ansible.builtin.copy failed:" in row["error"] and "not found" in row["error"]
    assert "(after 2 attempts)" in row["error"]
    assert "ansible[never]" not in rows(run) and not (env.dir / "n").exists()
    r, run = env.converge("""
        ansible("nope", module="ansible.builtin.no_such_module", args={})
        ansible("badarg", module="ansible.builtin.file", args={"path": D, "bogus": 1},
                ignore_failure=True)
    """)
    assert "no such module" in rows(run)["ansible[nope]"]["error"]
    r, run = env.converge("""
        ansible("dbg", module="ansible.builtin.debug", args={"msg": "x"})
    """)
    assert "an action of Ansible's controller" in rows(run)["ansible[dbg]"]["error"]


def test_guards_and_notifications_work_as_for_any_type(env):
    r, run = env.converge("""
        ansible("skipped", module="ansible.builtin.file", not_if="true",
                args={"path": D + "/s", "state": "touch"})
        ansible("conf", module="ansible.builtin.copy", args={"content": "x", "dest": D + "/c"}
                ).notifies("run", "execute[reload]", "immediately")
        execute("reload", command="echo reloaded >> " + D + "/reloads", action="nothing")
    """)
    assert r["status"] == "ok"
    assert rows(run)["ansible[skipped]"]["result"] == "skipped"
    assert (env.dir / "reloads").read_text() == "reloaded\n"
    env.converge()
    assert (env.dir / "reloads").read_text() == "reloaded\n"  # unchanged: no notification


def test_no_log_and_secret_arguments_are_never_kept(env):
    r, run = env.converge("""
        ansible("secret", module="ansible.builtin.copy", no_log=True,
                args={"content": "s3cr3t-value\\n", "dest": D + "/secret", "mode": "0600"})
        ansible("token", module="ansible.builtin.lineinfile",
                args={"path": D + "/t", "line": "x", "create": True, "api_token": "tok-123"},
                ignore_failure=True)
    """)
    assert (env.dir / "secret").read_text() == "s3cr3t-value\n"
    out = rows(run)["ansible[secret]"]["output"]
    assert "s3cr3t" not in out and "hidden due to no_log" in out
    props = {r.id: r.properties for r in env.store.resources.all()}
    dumped = json.dumps(props)
    assert "s3cr3t" not in dumped and "tok-123" not in dumped
    assert props["ansible[token]"]["args"]["api_token"] == "********"
    assert "tok-123" not in json.dumps(run)


def test_result_kept_is_bounded_and_without_invocation():
    big = {"changed": True, "invocation": {"module_args": {"x": 1}}, "stdout": "y" * 100_000}
    assert "invocation" not in keep_result(big, False)
    assert keep_result({"changed": True, "msg": "pw"}, True) == {
        "changed": True, "censored": "the output has been hidden due to no_log: true"}
    assert mask_args({"user": "a", "password": "p", "nested": {"db_pass": "q"}}) == {
        "user": "a", "password": "********", "nested": {"db_pass": "********"}}


def test_playbook_task_notifications_fire_only_for_the_changed_task(env):
    marker = env.dir / "changed-by-b"
    pb = env.dir / "site.yml"
    pb.write_text(textwrap.dedent(f"""
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: task a
              ansible.builtin.file: {{path: "{env.dir}", state: directory}}
              tags: [a]
            - name: task b
              ansible.builtin.copy: {{content: "{{{{ greeting }}}}\\n", dest: "{marker}"}}
              tags: [b]
            - name: task c
              ansible.builtin.command: /bin/true
              changed_when: false
              tags: [c]
    """))
    body = f"""
        p = playbook("site", path={str(pb)!r}, extra_vars={{"greeting": "hi"}})
        p.on_task("task a").notifies("run", "execute[a]")
        p.on_task("task b").notifies("run", "execute[b]")
        p.on_task(tag="b").notifies("run", "execute[tag b]")
        p.on_task("task c").notifies("run", "execute[c]")
        for n in ("a", "b", "tag b", "c"):
            execute(n, command="echo " + n.replace(" ", "_") + " >> " + D + "/fired",
                    action="nothing")
    """
    r, run = env.converge(body)
    assert r["status"] == "ok", run
    assert marker.read_text() == "hi\n"
    assert (env.dir / "fired").read_text().split() == ["b", "tag_b"]
    out = rows(run)["playbook[site]"]["output"]
    assert "ok: task a" in out and "changed: task b" in out and "ok: task c" in out
    r, run = env.converge()
    assert rows(run)["playbook[site]"]["result"] == "up_to_date"
    assert (env.dir / "fired").read_text().split() == ["b", "tag_b"]
    assert fired_selectors([{"status": "changed", "task": "x", "tags": ["t"]},
                            {"status": "ok", "task": "y", "tags": ["u"]}]) == {"task=x", "tag=t"}


def test_playbook_tags_check_mode_and_failure(env):
    pb = env.dir / "p.yml"
    pb.write_text(textwrap.dedent(f"""
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: one
              ansible.builtin.copy: {{content: "1", dest: "{env.dir}/one"}}
              tags: [one]
            - name: two
              ansible.builtin.copy: {{content: "2", dest: "{env.dir}/two"}}
              tags: [two]
            - name: boom
              ansible.builtin.fail: {{msg: "the boom task failed"}}
              tags: [boom]
    """))
    r, run = env.converge(f"""
        playbook("check", path={str(pb)!r}, tags=["one"], check=True)
        playbook("boom", path={str(pb)!r}, tags=["two", "boom"])
    """)
    assert not (env.dir / "one").exists() and (env.dir / "two").read_text() == "2"
    got = rows(run)
    assert got["playbook[check]"]["result"] == "up_to_date"
    assert "changed: one" in got["playbook[check]"]["output"]
    boom = got["playbook[boom]"]
    assert boom["result"] == "failed"
    assert "task 'boom' failed: the boom task failed" in boom["error"]
    assert "changed: two" in boom["output"] and "one" not in boom["output"].split()


def test_a_module_past_its_timeout_is_killed_and_the_next_one_runs(env):
    t0 = time.monotonic()
    r, run = env.converge("""
        ansible("slow", module="ansible.builtin.command", args={"cmd": "sleep 30"},
                timeout=1, ignore_failure=True)
        ansible("after", module="ansible.builtin.file", args={"path": D + "/a", "state": "touch"})
    """)
    assert time.monotonic() - t0 < 15
    got = rows(run)
    assert "timed out after 1 s" in got["ansible[slow]"]["error"]
    assert got["ansible[after]"]["result"] == "updated"


def test_without_ansible_a_recipe_fails_to_compile_naming_the_extra(tmp_path):
    recipe = write_recipe(tmp_path / "r.py", textwrap.dedent("""
        from flock_node.dsl import ansible
        ansible("x", module="ansible.builtin.ping")
    """))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["ansible"] = None  # as on a node without the extra
        from flock_node.engine import Engine, RunContext
        from flock_node.store import Store
        store = Store({str(tmp_path / "db")!r} + "/flock.db", node="n")
        r = Engine("n", [{str(recipe)!r}], store).converge(RunContext(run_id="r1"))
        print(r["error"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert f"{recipe}:3: ansible[x]: ansible-core is not installed on this node " \
           "(pip install 'flock-of-chefs[ansible]')" in out.stdout, out.stdout


def test_a_changed_module_notifies_another_node(flock_env):
    """A changed module's remote notification runs a playbook with its tags on another real
    agent; a playbook's on_task remote notification fires for its changed task only; the
    unchanged second converge sends nothing."""
    d = flock_env.root
    reload_yml = d / "reload.yml"
    reload_yml.write_text(textwrap.dedent(f"""
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: reload
              ansible.builtin.shell: echo reloaded >> {d}/web-reloads
              tags: [reload]
            - name: install
              ansible.builtin.shell: echo installed >> {d}/web-installs
              tags: [install]
    """))
    db_yml = d / "db.yml"
    db_yml.write_text(textwrap.dedent(f"""
        - hosts: localhost
          gather_facts: false
          tasks:
            - name: schema
              ansible.builtin.copy: {{content: "v1", dest: "{d}/schema"}}
            - name: users
              ansible.builtin.command: /bin/true
              changed_when: false
    """))
    web = write_recipe(d / "web.py", textwrap.dedent(f"""
        from flock_node.dsl import *
        playbook("reload", path={str(reload_yml)!r}, tags=["reload"], action="nothing")
        execute("migrate", command="echo migrated >> {d}/migrations", action="nothing")
        execute("users", command="echo users >> {d}/users", action="nothing")
    """))
    db = write_recipe(d / "db.py", textwrap.dedent(f"""
        from flock_node.dsl import *
        ansible("db conf", module="ansible.builtin.lineinfile",
                args={{"path": "{d}/db.conf", "line": "max_connections=100", "create": True}}
                ).remote_notifies("run", "playbook[reload]", node="web")
        p = playbook("db", path={str(db_yml)!r})
        p.on_task("schema").remote_notifies("run", "execute[migrate]", node="web")
        p.on_task("users").remote_notifies("run", "execute[users]", node="web")
    """))
    flock_env.start("web", recipes=[web], heartbeat=0.2)
    flock_env.start("db", recipes=[db], heartbeat=0.2)
    f = flock_env.flock()

    def converge(node: str) -> dict:
        rid = f[node].flock_api.run_chef()["run_id"]
        return wait_for(lambda: (r := f[node].flock_api.run(rid)) and r["status"] != "running"
                        and r, 30, what=f"converge on {node}")

    wait_for(lambda: {m["name"] for m in f["db"].flock_api.members()
                      if m["state"] == "alive"} >= {"web"}, 20, what="db to see web")
    assert converge("web")["status"] == "ok"
    run = converge("db")
    assert run["status"] == "ok" and run["updated"] == 2, run
    wait_for(lambda: (d / "web-reloads").exists() and (d / "migrations").exists(), timeout=30,
             what="web reload and migration")
    assert (d / "db.conf").read_text() == "max_connections=100\n"
    assert converge("db")["updated"] == 0
    wait_for(lambda: f["db"].flock_api.status()["pending"] == 0, 10, what="db outbox empty")
    wait_for(lambda: not f["web"].flock_api.status()["active"], 10, what="web idle")
    assert (d / "web-reloads").read_text() == "reloaded\n"
    assert (d / "migrations").read_text() == "migrated\n"
    assert not (d / "web-installs").exists() and not (d / "users").exists()


def test_user_module_in_a_throwaway_mount_namespace(tmp_path):
    """ansible.builtin.user creates a user, then finds it there: inside `unshare --mount` over
    a copy of /etc and a tmpfs /home, so the host's users are never touched."""
    recipe = write_recipe(tmp_path / "r.py", textwrap.dedent("""
        from flock_node.dsl import ansible
        ansible("flocktest", module="ansible.builtin.user",
                args={"name": "flocktest", "shell": "/bin/sh", "password": "pw-s3cr3t"})
    """))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from flock_node.engine import Engine, RunContext
        from flock_node.store import Store
        store = Store({str(tmp_path / "db" / "flock.db")!r}, node="n")
        eng = Engine("n", [{str(recipe)!r}], store)
        out = []
        for i in range(2):
            eng.converge(RunContext(run_id=f"r{{i}}"))
            row = store.runs.get(f"r{{i}}").resources[0]
            out.append([row.result, row.output or "", row.error])
        out.append(open("/etc/passwd").read())
        print(json.dumps(out))
    """))
    shell = (f"cp -a /etc {tmp_path}/etc && mount --bind {tmp_path}/etc /etc && "
             f"mount -t tmpfs tmpfs /home && exec {sys.executable} {script}")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
                       capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr
    first, second, passwd = json.loads(r.stdout.splitlines()[-1])
    assert first[0] == "updated" and second[0] == "up_to_date", (first, second)
    assert "flocktest:x:" in passwd and "/bin/sh" in passwd
    assert "pw-s3cr3t" not in first[1] + second[1]
    with open("/etc/passwd") as f:
        assert "flocktest" not in f.read()


def _pids_running(marker: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.append(int(d))
            except OSError:
                pass
    return out


def test_the_stop_timeout_kills_a_running_module_and_its_children(env):
    """ctx.kill (the agent's stop timeout) kills the worker's group, the sleeping command of
    the module with it, and the resource fails INTERRUPTED; the run sees FLOCK_RUN_ID."""
    import threading

    c = RunContext(run_id="run-kill")
    env.write("""
        ansible("env", module="ansible.builtin.shell",
                args={"cmd": "echo $FLOCK_RUN_ID > " + D + "/run_id"})
        ansible("slow", module="ansible.builtin.command", args={"cmd": "sleep 123.4567"})
    """)
    eng = Engine("bender0", [env.recipe], env.store)
    done: list[dict] = []
    t = threading.Thread(target=lambda: done.append(eng.converge(c)))
    t.start()
    wait_for(lambda: _pids_running("sleep\0" + "123.4567"), 30, what="the module's sleep")
    c.kill.fire("INTERRUPTED: stop timeout ran out")
    t.join(15)
    assert done and done[0]["status"] == "failed" and "INTERRUPTED" in done[0]["error"]
    wait_for(lambda: not _pids_running("sleep\0" + "123.4567"), 5, what="sleep killed")
    assert (env.dir / "run_id").read_text().strip() == "run-kill"


def test_a_module_does_not_outlive_the_agent(tmp_path):
    """kill -9 of the process running the converge: the worker sees its stdin close and kills
    its group, the module's command included."""
    script = tmp_path / "agent.py"
    script.write_text(textwrap.dedent("""
        from flock_node.engine.ansible_session import run_module
        run_module({"module": "ansible.builtin.command", "args": {"cmd": "sleep 123.4568"}},
                   None)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).parent.parent)
    try:
        wait_for(lambda: _pids_running("sleep\0" + "123.4568"), 30, what="the module's sleep")
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not _pids_running("sleep\0" + "123.4568"), 5, what="sleep killed")


def test_a_restored_resource_runs_unless_its_secrets_were_masked(env):
    """With the recipe broken, a notification runs the persisted resource: fine for plain
    arguments; one whose secret-looking arguments were masked refuses, saying why."""
    env.converge("""
        ansible("plain", module="ansible.builtin.file", action="nothing",
                args={"path": D + "/plain", "state": "touch"})
        ansible("secret", module="ansible.builtin.lineinfile", action="nothing",
                args={"path": D + "/s", "line": "x", "create": True, "db_password": "pw"})
    """)
    env.recipe.write_text("this is not python")
    eng = Engine("bender0", [env.recipe], env.store)
    r = eng.run_action("ansible[plain]", "run", RunContext(run_id="react-1", kind="reaction"))
    assert r["status"] == "ok" and (env.dir / "plain").exists()
    r = eng.run_action("ansible[secret]", "run", RunContext(run_id="react-2", kind="reaction"))
    assert r["status"] == "failed" and "were not persisted (secret or no_log)" in r["error"]
    assert not (env.dir / "s").exists()


def test_why_run_asks_ansible_check_mode_and_changes_nothing(env):
    """Ansible's check mode is our why-run: a module that would change is planned as
    would_update with the module's own words, and nothing on the host moves."""
    (env.dir / "conf").write_text("a=1\n")
    env.write("""
        ansible("conf", module="ansible.builtin.copy",
                args={"content": "a=2\\n", "dest": D + "/conf"}).notifies("run", "execute[reload]")
        ansible("same", module="ansible.builtin.copy",
                args={"content": "a=1\\n", "dest": D + "/same"})
        execute("reload", command="touch " + D + "/reloaded", action="nothing")
    """)
    (env.dir / "same").write_text("a=1\n")
    eng = Engine("bender0", [env.recipe], env.store)
    plan = eng.why_run(RunContext(run_id="why-1"))
    by = {r["resource"]: r for r in plan["resources"]}
    assert by["ansible[conf]"]["result"] == "would_update"
    assert "would change" in by["ansible[conf]"]["why"]
    assert by["ansible[conf]"]["notifies"] == [
        {"action": "run", "target": "execute[reload]", "timing": "delayed"}]
    assert by["ansible[same]"]["result"] == "up_to_date"
    assert by["execute[reload]"]["result"] == "would_update"  # the notification's action
    assert (env.dir / "conf").read_text() == "a=1\n" and not (env.dir / "reloaded").exists()
    assert env.store.runs.get("why-1").kind == "why-run"
