"""`flockctl config schema`: the JSON schema of console.toml, generated from the msgspec types
that validate it, so the two cannot drift. Editors that read TOML with a schema (Taplo, Even
Better TOML) take it from a `#:schema ./console.schema.json` first line."""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec

from flock_tui.macros import ConsoleConfig


def console_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of console.toml."""
    schema = msgspec.json.schema(ConsoleConfig)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "flockctl console.toml", **schema}


def run_config(args: argparse.Namespace) -> int:
    """`flockctl config schema`: print the schema (it is JSON with or without --json)."""
    print(json.dumps(console_schema(), indent=2))
    return 0
