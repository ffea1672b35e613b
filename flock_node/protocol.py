"""Every wire message, as msgspec Structs in one tagged union, inside a signed envelope.

A frame is a msgpack `Envelope` (array-like): protocol version, sender, timestamp, nonce,
body (the msgpack-encoded `Message`) and an HMAC-SHA256 over everything before it. Decoding
*is* validation: a frame that is not exactly this shape raises `FrameError` at the edge.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from typing import Any

import msgspec

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20  # 1 MiB: recv_max_size on every socket
CLOCK_WINDOW = 60.0  # seconds of clock skew accepted, and how long nonces are remembered


class FrameError(Exception):
    """A frame was dropped. `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


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
    version: str = ""
    tags: list[str] = []
    active: bool = False
    run: RunProgress | None = None
    last_run: RunSummary | None = None
    pending: int = 0
    dead: int = 0
    started: float = 0.0
    peers: list[Peer] = []


class Leave(msgspec.Struct, tag="leave"):
    node: str
    incarnation: int


class Event(msgspec.Struct, tag="event", omit_defaults=True):
    node: str
    kind: str  # run_started, run_progress, run_finished, notification_*, ...
    at: float
    data: dict[str, Any] = {}


class Request(msgspec.Struct, tag="req", omit_defaults=True):
    call_id: str
    actor: str  # flock_api | resource_manager
    method: str
    args: dict[str, Any] = {}


class Error(msgspec.Struct):
    code: str
    message: str


class Response(msgspec.Struct, tag="rep", omit_defaults=True):
    call_id: str
    ok: bool
    result: Any = None
    error: Error | None = None


Message = Heartbeat | Leave | Event | Request | Response


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
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


def _mac(key: bytes, v: int, sender: str, ts: float, nonce: bytes, body: bytes) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    h.update(b"flock\x00%d\x00" % v)
    h.update(sender.encode())
    h.update(b"\x00" + repr(ts).encode() + b"\x00")
    h.update(nonce)
    h.update(body)
    return h.digest()


class Codec:
    """Encodes and authenticates frames for one flock key (or none: unauthenticated ipc).

    A codec with a key refuses unsigned frames; one without a key refuses signed ones it
    cannot check, so a keyed flock and an open one never mix silently.
    """

    def __init__(self, key: bytes | None, sender: str, window: float = CLOCK_WINDOW):
        self.key = key
        self.sender = sender
        self.window = window
        self._nonces: OrderedDict[bytes, float] = OrderedDict()
        self.dropped: dict[str, int] = {}

    def encode(self, msg: Message) -> bytes:
        body = _body_enc.encode(msg)
        ts = time.time()
        nonce = os.urandom(12)
        mac = _mac(self.key, PROTOCOL_VERSION, self.sender, ts, nonce, body) if self.key else b""
        return _env_enc.encode(Envelope(PROTOCOL_VERSION, self.sender, ts, nonce, body, mac))

    def decode(self, frame: bytes, check_replay: bool = True) -> tuple[Envelope, Message]:
        """Decode and verify a frame; raise FrameError (and count it) if it must be dropped."""
        try:
            return self._decode(frame, check_replay)
        except FrameError as e:
            self.dropped[e.reason] = self.dropped.get(e.reason, 0) + 1
            raise

    def _decode(self, frame: bytes, check_replay: bool) -> tuple[Envelope, Message]:
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
        now = time.time()
        if self.key and abs(now - env.ts) > self.window:
            raise FrameError("stale", f"timestamp {now - env.ts:+.1f}s off")
        if check_replay and self.key:
            if env.nonce in self._nonces:
                raise FrameError("replay", f"nonce reused by {env.sender!r}")
            self._remember(env.nonce, now)
        try:
            msg = _body_dec.decode(env.body)
        except _DECODE_ERRORS as e:
            raise FrameError("malformed", str(e)) from None
        return env, msg

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
        env = Envelope(PROTOCOL_VERSION, self.sender, time.time(), os.urandom(12), body, b"")
        return _env_enc.encode(env)

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

    def _remember(self, nonce: bytes, now: float) -> None:
        self._nonces[nonce] = now
        cutoff = now - self.window
        while self._nonces:
            first, ts = next(iter(self._nonces.items()))
            if ts >= cutoff:
                break
            self._nonces.popitem(last=False)


def load_key(path: str | os.PathLike) -> bytes:
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


def generate_key_file(path: str | os.PathLike) -> str:
    """Write a new random 32-byte key, hex-encoded, mode 0600."""
    p = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(p, 0o600)
    return p
