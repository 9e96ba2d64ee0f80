"""``join_stream``: two streams paired by key within a time bound, on one partition pair.

Each side's events arrive from its own topic (after its own stateless operators) into a
**pending queue**; :meth:`JoinState.drain` takes them in event-time order as far as both
queues hold events (Kafka Streams' timestamp synchronisation: the side whose head has the
smaller event time first, the left one on a tie). When one queue is empty and the runtime
says its topic has records not fetched yet, the drain waits for them, up to ``wait_ms`` of
wall-clock time; a side that is caught up is not waited for (decision 0016).

A drained event is late when ``ts + grace < stream time`` (stream time over both sides): it
goes unchanged to its topic's late topic and joins nothing. Otherwise it is kept in its
side's **buffer** (per key, by event time then arrival) and paired with every event of the
other side's buffer for the key at most ``within`` apart: each pair is emitted once, when its
second event is processed (the left value with ``value[into]`` = the right value, with the
later event time). Buffers keep an event while a future non-late event could still match
it: once ``ts < stream time - grace - within`` it is dropped, and a left event that never
found a partner is then emitted once with ``value[into] = None`` (``how="left"``).

Values are kept as their JSON bytes, so a value a downstream operator changes in place can
never change the buffers, and a pair's value is two fresh decodes. Changelog records:
``j<side>:<ts>:<seq>:<key>`` -> ``[matched, value]`` per buffered event (a tombstone once
dropped); ``jq<side>:<offset>:<n>`` -> a pending event (written only if it is still pending
when the changelog is drained, a tombstone once taken); ``jt`` -> ``[stream time, at last
activity]``.
"""

from __future__ import annotations

import base64
import bisect
import heapq
import operator
from collections import deque
from typing import Any

import orjson

from streams.core.outcome import Item, Outcome
from streams.core.streamtime import NO_TIME

LEFT = 0
RIGHT = 1
SIDES = (b"l", b"r")
_loads = orjson.loads
_TIME = operator.itemgetter(0)

# An event waiting in a pending queue: (event time, key, value as JSON bytes, the record it
# came from: offset, raw key, raw value (for the late topic), and its number among the events
# of that record (a flat_map may make several)).
Pending = tuple[int, str, bytes, int, bytes | None, bytes | None, int]


