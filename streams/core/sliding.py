"""Open sliding windows of one partition: each key's events, stored once, and its windows.

A key has one window per distinct event time ``t`` of its accepted events: the events in
``(t - size, t]``, ending at ``t + 1`` and closed once stream time reaches ``t + 1 + grace``
(decision 0018). Windows overlap as much as their events are close, so nothing is kept per
window but what must be: a key keeps its events once, ordered by (event time, arrival), and
its pending windows are just their times. Built-in aggregations are computed when a window
closes, by a sweep over the key's events (:mod:`streams.core.sweeps`): a key's windows close
in increasing ``t`` and no event that is not late can arrive at or before a closed window's
``t``, so the closing window's events are a range of that list whose ends only move forward.
Custom aggregators keep one accumulator per pending window, updated per event as the
compiled loop updates hopping windows: atomically (decision 0014).

An event is forgotten once no window that may hold it can still be open or opened:
``ts + size + grace <= stream time``. Windows close from a calendar of due times (each
key's first pending window's), whose stale entries are skipped; a key forgets as they close,
and once its last one has, it waits in a queue until all its events can go.

Changelog records (values compact JSON, ``None`` a tombstone):

================  =========================================================================
``l<seq>``        a block of events stored in one drain, ``[[t, seq, key, inputs..., value],
                  ...]`` (the value only with custom aggregators, which fold it into windows
                  opened later); ``seq`` numbers the partition's events in arrival order; the
                  record's is its first event's; a tombstone once all its events are forgotten
``L<t>:<key>``    the custom accumulators of the key's pending window ``t``
================  =========================================================================

Events are written in blocks, not one record each, and never tombstoned one by one: whether
an event is forgotten depends only on its time and stream time, so a restore drops the
events of a live block that were forgotten. Restored, a key's pending windows are the times
of its events whose windows are not closed at the restored stream time (with custom
aggregators, those with an ``L`` record), and each sweep starts again from its first event.
"""

from __future__ import annotations

import heapq
import json
from bisect import bisect_right
from collections import deque
from itertools import islice
from typing import Any

import orjson

from streams.core.compile import check_accumulator, restore, snapshot
from streams.core.jsonbytes import dumps
from streams.core.streamtime import NO_TIME
from streams.core.sweeps import Aggregates, Event
from streams.core.windows import NEVER

EVENT_TAG = b"l"
WINDOW_TAG = b"L"
# A changelog block of events stops growing at this many events or bytes (Kafka's default
# limit for a record is 1 MB).
BLOCK_EVENTS = 4096
BLOCK_BYTES = 256 * 1024
# (key, window_start, window_end, accumulator): a window to emit, its built-ins' values and
# its custom accumulators in their layout slots.
Closed = tuple[str, int, int, list[Any]]


def _time(ev: Event) -> int:
    t: int = ev[0]
    return t


class _Key:
    """One key: ``events[base:]`` held (``events[:base]`` forgotten, cut off in bulk), the
    sweep's range ``[lo, hi)`` and running states, pending window times ascending, custom
    accumulators by window time, and the time the heap has it due."""

    __slots__ = ("accs", "base", "due", "events", "hi", "lo", "pending", "run")

    def __init__(self, run: list[Any]) -> None:
        self.events: list[Event] = []
        self.base = self.lo = self.hi = 0
        self.run = run
        # A deque: a busy key has a window per event pending for the grace, closed from the
        # front.
        self.pending: deque[int] = deque()
        self.accs: dict[int, list[Any]] = {}
        self.due = NEVER


