"""A ``join_stream``'s buffers kept in a key-value store instead of Python dicts
(``STREAMS_STORE=rocksdb``).

:class:`SpilledJoinState` is :class:`~streams.core.joins.JoinState` whose buffered events and
expiry order live in the task's store (:class:`~streams.core.spill.Spill`), so that what a
wide ``within_ms`` holds can outgrow memory. What stays in memory is small: the pending
queues (events fetched and not taken yet: a fetch, or what waits for the other side up to
``STREAMS_JOIN_WAIT_MS``), stream time, the count of buffered events, the next sequence
number, and the changelog records not drained yet.

A drain takes its events over a **view** that the memory variant's own loop runs on: the
events it will take are known before it starts (:meth:`JoinState._schedule`), so before it
one scan of the expiry order finds the buffered events its stream time can drop (event time
below the largest event time it takes minus grace and ``within_ms``), and one ``get_many``
reads the buffers of both sides of its events' keys and of those; the droppable events are
the expiry heap. After it, the buffers that changed are written back with the changes to the
expiry order, in the spill's pending writes (one write per batch), and the view is emptied.

Store keys (``ord(x)``: an order-keeping encoding of an int; the task's key space):

====================================  ======================================================
``J<side>:<key>``                     the buffer of a side's key: ``marshal`` of its events
                                      ``[[ts, seq, value bytes, matched], ...]`` by (ts, seq)
``E<ord(ts)><ord(seq)><side><key>``   a buffered event, in expiry order (empty value)
``J:``                                ``held seq``: the count, the next sequence number
====================================  ======================================================

The changelog records are the memory variant's, made by the same code. Restored buffered
events are kept in memory as they come (the last record of each) and applied to the store in
bulk, every ``RESTORE_FLUSH_AT`` and at the restore's end.
"""

from __future__ import annotations

import itertools
import marshal
from typing import Any

import orjson

from streams.core import spill as spill_module
from streams.core.joins import LEFT, SIDES, JoinState
from streams.core.outcome import Item, Outcome
from streams.core.spill import Spill, after, ordered

_dumps = marshal.dumps
_loads = marshal.loads
_BUFFERS = b"J"
_EXPIRY = b"E"
_COUNTS = b"J:"
_SIDE_BYTES = (SIDES[0][0], SIDES[1][0])


