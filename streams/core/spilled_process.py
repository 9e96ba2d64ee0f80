"""``.process`` state kept in a key-value store instead of Python dicts (``STREAMS_STORE=rocksdb``).

:class:`SpilledProcessState` is :class:`~streams.core.process.ProcessState` whose keys, timers
and touch order live in the task's store (:class:`~streams.core.spill.Spill`), so that a
partition's ``.process`` state can outgrow memory as its windows can. Between two chunks
nothing of it is in Python but a few numbers: stream time, the counts of keys and timers, the
next timer generation, and the changelog records not drained yet.

A chunk (or an idle advance) runs the memory variant's own loop over a **view**: before it,
one scan of the timer order finds the timers that can come due in the chunk (``at_ms`` up to
the largest event time it holds), one scan of the touch order the keys its stream time can
expire (with ``ttl_ms``), and one ``get_many`` reads the records of those keys and of the
chunk's own into ``keys``; the due timers go on the heap. After it, the keys whose record
changed are written back with the changes to both orders, in the spill's pending writes (one
write per batch: :meth:`~streams.core.spill.Spill.flush` is the segment's), and the view is
emptied. A timer that cannot fire in the chunk is only in the store; neither is a key that no
event, timer or expiry of the chunk reaches.

Store keys (``<n>`` is the operator's number, ``ord(x)`` an order-keeping encoding of an
int; the key space is the task's, shared with the segment's other operators):

==========================  ================================================================
``p<n>:<key>``              the key: ``marshal((values, timers, touch, split))``, its values
                            as their JSON bytes (exact: no decode and encode in between)
``i<n>:<ord(at)><key>``     a pending timer, in ``(at_ms, key)`` order (empty value)
``u<n>:<ord(touch)><key>``  with ``ttl_ms``: the key's last touch, in ``(touch, key)`` order
``c<n>:``                   ``keys timers``: the counts, so that a reopened store has them
==========================  ================================================================

The changelog records are the memory variant's, made from the same state by the same code
(bucket records included: a split key's timers are all in its one store record, the buckets
are derived). Restored records are kept in memory as they come (last one per changelog key)
and applied to the store in bulk, every ``RESTORE_FLUSH_AT`` and at the restore's end: one
``get_many`` of the keys' stored records, their new ones and the changes to both orders.
"""

from __future__ import annotations

import heapq
import marshal
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from streams.core import process
from streams.core import spill as spill_module
from streams.core.failures import Site
from streams.core.outcome import Item, Outcome
from streams.core.process import _GEN_BITS, _GEN_MASK, KeyState, ProcessState
from streams.core.spill import Spill, after, ordered
from streams.core.streamtime import NO_TIME

_dumps = marshal.dumps
_loads = marshal.loads
# Touches are shifted to be >= 0 in the touch order (a restored key may have none: NO_TIME).
_TOUCH_SHIFT = -NO_TIME
# Stored values of a key as a chunk read it: its timers and touch (what the orders hold).
_Base = tuple[Iterable[int], int]
_NOTHING: _Base = ((), NO_TIME)


