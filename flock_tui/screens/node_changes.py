"""What the node screen changes on its node, each after a confirmation: removing a
subscription (`d`) and sending the outbox's dead letters again (`t`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.widgets import DataTable

from flock_node.transport import RpcError
from flock_tui.context import Console, err_text
from flock_tui.screens.confirm import ConfirmScreen
from flock_tui.screens.node_text import unsubscribe_text
from flock_tui.widgets.tables import cursor_key

if TYPE_CHECKING:
    from textual.screen import Screen

    _Base = Screen[None]
else:
    _Base = object


class NodeChanges(_Base):
    """The node screen's changing actions (a mixin: the screen owns the state)."""

    node: str
    subs: dict[str, dict[str, Any]]

    @property
    def console(self) -> Console:
        raise NotImplementedError

    def reload(self) -> Any:
        raise NotImplementedError

    def action_remove_subscription(self) -> None:
        key = cursor_key(self.query_one("#node-subs", DataTable))
        s = self.subs.get(key or "")
        if s is None:
            self.notify("no subscription selected", severity="warning")
            return
        body = unsubscribe_text(self.node, s, outgoing=bool(key and key.startswith("out:")))
        sid = str(s["id"])

        def done(yes: bool | None) -> None:
            if yes:
                self.call_flock("unsubscribe", sid)

        self.app.push_screen(ConfirmScreen("Remove subscription?", body, "Remove"), done)

    def action_retry_outbox(self) -> None:
        body = Text(f"$ flockctl retry {self.node}\n\n{self.node} sends its dead-lettered and "
                    "refused notifications again, with a fresh TTL.")

        def done(yes: bool | None) -> None:
            if yes:
                self.call_flock("retry")

        self.app.push_screen(ConfirmScreen("Retry notifications?", body, "Retry"), done)

    @work(group="node-change", exit_on_error=False)
    async def call_flock(self, what: str, sid: str = "") -> None:
        """Unsubscribe or retry the outbox, log the answer, reload."""
        c = self.console
        if c.flock is None:
            return
        node = c.flock[self.node]
        try:
            if what == "retry":
                r = await node.flock_api.retry()
                line = f"{self.node}: {len(r.get('retried') or [])} notification(s) sent again"
            else:
                r = await node.resource_manager.unsubscribe(id=sid)
                line = f"{self.node}: subscription {sid} removed ({r.get('removed')})"
        except (RpcError, TypeError) as e:
            c.log_error(f"{self.node}: {what} {sid}: {err_text(e)}".replace("  ", " "))
            return
        c.log_line(Text(line), self.node)
        self.reload()
