"""A push-pull's bulk merge decides exactly as merging its statements one by one would.

The bulk path (all-new members added at C speed) must not change a rule of belief: vouching,
claims to our own name, a name listed twice, instance replacement, suspect/down/left marks.
Random tables and batches with fixed seeds; each compared on the table, its digest (buckets,
epochs, members per epoch), the changes and what was learned.
"""

import random
from collections import Counter

import pytest

from flock_node.membership.digest import FINE
from flock_node.membership.messages import ALIVE, DOWN, LEFT, SUSPECT, Alive, Entry, Mark
from flock_node.membership.swim import Swim

ME = "m0"


def _vouch(a: Alive) -> bool:
    return a.sig != b"forged"


def _machine() -> Swim:
    return Swim(Alive(ME, 5000, "me", ME), random.Random(0), vouch=_vouch)


def _alive(rng: random.Random, k: int) -> Alive:
    return Alive(f"m{k}", rng.randrange(0, 20000), rng.choice(["a", "b"]), f"m{k}",
                 rng.randrange(0, 3), None, b"forged" if rng.random() < 0.1 else b"")


def _entry(rng: random.Random, k: int) -> Entry:
    a = _alive(rng, k)
    if rng.random() < 0.3:
        state = rng.choice([SUSPECT, DOWN, LEFT])
        by = f"m{k}" if state == LEFT else "m9"
        return Mark(a.node, state, a.incarnation + rng.randrange(0, 2), by, a)
    return a


def _one_by_one(m: Swim, states: list[Entry], sender: str) -> None:
    """What `_merge` must amount to: each statement through the single-entry rules."""
    for s in states:
        if type(s) is Alive:
            m._alive(0.0, s, sender, s.node == sender)
        else:
            m._alive(0.0, s.alive, sender, False)
            if s.state == SUSPECT:
                m._suspect(0.0, s.node, s.incarnation, s.by)
            else:
                m._dead(0.0, s.node, s.incarnation, s.by)


def _seen(m: Swim) -> tuple:
    d = m.digest
    return (dict(m.table), list(d.fine), {e: list(v) for e, v in d.epochs.items()},
            {e: sorted(x.node for x in d.in_epochs({e}, m.table.get)) for e in d.members}, sorted(m._order) == sorted(m.table),
            m.learned, m.me, m.down)


@pytest.mark.parametrize("seed", range(40))
def test_bulk_merge_equals_merging_one_by_one(seed):
    rng = random.Random(seed)
    held = [_entry(rng, k) for k in rng.sample(range(1, 60), rng.randrange(0, 30))]
    batch: list[Entry] = [_entry(rng, k) for k in rng.sample(range(1, 120), rng.randrange(1, 80))]
    if rng.random() < 0.3:
        batch.append(Alive(ME, rng.randrange(4000, 6000), rng.choice(["me", "x"]), ME))
    if rng.random() < 0.2 and batch:
        batch.append(batch[0])  # a name twice
    if rng.random() < 0.5:
        batch = [e for e in batch if type(e) is Alive]  # the bulk path's common case
    sender = rng.choice([e.node for e in batch] + ["m200"])
    bulk, single = _machine(), _machine()
    for m in (bulk, single):
        _one_by_one(m, held, "m300")
        m._flush(0.0)
    heard: list = []
    bulk.listeners.append(heard.append)
    counted = rng.random() < 0.5
    if counted:
        bulk.bulk = []  # as the simulator has it: bulk adds as lists of names
    bulk._merge(0.0, batch, sender)
    _one_by_one(single, batch, sender)
    assert _seen(bulk) == _seen(single)
    # The same changes, told to listeners too; or, for a caller that counts bulk adds
    # itself, a list of names for each bulk add and the rest as changes.
    out_b, out_s = bulk._flush(0.0), single._flush(0.0)
    changes = Counter(out_b[1])
    assert Counter(heard) == changes
    if counted:
        changes.update((n, None, ALIVE) for names in bulk.bulk for n in names)
    assert changes == Counter(out_s[1])
    assert {k for k in bulk.queue._live} == {k for k in single.queue._live}
    assert len(bulk.digest.fine) == FINE


@pytest.mark.parametrize("seed", range(4))
def test_a_big_bulk_merge_equals_merging_one_by_one(seed):
    # Over 256 new members the bucket digest is recomputed lazily from the table.
    rng = random.Random(seed)
    held = [_entry(rng, k) for k in range(1, 50)]
    batch: list[Entry] = [_alive(rng, k) for k in range(30, 700)]
    bulk, single = _machine(), _machine()
    for m in (bulk, single):
        _one_by_one(m, held, "m300")
        m._flush(0.0)
    bulk._merge(0.0, batch, "m40")
    _one_by_one(single, batch, "m40")
    assert _seen(bulk) == _seen(single)
    assert sorted(bulk._flush(0.0)[1], key=repr) == sorted(single._flush(0.0)[1], key=repr)


def test_a_want_is_answered_by_name_keys_and_a_shared_key_falls_back_to_the_table():
    import zlib

    from flock_node.membership.digest import _keys, keys_of, names_of

    m = _machine()
    rng = random.Random(7)
    _one_by_one(m, [_alive(rng, k) for k in range(1, 40)], "m300")
    held = [e for e in m.table.values()][:10] + [m.me]
    keys = keys_of(held) + [zlib.crc32(b"nobody we know")]
    assert {e.node for e in m._wanted(keys)} == {e.node for e in held}
    # Two strings with one CRC-32 (found once by a birthday search): the key names no one
    # member, so the answer comes from a pass over the table, still exact.
    a, b = "twin3438996", "twin10000640"
    assert zlib.crc32(a.encode()) == zlib.crc32(b.encode())
    _keys[a], _keys[b]  # noqa: B018  # both keyed, as two members would be
    assert names_of([_keys[a]]) is None
    m._alive(0.0, Alive(a, 1, "x", a), a, False)
    got = m._wanted([_keys[a]])
    assert [e.node for e in got] == [a]


def test_a_catch_up_answer_holding_our_own_statement_is_still_merged_in_bulk():
    m = _machine()
    rng = random.Random(3)
    batch: list[Entry] = [Alive(f"m{k}", rng.randrange(0, 9000), "a", f"m{k}")
                          for k in range(1, 300)]
    batch.insert(150, Alive(ME, 9999, "other", ME))  # someone's claim to our name
    one_by_one = []
    single = m._alive
    m._alive = lambda now, a, sender, gossip: (one_by_one.append(a.node),  # type: ignore[method-assign]
                                               single(now, a, sender, gossip))
    m._merge(0.0, batch, "m1")
    assert one_by_one == [ME]  # the others in bulk
    assert len(m.table) == 299 and m.me.incarnation == 10000  # and the claim refuted