class SlidingStore:
    """The sliding windows of one partition (see the module docstring)."""

    __slots__ = (
        "_added",
        "_blocks",
        "_calendar",
        "_close",
        "_close_after",
        "_customs",
        "_forget_after",
        "_horizon",
        "_idle",
        "_new",
        "_open",
        "_restored",
        "_restored_accs",
        "_seq",
        "_size",
        "_sweep",
        "_sweeps",
        "_times",
        "_width",
        "_windows",
        "keys",
        "next_close",
        "touched",
    )

    def __init__(self, size_ms: int, grace_ms: int, aggregates: Aggregates, updates: bool) -> None:
        self._size = size_ms
        self._close_after = 1 + grace_ms
        self._forget_after = size_ms + grace_ms
        self._sweeps = aggregates.sweeps
        assert aggregates.new is not None
        assert aggregates.sweep is not None
        assert aggregates.close is not None
        self._sweep = aggregates.sweep
        self._close = aggregates.close
        self._new = aggregates.new
        self._customs = aggregates.customs
        self._width = aggregates.width
        self.keys: dict[str, _Key] = {}
        # Keys by due time, and the due times in a heap: a key is due at its first pending
        # window's close or its first event's forget, whichever is first.
        self._calendar: dict[int, list[str]] = {}
        self._times: list[int] = []
        # Keys whose windows are all closed, with the time all their events can be forgotten.
        self._idle: deque[tuple[int, str]] = deque()
        self.next_close = NEVER
        self._seq = 0
        self._open = 0
        # Changes since the last drain: the events stored, and the custom accumulators of
        # (t, key), True (held) or False (closed).
        self._added: list[Event] = []
        self._windows: dict[tuple[int, str], bool] = {}
        # The changelog's blocks of events, (latest event time, first seq), and the event
        # time at or before which every event is forgotten.
        self._blocks: list[tuple[int, int]] = []
        self._horizon = NO_TIME
        # Windows changed in the current batch (update mode only).
        self.touched: dict[tuple[int, str], None] | None = {} if updates else None
        self._restored: dict[int, Any] = {}
        self._restored_accs: dict[tuple[int, str], list[Any]] = {}

    def __len__(self) -> int:
        """Number of pending windows."""
        return self._open

    # -- events ----------------------------------------------------------------------------

    def add(self, key: str, t: int, inputs: tuple[Any, ...]) -> None:
        """Store an accepted event (not late) of ``key`` at ``t`` with its inputs; its window
        opens if new. Built-in aggregations only."""
        # The hot path: _store and _open_window inlined for the usual event, the latest of
        # its key so far, in a window of its own.
        ks = self.keys.get(key)
        if ks is None:
            ks = self.keys[key] = _Key(self._new())
        seq = self._seq
        self._seq = seq + 1
        ev = (t, seq, key, *inputs)
        self._added.append(ev)
        events = ks.events
        pending = ks.pending
        if len(events) == ks.base or events[-1][0] < t:
            events.append(ev)
            if not pending or pending[-1] < t:
                pending.append(t)
                self._open += 1
                close = t + self._close_after
                if close < ks.due:
                    self._due(ks, key, close)
        else:
            events.insert(bisect_right(events, t, ks.hi, key=_time), ev)
            self._open_window(ks, key, t)
        if self.touched is not None:
            self._touch(ks, key, t)

    def add_custom(self, key: str, t: int, inputs: tuple[Any, ...], value: Any) -> None:
        """:meth:`add` with custom aggregators: ``value`` goes into its own window (opened by
        folding the stored events in its range first) and every later pending window that
        holds it. Atomic: if an ``initial``/``add`` raises or returns what JSON cannot hold,
        every accumulator is as it was and this raises (the event is a dead letter)."""
        kept = dumps(value)  # raises for a value that is not JSON: it would live in the state
        ks = self.keys.get(key)
        own = None if ks is None else ks.accs.get(t)
        later = [] if ks is None else self._later(ks, t)
        undo: list[tuple[Any, int, bytes | None]] = []
        try:
            if own is None:
                fresh = self._fold(ks, t)
                mine = self._add(fresh, value, None)
            else:
                mine = self._add(own, value, undo)
            changed = [self._add(ks.accs[u], value, undo) for u in later]  # type: ignore[union-attr]
        except BaseException:
            restore(undo)
            raise
        if ks is None:
            ks = self.keys[key] = _Key(self._new())
        self._store(ks, (t, self._seq, key, *inputs, kept))
        ks.accs[t] = mine
        self._windows[(t, key)] = True
        for u, accs in zip(later, changed, strict=True):
            ks.accs[u] = accs
            self._windows[(u, key)] = True
        self._open_window(ks, key, t)
        if self.touched is not None:
            self._touch(ks, key, t)

    def _store(self, ks: _Key, ev: Event) -> None:
        self._seq += 1
        events = ks.events
        t = ev[0]
        if len(events) == ks.base or events[-1][0] <= t:
            events.append(ev)
        else:
            # After every event of its time and before later ones; every event the sweep
            # passed is at or before a closed window's time, so before this one.
            events.insert(bisect_right(events, t, ks.hi, key=_time), ev)
        self._added.append(ev)

    def _open_window(self, ks: _Key, key: str, t: int) -> None:
        pending = ks.pending
        if not pending or pending[-1] < t:
            pending.append(t)
        else:
            at = bisect_right(pending, t)
            if at and pending[at - 1] == t:
                return
            pending.insert(at, t)
        self._opened(ks, key, t)

    def _opened(self, ks: _Key, key: str, t: int) -> None:
        """Window ``t`` was added to the key's pending ones: count it, schedule its close."""
        self._open += 1
        close = t + self._close_after
        if close < ks.due:
            self._due(ks, key, close)

    def _due(self, ks: _Key, key: str, due: int) -> None:
        ks.due = due
        keys = self._calendar.get(due)
        if keys is None:
            self._calendar[due] = [key]
            heapq.heappush(self._times, due)
            if due < self.next_close:
                self.next_close = due
        else:
            keys.append(key)

    def _later(self, ks: _Key, t: int) -> list[int]:
        """The key's pending windows after ``t`` that hold an event at ``t``."""
        pending = ks.pending
        reach = t + self._size
        later = []
        for u in islice(pending, bisect_right(pending, t), None):
            if u >= reach:
                break
            later.append(u)
        return later

    def _touch(self, ks: _Key, key: str, t: int) -> None:
        touched = self.touched
        assert touched is not None
        touched[(t, key)] = None
        for u in self._later(ks, t):
            touched[(u, key)] = None

    # -- custom aggregators ------------------------------------------------------------------

    def _add(
        self, accs: list[Any], value: Any, undo: list[tuple[Any, int, bytes | None]] | None
    ) -> list[Any]:
        """Each custom accumulator with ``value`` added; ``undo`` collects what puts back the
        held ones an ``add`` may change in place before failing."""
        out = []
        for n, custom in enumerate(self._customs):
            acc = accs[n]
            if undo is not None:
                undo.append((accs, n, snapshot(acc)))
            acc = custom.add(acc, value)
            check_accumulator(acc, custom.name)
            out.append(acc)
        return out

    def _fold(self, ks: _Key | None, t: int) -> list[Any]:
        """New accumulators of window ``t``: the key's stored events in its range, in order."""
        accs = [custom.initial() for custom in self._customs]
        if ks is None:
            return accs
        events = ks.events
        lo = bisect_right(events, t - self._size, ks.base, key=_time)
        for ev in events[lo : bisect_right(events, t, lo, key=_time)]:
            accs = self._add(accs, orjson.loads(ev[-1]), None)
        return accs

    # -- closing -----------------------------------------------------------------------------

    def close_until(self, stream_time: int) -> list[Closed]:
        """Remove and return the windows closed at ``stream_time``, by end, then key; forget
        the events no open or future window can hold.

        Windows come off the calendar in (close, key) order, which is (end, key) order. A key
        forgets as its windows close (what no pending window holds, up to the horizon); one
        whose last window closed waits in ``idle`` until all its events can go: windows
        close in time order, so ``idle`` is in the order it is due."""
        times = self._times
        calendar = self._calendar
        idle = self._idle
        keys = self.keys
        close_after = self._close_after
        forget_after = self._forget_after
        horizon = stream_time - forget_after
        if horizon > self._horizon:
            self._horizon = horizon
        size = self._size
        close = self._close
        customs = bool(self._customs)
        closed: list[Closed] = []
        while times and times[0] <= stream_time:
            due = heapq.heappop(times)
            names = calendar.pop(due)
            if len(names) > 1:
                names.sort()
            for key in names:
                ks = keys.get(key)
                if ks is None or ks.due != due:
                    continue  # stale: the key was put back at another time since
                pending = ks.pending
                t = pending.popleft()
                self._open -= 1
                # Events the next window holds stay, even if their forget time has come.
                acc = close(ks, t, min(horizon, (pending[0] if pending else t) - size))
                if customs:
                    self._customs_of(key, ks, t, acc)
                closed.append((key, t - size + 1, t + 1, acc))
                if pending:
                    self._due(ks, key, pending[0] + close_after)
                else:
                    ks.due = NEVER
                    idle.append((ks.events[-1][0] + forget_after, key))
        while idle and idle[0][0] <= stream_time:
            key = idle.popleft()[1]
            ks = keys.get(key)
            if ks is None or ks.pending:
                continue  # it has windows again: they forget for it, then it comes back
            self._forget(ks, horizon)
            if ks.base == len(ks.events):
                del keys[key]
            # else it has events since, and a later place in ``idle``.
        self._next()
        return closed

    def _next(self) -> None:
        times = self._times
        idle = self._idle
        self.next_close = min(times[0] if times else NEVER, idle[0][0] if idle else NEVER)

    def _customs_of(self, key: str, ks: _Key, t: int, acc: list[Any]) -> None:
        """Window ``t``'s custom accumulators into ``acc``: it closes."""
        accs = ks.accs.pop(t)
        self._windows[(t, key)] = False
        for custom, held in zip(self._customs, accs, strict=True):
            acc[custom.b] = held

    def _forget(self, ks: _Key, horizon: int) -> None:
        """Forget the key's events at or before ``horizon``, taking them out of the sweep."""
        self._sweep(ks, NO_TIME, horizon)  # those in the range leave it
        events = ks.events
        base = ks.base
        n = len(events)
        while base < n and events[base][0] <= horizon:
            base += 1
        if ks.hi < base:  # never in the range
            ks.lo = ks.hi = base
        if base > 64 and 2 * base > n:
            del events[:base]
            ks.lo -= base
            ks.hi -= base
            base = 0
        ks.base = base

    # -- update records ----------------------------------------------------------------------

    def updates(self) -> list[Closed]:
        """The pending windows a batch changed, by end, then key, each with its accumulator
        recomputed from its events; forgets what the batch changed."""
        touched = self.touched
        assert touched is not None
        out: list[Closed] = []
        size = self._size
        for t, key in sorted(touched):
            ks = self.keys.get(key)
            if ks is not None and _pending(ks, t):
                out.append((key, t - size + 1, t + 1, self._scratch(ks, t)))
        touched.clear()
        return out

    def _scratch(self, ks: _Key, t: int) -> list[Any]:
        events = ks.events
        lo = bisect_right(events, t - self._size, ks.base, key=_time)
        window = events[lo : bisect_right(events, t, lo, key=_time)]
        acc: list[Any] = [None] * self._width
        for s in self._sweeps:
            acc[s.b] = s.scratch(window)
        if self._customs:
            for custom, held in zip(self._customs, ks.accs[t], strict=True):
                acc[custom.b] = held
        return acc

    # -- changelog -----------------------------------------------------------------------

    def drain(self, records: list[tuple[bytes, bytes | None]]) -> None:
        """Append the records of every change since the last drain: the events stored, in
        blocks; tombstones of the blocks whose events are all forgotten; the custom
        accumulators changed, or tombstones of the windows closed."""
        added = self._added
        if added:
            self._added = []
            encode = _encode_with_values if self._customs else _encode
            for block, value in encode(added):
                records.append((EVENT_TAG + b"%d" % block[0][1], value))
                heapq.heappush(self._blocks, (max(map(_time, block)), block[0][1]))
        blocks = self._blocks
        while blocks and blocks[0][0] <= self._horizon:
            records.append((EVENT_TAG + b"%d" % heapq.heappop(blocks)[1], None))
        for (t, key), live in self._windows.items():
            name = WINDOW_TAG + b"%d:" % t + key.encode()
            if live:
                ks = self.keys[key]
                records.append((name, dumps(ks.accs[t])))
            else:
                records.append((name, None))
        self._windows = {}

    def apply(self, name: bytes, value: bytes | None) -> None:
        """Restore one changelog record (``l`` or ``L``); :meth:`finish_restore` after the
        last."""
        if name[:1] == EVENT_TAG:
            first = int(name[1:])
            if value is None:
                self._restored.pop(first, None)
                self._seq = max(self._seq, first + 1)
            else:
                block = orjson.loads(value)
                self._restored[first] = block
                self._seq = max(self._seq, *(entry[1] + 1 for entry in block))
            return
        t, _, key = name[1:].decode().partition(":")
        if value is None:
            self._restored_accs.pop((int(t), key), None)
        else:
            self._restored_accs[(int(t), key)] = orjson.loads(value)

    def finish_restore(self, stream_time: int) -> None:
        """Rebuild the keys from the records applied (see the module docstring)."""
        customs = bool(self._customs)
        horizon = stream_time - self._forget_after
        self._horizon = horizon
        by_key: dict[str, list[Event]] = {}
        waiting: list[tuple[int, str]] = []
        for first, block in sorted(self._restored.items()):
            heapq.heappush(self._blocks, (max(entry[0] for entry in block), first))
            for t, seq, key, *inputs in block:
                if t <= horizon:
                    continue  # forgotten before the restart
                if customs:
                    inputs[-1] = dumps(inputs[-1])
                by_key.setdefault(key, []).append((t, seq, key, *inputs))
        for key, events in by_key.items():
            events.sort(key=_time_then_seq)
            ks = self.keys[key] = _Key(self._new())
            ks.events = events
            if customs:
                times = sorted(t for t, k in self._restored_accs if k == key)
                for t in times:
                    ks.accs[t] = self._restored_accs[(t, key)]
            else:
                times = sorted({ev[0] for ev in events})
            for t in times:
                if t + self._close_after > stream_time:
                    ks.pending.append(t)
            self._open += len(ks.pending)
            if ks.pending:
                self._due(ks, key, ks.pending[0] + self._close_after)
            else:
                waiting.append((events[-1][0] + self._forget_after, key))
        self._idle.extend(sorted(waiting))
        self._next()
        self._restored = {}
        self._restored_accs = {}
        self._added = []
        self._windows = {}
        if self.touched is not None:
            self.touched.clear()


