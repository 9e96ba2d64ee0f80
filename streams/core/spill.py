"""Window and dedupe state kept in an ordered key-value store instead of Python dicts.

The bulk of a partition's state, one aggregate per (user, window) and one entry per
remembered event id, grows with the number of keys. These variants of
:class:`~streams.core.windows.WindowStore` and :class:`~streams.core.dedupe.Deduplicator` hold
it in a :class:`KeyValueStore` (RocksDB in the worker: :mod:`streams.state.rocks`), so that it
can outgrow memory. Only small bookkeeping stays in memory: the open window starts with their
sizes, and each live batch's seq with its newest ts.

The hot path stays batched and nearly unchanged: it reads the same plain dicts it reads in
memory, and when a (window, key) accumulator or an event id is not in them it fetches it from
the store into them (the compiled loop of a spilled segment has that one extra branch, only on
a miss). After the batch, what changed is written back and the dicts are emptied, with one
atomic write per batch (two or three when the batch closes windows or forgets expired ids,
since reads see earlier writes).

This module is pure: no I/O of its own, only calls to the store it is given. Values are encoded
with :mod:`marshal`, which is exact for ints, floats (infinities included) and ``None``; a
store is only ever read by the version of streams that wrote it (decision 0017 wipes others).

A store that already holds a partition's state (kept on disk across a restart, decision 0017)
is taken up with ``reopen``: each variant rebuilds what it keeps in memory from the store, and
changelog records applied afterwards (the changelog's tail) update the store in place.
"""

from __future__ import annotations

import heapq
import marshal
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from streams.core import changelog
from streams.core.dedupe import Deduplicator
from streams.core.windows import NEVER, WindowStore

# Key spaces. Window keys are the changelog's (``w<start>:<key>``), and each dedupe's batch
# keys too (its tag and the batch's seq); ``s<tag><event id>`` holds the largest ts an id was
# accepted with by the dedupe with that tag. ``.process`` operators use ``p``, ``i``, ``u``
# and ``c`` (:mod:`streams.core.spilled_process`), a join ``J`` and ``E``
# (:mod:`streams.core.spilled_join`); keys from ``\x00`` up are the runtime's.
_WINDOWS = (b"w", b"x")
_SEEN_TAG = b"s"
_MISSING = object()

# Writes buffered while restoring before they go to the store in one write.
RESTORE_FLUSH_AT = 50_000
# The beginnings of the changelog keys whose state a spilled segment keeps in its store
# (decision 0017): window accumulators, dedupe batches (``d<seq>``, ``D<n>:<seq>``), under
# the same keys; ``.process`` keys and their timer buckets (``p<n>:<key>``,
# ``P<n>:<bucket>:<key>``: :mod:`streams.core.spilled_process`) and a join's buffered events
# (``jl:...``, ``jr:...``: :mod:`streams.core.spilled_join`), in layouts of their own.
_HELD = (b"w", b"d", b"D", b"p", b"P", b"jl", b"jr")

_dumps = marshal.dumps
_loads = marshal.loads


class KeyValueStore(Protocol):
    """Byte keys and values in key order; what :class:`Spill` needs from a store."""

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The value of each key, ``None`` for a missing one."""
        ...

    def scan(self, begin: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` with ``begin <= key < end``, by key ascending."""
        ...

    def write(
        self, deleted_ranges: Sequence[tuple[bytes, bytes]], changes: Mapping[bytes, bytes | None]
    ) -> None:
        """Atomically delete each ``[begin, end)`` range, then put (or delete: ``None``)."""
        ...


def held(key: bytes) -> bool:
    """True when a spilled segment keeps the state of changelog key ``key`` in its store
    (window accumulators, dedupe batches, ``.process`` keys, a join's buffered events), so
    that a reopened store has it already."""
    return key.startswith(_HELD)


def _window_range(start: int) -> tuple[bytes, bytes]:
    # Keys of window start are exactly those beginning with ``w<start>:``; ``;`` follows ``:``.
    prefix = changelog.window_key_prefix(start)
    return prefix, prefix[:-1] + b";"


