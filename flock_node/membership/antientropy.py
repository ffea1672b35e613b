"""Push-pull anti-entropy: digest first, then only the buckets that differ, in pages.

A periodic exchange sends our table's digest (`digest.py`, 8 bytes a bucket of about 16
members); the other side answers only when some bucket differs, with its entries in those
buckets and its own digest; we merge them and send back our entries in the buckets that
still differ (what it lacks). When many entries differ (tables that differ a lot differ in
every bucket) the answer is a summary instead, 12 bytes an entry; we send what it lacks and
ask for what we lack, so an exchange moves what it teaches. Equal tables cost one small
message; a member that missed one update gets a bucket, not the table. A joiner (nothing to compare yet) still sends itself and
gets the whole table. Any list of entries goes out in pages of at most `page_bytes`, so a
flock of any size stays under nng's 1 MiB frame limit. While a node catches up (a flock
forming) the exchanges compare epochs of start times instead (epochs.py).
"""

from __future__ import annotations

from itertools import compress
from operator import not_

from flock_node.membership import epochs
from flock_node.membership.digest import (
    buckets_for,
    differing,
    entry_hash,
    entry_hashes,
    keys_of,
    names_of,
    pack,
    pack_keys,
    pack_summary,
    select,
    unpack,
    unpack_keys,
    unpack_summary,
)
from flock_node.membership.merge import Merging
from flock_node.membership.messages import DOWN, LEFT, Alive, Entry, Mark, PushPull

_SUMMARY_FROM = 64  # entries to answer a digest with: more are named first, sent if lacking
_SMALL = 32  # entries that always fit in one page (a record is far below page_bytes / 32)