def _pending(ks: _Key, t: int) -> bool:
    at = bisect_right(ks.pending, t)
    return bool(at) and ks.pending[at - 1] == t


def _encode(events: list[Event]) -> list[tuple[list[Event], bytes]]:
    """Blocks of events (built-in aggregations only) and their JSON, each one call."""
    out = []
    for start in range(0, len(events), BLOCK_EVENTS):
        out.extend(_fitted(events[start : start + BLOCK_EVENTS]))
    return out


def _fitted(block: list[Event]) -> list[tuple[list[Event], bytes]]:
    try:
        value = b"".join((orjson.dumps(block), b""))
    except TypeError:  # an integer beyond 64 bits (a First/Last value)
        value = dumps(block)
    if len(value) <= BLOCK_BYTES or len(block) == 1:
        return [(block, value)]
    half = len(block) // 2
    return _fitted(block[:half]) + _fitted(block[half:])


def _encode_with_values(events: list[Event]) -> list[tuple[list[Event], bytes]]:
    """Blocks of events with their values (custom aggregators): the value's JSON as it was
    kept, each event's own, joined up to :data:`BLOCK_BYTES`."""
    out = []
    parts: list[bytes] = []
    start = size = 0
    for n, ev in enumerate(events):
        try:
            part = orjson.dumps([*ev[:-1], orjson.Fragment(ev[-1])])
        except TypeError:  # an integer beyond 64 bits (in an input, or in the value)
            part = dumps([*ev[:-1], json.loads(ev[-1])])
        parts.append(part)
        size += len(part)
        if size >= BLOCK_BYTES or n + 1 == len(events):
            out.append((events[start : n + 1], b"[" + b",".join(parts) + b"]"))
            parts = []
            start = n + 1
            size = 0
    return out


def _time_then_seq(ev: Event) -> tuple[int, int]:
    return ev[0], ev[1]
