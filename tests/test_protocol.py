"""The signed envelope: round trips, and every way a frame is refused (never a crash)."""

from __future__ import annotations

import os
import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flock_node import protocol
from flock_node.protocol import (
    MAX_FRAME,
    Codec,
    Envelope,
    Error,
    Event,
    FrameError,
    Heartbeat,
    Leave,
    Peer,
    Request,
    Response,
    RunProgress,
    RunSummary,
    generate_key_file,
    load_key,
)

KEY = b"k" * 32
OTHER = b"o" * 32

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
text = st.text(max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e10)
small = st.integers(min_value=0, max_value=2**31)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), text, finite)
jsonish = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=10,
)

progress = st.builds(
    RunProgress,
    id=text,
    kind=st.sampled_from(["converge", "reaction"]),
    resource=text,
    k=small,
    n=small,
    started=finite,
)
summary = st.builds(
    RunSummary,
    id=text,
    status=st.sampled_from(["ok", "failed"]),
    kind=st.sampled_from(["converge", "reaction"]),
    started=finite,
    duration=finite,
    updated=small,
    error=st.none() | text,
)
heartbeats = st.builds(
    Heartbeat,
    node=names,
    incarnation=small,
    seq=small,
    bus=text,
    rpc=text,
    interval=st.floats(min_value=0.01, max_value=60),
    version=text,
    tags=st.lists(names, max_size=3),
    active=st.booleans(),
    run=st.none() | progress,
    last_run=st.none() | summary,
    pending=small,
    dead=small,
    started=finite,
    peers=st.lists(st.builds(Peer, name=names, bus=text, rpc=text), max_size=3),
)
leaves = st.builds(Leave, node=names, incarnation=small)
events = st.builds(
    Event, node=names, kind=text, at=finite, data=st.dictionaries(text, jsonish, max_size=4)
)
requests = st.builds(
    Request,
    call_id=text,
    actor=st.sampled_from(["flock_api", "resource_manager"]),
    method=text,
    args=st.dictionaries(text, jsonish, max_size=4),
)
responses = st.builds(
    Response,
    call_id=text,
    ok=st.booleans(),
    result=jsonish,
    error=st.none() | st.builds(Error, code=text, message=text),
)
messages = st.one_of(heartbeats, leaves, events, requests, responses)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages, keyed=st.booleans())
def test_round_trip_every_message_type(msg, keyed):
    key = KEY if keyed else None
    tx, rx = Codec(key, "a"), Codec(key, "b")
    env, out = rx.decode(tx.encode(msg))
    assert out == msg
    assert type(out) is type(msg)
    assert env.sender == "a"
    assert rx.dropped == {}


@settings(max_examples=300)
@given(data=st.binary(max_size=2048), keyed=st.booleans())
def test_arbitrary_bytes_only_raise_frame_error(data, keyed):
    codec = Codec(KEY if keyed else None, "b")
    try:
        codec.decode(data)
    except FrameError as e:
        assert e.reason in {"malformed", "version", "unauthorized", "stale", "replay", "oversize"}
        assert codec.dropped[e.reason] == 1


@settings(max_examples=200)
@given(msg=messages, cut=st.integers(min_value=0, max_value=10_000), keyed=st.booleans())
def test_truncated_frames_are_dropped(msg, cut, keyed):
    key = KEY if keyed else None
    frame = Codec(key, "a").encode(msg)
    cut = cut % len(frame)
    rx = Codec(key, "b")
    with pytest.raises(FrameError):
        rx.decode(frame[:cut])
    assert sum(rx.dropped.values()) == 1


