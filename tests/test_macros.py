"""console.toml: validation errors name file, line and field; `flockctl macro NAME` headless."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flock_tui.app import builtin_keys
from flock_tui.macros import ConfigError, StepError, expand, load_config, parse_step
from flock_tui.main import main


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "console.toml"
    p.write_text(text)
    return p


GOOD = """\
[[macros]]
name = "probe"
key = "x"
description = "is bender0 busy"
steps = ["active {node}"]

[[macros]]
name = "all"
key = "ctrl+d"
steps = ["nodes", "run-chef {marked} --wait"]
confirm = true
"""


def test_good_config(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), builtin_keys())
    assert [m.name for m in cfg.macros] == ["probe", "all"]
    assert cfg.macros[1].confirm and cfg.macros[1].binding_id == "macro.all"
    assert not cfg.macros[0].changes_things and cfg.macros[1].changes_things


def test_missing_file_is_empty(tmp_path):
    assert load_config(tmp_path / "nope.toml").macros == []


@pytest.mark.parametrize("text, line, needle", [
    ("[[macros]]\nname = \"a\"\nkey = \"x\nsteps = []\n", 3, "invalid TOML"),
    (GOOD + "\n[[macros]]\nname = \"c\"\nkey = \"y\"\nsteps = [\"nodes\"]\ncolour = 1\n", 17,
     "field `colour`"),
    (GOOD + "\n[[macros]]\nname = \"c\"\nkey = 5\nsteps = [\"nodes\"]\n", 15, "field `key`"),
    (GOOD + "\n[[macros]]\nname = \"c\"\nkey = \"q\"\nsteps = [\"nodes\"]\n", 15,
     "built-in console binding"),
    (GOOD + "\n[[macros]]\nname = \"c\"\nkey = \"y\"\nsteps = [\"frobnicate x\"]\n", 16,
     "field `steps`"),
    (GOOD + "\n[[macros]]\nname = \"c\"\nkey = \"x\"\nsteps = [\"nodes\"]\n", 15,
     "already bound"),
    (GOOD + "\n[[macros]]\nname = \"c\"\nkey = \"y\"\n", 13, "field `steps`"),
])
def test_errors_name_file_line_field(tmp_path, text, line, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, builtin_keys())
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}"), msg
    assert needle in msg, msg


def test_override_allows_builtin_key(tmp_path):
    p = write(tmp_path, '[[macros]]\nname = "r2"\nkey = "r"\nsteps = ["nodes"]\noverride = true\n')
    assert load_config(p, builtin_keys()).macros[0].override


def test_expand_and_parse():
    assert expand(["run-chef {node}", "active {marked}"], "b0", ["b1", "b 2"]) == [
        "run-chef b0", "active b1", "active 'b 2'"]
    with pytest.raises(StepError):
        expand(["active {node}"], None, [])
    assert parse_step("wait-until web-* idle --timeout 5", ["--insecure"]).timeout == 5
    with pytest.raises(StepError):
        parse_step("wait-until web-* sleepy")
    with pytest.raises(StepError):
        parse_step("macro x")


def test_headless_bad_config_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(tmp_path))
    write(tmp_path, "[[macros]]\nname = \"x\"\nkey = \"x\"\nsteps = [\"nodes\"]\nbogus = 1\n")
    assert main(["macro", "x"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'console.toml'}:5" in err and "bogus" in err
    assert "Traceback" not in err


def test_headless_unknown_macro_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(tmp_path))
    write(tmp_path, GOOD)
    assert main(["macro", "nope"]) == 2
    assert "known: probe, all" in capsys.readouterr().err


def test_headless_runs_steps_like_the_commands(flock_env, monkeypatch, capsys):
    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(flock_env.config_dir))
    monkeypatch.setenv("FLOCK_RUNTIME_DIR", str(flock_env.runtime_dir))
    (flock_env.config_dir / "console.toml").write_text(
        '[[macros]]\nname = "probe"\nkey = "x"\nsteps = ["active {node}", "active nobody", '
        '"active {node}"]\n')
    flock_env.start("n1", "--insecure")
    code = main(["--insecure", "macro", "probe", "--node", "n1"])
    out = capsys.readouterr()
    # Each step announced, then its output; stopped at the failing step: no third step.
    assert out.out == ("▶ step 1/3: flockctl active n1\nfalse\n"
                       "▶ step 2/3: flockctl active nobody\n")
    assert code == 3
    assert "stopped at step 2/3" in out.err
    # With --json, each step's document is one line: the output is JSON Lines.
    (flock_env.config_dir / "console.toml").write_text(
        '[[macros]]\nname = "probe"\nkey = "x"\nsteps = ["status {node}", "active {node}"]\n')
    assert main(["--insecure", "--json", "macro", "probe", "--node", "n1"]) == 0
    out = capsys.readouterr()
    docs = [json.loads(line) for line in out.out.splitlines()]
    assert docs[0]["name"] == "n1" and docs[1] is False
    assert "▶ step 2/2: flockctl active n1" in out.err  # headers keep stdout JSON Lines


def test_an_unknown_keymap_binding_id_is_reported(tmp_path, monkeypatch):
    import argparse

    from flock_tui.app import FlockApp

    monkeypatch.setenv("FLOCK_CONFIG_DIR", str(tmp_path))
    (tmp_path / "console.toml").write_text('[keymap]\n"flock.run_chef" = "R"\n'
                                           '"flock.run_chf" = "X"\n')
    args = argparse.Namespace(seed=[], runtime_dir=str(tmp_path / "run"), key_file=None,
                              insecure=True, json=False, connect_timeout=1.0, read_only=False)
    app = FlockApp(args, connect=False)
    assert app.config_error is not None
    assert f"{tmp_path / 'console.toml'}:3: keymap: unknown binding id 'flock.run_chf'" in (
        app.config_error)
    (tmp_path / "console.toml").write_text('[keymap]\n"flock.run_chef" = "R"\n')
    assert FlockApp(args, connect=False).config_error is None


def test_config_schema_is_generated_from_the_types(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    macro = schema["$defs"]["Macro"]
    assert set(macro["required"]) == {"name", "key", "steps"}
    assert macro["additionalProperties"] is False  # unknown fields are errors, as in load_config
    assert "{marked}" in macro["properties"]["steps"]["description"]
    top = schema["$defs"]["ConsoleConfig"]["properties"]
    assert set(top) == {"macros", "keymap"}
    # The example in the module docstring fits it.
    import tomllib

    import flock_tui.macros as m
    example = tomllib.loads("\n".join(
        line[4:] for line in m.__doc__.splitlines() if line.startswith("    ")))
    assert set(example["macros"][0]) <= set(macro["properties"])
