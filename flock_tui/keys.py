"""The console's built-in key bindings, in one place the app and the macro loader share
(a macro may not take a built-in key unless it says `override = true`)."""

from __future__ import annotations

from textual.binding import Binding

# Built-in bindings of the flock table. Ids let console.toml's [keymap] remap them.
BUILTIN_BINDINGS: list[Binding] = [
    Binding("r", "run_chef", "Run chef", id="flock.run_chef"),
    Binding("n", "notify_node", "Notify", id="flock.notify"),
    Binding("s", "subscribe", "Subscribe", id="flock.subscribe"),
    Binding("w", "why_run", "Why-run", id="flock.why_run"),
    Binding("l", "rolling", "Rolling run", show=False, id="flock.rolling"),
    Binding("space", "mark", "Mark", id="flock.mark"),
    Binding("a", "mark_all", "Mark all / none", show=False, id="flock.mark_all"),
    Binding("slash", "filter", "Filter", key_display="/", id="flock.filter"),
    Binding("S", "sort", "Sort", id="flock.sort"),
    Binding("escape", "cancel", "Cancel macro / clear filter", show=False,
            id="flock.cancel"),
    Binding("question_mark", "help", "Help", key_display="?", id="flock.help"),
    Binding("q", "quit", "Quit", id="flock.quit"),
]
# What --read-only (and an observer's identity) hides. Why-run changes nothing but runs the
# recipes' shell guards on the nodes, and observers are refused it: hidden too.
CHANGING = {"flock.run_chef", "flock.notify", "flock.subscribe", "node.run_chef",
            "node.notify", "node.subscribe", "node.unsubscribe", "node.retry", "flock.why_run",
            "flock.rolling", "node.why_run"}
CHANGING_ACTIONS = {"run_chef", "notify_node", "subscribe", "remove_subscription", "retry_outbox",
                    "why_run", "rolling"}
# Keys the table itself uses (navigation): a macro on them needs `override = true`.
TABLE_KEYS = {"enter", "up", "down", "left", "right", "pageup", "pagedown", "home", "end",
              "ctrl+home", "ctrl+end", "tab", "shift+tab", "ctrl+p", "ctrl+q", "ctrl+c"}


def builtin_keys() -> set[str]:
    """Every key the console itself uses, as people write them in console.toml."""
    keys = set(TABLE_KEYS)
    for b in BUILTIN_BINDINGS:
        keys.update(k.strip() for k in b.key.split(","))
    # Keys as people write them in console.toml.
    keys.update({"/", "?", " "})
    return keys