@settings(max_examples=100)
@given(msg=messages, pos=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_tampered_frame_is_unauthorized_or_malformed(msg, pos, flip):
    frame = bytearray(Codec(KEY, "a").encode(msg))
    pos %= len(frame)
    frame[pos] ^= flip
    rx = Codec(KEY, "b")
    with pytest.raises(FrameError) as ei:
        rx.decode(bytes(frame))
    # A flipped byte either breaks the msgpack shape or the signature; never accepted.
    assert ei.value.reason in {"malformed", "unauthorized", "version", "stale"}


def _reenvelope(frame: bytes, **changes) -> bytes:
    env = msgspec.msgpack.decode(frame, type=Envelope)
    return msgspec.msgpack.encode(msgspec.structs.replace(env, **changes))


def test_wrong_key_is_unauthorized():
    frame = Codec(OTHER, "a").encode(Leave("a", 1))
    rx = Codec(KEY, "b")
    with pytest.raises(FrameError) as ei:
        rx.decode(frame)
    assert ei.value.reason == "unauthorized"
    assert rx.dropped == {"unauthorized": 1}


def test_tampered_body_and_mac_are_unauthorized():
    frame = Codec(KEY, "a").encode(Request("c1", "flock_api", "active"))
    body = msgspec.msgpack.encode(Request("c1", "flock_api", "run_chef"))
    rx = Codec(KEY, "b")
    for bad in (
        _reenvelope(frame, body=body),
        _reenvelope(frame, mac=b"\0" * 32),
        _reenvelope(frame, sender="mallory"),
        _reenvelope(frame, ts=time.time() + 1),
        _reenvelope(frame, nonce=os.urandom(12)),
    ):
        with pytest.raises(FrameError) as ei:
            rx.decode(bad)
        assert ei.value.reason == "unauthorized"
    assert rx.dropped == {"unauthorized": 5}


def test_replayed_frame_is_refused():
    frame = Codec(KEY, "a").encode(Leave("a", 1))
    rx = Codec(KEY, "b")
    rx.decode(frame)
    with pytest.raises(FrameError) as ei:
        rx.decode(frame)
    assert ei.value.reason == "replay"
    assert rx.dropped == {"replay": 1}
    # The RPC server checks replays itself (call ids): check_replay=False skips the cache.
    rx.decode(frame, check_replay=False)


def test_stale_timestamp_is_refused(monkeypatch):
    tx = Codec(KEY, "a")
    real = time.time
    monkeypatch.setattr(protocol.time, "time", lambda: real() - 3600)
    old = tx.encode(Leave("a", 1))
    monkeypatch.setattr(protocol.time, "time", lambda: real() + 3600)
    future = tx.encode(Leave("a", 1))
    monkeypatch.setattr(protocol.time, "time", real)
    rx = Codec(KEY, "b")
    for frame in (old, future):
        with pytest.raises(FrameError) as ei:
            rx.decode(frame)
        assert ei.value.reason == "stale"
    assert rx.dropped == {"stale": 2}


def test_oversize_frame_is_refused():
    rx = Codec(KEY, "b")
    with pytest.raises(FrameError) as ei:
        rx.decode(b"\x96" + b"\0" * MAX_FRAME)
    assert ei.value.reason == "oversize"
    big = Codec(KEY, "a").encode(Event("a", "x", 0.0, {"blob": "x" * (MAX_FRAME + 10)}))
    with pytest.raises(FrameError):
        rx.decode(big)
    assert rx.dropped == {"oversize": 2}


def test_keyed_and_unkeyed_never_mix():
    signed = Codec(KEY, "a").encode(Leave("a", 1))
    unsigned = Codec(None, "a").encode(Leave("a", 1))
    open_rx, keyed_rx = Codec(None, "b"), Codec(KEY, "b")
    with pytest.raises(FrameError) as ei:
        open_rx.decode(signed)
    assert ei.value.reason == "unauthorized"
    with pytest.raises(FrameError) as ei:
        keyed_rx.decode(unsigned)
    assert ei.value.reason == "unauthorized"
    assert open_rx.dropped == keyed_rx.dropped == {"unauthorized": 1}


def test_wrong_version_and_unknown_tag_are_dropped():
    rx = Codec(KEY, "b")
    frame = Codec(KEY, "a").encode(Leave("a", 1))
    with pytest.raises(FrameError) as ei:
        rx.decode(_reenvelope(frame, v=99))
    assert ei.value.reason == "version"

    class Bogus(msgspec.Struct, tag="bogus"):
        x: int

    tx = Codec(KEY, "a")
    body = msgspec.msgpack.encode(Bogus(1))
    ts, nonce = time.time(), os.urandom(12)
    mac = protocol._mac(KEY, 1, "a", ts, nonce, body)
    with pytest.raises(FrameError) as ei:
        rx.decode(msgspec.msgpack.encode(Envelope(1, "a", ts, nonce, body, mac)))
    assert ei.value.reason == "malformed"
    assert rx.dropped == {"version": 1, "malformed": 1}
    del tx


def test_refusal_answers_requests_only():
    codec = Codec(KEY, "b")
    req = Codec(OTHER, "a").encode(Request("c9", "flock_api", "active"))
    ans = codec.refusal(req, "bad signature")
    env, msg = Codec(None, "a").decode(ans)
    assert isinstance(msg, Response) and msg.call_id == "c9" and not msg.ok
    assert msg.error.code == "unauthorized"
    assert codec.refusal(Codec(OTHER, "a").encode(Leave("a", 1)), "x") is None
    assert codec.refusal(b"garbage", "x") is None


def test_nonce_cache_forgets_after_window():
    rx = Codec(KEY, "b", window=60)
    rx._remember(b"old", time.time() - 120)
    rx._remember(b"new", time.time())
    assert not rx.seen(b"old") and rx.seen(b"new")


def test_key_files(tmp_path):
    p = tmp_path / "sub" / "flock.key"
    generate_key_file(p)
    assert (p.stat().st_mode & 0o777) == 0o600
    assert len(load_key(p)) == 32
    with pytest.raises(FileExistsError):
        generate_key_file(p)
    short = tmp_path / "short"
    short.write_text("abcd")
    with pytest.raises(ValueError):
        load_key(short)
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ValueError):
        load_key(empty)