class SpilledProcessState(ProcessState):
    """:class:`ProcessState` whose keys live in a :class:`~streams.core.spill.Spill` (see the
    module doc); ``keys`` and ``heap`` are a chunk's view, empty between chunks."""

    def __init__(
        self,
        fn: Callable[..., Any],
        on_timer: Callable[..., Any] | None,
        ttl_ms: int | None,
        tag: bytes,
        site: Site,
        timer_site: Site,
        spill: Spill,
    ) -> None:
        super().__init__(fn, on_timer, ttl_ms, tag, site, timer_site)
        self._spill = spill
        number = tag[1:]  # b"<n>:"
        self._timer_order = b"i" + number
        self._touch_order = b"u" + number
        self._counts_key = b"c" + number
        self._count = 0  # keys held
        # The view's keys as the store held them: key -> (timers, touch).
        self._base: dict[str, _Base] = {}
        # Since the last drain: each changed key's record (by changelog key), each changed
        # bucket's record; in the order of their first change, as the memory variant drains.
        self._records: dict[bytes, bytes | None] = {}
        self._bucket_records: dict[bytes, bytes | None] = {}
        # Restored records not in the store yet: changelog key -> value, the last one each.
        self._restored: dict[bytes, bytes | None] = {}

    def __len__(self) -> int:
        return self._count

    # -- a chunk -----------------------------------------------------------------------

    def run(self, items: list[Item], out: Outcome) -> list[Item]:
        if not items:
            return []
        bound = self.stream_time
        for item in items:
            if item[3] > bound:
                bound = item[3]
        self._load([item[2] for item in items if item[2] is not None], bound)
        emitted = super().run(items, out)
        self._save()
        return emitted

    def advance(self, target: int, out: Outcome) -> list[Item]:
        if target <= self.stream_time:
            return []
        self._load((), target)
        emitted = super().advance(target, out)
        self._save()
        return emitted

    def _load(self, keys: Iterable[str], bound: int) -> None:
        """Read into the view the keys a chunk whose stream time reaches at most ``bound``
        can touch: its own (``keys``), those with timers due by then, and those its TTL can
        expire (first, in touch order: the view's order is then the order of expiry); the
        timers due by then go on the heap."""
        spill = self._spill
        due: list[tuple[int, str]] = []
        if self.pending and bound >= 0:
            order = self._timer_order
            due = _entries(spill.scan(order, order + ordered(bound + 1)), len(order))
        wanted: dict[str, None] = {}
        if self.ttl_ms is not None and self._count:
            order = self._touch_order
            limit = bound - self.ttl_ms + 1 + _TOUCH_SHIFT
            if limit > 0:
                expiring = _entries(spill.scan(order, order + ordered(limit)), len(order))
                wanted.update((key, None) for _, key in expiring)
        wanted.update((key, None) for _, key in due)
        wanted.update((key, None) for key in keys)
        tag = self.tag
        names = list(wanted)
        values = spill.get_many([tag + name.encode() for name in names])
        view = self.keys
        base = self._base
        for name, value in zip(names, values, strict=True):
            if value is not None:
                held = view[name] = _held(value)
                base[name] = (tuple(held.timers), held.touched)
        if due:
            heap = self.heap
            timer_keys = self.timer_keys
            generation = self.generation
            for at, name in due:
                generation = (generation + 1) & _GEN_MASK
                view[name].timers[at] = generation
                timer_keys[generation] = name
                heap.append(at << _GEN_BITS | generation)
            self.generation = generation
            heapq.heapify(heap)

    def _save(self) -> None:
        """Write back what the chunk changed and empty the view."""
        changed = self.changed
        timer_changes = self.timer_changes
        view = self.keys
        if changed or timer_changes:
            base = self._base
            store = self._spill.changes
            with_touch = self.ttl_ms is not None
            tag = self.tag
            records = self._records
            affected: dict[str, None] = {}
            for key in changed:
                held = view.get(key)
                name = tag + key.encode()
                if held is None:
                    records[name] = store[name] = None
                else:
                    records[name] = held.encode(with_touch)
                    store[name] = _stored(held)
                affected[key] = None
            if timer_changes:
                self._save_buckets(affected)
            count = self._count
            for key in affected:
                held = view.get(key)
                before = base.get(key)
                if held is not None and key not in changed:
                    store[tag + key.encode()] = _stored(held)
                self._reorder(key, before or _NOTHING, held)
                count += (held is not None) - (before is not None)
            self._count = count
            store[self._counts_key] = b"%d %d" % (count, self.pending)
            self.changed = {}
            self.timer_changes = {}
        view.clear()
        self.heap = []
        self.timer_keys = {}
        self._base = {}

    def _save_buckets(self, affected: dict[str, None]) -> None:
        """The records of the timer buckets the chunk changed (see
        :meth:`ProcessState.drain`); their keys are ``affected``."""
        self._bucket_records.update(self.bucket_records())
        for key, _ in self.timer_changes:
            affected[key] = None

    def _reorder(self, key: str, before: _Base, held: KeyState | None) -> None:
        """The changes to the timer and touch orders of ``key``, from what the store held
        (``before``) to ``held`` (None: gone)."""
        store = self._spill.changes
        encoded = key.encode()
        old_timers, old_touch = before
        new_timers = () if held is None else held.timers
        order = self._timer_order
        for at in old_timers:
            if at not in new_timers:
                store[order + ordered(at) + encoded] = None
        if new_timers:
            old = old_timers if isinstance(old_timers, frozenset) else frozenset(old_timers)
            for at in new_timers:
                if at not in old:
                    store[order + ordered(at) + encoded] = b""
        if self.ttl_ms is None:
            return
        touch = NO_TIME if held is None else held.touched
        if held is not None and before is not _NOTHING and touch == old_touch:
            return
        order = self._touch_order
        if before is not _NOTHING:
            store[order + ordered(old_touch + _TOUCH_SHIFT) + encoded] = None
        if held is not None:
            store[order + ordered(touch + _TOUCH_SHIFT) + encoded] = b""

    # -- changelog -----------------------------------------------------------------------

    def drain(self, records: list[tuple[bytes, bytes | None]]) -> None:
        records.extend(self._bucket_records.items())
        records.extend(self._records.items())
        self._bucket_records = {}
        self._records = {}

    @property
    def dirty(self) -> bool:
        return bool(self._records or self._bucket_records)

    def apply(self, key: bytes, value: bytes | None) -> None:
        self._restored[self.tag + key] = value
        if len(self._restored) >= spill_module.RESTORE_FLUSH_AT:
            self._apply_restored()

    def apply_timer(self, key: bytes, value: bytes | None) -> None:
        self._restored[self.timer_tag + key] = value
        if len(self._restored) >= spill_module.RESTORE_FLUSH_AT:
            self._apply_restored()

    def _apply_restored(self) -> None:
        """Apply the restored records kept so far to the store: as the memory variant
        applies them one by one, given a changelog (compacted or not) written by it."""
        restored, self._restored = self._restored, {}
        tag, timer_tag = self.tag, self.timer_tag
        records: dict[str, bytes | None] = {}
        buckets: dict[str, dict[int, bytes | None]] = {}
        for changelog_key, value in restored.items():
            if changelog_key.startswith(tag):
                records[changelog_key[len(tag) :].decode()] = value
            else:
                bucket_text, _, raw = changelog_key[len(timer_tag) :].partition(b":")
                buckets.setdefault(raw.decode(), {})[int(bucket_text)] = value
        names = list({**dict.fromkeys(records), **dict.fromkeys(buckets)})
        spill = self._spill
        stored = spill.get_many([tag + name.encode() for name in names])
        count = self._count
        pending = self.pending
        store = spill.changes
        for name, value in zip(names, stored, strict=True):
            before = None if value is None else _held(value)
            # What the store holds, before the records change the key in place.
            before_timers = () if before is None else tuple(before.timers)
            base = _NOTHING if before is None else (before_timers, before.touched)
            held = _restored_key(before, records.get(name, _KEPT), buckets.get(name, {}))
            store[tag + name.encode()] = None if held is None else _stored(held)
            self._reorder(name, base, held)
            count += (held is not None) - (before is not None)
            pending += (0 if held is None else len(held.timers)) - len(before_timers)
        self._count = count
        self.pending = pending
        store[self._counts_key] = b"%d %d" % (count, pending)
        spill.flush_if_full()

    def finish_restore(self) -> None:
        if self._restored:
            self._apply_restored()
        self.keys.clear()
        self.heap = []
        self.timer_keys = {}
        self.changed = {}
        self.timer_changes = {}
        self._records = {}
        self._bucket_records = {}

    def clear(self) -> None:
        super().clear()
        spill = self._spill
        number = self.tag[1:]
        for prefix in (self.tag, self.timer_tag, self._timer_order, self._touch_order):
            spill.delete_range(prefix, after(prefix))
        spill.delete(b"c" + number)
        self._count = 0
        self._base = {}
        self._records = {}
        self._bucket_records = {}
        self._restored = {}

    def reopen(self) -> None:
        """Take up the keys the store already holds (their counts: everything else is read
        when a chunk needs it); restored records then apply onto them."""
        (counts,) = self._spill.get_many([self._counts_key])
        keys, timers = (0, 0) if counts is None else map(int, counts.split())
        self._count = keys
        self.pending = timers

    # -- the test driver's view ----------------------------------------------------------

    def snapshot(self, key: str) -> dict[str, Any]:
        held = self._read(key)
        return {} if held is None else {name: orjson.loads(v) for name, v in held.values.items()}

    def timers_of(self, key: str) -> list[int]:
        held = self._read(key)
        return [] if held is None else sorted(held.timers)

    def _read(self, key: str) -> KeyState | None:
        (value,) = self._spill.get_many([self.tag + key.encode()])
        return None if value is None else _held(value)