class JoinState:
    """The join of one partition pair: pending queues, buffers, stream time."""

    def __init__(
        self, within_ms: int, grace_ms: int, how: str, into: str, late: tuple[str, str]
    ) -> None:
        self.within = within_ms
        self.grace = grace_ms
        self.left_join = how == "left"
        self.into = into
        self.late_topics = late  # (left's late topic, right's)
        self._reset()

    def clear(self) -> None:
        """Start empty (also when a changed declaration starts afresh)."""
        self._reset()

    def _reset(self) -> None:
        self.pending: tuple[deque[Pending], deque[Pending]] = (deque(), deque())
        # side -> key -> [[ts, seq, value bytes, matched], ...] by (ts, seq)
        self.buffers: tuple[dict[str, list[list[Any]]], dict[str, list[list[Any]]]] = ({}, {})
        self.expiry: list[tuple[int, int, int, str]] = []  # (ts, seq, side, key)
        self.seq = 0
        self.restored_pending: dict[tuple[int, int, int], Pending] = {}
        self.stream_time = NO_TIME
        self.at_last_activity = NO_TIME
        self.blocked_since: int | None = None
        self.held = 0  # events buffered
        # Since the last drain: buffered events changed (None: dropped); pending events
        # arrived (the event) or taken (None), and those written to the changelog.
        self.changes: dict[tuple[int, int, int, str], list[Any] | None] = {}
        self.pending_changes: dict[tuple[int, int, int], Pending | None] = {}
        self.logged: set[tuple[int, int, int]] = set()

    # -- arriving ------------------------------------------------------------------------

    def arrive(self, side: int, events: list[Pending]) -> None:
        """A side's events, in offset order, to take when the other side allows."""
        if events:
            self.pending[side].extend(events)
            changes = self.pending_changes
            for event in events:
                changes[(side, event[3], event[6])] = event

    def drain(
        self, out: Outcome, now_ms: int, waiting: tuple[bool, bool], wait_ms: int
    ) -> list[Item]:
        """Take pending events in event-time order while both sides have some; with one side
        empty, go on with the other unless that side is ``waiting`` for records not fetched
        yet, for less than ``wait_ms``. Returns the pairs (and misses) made, in order."""
        order, blocked = self._schedule(now_ms, waiting, wait_ms)
        emitted = self._take_all(order, out) if order else []
        if not blocked:
            self.blocked_since = None
        return emitted

    def _schedule(
        self, now_ms: int, waiting: tuple[bool, bool], wait_ms: int
    ) -> tuple[list[int], bool]:
        """The sides of the pending events to take now, in order (each takes its queue's
        head), and whether the drain then waits for a side."""
        left, right = self.pending
        if not right:  # the common cases: one side's fetch, nothing to merge
            if left and waiting[RIGHT] and self._blocked(now_ms, wait_ms):
                return [], True
            return [LEFT] * len(left), False
        if not left:
            if waiting[LEFT] and self._blocked(now_ms, wait_ms):
                return [], True
            return [RIGHT] * len(right), False
        order: list[int] = []
        lefts, rights = iter(left), iter(right)
        left_ts, right_ts = next(lefts)[0], next(rights)[0]
        while True:
            if left_ts <= right_ts:
                order.append(LEFT)
                head = next(lefts, None)
                if head is None:
                    rest, side = 1 + sum(1 for _ in rights), RIGHT
                    break
                left_ts = head[0]
            else:
                order.append(RIGHT)
                head = next(rights, None)
                if head is None:
                    rest, side = 1 + sum(1 for _ in lefts), LEFT
                    break
                right_ts = head[0]
        if waiting[1 - side] and self._blocked(now_ms, wait_ms):
            return order, True
        order.extend([side] * rest)
        return order, False

    def _blocked(self, now_ms: int, wait_ms: int) -> bool:
        """A side is waited for: True while that wait lasts less than ``wait_ms``."""
        if self.blocked_since is None:
            self.blocked_since = now_ms
        return now_ms - self.blocked_since < wait_ms

    def _take_all(self, order: list[int], out: Outcome) -> list[Item]:
        """Take the pending queues' heads, one per side in ``order``."""
        pending = self.pending
        pending_changes = self.pending_changes
        logged = self.logged
        emitted: list[Item] = []
        for side in order:
            event = pending[side].popleft()
            ident = (side, event[3], event[6])
            if ident in logged:
                pending_changes[ident] = None  # its record becomes a tombstone
            else:
                pending_changes.pop(ident, None)  # never written: nothing to undo
            self._take(side, event, emitted, out)
        return emitted

    # -- one event -----------------------------------------------------------------------

    def _take(self, side: int, event: Pending, emitted: list[Item], out: Outcome) -> None:
        ts, key, value, offset, raw_key, raw_value, _ = event
        st = self.stream_time
        if ts + self.grace < st:
            out.late_raw.append((self.late_topics[side], side, offset, raw_key, raw_value))
            return
        seq = self.seq
        self.seq = seq + 1
        entry: list[Any] = [ts, seq, value, False]
        mine = self.buffers[side].get(key)
        if mine is None:
            self.buffers[side][key] = [entry]
        elif mine[-1][0] <= ts:
            mine.append(entry)
        else:  # an event earlier than the last one of its key: in event-time order
            at = len(mine)
            while at and mine[at - 1][0] > ts:
                at -= 1
            mine.insert(at, entry)
        self.held += 1
        heapq.heappush(self.expiry, (ts, seq, side, key))
        others = self.buffers[1 - side].get(key)
        if others:
            within = self.within
            into = self.into
            first = bisect.bisect_left(others, ts - within, key=_TIME)
            for other in others[first:]:
                if other[0] > ts + within:
                    break
                left, right = (entry, other) if side == LEFT else (other, entry)
                if not left[3]:
                    left[3] = True
                    if left is other:
                        self.changes[(LEFT, other[0], other[1], key)] = other
                joined = _loads(left[2])
                joined[into] = _loads(right[2])
                origin = out.origin_pair(key, left[2], right[2], into)
                emitted.append((origin, joined, key, ts if ts > other[0] else other[0]))
        self.changes[(side, ts, seq, key)] = entry
        if ts > st:
            self.stream_time = ts
            self._expire(ts, emitted, out)

    def advance(self, target: int, out: Outcome) -> list[Item]:
        """Stream time moves to ``target`` (idle advance): drop what nothing can match."""
        emitted: list[Item] = []
        if target > self.stream_time:
            self.stream_time = target
            self._expire(target, emitted, out)
        return emitted

    def _expire(self, st: int, emitted: list[Item], out: Outcome) -> None:
        """Drop the buffered events no future non-late event can match; a left event that
        found no partner is then emitted alone (``how="left"``)."""
        horizon = st - self.grace - self.within
        expiry = self.expiry
        while expiry and expiry[0][0] < horizon:
            ts, seq, side, key = heapq.heappop(expiry)
            events = self.buffers[side][key]
            if events[0][1] == seq:  # the oldest of its key, as a rule
                at = 0
            else:
                at = next(n for n, entry in enumerate(events) if entry[1] == seq)
            entry = events.pop(at)
            if not events:
                del self.buffers[side][key]
            self.held -= 1
            self.changes[(side, ts, seq, key)] = None
            if side == LEFT and self.left_join and not entry[3]:
                joined = _loads(entry[2])
                joined[self.into] = None
                origin = out.origin_pair(key, entry[2], b"null", self.into)
                emitted.append((origin, joined, key, ts))

    # -- changelog -----------------------------------------------------------------------

    def drain_changelog(self, records: list[tuple[bytes, bytes | None]]) -> None:
        """The changelog records of what changed since the last drain."""
        for (side, ts, seq, key), entry in self.changes.items():
            name = b"j%b:%d:%d:%b" % (SIDES[side], ts, seq, key.encode())
            if entry is None:
                records.append((name, None))
            else:
                records.append((name, b"[%b,%b]" % (b"true" if entry[3] else b"false", entry[2])))
        self.changes = {}
        logged = self.logged
        for ident, event in self.pending_changes.items():
            side, offset, n = ident
            name = b"jq%b:%d:%d" % (SIDES[side], offset, n)
            if event is None:
                logged.discard(ident)
                records.append((name, None))
            else:
                logged.add(ident)
                records.append((name, _encode_pending(event)))
        self.pending_changes = {}
        times = [
            None if self.stream_time == NO_TIME else self.stream_time,
            None if self.at_last_activity == NO_TIME else self.at_last_activity,
        ]
        records.append((b"jt", orjson.dumps(times)))

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Restore one changelog record (see :meth:`drain_changelog`)."""
        if key == b"jt":
            stream_time, at_last = (None, None) if value is None else _loads(value)
            self.stream_time = NO_TIME if stream_time is None else stream_time
            self.at_last_activity = NO_TIME if at_last is None else at_last
            return
        if key.startswith(b"jq"):
            side = SIDES.index(key[2:3])
            offset_text, n_text = key[4:].split(b":")
            ident = (side, int(offset_text), int(n_text))
            if value is None:
                self.restored_pending.pop(ident, None)
            else:
                self.restored_pending[ident] = _decode_pending(value)
            return
        side = SIDES.index(key[1:2])
        ts_text, seq_text, raw = key[3:].split(b":", 2)
        ts, seq, name = int(ts_text), int(seq_text), raw.decode()
        events = self.buffers[side].setdefault(name, [])
        for at, entry in enumerate(events):
            if entry[1] == seq:
                del events[at]
                break
        if value is not None:
            matched, held = _loads(value)
            events.append([ts, seq, orjson.dumps(held), matched])
        if not events:
            del self.buffers[side][name]
        self.seq = max(self.seq, seq + 1)

    def finish_restore(self) -> None:
        """After the last record: pending queues in offset order, buffers in order, the
        expiry queue, the count."""
        self._finish_pending()
        expiry: list[tuple[int, int, int, str]] = []
        held = 0
        for side, buffers in enumerate(self.buffers):
            for key, events in buffers.items():
                events.sort(key=lambda entry: (entry[0], entry[1]))
                held += len(events)
                expiry.extend((entry[0], entry[1], side, key) for entry in events)
        heapq.heapify(expiry)
        self.expiry = expiry
        self.held = held
        self.changes = {}
        self.pending_changes = {}

    def _finish_pending(self) -> None:
        """The restored pending events, into their queues in offset order."""
        for (side, _, _), event in sorted(self.restored_pending.items()):
            self.pending[side].append(event)
        self.logged = set(self.restored_pending)
        self.restored_pending = {}


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _encode_pending(event: Pending) -> bytes:
    ts, key, value, offset, raw_key, raw_value, n = event
    return orjson.dumps(
        [ts, key, orjson.Fragment(value), offset, _b64(raw_key), _b64(raw_value), n]
    )


def _decode_pending(value: bytes) -> Pending:
    ts, key, held, offset, raw_key, raw_value, n = _loads(value)
    return (ts, key, orjson.dumps(held), offset, _unb64(raw_key), _unb64(raw_value), n)