class SpilledJoinState(JoinState):
    """:class:`JoinState` whose buffers live in a :class:`~streams.core.spill.Spill` (see
    the module doc); ``buffers`` and ``expiry`` are a drain's view, empty between drains."""

    def __init__(
        self,
        within_ms: int,
        grace_ms: int,
        how: str,
        into: str,
        late: tuple[str, str],
        spill: Spill,
    ) -> None:
        super().__init__(within_ms, grace_ms, how, into, late)
        self._spill = spill
        # The changes drained so far, while a drain's own are in ``changes``.
        self._earlier: dict[tuple[int, int, int, str], list[Any] | None] = {}
        # Restored buffered events not in the store yet: (side, key) -> seq -> (ts, value).
        self._restored: dict[tuple[int, str], dict[int, tuple[int, bytes | None]]] = {}
        self._restored_count = 0

    # -- a drain -------------------------------------------------------------------------

    def _take_all(self, order: list[int], out: Outcome) -> list[Item]:
        left, right = self.pending
        lefts = order.count(LEFT)
        taking = itertools.chain(
            itertools.islice(left, lefts), itertools.islice(right, len(order) - lefts)
        )
        keys: dict[str, None] = {}
        bound = self.stream_time
        for event in taking:
            keys[event[1]] = None
            if event[0] > bound:
                bound = event[0]
        self._load(keys, bound)
        emitted = super()._take_all(order, out)
        self._save()
        return emitted

    def advance(self, target: int, out: Outcome) -> list[Item]:
        if target <= self.stream_time:
            return []
        self._load({}, target)
        emitted = super().advance(target, out)
        self._save()
        return emitted

    def _load(self, keys: dict[str, None], bound: int) -> None:
        """Read into the view both sides' buffers of ``keys`` and of the events a stream time
        of at most ``bound`` drops; those events are the expiry heap."""
        spill = self._spill
        horizon = bound - self.grace - self.within
        expiring: list[tuple[int, int, int, str]] = []
        if self.held and horizon > 0:
            ends = spill.scan(_EXPIRY, _EXPIRY + ordered(horizon))
            expiring = [_expiry_entry(name) for name, _ in ends]
        wanted: dict[tuple[int, str], None] = {}
        for key in keys:
            wanted[(0, key)] = None
            wanted[(1, key)] = None
        wanted.update(((side, key), None) for _, _, side, key in expiring)
        names = list(wanted)
        values = spill.get_many([_buffer_key(side, key) for side, key in names])
        buffers = self.buffers
        for (side, key), value in zip(names, values, strict=True):
            if value is not None:
                buffers[side][key] = _loads(value)
        self.expiry = expiring  # in (ts, seq) order: a heap
        self._earlier, self.changes = self.changes, {}

    def _save(self) -> None:
        """Write back the buffers the drain changed, and empty the view."""
        changes = self.changes
        if changes:
            store = self._spill.changes
            buffers = self.buffers
            changed: dict[tuple[int, str], None] = {}
            for (side, ts, seq, key), entry in changes.items():
                changed[(side, key)] = None
                name = _EXPIRY + ordered(ts) + ordered(seq) + SIDES[side] + key.encode()
                store[name] = None if entry is None else b""
            for side, key in changed:
                events = buffers[side].get(key)
                store[_buffer_key(side, key)] = None if not events else _dumps(events)
            store[_COUNTS] = b"%d %d" % (self.held, self.seq)
        earlier = self._earlier
        earlier.update(changes)
        self.changes = earlier
        self._earlier = {}
        self.buffers[0].clear()
        self.buffers[1].clear()
        self.expiry = []

    # -- changelog -----------------------------------------------------------------------

    def apply(self, key: bytes, value: bytes | None) -> None:
        if key[1:2] not in SIDES or key[2:3] != b":":
            super().apply(key, value)  # stream time, a pending event
            return
        side = SIDES.index(key[1:2])
        ts_text, seq_text, raw = key[3:].split(b":", 2)
        ts, seq = int(ts_text), int(seq_text)
        self._restored.setdefault((side, raw.decode()), {})[seq] = (ts, value)
        self.seq = max(self.seq, seq + 1)
        self._restored_count += 1
        if self._restored_count >= spill_module.RESTORE_FLUSH_AT:
            self._apply_restored()

    def _apply_restored(self) -> None:
        """Apply the restored buffered events kept so far to the store, as the memory
        variant applies them one by one."""
        restored, self._restored = self._restored, {}
        self._restored_count = 0
        spill = self._spill
        names = list(restored)
        values = spill.get_many([_buffer_key(side, key) for side, key in names])
        store = spill.changes  # after the read, which sends (and replaces) the pending writes
        held = self.held
        for (side, key), value in zip(names, values, strict=True):
            events = {} if value is None else {entry[1]: entry for entry in _loads(value)}
            encoded = SIDES[side] + key.encode()
            for seq, (ts, record) in restored[(side, key)].items():
                gone = events.pop(seq, None)
                if gone is not None:
                    store[_EXPIRY + ordered(gone[0]) + ordered(seq) + encoded] = None
                    held -= 1
                if record is not None:
                    matched, body = orjson.loads(record)
                    events[seq] = [ts, seq, orjson.dumps(body), matched]
                    store[_EXPIRY + ordered(ts) + ordered(seq) + encoded] = b""
                    held += 1
            kept = sorted(events.values(), key=_time_then_seq)
            store[_buffer_key(side, key)] = _dumps(kept) if kept else None
        self.held = held
        store[_COUNTS] = b"%d %d" % (held, self.seq)
        spill.flush_if_full()

    def finish_restore(self) -> None:
        if self._restored:
            self._apply_restored()
        self._finish_pending()
        self.changes = {}
        self.pending_changes = {}

    def clear(self) -> None:
        super().clear()
        for prefix in (_BUFFERS, _EXPIRY):
            self._spill.delete_range(prefix, after(prefix))
        self._earlier = {}
        self._restored = {}
        self._restored_count = 0

    def reopen(self) -> None:
        """Take up the buffers the store already holds (their count and the next sequence
        number: the events are read when a drain needs them); restored records then apply
        onto them."""
        (counts,) = self._spill.get_many([_COUNTS])
        held, seq = (0, 0) if counts is None else map(int, counts.split())
        self.held = held
        self.seq = max(self.seq, seq)


def _buffer_key(side: int, key: str) -> bytes:
    return _BUFFERS + SIDES[side] + b":" + key.encode()


def _time_then_seq(entry: list[Any]) -> tuple[int, int]:
    return entry[0], entry[1]


def _expiry_entry(name: bytes) -> tuple[int, int, int, str]:
    """``(ts, seq, side, key)`` of an expiry order key."""
    at = 1
    size = name[at]
    ts = int.from_bytes(name[at + 1 : at + 1 + size], "big")
    at += 1 + size
    size = name[at]
    seq = int.from_bytes(name[at + 1 : at + 1 + size], "big")
    at += 1 + size
    return ts, seq, _SIDE_BYTES.index(name[at]), name[at + 1 :].decode()
