"""The per-partition processing core: dedupe, lateness, windowed aggregation, emission.

Pure and synchronous: the async shell calls :meth:`PartitionProcessor.process` once per fetched
batch of one input partition (events in offset order), :meth:`~PartitionProcessor.touch` for a
batch of only invalid records, :meth:`~PartitionProcessor.tick` periodically, and persists
:meth:`~PartitionProcessor.drain_changelog` after each call.

Each event, in turn: is a duplicate if an accepted event with its id has ``ts + horizon`` past
the stream time; else is late if all its windows are closed; else is added to its open windows,
its id is remembered, stream time becomes ``max(stream time, ts)``, and every window that this
closes (``end + grace <= stream time``) is emitted as a final and forgotten.

Emission order is deterministic and survives a restore from a compacted changelog: records come
by window end ascending, then by ``user_id`` ascending (code point order). In update mode,
finals are emitted as their windows close during the batch, then at the end of the batch one
``"final": False`` record per (user, window) aggregate that changed in the batch and whose
window is still open, in the same order.

The state is in memory, or, given a :class:`~streams.core.spill.KeyValueStore`, its bulk (open
aggregates, remembered ids) is in that store: same records out, same changelog records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from streams.core import changelog
from streams.core.aggregate import Aggregate, to_record
from streams.core.changelog import Record
from streams.core.config import CoreConfig
from streams.core.dedupe import Deduplicator
from streams.core.spill import KeyValueStore, Spill, SpilledDeduplicator, SpilledWindowStore
from streams.core.streamtime import NO_TIME, StreamClock
from streams.core.windows import NEVER, WindowStore


@dataclass(slots=True)
class BatchOutcome:
    """What one batch produced.

    ``late`` and ``duplicates`` are indices into the batch, ascending; the shell forwards the
    original bytes of the late ones to the late topic.
    """

    emitted: list[dict[str, Any]] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    accepted: int = 0


class PartitionProcessor:
    """All state and logic for one input partition; see the module docstring for the order."""

    def __init__(self, config: CoreConfig, store: KeyValueStore | None = None) -> None:
        """State in memory, or with ``store`` the open aggregates and the remembered ids in it
        (see :mod:`streams.core.spill`); either way the same records come out."""
        self.config = config
        self._clock = StreamClock()
        self._windows: WindowStore
        self._dedupe: Deduplicator
        self._spill: Spill | None = None
        if store is None:
            self._windows = WindowStore(config.window_size_ms, config.grace_ms)
            self._dedupe = Deduplicator(config.dedupe_horizon_ms)
        else:
            self._spill = spill = Spill(store)
            self._windows = SpilledWindowStore(
                config.window_size_ms, config.window_step_ms, config.grace_ms, spill
            )
            self._dedupe = SpilledDeduplicator(config.dedupe_horizon_ms, spill)
        self._pending: list[Record] = []
        # start -> user_id -> aggregate changed since the last drain (see drain_changelog).
        self._unsaved: dict[int, dict[str, Aggregate]] = {}
        self._position: int | None = None

    @property
    def stream_time(self) -> int | None:
        """Largest ``ts`` accepted (or reached by idle advance); None before any."""
        stream_time = self._clock.stream_time
        return None if stream_time == NO_TIME else stream_time

    @property
    def position(self) -> int | None:
        """The next input offset last given to :meth:`note_position` (or restored); None
        before any."""
        return self._position

    def note_position(self, offset: int) -> None:
        """Record that the input is consumed up to ``offset`` (the next one to read).

        The shell calls it with each batch, so the changelog says where the state stands in
        the input: written in the same transaction as the state (exactly_once), it tells a
        restore where to resume even when the group's committed offset is not yet visible.
        """
        self._position = offset
        self._pending.append((changelog.POSITION_KEY, b"%d" % offset))

    @property
    def open_windows(self) -> int:
        """Number of (user, window) aggregates held."""
        return len(self._windows)

    @property
    def dedupe_size(self) -> int:
        """Number of event ids held for deduplication."""
        return len(self._dedupe)

    def process(self, events: Sequence[Mapping[str, Any]], now_ms: int, seq: int) -> BatchOutcome:
        """Process one batch of validated events, in offset order, received at ``now_ms``.

        ``seq`` numbers the batch within the partition (the shell passes its first offset); it
        keys the batch's dedupe record in the changelog.
        """
        config = self.config
        size = config.window_size_ms
        step = config.window_step_ms
        reach = size + config.grace_ms
        horizon = config.dedupe_horizon_ms
        share_ids = step < size
        dedupe = self._dedupe
        dedupe.ensure_index()
        store = self._windows
        stream_time = self._clock.stream_time
        dedupe.load(events)
        store.load(events, stream_time)
        seen = dedupe.seen
        by_start = store.by_start
        next_close = store.next_close

        outcome = BatchOutcome()
        emitted = outcome.emitted
        late = outcome.late
        duplicates = outcome.duplicates
        accepted: dict[str, int] = {}
        accepted_count = 0
        # start -> user_id -> aggregate changed in this batch (for the changelog and updates).
        touched: dict[int, dict[str, Aggregate]] = {}
        cached_start = NEVER
        # start -> (its aggregates, those changed in this batch), for the windows met so far.
        lanes: dict[int, tuple[dict[str, Aggregate], dict[str, Aggregate]]] = {}

        for index, event in enumerate(events):
            event_id = event["event_id"]
            ts = event["ts"]
            previous = seen.get(event_id)
            if previous is not None and previous + horizon > stream_time:
                duplicates.append(index)
                continue
            start = ts - ts % step
            if start + reach <= stream_time:
                # The newest window holding ts is closed, hence all of them are.
                late.append(index)
                continue
            user_id = event["user_id"]
            amount = event.get("amount")
            if amount is not None:
                amount = float(amount)
            # Windows hold ts while start > ts - size and are open while start + reach > stream
            # time; walk them newest first down to the larger of the two bounds.
            floor = ts - size
            if stream_time - reach > floor:
                floor = stream_time - reach
            while start > floor:
                # Consecutive events mostly share a window, and a batch meets only a few: find
                # a window's two dicts by one compare, or else one lookup in lanes.
                if start != cached_start:
                    cached_start = start
                    lane = lanes.get(start)
                    if lane is None:
                        if start in by_start:
                            users = by_start[start]
                        else:
                            users = store.open(start)
                            next_close = store.next_close
                        fresh: dict[str, Aggregate] = {}
                        touched[start] = fresh
                        lanes[start] = lane = (users, fresh)
                    users, changed = lane
                aggregate = users.get(user_id)
                if aggregate is None:
                    # Every event brings its own copy of the user_id. With hopping windows a
                    # user has many open windows, created by different events: interning lets
                    # them share one copy. Tumbling windows give a user one or two, where the
                    # interned table would cost more (~40 bytes per user) than it saves.
                    users[intern(user_id) if share_ids else user_id] = aggregate = (
                        [1, 0.0, None, None] if amount is None else [1, amount, amount, amount]
                    )
                else:
                    aggregate[0] += 1
                    if amount is not None:
                        aggregate[1] += amount
                        low = aggregate[2]
                        if low is None:
                            aggregate[2] = aggregate[3] = amount
                        elif amount < low:
                            aggregate[2] = amount
                        elif amount > aggregate[3]:
                            aggregate[3] = amount
                changed[user_id] = aggregate
                start -= step
            if previous is None or ts > previous:
                seen[event_id] = ts
                accepted[event_id] = ts
            accepted_count += 1
            if ts > stream_time:
                stream_time = ts
                if stream_time >= next_close:
                    # Lanes of the windows this closes stay behind unused: the walk above only
                    # visits open windows, and the cached one holds ts so it is still open.
                    self._emit_closed(stream_time, emitted)
                    next_close = store.next_close

        outcome.accepted = accepted_count
        clock = self._clock
        clock.stream_time = stream_time
        clock.mark_activity(now_ms)
        # The changelog gets each changed aggregate once per drain, however many batches
        # changed it in between (the shell drains once per fetch and processes in chunks).
        unsaved = self._unsaved
        for start, changed in touched.items():
            held = unsaved.get(start)
            if held is None:
                unsaved[start] = changed  # a fresh dict of this batch's, not used after it
            else:
                held.update(changed)
        if config.emit_updates:
            for start in sorted(touched):
                if start in by_start:
                    changed = touched[start]
                    for user_id in sorted(changed):
                        emitted.append(to_record(user_id, start, size, changed[user_id], False))
        self._pending.extend(dedupe.remember(seq, accepted, stream_time))
        store.save(touched)
        self._queue_time()
        if self._spill is not None:
            self._spill.flush()
        return outcome

    def touch(self, now_ms: int) -> None:
        """Note activity at ``now_ms`` for a batch that held no valid event."""
        self._clock.mark_activity(now_ms)
        self._queue_time()

    def tick(self, now_ms: int, caught_up: bool) -> list[dict[str, Any]]:
        """Advance an idle, caught-up partition's stream time by the wall clock ``now_ms``.

        Idle means no batch nor touch for ``idle_timeout_ms``; stream time then moves to
        ``max(stream time, now_ms, stream time at last activity + time since)``. Returns the
        finals of the windows this closes. A partition that has seen no batch nor touch yet
        starts its idle timer at its first caught-up tick.
        """
        if not caught_up:
            return []
        clock = self._clock
        if clock.last_activity is None:
            clock.mark_activity(now_ms)
            self._queue_time()
            return []
        target = clock.idle_target(now_ms, self.config.idle_timeout_ms)
        if target is None or target == clock.stream_time:
            return []
        self._dedupe.ensure_index()
        clock.stream_time = target
        emitted: list[dict[str, Any]] = []
        self._emit_closed(target, emitted)
        self._pending.extend(self._dedupe.purge(target))
        self._queue_time()
        if self._spill is not None:
            self._spill.flush()
        return emitted

    def drain_changelog(self) -> list[Record]:
        """The changelog records of every state change since the last drain.

        Replaying them in order rebuilds the state: the current value of each aggregate changed
        since the last drain whose window is still open (a closed window's aggregates have
        their tombstones queued instead, and a closed window never reopens), then tombstones,
        dedupe and time records in the order they happened.
        """
        records: list[Record] = []
        if self._unsaved:
            by_start = self._windows.by_start
            encode = changelog.encode_aggregate
            for start, changed in self._unsaved.items():
                if start in by_start:
                    prefix = changelog.window_key_prefix(start)
                    records.extend(
                        [(prefix + uid.encode(), encode(agg)) for uid, agg in changed.items()]
                    )
            self._unsaved = {}
        records.extend(self._pending)
        self._pending = []
        return records

    def apply_changelog(self, key: bytes, value: bytes | None) -> None:
        """Restore state from one changelog record; feed them in topic order."""
        tag = key[:1]
        if tag == changelog.WINDOW_TAG:
            start, user_id = changelog.parse_window_key(key)
            if value is None:
                self._windows.discard(start, user_id)
            else:
                self._windows.put(start, user_id, changelog.decode_aggregate(value))
        elif tag == changelog.DEDUPE_TAG:
            ids = None if value is None else changelog.decode_ids(value)
            self._dedupe.apply(changelog.parse_dedupe_key(key), ids)
        elif key == changelog.POSITION_KEY:
            self._position = None if value is None else int(value)
        elif key == changelog.TIME_KEY:
            if value is None:
                self._clock = StreamClock()
                return
            clock = self._clock
            stream_time, last_activity, at_last_activity = changelog.decode_time(value)
            clock.stream_time = NO_TIME if stream_time is None else stream_time
            clock.last_activity = last_activity
            clock.at_last_activity = NO_TIME if at_last_activity is None else at_last_activity
        else:
            raise ValueError(f"changelog key {key!r} is not one this processor writes")

    def _emit_closed(self, stream_time: int, emitted: list[dict[str, Any]]) -> None:
        size = self.config.window_size_ms
        pending = self._pending
        for start, users in self._windows.close_until(stream_time):
            prefix = changelog.window_key_prefix(start)
            for user_id in sorted(users):
                emitted.append(to_record(user_id, start, size, users[user_id], True))
                pending.append((prefix + user_id.encode(), None))

    def _queue_time(self) -> None:
        clock = self._clock
        self._pending.append(
            (
                changelog.TIME_KEY,
                changelog.encode_time(
                    self.stream_time,
                    clock.last_activity,
                    None if clock.at_last_activity == NO_TIME else clock.at_last_activity,
                ),
            )
        )