def test_invalid_utf8_is_malformed_not_a_crash():
    # msgspec raises UnicodeDecodeError for a bad str; it must become a FrameError.
    frame = bytearray(Codec(KEY, "a").encode(Leave("0", 0)))
    frame[2] ^= 2  # sender length 1 → 3: the str now swallows the float marker 0xcb
    for key in (KEY, None):
        rx = Codec(key, "b")
        with pytest.raises(FrameError) as ei:
            rx.decode(bytes(frame))
        assert ei.value.reason == "malformed"
        assert rx.refusal(bytes(frame), "x") is None
    body = b"\x82\xa4type\xa5leave\xa4node\xa2\xc3\x28"  # node: invalid UTF-8
    env = Envelope(1, "a", time.time(), os.urandom(12), body, b"")
    with pytest.raises(FrameError) as ei:
        Codec(None, "b").decode(msgspec.msgpack.encode(env))
    assert ei.value.reason == "malformed"


def test_a_signed_request_with_a_huge_call_id_or_deep_nesting_is_malformed():
    """A key holder's frame must not make the server keep a megabyte per call (answers are
    kept by call id), nor log a traceback (msgspec recurses into nested arrays)."""
    tx = Codec(KEY, "a")
    big = tx.encode(Request("x" * 900_000, "flock_api", "active"))
    body = msgspec.msgpack.encode({"type": "req", "call_id": "c-1", "actor": "flock_api",
                                   "method": "active",
                                   "args": {"x": msgspec.Raw(b"\x91" * 50_000 + b"\x90")}})
    ts, nonce = time.time(), os.urandom(12)
    deep = msgspec.msgpack.encode(Envelope(
        1, "a", ts, nonce, body, protocol._mac(KEY, 1, "a", ts, nonce, body)))
    for frame in (big, deep):
        rx = Codec(KEY, "b")
        with pytest.raises(FrameError) as ei:
            rx.decode(frame)
        assert ei.value.reason == "malformed"
        assert rx.dropped == {"malformed": 1}
    ok = Codec(KEY, "b").decode(tx.encode(Request("c-1" * 40, "flock_api", "active")))[1]
    assert isinstance(ok, Request)  # 120 characters: well above the client's ids


# --- clocks and nonces (issue 8, item 6) ------------------------------------------------------


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _signed_at(ts: float, msg=None, key: bytes = KEY, sender: str = "a") -> bytes:
    body = msgspec.msgpack.encode(msg or Leave(sender, 1))
    nonce = os.urandom(12)
    return msgspec.msgpack.encode(
        Envelope(1, sender, ts, nonce, body, protocol._mac(key, 1, sender, ts, nonce, body)))


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_timestamp_is_stale(ts):
    # abs(nan) > 60 is False: such a frame used to pass the window check.
    rx = Codec(KEY, "b")
    with pytest.raises(FrameError) as ei:
        rx.decode(_signed_at(ts))
    assert ei.value.reason == "stale"
    assert rx.dropped == {"stale": 1}