_KEPT = object()


def _held(value: bytes) -> KeyState:
    """A key's stored record as the :class:`KeyState` the memory variant would hold."""
    values, timers, touched, split = _loads(value)
    held = KeyState()
    held.values = values
    held.timers = dict.fromkeys(timers, 0)
    held.touched = touched
    if split:
        held.split = True
        held.buckets = _buckets(timers)
    return held


def _stored(held: KeyState) -> bytes:
    return _dumps((held.values, list(held.timers), held.touched, held.split))


def _buckets(timers: Iterable[int]) -> dict[int, set[int]]:
    buckets: dict[int, set[int]] = {}
    size = process.TIMER_BUCKET_MS  # read when called: tests make it small
    for at in timers:
        bucket = at // size
        ats = buckets.get(bucket)
        if ats is None:
            buckets[bucket] = {at}
        else:
            ats.add(at)
    return buckets


def _restored_key(
    before: KeyState | None, record: Any, buckets: dict[int, bytes | None]
) -> KeyState | None:
    """A key after restored records: ``before`` (as stored), its last bucket records, then
    its last ``record`` (a changelog value, None for a tombstone, ``_KEPT`` for none), each
    applied as :meth:`ProcessState.apply_timer` and :meth:`ProcessState.apply` apply them.
    That is the memory variant's state after the records one by one: in a changelog it
    wrote, a key's record follows the bucket records of its drain, a key that splits or
    unsplits has its record written, and a key tombstone follows its buckets'.

    One difference, in a state no changelog ends in: a bucket record of a key whose timers
    are in its record starts its split with the bucket's timers alone (the memory variant
    keeps the others until the key's record, written after it in the same drain, drops
    them). A split key's stored timers are then always its buckets' (which a store holds):
    a restore applied to the store in pieces may stop between the two records."""
    held = before if before is not None else KeyState()
    for bucket, value in buckets.items():
        if not held.split or held.buckets is None:
            held.split = True
            held.buckets = {}
            held.timers = {}
        for at in held.buckets.pop(bucket, ()):
            held.timers.pop(at, None)
        if value is not None:
            ats = orjson.loads(value)
            held.buckets[bucket] = set(ats)
            for at in ats:
                held.timers[at] = 0
    if record is not _KEPT:
        if record is None:
            return None
        held.decode(record)
    return held if held else None


def _entries(items: Iterable[tuple[bytes, bytes]], skip: int) -> list[tuple[int, str]]:
    """``(number, key)`` of each order entry ``<prefix><ord(number)><key>``."""
    entries = []
    for name, _ in items:
        size = name[skip]
        end = skip + 1 + size
        entries.append((int.from_bytes(name[skip + 1 : end], "big"), name[end:].decode()))
    return entries
