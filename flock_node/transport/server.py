"""`RpcServer`: Rep0 with one context per in-flight call, so a slow handler blocks nobody;
repeated call ids (Req0 re-sends after a reconnect) get the first call's answer, kept within
bounds (`AnswerCache`); an answer too big for a frame is answered `too_large`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any

import msgspec
import pynng

from flock_node import trace
from flock_node.protocol import MAX_FRAME, Codec, Error, FrameError, Request, Response
from flock_node.transport.base import RPC_CONTEXTS, Handler, _listen, cancel_and_wait, receive
from flock_node.transport.tls import (
    VerifiedListener,
    close_revoked,
    count_drop,
    guard_pipes,
)
from flock_node.trust.identity import Caller
from flock_node.trust.tls import TlsIdentity

log = logging.getLogger("flock.transport")


# What the RPC server keeps to answer Req0 re-sends. A re-send only comes while its caller
# still waits (a call's timeout is seconds, a few minutes at most), so age bounds it as
# much as bytes and count do.
ANSWERS_MAX_BYTES = 8 << 20


ANSWERS_MAX_AGE = 120.0  # seconds


ANSWERS_MAX_COUNT = 4096


ANSWERS_MAX_ENTRY = 256 << 10  # a bigger answer is not kept: its re-send runs the call again


def _frame_limit() -> str:
    return f"the {MAX_FRAME >> 20} MiB frame limit"


class _Answer:
    __slots__ = ("at", "value", "size", "done")

    def __init__(self, at: float, value: Any, size: int, done: bool):
        self.at, self.value, self.size, self.done = at, value, size, done


RERUN = "rerun"  # AnswerCache: the answer was too big to keep, a re-send runs the call again


class AnswerCache:
    """Answers by call id, so a Req0 re-send gets the first call's answer instead of running
    the call twice: bounded in count, bytes and age, oldest evicted first. A call in flight
    keeps its entry (the value given to `begin`, which re-sends wait on) whatever the bounds.
    Pure: the caller gives the time."""

    def __init__(self, max_bytes: int = ANSWERS_MAX_BYTES, max_age: float = ANSWERS_MAX_AGE,
                 max_count: int = ANSWERS_MAX_COUNT, max_entry: int = ANSWERS_MAX_ENTRY):
        self.max_bytes, self.max_age = max_bytes, max_age
        self.max_count, self.max_entry = max_count, max_entry
        self._entries: OrderedDict[str, _Answer] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, call_id: str) -> Any:
        """The in-flight value or the kept answer of `call_id`, or None."""
        e = self._entries.get(call_id)
        return None if e is None else e.value

    def begin(self, call_id: str, pending: Any, now: float) -> None:
        """A call starts: `pending` stands for it until `finish`."""
        self.count_drop(call_id)
        self._entries[call_id] = _Answer(now, pending, 0, False)
        self._evict(now)

    def finish(self, call_id: str, answer: bytes | None, now: float) -> None:
        """A call ended with `answer` (None: it was cut short, keep nothing). An answer over
        `max_entry` is not kept, only the mark RERUN: a re-send then runs the call again,
        which is harmless for the calls that answer big (resources, history, outbox and
        other reads); the calls that change something answer a few bytes, and receivers
        de-duplicate notifications by id anyway."""
        self.count_drop(call_id)
        if answer is None:
            return
        if len(answer) > self.max_entry:
            self._entries[call_id] = _Answer(now, RERUN, 0, True)
        else:
            self._entries[call_id] = _Answer(now, answer, len(answer), True)
            self.bytes += len(answer)
        self._evict(now)

    def count_drop(self, call_id: str) -> None:
        e = self._entries.pop(call_id, None)
        if e is not None:
            self.bytes -= e.size

    def _evict(self, now: float) -> None:
        cutoff = now - self.max_age
        n, size = len(self._entries), self.bytes
        doomed = []
        # Finished answers are in the order they ended; calls in flight are skipped (at most
        # one per server context), so this stops at the first answer within every bound.
        for k, e in self._entries.items():
            if not e.done:
                continue
            if n <= self.max_count and size <= self.max_bytes and e.at >= cutoff:
                break
            doomed.append(k)
            n -= 1
            size -= e.size
        for k in doomed:
            self.count_drop(k)


class RpcServer(VerifiedListener):
    def __init__(self, codec: Codec, handler: Handler, contexts: int = RPC_CONTEXTS,
                 tls: TlsIdentity | None = None):
        super().__init__(codec, tls, pynng.Rep0(recv_max_size=MAX_FRAME))
        self.handler = handler
        self.sock.send_timeout = 5000
        self.n = contexts
        self._tasks: list[asyncio.Task[Any]] = []
        self._ctxs: list[pynng.Context] = []
        self._answers = AnswerCache()
        self.addr: str | None = None

    def listen(self, addr: str) -> None:
        _listen(self.sock, addr, self.tls, "rpc")
        self.addr = addr

    def close_revoked(self) -> int:
        """Close the RPC connections of identities revoked since they connected."""
        return close_revoked(self.sock, self.tls) if self.tls is not None else 0

    def start(self) -> None:
        guard_pipes(self.sock, self.tls)
        self.forget_closed_pipes(asyncio.get_running_loop())
        for i in range(self.n):
            ctx = self.sock.new_context()
            self._ctxs.append(ctx)
            self._tasks.append(asyncio.create_task(self._serve(ctx), name=f"rpc-{i}"))

    async def _serve(self, ctx: pynng.Context) -> None:
        while True:
            got = await receive(ctx, "rpc")
            if got is None:
                return
            trace.stamp("rpc_received")
            try:
                reply = await self._answer(got.bytes, self._callers.of(got.pipe))
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad frame must not end this context's loop
                log.exception("rpc frame dropped")
                reply = None
            if reply is None:
                # Dropped: Rep0 needs a send before the next receive on this context, and a
                # silent peer is what a bad frame deserves. A fresh context resets it.
                with contextlib.suppress(Exception):
                    ctx.close()
                ctx = self.sock.new_context()
                continue
            try:
                await ctx.asend(reply)
                trace.stamp("answer_sent")
            except asyncio.CancelledError:
                raise
            except pynng.NNGException as e:
                log.debug("rpc send: %s", e)

    async def _answer(self, frame: bytes, caller: Caller | None) -> bytes | None:
        try:
            env, msg = self.codec.decode(frame, check_replay=False)
        except FrameError as e:
            log.debug("rpc frame dropped: %s", e)
            if e.reason == "unauthorized":
                return self.codec.refusal(frame, str(e))
            if e.reason == "stale" and e.env is not None:
                # Correctly signed, only the clocks disagree: say so rather than time out.
                if self.codec.should_log_skew(e.env.sender):
                    log.warning("clock skew: a call from %s: %s", e.env.sender,
                                self.codec.skew_message(e))
                return self.codec.skew_answer(frame, e)
            return None
        if not isinstance(msg, Request):
            self.codec.dropped["unexpected"] = self.codec.dropped.get("unexpected", 0) + 1
            return None
        if caller is None:  # revoked since it connected: its pipe is being closed
            count_drop(self.codec, "unauthorized")
            return None
        if caller.verified and env.sender != caller.name:
            count_drop(self.codec, "sender_mismatch")
            log.warning("a call from %s in the name of %s dropped", caller.name, env.sender)
            return None
        if msg.to and msg.to != self.codec.sender and self.codec.key is not None:
            # Signed for another node: a frame captured on its way there and replayed here
            # (key mode; on TLS the connection names the caller and nothing can be replayed).
            count_drop(self.codec, "misdirected")
            log.debug("a call from %s for node %s dropped", env.sender, msg.to)
            return None
        replayed = self.codec.key is not None and self.codec.seen(env.nonce)
        known = self._answers.get(msg.call_id)
        if isinstance(known, asyncio.Future):  # a re-send of a call still running
            return self.codec.encode(await asyncio.shield(known))
        if isinstance(known, bytes):  # a re-send of a call answered: the same answer again
            return self.codec.encode(msgspec.msgpack.decode(known, type=Response))
        if known is None:
            if replayed:
                self.codec.dropped["replay"] = self.codec.dropped.get("replay", 0) + 1
                return None
            if self.codec.key is not None:
                self.codec._remember(env.nonce, env.ts)
        # A new call, or the re-send of one whose answer was too big to keep: run it (again).
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._answers.begin(msg.call_id, fut, time.monotonic())
        kept: bytes | None = None
        try:
            try:
                resp = await self.handler(msg, env, caller)
            except Exception as e:  # a handler bug must not take the agent down
                log.exception("rpc handler %s.%s failed", msg.actor, msg.method)
                resp = Response(msg.call_id, False,
                                error=Error("internal", f"{type(e).__name__}: {e}"))
            resp, reply = self._fit(msg, resp)
            fut.set_result(resp)
            # Too big to keep: finish() keeps only the RERUN mark for it.
            kept = msgspec.msgpack.encode(resp) if len(reply) <= self._answers.max_entry else reply
            return reply
        finally:
            if not fut.done():
                fut.cancel()
            self._answers.finish(msg.call_id, kept, time.monotonic())

    def _fit(self, req: Request, resp: Response) -> tuple[Response, bytes]:
        """The answer and its frame; an answer too big for a frame becomes `too_large` (and
        is counted as `oversize`): the peer would drop it and take the node for dead."""
        frame = self.codec.encode(resp)
        if len(frame) <= MAX_FRAME:
            return resp, frame
        self.codec.dropped["oversize"] = self.codec.dropped.get("oversize", 0) + 1
        log.warning("answer to %s.%s is %d bytes, over the frame limit: answered too_large",
                    req.actor, req.method, len(frame))
        resp = Response(resp.call_id, False, error=Error(
            "too_large", f"answer of {len(frame)} bytes exceeds {_frame_limit()}; "
                         "ask for a smaller page"))
        return resp, self.codec.encode(resp)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        for c in self._ctxs:
            with contextlib.suppress(Exception):
                c.close()
        self.sock.close()
        await cancel_and_wait(self._tasks)