@given(ts=st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_any_timestamp_is_inside_the_window_or_refused(ts):
    clock = Clock()
    rx = Codec(KEY, "b", clock=clock)
    try:
        env, _ = rx.decode(_signed_at(ts))
    except FrameError as e:
        assert e.reason == "stale"
        assert not (abs(ts - clock.t) <= rx.window)
    else:
        assert abs(env.ts - clock.t) <= rx.window


def test_nonce_of_a_frame_stamped_ahead_is_kept_until_its_timestamp_leaves_the_window():
    clock = Clock()
    tx, rx = Codec(KEY, "a", clock=Clock(clock.t + 50)), Codec(KEY, "b", clock=clock)
    ahead = tx.encode(Leave("a", 1))
    rx.decode(ahead)
    clock.t += 61  # other traffic prunes the cache meanwhile
    rx.decode(Codec(KEY, "a", clock=clock).encode(Leave("a", 1)))
    clock.t += 9  # 70 s after receipt: its timestamp is 20 s old, inside the window
    with pytest.raises(FrameError) as ei:
        rx.decode(ahead)
    assert ei.value.reason == "replay"
    clock.t += 41  # now 61 s past its timestamp: stale, and its nonce may go
    with pytest.raises(FrameError) as ei:
        rx.decode(ahead)
    assert ei.value.reason == "stale"
    rx.decode(Codec(KEY, "a", clock=clock).encode(Leave("a", 1)))
    assert not rx.seen(msgspec.msgpack.decode(ahead, type=Envelope).nonce)


def test_nonce_cache_is_bounded_and_never_lets_an_evicted_nonce_through():
    clock = Clock()
    rx = Codec(KEY, "b", clock=clock, nonce_cache=8)
    frames = []
    for _ in range(30):
        clock.t += 0.5
        f = _signed_at(clock.t)
        frames.append(f)
        rx.decode(f)
        assert len(rx._nonces) <= 8 and len(rx._expiries) <= 8
    for f in frames:  # all within the window, most of them evicted: none is accepted again
        with pytest.raises(FrameError) as ei:
            rx.decode(f)
        assert ei.value.reason == "replay"
    rx.decode(_signed_at(clock.t + 1))  # fresh frames still pass


def test_same_frame_on_another_pipe_is_a_duplicate_not_a_replay():
    rx = Codec(KEY, "b")
    frame = Codec(KEY, "a").encode(Leave("a", 1))
    rx.decode(frame, channel=7)
    with pytest.raises(FrameError) as ei:
        rx.decode(frame, channel=9)
    assert ei.value.reason == "duplicate"
    with pytest.raises(FrameError) as ei:
        rx.decode(frame, channel=7)
    assert ei.value.reason == "replay"
    assert rx.dropped == {"duplicate": 1, "replay": 1}


def test_stale_request_gets_a_signed_clock_skew_answer():
    clock = Clock()
    server = Codec(KEY, "node1", clock=clock)
    client = Codec(KEY, "cli", clock=Clock(clock.t + 75.2))
    with pytest.raises(FrameError) as ei:
        server.decode(client.encode(Request("c1", "flock_api", "active")), check_replay=False)
    e = ei.value
    assert e.reason == "stale" and e.env is not None and round(e.skew, 1) == 75.2
    answer = server.skew_answer(client.encode(Request("c1", "flock_api", "active")), e)
    _, resp = Codec(KEY, "x", clock=clock).decode(answer)
    assert isinstance(resp, Response) and resp.call_id == "c1" and resp.error.code == "clock_skew"
    assert resp.error.message == "your clock is 75.2 s ahead of node1's; flock accepts ±60 s"
    # Not a request, or not signed: no answer.
    with pytest.raises(FrameError) as ei:
        server.decode(client.encode(Leave("cli", 1)))
    assert server.skew_answer(b"", ei.value) is None


def test_skew_is_logged_once_per_peer_per_minute(monkeypatch):
    rx = Codec(KEY, "b")
    t = [1000.0]
    monkeypatch.setattr(protocol.time, "monotonic", lambda: t[0])
    assert rx.should_log_skew("a") and rx.should_log_skew("c")
    t[0] += 59
    assert not rx.should_log_skew("a")
    t[0] += 2
    assert rx.should_log_skew("a")


def test_old_peers_heartbeat_and_leave_still_decode():
    # Peers from before `instance` send no such field: it defaults to "".
    class OldLeave(msgspec.Struct, tag="leave"):
        node: str
        incarnation: int

    body = msgspec.msgpack.encode(OldLeave("a", 3))
    assert msgspec.msgpack.decode(body, type=protocol.Message) == Leave("a", 3, "")


def test_the_frame_mac_is_hmac_sha256_of_the_documented_fields():
    import hashlib
    import hmac

    from flock_node.protocol import _mac

    key, nonce, body = b"k" * 32, b"n" * 12, b"\x93body"
    h = hmac.new(key, digestmod=hashlib.sha256)
    for part in (b"flock\x001\x00", b"web1", b"\x00" + repr(1764464000.5).encode() + b"\x00",
                 nonce, body):
        h.update(part)  # the wire format of every frame: cheaper code must not change it
    assert _mac(key, 1, "web1", 1764464000.5, nonce, body) == h.digest()
