"""Every wire message, as msgspec Structs in one tagged union, inside a signed envelope.

A frame is a msgpack `Envelope` (array-like): protocol version, sender, timestamp, nonce,
body (the msgpack-encoded `Message`) and an HMAC-SHA256 over everything before it. Decoding
*is* validation: a frame that is not exactly this shape raises `FrameError` at the edge.
"""

from __future__ import annotations

import heapq
import hmac
import math
import os
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20  # 1 MiB: recv_max_size on every socket
CLOCK_WINDOW = 60.0  # seconds of clock skew accepted; a nonce is kept until ts + window
# Nonces remembered at most. A nonce lives until its frame's timestamp leaves the window, up
# to 2 windows (120 s) for a frame stamped 60 s ahead: 65,536 covers ~550 verified frames/s
# for that long (~15 MB at worst), far above a flock's heartbeats and events. Past it the
# oldest is evicted and frames not newer than it are refused: memory stays bounded and an
# evicted nonce can never be replayed, at worst a flood narrows the window.
NONCE_CACHE = 65536
SKEW_LOG_EVERY = 60.0  # seconds between two clock-skew warnings about one peer


class FrameError(Exception):
    """A frame was dropped. `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str = "", env: Envelope | None = None,
                 skew: float = 0.0):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.env = env  # set for a correctly signed `stale` frame
        self.skew = skew  # the sender's clock minus ours, in seconds (`stale` only)


# --- messages ---------------------------------------------------------------------------


class RunProgress(msgspec.Struct, omit_defaults=True):
    id: str
    kind: str = "converge"
    resource: str = ""
    k: int = 0
    n: int = 0
    started: float = 0.0


class RunSummary(msgspec.Struct, omit_defaults=True):
    id: str
    status: str  # ok | failed
    kind: str = "converge"
    started: float = 0.0
    duration: float = 0.0
    updated: int = 0
    error: str | None = None


class Peer(msgspec.Struct, array_like=True):
    name: str
    bus: str
    rpc: str


class Heartbeat(msgspec.Struct, tag="hb", omit_defaults=True):
    node: str
    incarnation: int
    seq: int
    bus: str
    rpc: str
    interval: float = 1.0
    # Random per process: a restart is recognised even when the incarnation went back
    # (state wiped and clock reset). "" from peers that predate it.
    instance: str = ""
    version: str = ""
    tags: list[str] = []
    active: bool = False
    run: RunProgress | None = None
    last_run: RunSummary | None = None
    # The node's health: its last converge, which a later reaction does not replace.
    last_converge: RunSummary | None = None
    pending: int = 0
    dead: int = 0
    started: float = 0.0
    peers: list[Peer] = []
    crl: int = 0  # version of the revocation list we hold (TLS): a newer one is fetched


class Leave(msgspec.Struct, tag="leave", omit_defaults=True):
    node: str
    incarnation: int
    instance: str = ""


class Event(msgspec.Struct, tag="event", omit_defaults=True):
    node: str
    kind: str  # run_started, run_progress, run_finished, notification_*, ...
    at: float
    data: dict[str, Any] = {}


class Request(msgspec.Struct, tag="req", omit_defaults=True):
    # Bounded: the server keeps answers by call id (AnswerCache), so a megabyte of id per
    # call would be a megabyte kept (the client's ids are ~30 characters).
    call_id: Annotated[str, msgspec.Meta(max_length=128)]
    actor: Annotated[str, msgspec.Meta(max_length=64)]  # flock_api | resource_manager | ...
    method: Annotated[str, msgspec.Meta(max_length=64)]
    args: dict[str, Any] = {}
    # The node the call is for, inside the signed body: a frame captured on its way to one
    # node is refused by the others (key mode; `RpcServer`). "" when the caller does not
    # know it yet (discovery at a seed address) and from callers that predate it; an older
    # agent ignores the field, so both versions still talk.
    to: Annotated[str, msgspec.Meta(max_length=64)] = ""


class Error(msgspec.Struct):
    code: str
    message: str


class Response(msgspec.Struct, tag="rep", omit_defaults=True):
    call_id: str
    ok: bool
    result: Any = None
    error: Error | None = None


class SwimFrame(msgspec.Struct, tag="swim"):
    """One SWIM message (`membership/messages.py`), carried in a signed envelope."""

    data: bytes


Message = Heartbeat | Leave | Event | Request | Response | SwimFrame


class Envelope(msgspec.Struct, array_like=True):
    v: int
    sender: str
    ts: float
    nonce: bytes
    body: bytes
    mac: bytes


_body_enc = msgspec.msgpack.Encoder()
_body_dec = msgspec.msgpack.Decoder(Message)
_env_enc = msgspec.msgpack.Encoder()
_env_dec = msgspec.msgpack.Decoder(Envelope)
# msgspec raises UnicodeDecodeError (not DecodeError) for invalid UTF-8 in a str field.
# RecursionError: a frame nesting arrays tens of thousands deep (msgspec decodes recursively).
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
                  RecursionError)


def _mac(key: bytes, v: int, sender: str, ts: float, nonce: bytes, body: bytes) -> bytes:
    # One-shot: a third of the time of an HMAC object fed piece by piece (every frame).
    return hmac.digest(key, b"".join((b"flock\x00%d\x00" % v, sender.encode(), b"\x00",
                                      repr(ts).encode(), b"\x00", nonce, body)), "sha256")


def _wall_clock() -> float:
    return time.time()  # looked up at each call: tests patch protocol.time.time


class Codec:
    """Encodes and authenticates frames for one flock key (or none: unauthenticated ipc).

    A codec with a key refuses unsigned frames; one without a key refuses signed ones it
    cannot check, so a keyed flock and an open one never mix silently. `clock` is the wall
    clock (a parameter so tests can move it).
    """

    def __init__(self, key: bytes | None, sender: str, window: float = CLOCK_WINDOW,
                 clock: Callable[[], float] | None = None, nonce_cache: int = NONCE_CACHE):
        self.key = key
        self.sender = sender
        self.window = window
        self.clock = clock or _wall_clock
        self.nonce_cache = nonce_cache
        # nonce → (expiry = its timestamp + window, channel it came on); the heap orders
        # expiries, which arrive in no particular order (senders' clocks differ).
        self._nonces: dict[bytes, tuple[float, int | None]] = {}
        self._expiries: list[tuple[float, bytes]] = []
        self._floor = -math.inf  # frames stamped at or before this may have lost their nonce
        self._skew_logged: dict[str, float] = {}
        self.dropped: dict[str, int] = {}

    def encode(self, msg: Message) -> bytes:
        body = _body_enc.encode(msg)
        ts = self.clock()
        nonce = os.urandom(12)
        mac = _mac(self.key, PROTOCOL_VERSION, self.sender, ts, nonce, body) if self.key else b""
        return _env_enc.encode(Envelope(PROTOCOL_VERSION, self.sender, ts, nonce, body, mac))

    def decode(self, frame: bytes, check_replay: bool = True,
               channel: int | None = None) -> tuple[Envelope, Message]:
        """Decode and verify a frame; raise FrameError (and count it) if it must be dropped.

        `channel` names the connection the frame came on: the same frame arriving again on
        another connection (two bus pipes to one node) is a `duplicate`, not a `replay`."""
        try:
            return self._decode(frame, check_replay, channel)
        except FrameError as e:
            self.dropped[e.reason] = self.dropped.get(e.reason, 0) + 1
            raise

    def _decode(self, frame: bytes, check_replay: bool,
                channel: int | None) -> tuple[Envelope, Message]:
        if len(frame) > MAX_FRAME:
            raise FrameError("oversize", f"{len(frame)} bytes")
        try:
            env = _env_dec.decode(frame)
        except _DECODE_ERRORS as e:
            raise FrameError("malformed", str(e)) from None
        if env.v != PROTOCOL_VERSION:
            raise FrameError("version", f"protocol {env.v}, expected {PROTOCOL_VERSION}")
        if self.key:
            if not env.mac:
                raise FrameError("unauthorized", f"unsigned frame from {env.sender!r}")
            good = _mac(self.key, env.v, env.sender, env.ts, env.nonce, env.body)
            if not hmac.compare_digest(good, env.mac):
                raise FrameError("unauthorized", f"bad signature from {env.sender!r}")
        elif env.mac:
            raise FrameError("unauthorized", f"signed frame from {env.sender!r} but we have no key")
        # abs(nan) > window is False: a NaN timestamp would pass the window and never expire.
        if not math.isfinite(env.ts):
            raise FrameError("stale", f"timestamp {env.ts!r} from {env.sender!r}")
        now = self.clock()
        if self.key:
            skew = env.ts - now
            if abs(skew) > self.window:
                raise FrameError("stale", f"timestamp {skew:+.1f}s off", env=env, skew=skew)
        if check_replay and self.key:
            self._check_nonce(env, channel)
            self._remember(env.nonce, env.ts, channel)
        try:
            msg = _body_dec.decode(env.body)
        except _DECODE_ERRORS as e:
            raise FrameError("malformed", str(e)) from None
        return env, msg

    def _check_nonce(self, env: Envelope, channel: int | None) -> None:
        hit = self._nonces.get(env.nonce)
        if hit is not None:
            first = hit[1]
            if channel is not None and first is not None and first != channel:
                raise FrameError("duplicate", f"frame from {env.sender!r} on a second pipe")
            raise FrameError("replay", f"nonce reused by {env.sender!r}")
        if env.ts <= self._floor:
            raise FrameError("replay", f"frame from {env.sender!r} older than the nonce cache")

    def refusal(self, frame: bytes, why: str) -> bytes | None:
        """An unsigned `unauthorized` answer to a request we could not authenticate, so the
        caller learns its key is wrong instead of waiting for a timeout."""
        try:
            env = _env_dec.decode(frame)
            req = _body_dec.decode(env.body)
        except _DECODE_ERRORS:
            return None
        if not isinstance(req, Request):
            return None
        body = _body_enc.encode(
            Response(req.call_id, False, error=Error("unauthorized", f"{self.sender}: {why}"))
        )
        env = Envelope(PROTOCOL_VERSION, self.sender, self.clock(), os.urandom(12), body, b"")
        return _env_enc.encode(env)

    def skew_message(self, e: FrameError) -> str:
        """Words for a stale frame, from its sender's side: whose clock is off, by how much."""
        way = "ahead of" if e.skew > 0 else "behind"
        return (f"your clock is {abs(e.skew):.1f} s {way} {self.sender}'s; "
                f"flock accepts ±{self.window:g} s")

    def skew_answer(self, frame: bytes, e: FrameError) -> bytes | None:
        """A signed `clock_skew` answer to a correctly signed but stale request, so the caller
        learns its clock is off instead of waiting for a timeout."""
        if e.env is None:
            return None
        try:
            req = _body_dec.decode(e.env.body)
        except _DECODE_ERRORS:
            return None
        if not isinstance(req, Request):
            return None
        return self.encode(Response(req.call_id, False,
                                    error=Error("clock_skew", self.skew_message(e))))

    def should_log_skew(self, sender: str) -> bool:
        """True at most once per sender per SKEW_LOG_EVERY: one warning, not one per frame."""
        now = time.monotonic()
        last = self._skew_logged.get(sender)
        if last is not None and now - last < SKEW_LOG_EVERY:
            return False
        if len(self._skew_logged) >= 1024:  # bounded whatever names key holders send
            self._skew_logged = {s: t for s, t in self._skew_logged.items()
                                 if now - t < SKEW_LOG_EVERY}
        self._skew_logged[sender] = now
        return True

    def read_refusal(self, frame: bytes, call_id: str) -> str | None:
        """The message of an unsigned `unauthorized` answer to our call, if that is what
        `frame` is (it proves nothing: it is only used to word the error)."""
        try:
            env = _env_dec.decode(frame)
            msg = _body_dec.decode(env.body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            return None
        if (isinstance(msg, Response) and msg.call_id == call_id and msg.error is not None
                and msg.error.code == "unauthorized"):
            return f"{env.sender} refused our call: {msg.error.message}"
        return None

    def seen(self, nonce: bytes) -> bool:
        return nonce in self._nonces

    def _remember(self, nonce: bytes, ts: float, channel: int | None = None) -> None:
        """Keep `nonce` until its timestamp `ts` leaves the window: a frame stamped ahead
        stays acceptable for longer, so its nonce must be kept for longer too."""
        now = self.clock()
        heap = self._expiries
        while heap and heap[0][0] < now:
            self._nonces.pop(heapq.heappop(heap)[1], None)
        while len(self._nonces) >= self.nonce_cache and heap:
            expiry, old = heapq.heappop(heap)
            self._nonces.pop(old, None)
            self._floor = max(self._floor, expiry - self.window)
        expiry = ts + self.window
        self._nonces[nonce] = (expiry, channel)
        heapq.heappush(heap, (expiry, nonce))


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Read a key file (hex or raw); refuse an empty or world-readable one."""
    p = os.fspath(path)
    with open(p, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise ValueError(f"key file {p} can be read by others (mode {mode:o}); "
                             f"run `chmod 600 {p}`")
        data = f.read().strip()
    if not data:
        raise ValueError(f"key file {p} is empty")
    try:
        key = bytes.fromhex(data.decode())
    except (ValueError, UnicodeDecodeError):
        key = data
    if len(key) < 16:
        raise ValueError(f"key file {p} holds {len(key)} bytes; at least 16 are needed")
    return key


def generate_key_file(path: str | os.PathLike[str]) -> str:
    """Write a new random 32-byte key, hex-encoded, mode 0600."""
    p = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(p, 0o600)
    return p