class AntiEntropy(Merging):
    """The push-pull side of a member: when to exchange, with whom, and what to send."""

    _pp_delay = 2.0
    _pp_learned = 0
    _pp_due = 0.0
    _pp_quiet = 0  # exchanges in a row that taught nothing
    _packed: tuple[int, Entry | None, bytes] = (-1, None, b"")  # _recent_epochs

    def _periodic_push_pull(self, now: float) -> None:
        # While exchanges teach us many members (a flock forming, a partition healed) they
        # come every 2 s, every 4 s while they teach a few, then at the interval,
        # stretched with the flock's size as memberlist does, so the bytes per node per
        # second stay bounded.
        n = len(self.table) + 1
        scale = 1 + max(0, (n.bit_length() - 6))
        learned, longest = self.learned - self._pp_learned, self.cfg.push_pull_interval * scale
        if learned > max(8, n // 30):
            self._pp_delay = self.cfg.push_pull_first  # still learning many: keep at it
        elif learned or self._pp_quiet < 2:
            # The last stragglers; and two more after an exchange taught nothing, because
            # that partner may have lacked the same straggler.
            self._pp_quiet = 0 if learned else self._pp_quiet + 1
            self._pp_delay = min(self.cfg.push_pull_first * 2, longest)
        else:
            self._pp_delay = longest
        self._pp_learned = self.learned
        self._pp_at(now + self._pp_delay * (0.5 + self.rng.random()))
        # Half the time a member we believe down, if any (serf's reconnect): that is how the
        # two sides of a healed partition meet, each learning the other holds it down.
        if self._pp_delay == self.cfg.push_pull_first and self._order:
            # Catching up: of a few members drawn at random, the one that started last
            # (incarnations are start times) joined through a seed last, so knows the most.
            rng, order, table = self.rng, self._order, self.table
            drawn = [table.get(order[int(rng.random() * len(order))]) for _ in range(8)]
            best = max((e for e in drawn if type(e) is Alive), default=None,
                       key=lambda e: e.incarnation)
            addrs = [best.addr] if best is not None else []
        elif self.down and self.rng.random() < 0.5:
            e = self.table[sorted(self.down)[int(self.rng.random() * len(self.down))]]
            addrs = [self._addr(e.node, e)]
        else:
            addrs = self._random_addrs(1, None)
        if not addrs:
            return
        if self._pp_delay < longest and len(self.digest.epochs) < epochs.EPOCHS_SENT:
            # Catching up (or the stragglers): what we lack are mostly those who started
            # after us, so compare epochs of start times (epochs.py): the other side selects
            # what differs without a pass over its table.
            self._sends.append((addrs[0], PushPull(self.name, self.me.addr, False, False,
                                                   epochs=self._recent_epochs())))
            return
        self._push_pull_with(addrs[0])

    def _recent_epochs(self) -> bytes:
        """Our latest epochs, packed (epochs.py): kept until the table or we change."""
        packed = self._packed_still()
        if packed is None:
            packed = epochs.pack_recent(self.digest.epochs, self.me, entry_hash(self.me))
            self._packed = (self.digest.writes, self.me, packed)
        return packed

    def _packed_still(self) -> bytes | None:
        """The epochs we last packed, if neither our table nor our statement changed since."""
        writes, me, packed = self._packed
        return packed if writes == self.digest.writes and me is self.me else None

    def _push_pull_with(self, addr: str) -> None:
        """Start a digest exchange with `addr`."""
        b = buckets_for(len(self.table) + 1)
        self._sends.append((addr, PushPull(self.name, self.me.addr, False, False, [],
                                           pack(self.digest.folded(b, self.me)))))

    def _pp_at(self, when: float) -> None:
        self._pp_due = when
        self._at(when, "pp", when)

    def _states(self) -> list[Entry]:
        states: list[Entry] = list(self.table.values())
        states.append(self.me)
        return states

    def _in_epochs(self, wanted: set[int]) -> list[Entry]:
        """Our entries (our statement too) in the `wanted` epochs, without a table pass."""
        states = self.digest.in_epochs(wanted, self.table.get)
        if epochs.epoch_of(self.me) in wanted:
            states.append(self.me)
        return states

    def _push_pulled(self, now: float, msg: PushPull) -> None:
        if msg.epochs and not msg.summary:
            self._epochs_pulled(now, msg)
            return
        theirs = unpack(msg.digest) if msg.digest else None
        if msg.digest and theirs is None:
            return  # not a digest we can read: nothing to compare with
        to = msg.reply_to
        if not msg.reply and theirs is None:
            # A whole table (a joiner's, or an older peer's): the answer is our table as it
            # was (the sender has its own entries already), with our statement as it is
            # after the merge: a refutation if the sender held us down.
            ours = self._states()
            self._merge(now, msg.states, msg.sender)
            ours[-1] = self.me
            self._push(to, msg.join, ours, b"")
            return
        if msg.summary:
            self._summarized(to, msg)
            return
        me = self.me
        if msg.states:
            self._merge(now, msg.states, msg.sender)
        if theirs is not None:
            # A digest to compare (a request), or one with the entries we lacked (the
            # answer to ours): send what differs still, with our digest on a request only.
            b = len(theirs)
            mine = self.digest.folded(b, self.me)
            diff = differing(mine, theirs)
            if not diff:
                return
            states = select(self._states(), b, diff)
            if not msg.reply and _SUMMARY_FROM < len(states) <= self.cfg.page_bytes // 12:
                # Tables that differ a lot differ in every bucket: name what we hold there
                # (12 bytes an entry) and let the asker say what it lacks, rather than
                # sending it the entries it has already.
                hashes = entry_hashes(states, self.digest.hashes)
                self._sends.append((to, PushPull(self.name, self.me.addr, False, True, [],
                                                 pack(mine), pack_summary(keys_of(states),
                                                                          hashes))))
            else:
                self._push(to, False, states, b"" if msg.reply else pack(mine))
            return
        wanted = unpack_keys(msg.want) if msg.want else None
        if wanted:
            # The asker's last leg: the entries it lacks, and a refutation if it held us
            # suspect or down.
            states = self._wanted(wanted)
            if self.me is not me and self.me not in states:
                states.append(self.me)
            self._push(to, False, states, b"")
        elif self.me is not me:
            # The last leg told us someone holds us suspect or down: they hear the refutation
            # now rather than by gossip.
            self._push(to, False, [self.me], b"")

    def _wanted(self, keys: list[int]) -> list[Entry]:
        """Our entries (our statement too) whose name keys are `keys`."""
        names = names_of(keys)
        if names is None:
            want = set(keys)
            states = self._states()
            return list(compress(states, map(want.__contains__, keys_of(states))))
        names = list(dict.fromkeys(names))
        out: list[Entry] = list(filter(None, map(self.table.get, names)))
        if self.name in names:
            out.append(self.me)
        return out

    def _epochs_pulled(self, now: float, msg: PushPull) -> None:
        """A catch-up exchange by epochs of start times: a request is answered with our
        entries in the epochs that differ (or their summary when the asker holds many of
        them already) and our epochs; the answer is merged and what still differs sent
        back."""
        if not msg.reply and msg.epochs == self._packed_still():
            return  # a request equal to our last one, our table unchanged since: equal tables
        theirs = epochs.unpack(msg.epochs)
        if theirs is None:
            return
        to, me = msg.reply_to, self.me
        if msg.states:
            self._merge(now, msg.states, msg.sender)
        me_hash = entry_hash(self.me)
        if msg.reply:
            diff = epochs.unequal_in(self.digest.epochs, self.me, me_hash, theirs)
            if diff:
                # What they lack: ours there but what they just sent (by hash), so an
                # epoch both hold is not sent back whole.
                got = set(entry_hashes(msg.states, self.digest.hashes))
                back = self._in_epochs(diff)
                back = list(compress(back, map(not_, map(
                    got.__contains__, entry_hashes(back, self.digest.hashes)))))
                self._push(to, False, back, b"")
            elif self.me is not me:
                self._push(to, False, [self.me], b"")
            return
        diff = epochs.differing(self.digest.epochs, self.me, me_hash, theirs)
        if not diff:
            return
        states = self._in_epochs(diff)
        ours = epochs.pack(epochs.view(self.digest.epochs, self.me, me_hash, diff))
        held = epochs.held(theirs, diff)
        if _SUMMARY_FROM < len(states) <= self.cfg.page_bytes // 12 and held * 4 > len(states):
            # They hold many of these already: name ours (12 bytes each), they ask.
            hashes = entry_hashes(states, self.digest.hashes)
            self._sends.append((to, PushPull(self.name, self.me.addr, False, True, [], b"",
                                             pack_summary(keys_of(states), hashes),
                                             epochs=ours)))
        else:
            self._push(to, False, states, b"", epochs=ours)

    def _summarized(self, to: str, msg: PushPull) -> None:
        """The answer to our digest named the entries it holds where the tables differ:
        send the ones it lacks (or holds older), ask for the ones we lack."""
        summary = unpack_summary(msg.summary)
        if summary is None:
            return
        keys, hashes = summary
        if msg.epochs:
            eps = epochs.unpack(msg.epochs)
            if eps is None:
                return
            ours = self._in_epochs(set(eps))
        else:
            theirs = unpack(msg.digest) if msg.digest else None
            if theirs is None:
                return
            b = len(theirs)
            # The buckets that still differ (one that became equal since our request holds
            # what they listed there: asked for again, merged as no change).
            ours = select(self._states(), b, differing(self.digest.folded(b, self.me), theirs))
        our_hashes = entry_hashes(ours, self.digest.hashes)
        have, held = set(our_hashes), set(hashes)
        # The differences are few next to what both hold: found as sets, then picked out.
        ours_only, theirs_only = have - held, held - have
        lacking = list(compress(ours, map(ours_only.__contains__, our_hashes))) if (
            ours_only) else []
        want = list(compress(keys, map(theirs_only.__contains__, hashes))) if (
            theirs_only) else []
        if lacking or want:
            self._push(to, False, lacking, b"", pack_keys(want))

    def _push(self, addr: str, join: bool, states: list[Entry], digest: bytes,
              want: bytes = b"", epochs: bytes = b"") -> None:
        """Send `states` to `addr` as answer pages, the digests and `want` on the last one."""
        pages = self._pages(states)
        for k, page in enumerate(pages):
            last = k == len(pages) - 1
            self._sends.append((addr, PushPull(self.name, self.me.addr, join, True, page,
                                               digest if last else b"",
                                               want=want if last else b"",
                                               epochs=epochs if last else b"")))

    def _pages(self, states: list[Entry]) -> list[list[Entry]]:
        if len(states) <= _SMALL:
            return [states]
        # Measured whole (encoded at C speed), then split in
        # equal runs of entries, halved again where a run of big records is still too big.
        limit = self.cfg.page_bytes
        size = self.measure(states)
        if size <= limit:
            return [states]
        k = -(-size // limit)
        step = -(-len(states) // k)
        pages: list[list[Entry]] = []
        todo = [states[i:i + step] for i in range(0, len(states), step)]
        while todo:
            page = todo.pop(0)
            if len(page) > 1 and self.measure(page) > limit:
                half = len(page) // 2
                todo[:0] = [page[:half], page[half:]]
            else:
                pages.append(page)
        return pages

    def _random_addrs(self, k: int, exclude: str | None,
                      include_down: bool = False) -> list[str]:
        order, table, rng = self._order, self.table, self.rng
        out: list[str] = []
        seen = set()
        for _ in range(k * 3):
            if len(out) >= k or not order:
                break
            n = order[int(rng.random() * len(order))]
            e = table.get(n)
            if n == exclude or n in seen or e is None:
                continue
            if type(e) is Mark and (e.state == LEFT or (e.state == DOWN and not include_down)):
                continue
            seen.add(n)
            out.append(self._addr(n, e))
        return out