class Spill:
    """A store plus the writes not sent to it yet, which go out in one write at :meth:`flush`.

    Reads send pending writes first, so they always see every earlier write.
    """

    __slots__ = ("_ranges", "changes", "store")

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        # Pending puts, and deletes (None); loops may write it directly between two flushes.
        self.changes: dict[bytes, bytes | None] = {}
        self._ranges: list[tuple[bytes, bytes]] = []

    @property
    def pending(self) -> int:
        """Number of writes not sent yet."""
        return len(self.changes) + len(self._ranges)

    def put(self, key: bytes, value: bytes) -> None:
        self.changes[key] = value

    def delete(self, key: bytes) -> None:
        self.changes[key] = None

    def delete_range(self, begin: bytes, end: bytes) -> None:
        """Delete every key in ``[begin, end)``, including ones put since the last flush."""
        changes = self.changes
        for key in [key for key in changes if begin <= key < end]:
            del changes[key]
        self._ranges.append((begin, end))

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        self.flush()
        return self.store.get_many(keys)

    def scan(self, begin: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        self.flush()
        return self.store.scan(begin, end)

    def flush(self) -> None:
        """Send the pending writes as one atomic write."""
        if self.changes or self._ranges:
            self.store.write(self._ranges, self.changes)
            self.changes = {}
            self._ranges = []

    def flush_if_full(self) -> None:
        if len(self.changes) >= RESTORE_FLUSH_AT:
            self.flush()


class SpilledWindowStore(WindowStore):
    r""":class:`WindowStore` whose accumulators live in a :class:`KeyValueStore`.

    ``by_start`` still has one dict per open window, but between batches they are empty: the
    compiled loop :meth:`fetch`\ es what it misses into them, and :meth:`save` writes back
    the changed ones and empties them. A closed window is read from the store in key order
    (UTF-8 byte order, which is code point order) and deleted with one range delete.
    """

    __slots__ = ("_loaded", "_sizes", "_spill", "_stale")

    def __init__(self, size_ms: int, grace_ms: int, spill: Spill) -> None:
        super().__init__(size_ms, grace_ms)
        self._spill = spill
        # start -> accumulators of the window in the store, as of the last save.
        self._sizes: dict[int, int] = {}
        # start -> accumulators the current batch read from the store into by_start[start].
        self._loaded: dict[int, int] = {}
        self._stale = False

    def __len__(self) -> int:
        self.ensure_index()
        return sum(self._sizes.values())

    def fetch(self, start: int, key: str) -> list[Any] | None:
        """The stored accumulator of ``key`` in open window ``start``, now in ``by_start``;
        None if it has none."""
        (value,) = self._spill.get_many([changelog.window_key_prefix(start) + key.encode()])
        if value is None:
            return None
        acc: list[Any] = _loads(value)
        self.by_start[start][key] = acc
        self._loaded[start] = self._loaded.get(start, 0) + 1
        return acc

    def save(self, touched: Mapping[int, Mapping[str, Any]]) -> None:
        """Write back the accumulators a batch changed (``touched``) and empty ``by_start``."""
        by_start = self.by_start
        sizes = self._sizes
        loaded = self._loaded
        changes = self._spill.changes
        for start, changed in touched.items():
            users = by_start.get(start)
            if users is None:
                continue  # closed during the batch: already deleted from the store
            prefix = changelog.window_key_prefix(start)
            for key, acc in changed.items():
                changes[prefix + key.encode()] = _dumps(acc)
            # The batch only adds keys, and every added one is in changed.
            sizes[start] = sizes.get(start, 0) + len(users) - loaded.get(start, 0)
            users.clear()
        for start in loaded:
            users = by_start.get(start)
            if users is not None:
                users.clear()
        loaded.clear()

    def close_until(self, stream_time: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Remove and yield, oldest first, the windows closed at ``stream_time``."""
        self.ensure_index()
        starts = self._starts
        reach = self._reach
        spill = self._spill
        while starts and starts[0] + reach <= stream_time:
            start = starts.pop(0)
            cached = self.by_start.pop(start)
            self._sizes.pop(start, None)
            self._loaded.pop(start, None)
            begin, end = _window_range(start)
            skip = len(begin)
            users = {key[skip:].decode(): _loads(value) for key, value in spill.scan(begin, end)}
            users.update(cached)
            spill.delete_range(begin, end)
            self.next_close = starts[0] + reach if starts else NEVER
            yield start, users
        self.next_close = starts[0] + reach if starts else NEVER

    def put(self, start: int, key: str, acc: list[Any]) -> None:
        self._spill.put(changelog.window_key_prefix(start) + key.encode(), _dumps(acc))
        self._stale = True
        self._spill.flush_if_full()

    def discard(self, start: int, key: str) -> None:
        self._spill.delete(changelog.window_key_prefix(start) + key.encode())
        self._stale = True
        self._spill.flush_if_full()

    def clear(self) -> None:
        """Forget every window (a changed declaration starts afresh)."""
        self._spill.delete_range(*_WINDOWS)
        self._stale = True

    def reopen(self) -> None:
        """Take up the windows the store already holds (found at the next :meth:`ensure_index`,
        after the changelog's tail is applied)."""
        self._stale = True

    def ensure_index(self) -> None:
        """After :meth:`put`, :meth:`discard` or :meth:`clear`: find the open windows and
        their sizes."""
        if not self._stale:
            return
        sizes: dict[int, int] = {}
        for key, _ in self._spill.scan(*_WINDOWS):
            start = int(key[1 : key.index(b":")])
            sizes[start] = sizes.get(start, 0) + 1
        self._sizes = sizes
        self._starts[:] = sorted(sizes)
        self.by_start.clear()
        self.by_start.update((start, {}) for start in self._starts)
        self.next_close = self._starts[0] + self._reach if self._starts else NEVER
        self._stale = False


class SpilledDeduplicator(Deduplicator):
    r""":class:`Deduplicator` whose ids live in a :class:`KeyValueStore`.

    ``seen`` is the current batch's view: the compiled loop :meth:`fetch`\ es an id it
    misses into it (``None`` for an id not held), uses it as in memory, and the end of
    :meth:`~Deduplicator.remember` (its purge) writes back what changed and empties it. Each
    live batch's ids are in the store under the batch's changelog key.
    """

    __slots__ = ("_base", "_count", "_indexed", "_seen_prefix", "_spill")

    def __init__(self, horizon_ms: int, spill: Spill, tag: bytes = changelog.DEDUPE_TAG) -> None:
        super().__init__(horizon_ms, tag)
        self._spill = spill
        self._seen_prefix = _SEEN_TAG + tag
        # id -> its value in the store when read into seen (None: not held).
        self._base: dict[str, int | None] = {}
        self._count = 0
        # Until the index is built (ensure_index, reopen), restored batches are only kept,
        # and the ids' ts rebuilt from all of them at once (a restore from the whole
        # changelog); once it is, each restored batch updates it in place.
        self._indexed = False

    def __len__(self) -> int:
        self.ensure_index()
        return self._count

    def _key(self, event_id: str) -> bytes:
        return self._seen_prefix + event_id.encode()

    def fetch(self, event_id: str) -> int | None:
        """The largest ts ``event_id`` was accepted with (None: not held), now in ``seen``."""
        self._fetch([event_id])
        return self.seen[event_id]

    def _fetch(self, ids: Iterable[str]) -> None:
        """Read the ids not read yet into ``seen``, keeping values already set there."""
        base = self._base
        wanted = [event_id for event_id in ids if event_id not in base]
        values = self._spill.get_many([self._key(event_id) for event_id in wanted])
        seen = self.seen
        for event_id, value in zip(wanted, values, strict=True):
            ts = None if value is None else int(value)
            base[event_id] = ts
            seen.setdefault(event_id, ts)

    def _forget(self, ids: Collection[str], stream_time: int) -> None:
        seen = self.seen
        horizon = self._horizon
        # Ids outside the current batch's view are checked and deleted in the store directly;
        # reads see pending deletes, so an id in two expiring batches is counted once.
        keys = [self._key(event_id) for event_id in ids if event_id not in seen]
        if keys:
            values = self._spill.get_many(keys)
            changes = self._spill.changes
            forgotten = 0
            for key, value in zip(keys, values, strict=True):
                if value is not None and int(value) + horizon <= stream_time:
                    changes[key] = None
                    forgotten += 1
            self._count -= forgotten
        for event_id in ids:
            ts = seen.get(event_id)
            if ts is not None and ts + horizon <= stream_time:
                seen[event_id] = None

    def purge(self, stream_time: int) -> list[changelog.Record]:
        records = super().purge(stream_time)
        self._save()
        return records

    def _save(self) -> None:
        """Write back the ids whose ts changed in ``seen``, and empty it."""
        seen = self.seen
        base = self._base
        self._fetch([event_id for event_id in seen if event_id not in base])
        changes = self._spill.changes
        count = self._count
        for event_id, ts in seen.items():
            before = base[event_id]
            if ts == before:
                continue
            if ts is None:
                changes[self._key(event_id)] = None
                count -= 1
            else:
                changes[self._key(event_id)] = b"%d" % ts
                if before is None:
                    count += 1
        self._count = count
        seen.clear()
        base.clear()

    def _batch_ids(self, seq: int) -> dict[str, int]:
        (value,) = self._spill.get_many([self.tag + b"%d" % seq])
        assert value is not None, f"batch {seq} has no ids in the store"
        ids: dict[str, int] = _loads(value)
        return ids

    def _batch_keys(self, seq: int) -> Collection[str]:
        return self._batch_ids(seq)

    def _keep_ids(self, seq: int, ids: dict[str, int]) -> None:
        self._spill.put(self.tag + b"%d" % seq, _dumps(ids))

    def _drop_ids(self, seq: int) -> None:
        self._spill.delete(self.tag + b"%d" % seq)

    def apply(self, seq: int, ids: dict[str, int] | None) -> None:
        if not self._indexed:
            super().apply(seq, ids)
            self._spill.flush_if_full()
        elif ids is None:
            newest = self._newest.pop(seq, None)
            if newest is not None:
                batch = self._batch_ids(seq)
                self._drop_ids(seq)
                # It was purged at a stream time of at least newest + horizon: its ids are
                # forgotten as that purge forgot them, unless a later batch holds them again
                # (an expired id left behind is harmless: it never makes a duplicate).
                self._forget(batch, newest + self._horizon)
        elif ids:
            newest = max(ids.values())
            self._newest[seq] = newest
            self._keep_ids(seq, ids)
            heapq.heappush(self._expiries, (newest + self._horizon, seq))
            self._fetch(ids)
            seen = self.seen
            for event_id, ts in ids.items():
                previous = seen[event_id]
                if previous is None or ts > previous:
                    seen[event_id] = ts
            self._save()

    def clear(self) -> None:
        """Forget every id (a changed declaration starts afresh)."""
        for seq in list(self._newest):
            self._drop_ids(seq)
        self._newest.clear()
        self._expiries.clear()
        self._spill.delete_range(self._seen_prefix, after(self._seen_prefix))
        self.seen.clear()
        self._base.clear()
        self._count = 0
        # Batches restored after this (the records after a fingerprint) are kept in bulk.
        self._indexed = False

    def reopen(self) -> None:
        """Take up the ids the store already holds: the live batches with their expiries, and
        the number of ids; batches restored afterwards update them in place."""
        newest: dict[int, int] = {}
        skip = len(self.tag)
        for key, value in self._spill.scan(self.tag, after(self.tag)):
            ids: dict[str, int] = _loads(value)
            if ids:
                newest[int(key[skip:])] = max(ids.values())
        self._newest = newest
        self._expiries = [(ts + self._horizon, seq) for seq, ts in newest.items()]
        heapq.heapify(self._expiries)
        seen = self._spill.scan(self._seen_prefix, after(self._seen_prefix))
        self._count = sum(1 for _ in seen)
        self.seen.clear()
        self._base.clear()
        self._stale = False
        self._indexed = True

    def ensure_index(self) -> None:
        """Rebuild the ids' ts and the expiry queue after :meth:`apply`, batch by batch."""
        self._indexed = True
        if not self._stale:
            return
        spill = self._spill
        spill.delete_range(self._seen_prefix, after(self._seen_prefix))
        self._count = 0
        self.seen.clear()
        self._base.clear()
        seen = self.seen
        for seq in self._newest:
            ids = self._batch_ids(seq)
            self._fetch(ids)  # the ts held so far, from the batches rebuilt before
            for event_id, ts in ids.items():
                previous = seen[event_id]
                if previous is None or ts > previous:
                    seen[event_id] = ts
            self._save()
        self._expiries = [(newest + self._horizon, seq) for seq, newest in self._newest.items()]
        heapq.heapify(self._expiries)
        self._stale = False


def after(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def ordered(number: int) -> bytes:
    """``number`` (an int >= 0, of any size) as bytes whose byte order is the numbers'
    order: its length, then its big-endian bytes. No encoding is a prefix of another, so
    ``ordered(n) + suffix`` keys sort by ``n`` first."""
    size = (number.bit_length() + 7) >> 3
    return bytes((size,)) + number.to_bytes(size, "big")
