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
