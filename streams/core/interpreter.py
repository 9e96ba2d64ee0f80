"""A plain, slow interpreter of a declared segment: the model the fast engine is held to.

It reads one partition's records one at a time and runs each through the declared operators
depth first, keeping every accepted event of every window and computing each aggregation
from scratch when the window closes. No generated code, no accumulators, no chunks: what
``streams verify`` recomputes an app's outputs with, and what the property tests compare
:class:`~streams.core.segment.SegmentTask` against.

Semantics, in the words of DESIGN.md's contract (decision 0009 fills its gaps):

- the key and event time come from the declared fields (after ``group_by``: the message key
  and the record timestamp); a missing or ill-typed one dead-letters the record;
- operators apply in order; an exception in a user function dead-letters the record with
  the operator's stage and processing goes on;
- ``dedupe`` drops an event whose field value an *accepted* event had, within the horizon of
  stream time; accepted means it reached the end of its stage: aggregated by the window (not
  late), written by ``.to``, or handed to the next ``map_batch``/``enrich``. A stage before
  one of those keeps its own stream time for this;
- windows, lateness, grace and idle advance are the reference pipeline's, per partition;
  sessions merge as the contract says;
- ``.process`` keeps each key's state and timers as the contract says (decision 0015): a
  call works on a copy that replaces the key's state only when it returns what it may;
  after each event, the timers due at the operator's stream time fire in ``(at_ms, key)``
  order (those a timer call sets wait for the next round), then keys untouched for
  ``ttl_ms`` are forgotten; values a timer emits have its key and event time ``at_ms``;
- a window's final records go on through the operators after the aggregation, with the
  aggregation key and event time ``window_end - 1``. Dead letters of events no input record
  made (a final record, a timer) carry their origin: the final record, or ``{"timer_ms"}``.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.core.aggregations import canonical
from streams.core.compile import canonical_key, check_accumulator, check_json, copy_json
from streams.core.failures import USER_ERRORS, reason
from streams.core.formats import Decoder, SchemaSource, input_decoder
from streams.core.jsonbytes import dumps
from streams.core.sliding_model import SlidingModel
from streams.topology import nodes
from streams.topology.aggregations import is_builtin
from streams.topology.plan import Segment
from streams.topology.windows import Hopping, Session, Sliding

_NONE = object()
RIGHT_STAGE = -1  # the stage number of a join's second input's own operators


@dataclass(frozen=True)
class Batch:
    """Records that arrived together at wall-clock ``now_ms`` (a fetch); ``right``: those of
    a join's second input in the same fetch."""

    now_ms: int
    records: Sequence[Any]
    right: Sequence[Any] = ()


@dataclass(frozen=True)
class Tick:
    """A moment with no records at ``now_ms``, when the partition was caught up or not."""

    now_ms: int
    caught_up: bool = True


@dataclass
class Interpretation:
    """What one partition must produce.

    ``outputs`` are ``(key, value, event time)`` in emission order: for a windowed segment
    the final records (dicts), for a stateless one each value written (with the event time
    when it goes to a repartition topic). ``dead`` and ``late`` index the records given, in
    order over all batches; ``dead`` holds ``(stage, reason, where)``. ``derived`` are the
    dead letters of no input record (a window whose final could not be made), in emission
    order: ``(key, value, stage, where)``. ``updates`` are a sliding window's ``"final":
    false`` records in update mode, ``(key, value)`` per batch (the engine's chunk).
    """

    outputs: list[tuple[bytes | None, Any, int | None]] = field(default_factory=list)
    updates: list[tuple[bytes, Any]] = field(default_factory=list)
    dead: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    derived: list[tuple[bytes | None, Any, str, str]] = field(default_factory=list)
    late_derived: list[tuple[str | None, Any]] = field(default_factory=list)
    # Records late for a join (indices, like ``late``; of either input).
    late_join: list[int] = field(default_factory=list)
    derived_duplicates: int = 0
    timers_fired: int = 0
    late: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    accepted: int = 0
    filtered: int = 0
    join_misses: int = 0


@dataclass
class _Event:
    index: int
    offset: int
    value: Any
    key: str | None
    ts: int
    key_bytes: bytes | None


class _ProcessModel:
    """A ``.process`` operator's keys (name -> JSON-normalised value, timers, last touch)
    and stream time."""

    def __init__(self, op: nodes.Process) -> None:
        self.op = op
        self.keys: dict[str, dict[str, Any]] = {}
        self.stream_time: int | None = None
        self.at_last_activity: int | None = None


class _ModelState:
    """What ``fn``/``on_timer`` get: a copy of the key's state, kept only if the call
    returns what it may."""

    def __init__(self, key: str, held: dict[str, Any] | None, timed: bool) -> None:
        self.key = key
        self.values: dict[str, Any] = {} if held is None else dict(held["values"])
        self.pending: set[int] = set() if held is None else set(held["timers"])
        self.timed = timed
        self.bad: str | None = None
        self.cleared = False

    def _refuse(self, why: str) -> None:
        if self.bad is None:
            self.bad = why
        raise ValueError(why)

    def get(self, name: str, default: Any = None) -> Any:
        return copy_json(self.values[name]) if name in self.values else default

    def set(self, name: str, value: Any) -> None:
        if not isinstance(name, str):
            self._refuse("name not a string")
        try:
            self.values[name] = orjson.loads(dumps(value))
        except USER_ERRORS:
            self._refuse("not JSON")

    def delete(self, name: str) -> None:
        self.values.pop(name, None)

    def clear(self) -> None:
        self.values.clear()
        self.pending.clear()
        self.cleared = True

    def timer(self, at_ms: int) -> None:
        if type(at_ms) is not int or not 0 <= at_ms < 2**63:
            self._refuse("not a time")
        if not self.timed:
            self._refuse("no on_timer")
        self.pending.add(at_ms)

    def cancel(self, at_ms: int) -> None:
        if type(at_ms) is not int or not 0 <= at_ms < 2**63:
            self._refuse("not a time")
        self.pending.discard(at_ms)

    def timers(self) -> list[int]:
        return sorted(self.pending)


def _emittable(returned: Any) -> list[Any] | None:
    if returned is None:
        return []
    if isinstance(returned, dict):
        return [returned]
    if isinstance(returned, list) and all(isinstance(x, dict) for x in returned):
        return returned
    return None


class _JoinModel:
    """A join's two buffers (per key, events by event time then arrival: [ts, seq, value,
    matched]), pending events of each side, and stream time."""

    def __init__(self, op: nodes.JoinStream) -> None:
        self.op = op
        self.buffers: tuple[dict[str, list[list[Any]]], dict[str, list[list[Any]]]] = ({}, {})
        self.pending: tuple[list[_Event], list[_Event]] = ([], [])
        self.seq = 0
        self.stream_time: int | None = None
        self.at_last_activity: int | None = None


class _Dead(Exception):
    def __init__(self, stage: str, why: str, where: str = "") -> None:
        super().__init__(why)
        self.stage = stage
        self.why = why
        self.where = where


def interpret(
    segment: Segment,
    batches: Sequence[Batch | Tick],
    *,
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    idle_timeout_ms: int = 30_000,
    max_message_bytes: int = 1_048_576,
    flush: bool = True,
    process_times: Mapping[int, int] | None = None,
    join_time: int | None = None,
    schemas: SchemaSource | None = None,
) -> Interpretation:
    """Run ``segment`` over one partition's batches; with ``flush``, close every window
    still open at the end (as if stream time had passed them all). ``process_times`` moves
    the stream time of the segment's ``.process`` number ``n`` (0, 1, ...) to where a worker
    left it at the end (its idle advance fires timers: the audit reads it from the
    changelog); ``join_time`` does the same for a join's stream time (its idle advance
    emits the left events nothing joined). ``schemas`` gives the writer schemas of inputs
    in a registry format."""
    return _Interpreter(segment, tables or {}, idle_timeout_ms, max_message_bytes, schemas).run(
        batches, flush, process_times or {}, join_time
    )


class _Interpreter:
    def __init__(
        self,
        segment: Segment,
        tables: Mapping[str, Mapping[str, Any]],
        idle_timeout_ms: int,
        max_bytes: int,
        schemas: SchemaSource | None = None,
    ) -> None:
        self.segment = segment
        self.tables = tables
        self.idle_timeout = idle_timeout_ms
        self.decoder = input_decoder(segment.input, segment.source, max_bytes, schemas)
        self.result = Interpretation()
        # The stages: operators split at each map_batch / enrich / process; the last one
        # before the window ends in it (``main``, which owns ``stream_time``), and the
        # operators after the aggregation follow (``post``), the last one writing.
        self.stages, self.barriers = _split(segment.ops)
        self.main = len(self.stages) - 1
        self.post: int | None = None
        if segment.after_window:
            self.post = len(self.stages)
            stages, barriers = _split(segment.post)
            self.barriers.append(None)  # the window, between main and post
            self.stages += stages
            self.barriers += barriers
        self.last = len(self.stages) - 1
        self.processes = {
            stage: _ProcessModel(op)
            for stage, op in enumerate(self.barriers)
            if isinstance(op, nodes.Process)
        }
        self.join: _JoinModel | None = None
        self.join_stage = -1
        for stage, op in enumerate(self.barriers):
            if isinstance(op, nodes.JoinStream):
                self.join, self.join_stage = _JoinModel(op), stage
        right = segment.right
        self.right_ops: list[nodes.Op] = [] if right is None else list(right.ops)
        self.right_decoder = (
            None if right is None else input_decoder(right.input, right.source, max_bytes, schemas)
        )
        # Events no input record made (a final record, a timer): index -1 - n is origins[n].
        self.origins: list[tuple[bytes | None, Any]] = []
        self._derived_dead: dict[int, tuple[str, str, str]] = {}
        self.stream_time: int | None = None
        self.stage_times: dict[int, int] = {}
        self.last_activity: int | None = None
        self.at_last_activity: int | None = None
        self.seen: dict[int, dict[Any, int]] = {}  # id(dedupe op) -> value -> largest ts
        # windows: start -> key -> [accepted events in arrival order, custom accumulators]
        self.windows: dict[int, dict[str, list[Any]]] = {}
        self._late_seen: set[int] = set()
        self._dead_rank: dict[int, int] = {}  # record index -> rank of its dead letter
        # The earliest time a session can close (None: no session): scans only from there.
        self._session_close: int | None = None
        # sessions: key -> list of [start, last, events]
        self.sessions: dict[str, list[list[Any]]] = {}
        self.sliding: SlidingModel | None = None
        if segment.window is not None and isinstance(segment.window.spec, Sliding):
            self.sliding = SlidingModel(
                segment.window.spec.size_ms, segment.window.grace_ms, bool(self._customs())
            )
        self.records_seen = 0

    # -- driving -------------------------------------------------------------------------

    def run(
        self,
        batches: Sequence[Batch | Tick],
        flush: bool,
        process_times: Mapping[int, int],
        join_time: int | None = None,
    ) -> Interpretation:
        for batch in batches:
            if isinstance(batch, Tick):
                self._tick(batch)
                continue
            if not batch.records and not batch.right:
                continue  # a fetch brings records: an empty one is no activity
            self._records(batch.records, self.decoder, 0)
            if batch.right:
                assert self.right_decoder is not None
                self._records(batch.right, self.right_decoder, RIGHT_STAGE)
            if self.join is not None:
                self._drain_join()
            if self.sliding is not None and self.segment.emit_updates:
                self._sliding_updates(self.sliding)
            self._mark_activity(batch.now_ms)
        # The end, in the chain's order: the processes before the window move to where the
        # workers left them, the windows close, then the processes after them.
        ends = dict(enumerate(self.processes.items()))
        join = self.join
        if (
            join is not None
            and join_time is not None
            and (join.stream_time is None or join_time > join.stream_time)
        ):
            join.stream_time = join_time
            self._expire_join(join)
        for n, (position, model) in ends.items():
            if self.post is None or position < self.post:
                self._move_to(position, model, process_times.get(n))
        if flush:
            self._close(None)
        for n, (position, model) in ends.items():
            if self.post is not None and position >= self.post:
                self._move_to(position, model, process_times.get(n))
        for index, (stage, _, where) in sorted(self._derived_dead.items(), reverse=True):
            key, value = self.origins[-1 - index]
            self.result.derived.append((key, value, stage, where))
        return self.result

    def _records(self, records: Sequence[Any], decoder: Decoder, stage: int) -> None:
        _, vals, failures = decoder.decode([r.value for r in records])
        why = dict(failures)
        valid = iter(vals)
        for position, record in enumerate(records):
            if position in why:
                self.result.dead[self.records_seen] = (decoder.stage, why[position], "")
            else:
                self._record(record, next(valid), stage)
            self.records_seen += 1

    def _mark_activity(self, now_ms: int) -> None:
        self.last_activity = now_ms
        self.at_last_activity = self.stream_time
        for model in self.processes.values():
            model.at_last_activity = model.stream_time
        if self.join is not None:
            self.join.at_last_activity = self.join.stream_time

    def _tick(self, tick: Tick) -> None:
        """Idle advance, step by step from upstream: the processes before the window (their
        timers' values flow down), the window, the processes after it."""
        if not tick.caught_up or not self.segment.stores:
            return
        if self.last_activity is None:
            self._mark_activity(tick.now_ms)
            return
        idle = tick.now_ms - self.last_activity
        if idle < self.idle_timeout:
            return
        steps = sorted(
            [stage for stage in self.processes if self.post is None or stage < self.post]
            + ([self.join_stage] if self.join is not None else [])
        )
        for stage in steps:
            if stage == self.join_stage and self.join is not None:
                self._idle_join(tick.now_ms, idle)
            else:
                self._idle_process(stage, self.processes[stage], tick.now_ms, idle)
        base = self.at_last_activity
        target = tick.now_ms if base is None else max(tick.now_ms, base + idle)
        if self.stream_time is not None:
            target = max(target, self.stream_time)
        if target != self.stream_time:
            self.stream_time = target
            self._close(target)
        for stage, model in self.processes.items():
            if self.post is not None and stage >= self.post:
                self._idle_process(stage, model, tick.now_ms, idle)

    def _move_to(self, stage: int, model: _ProcessModel, target: int | None) -> None:
        if target is not None and (model.stream_time is None or target > model.stream_time):
            model.stream_time = target
            self._fire(stage, model)

    def _idle_process(self, stage: int, model: _ProcessModel, now_ms: int, idle: int) -> None:
        base = model.at_last_activity
        target = now_ms if base is None else max(now_ms, base + idle)
        if model.stream_time is not None and target <= model.stream_time:
            return
        model.stream_time = target
        self._fire(stage, model)

    # -- one record ----------------------------------------------------------------------

    def _record(self, record: Any, value: dict[str, Any], stage: int = 0) -> None:
        index = self.records_seen
        spec: Any = self.segment if stage == 0 else self.segment.right
        try:
            key, ts = self._key_and_time(record, value, spec)
        except _Dead as dead:
            self.result.dead[index] = (dead.stage, dead.why, dead.where)
            return
        if spec.key is not None and not spec.key_from_message and key is not None:
            key_bytes = key.encode()
        else:
            key_bytes = record.key
        event = _Event(index, record.offset, value, key, ts, key_bytes)
        self._stage(stage, 0, event, [])

    def _key_and_time(
        self, record: Any, value: dict[str, Any], segment: Any
    ) -> tuple[str | None, int]:
        if segment.key_from_message:
            key = None if record.key is None else record.key.decode("utf-8", "replace")
        elif segment.key is None:
            key = None
        else:
            key = value.get(segment.key)
            if not isinstance(key, str):
                raise _Dead("key", "key field missing or not a string", segment.where)
        if segment.key_from_message or segment.timestamp is None:
            return key, int(record.timestamp)
        ts = value.get(segment.timestamp)
        if isinstance(ts, float) and ts >= 0 and ts.is_integer():
            ts = int(ts)
        if type(ts) is not int or ts < 0:
            raise _Dead(
                "timestamp", "timestamp field missing or not an integer >= 0", segment.where
            )
        return key, ts

    def _dead(
        self, event: _Event, op: nodes.Op | str | tuple[str, str], why: str, rank: int
    ) -> None:
        """Dead-letter ``event``'s record once, naming the failing operator ``op`` (or a
        stage name for the stream's own checks): with the failure of the lowest ``rank``
        (the engine runs a chunk's events through a stage's operators, then its barrier,
        then the next stage: ``2 * stage``, ``2 * stage + 1``, ...), the first child's
        within one."""
        held = self._dead_rank.get(event.index)
        if held is None or rank < held:
            self._dead_rank[event.index] = rank
            dead = self.result.dead if event.index >= 0 else self._derived_dead
            if isinstance(op, str):
                dead[event.index] = (op, why, self.segment.where)
            elif isinstance(op, tuple):
                dead[event.index] = (op[0], why, op[1])
            else:
                dead[event.index] = (op.stage, why, op.where)

    def _stage(self, stage: int, pos: int, event: _Event, marks: list[tuple[int, Any]]) -> bool:
        """Run ``event`` from operator ``pos`` of ``stage`` on; True if it was accepted."""
        ops = self.right_ops if stage == RIGHT_STAGE else self.stages[stage]
        if pos == len(ops):
            return self._stage_end(stage, event, marks)
        op = ops[pos]
        value = event.value
        if isinstance(op, nodes.Filter):
            try:
                keep = bool(op.fn(value))
            except USER_ERRORS as exc:
                self._dead(event, op, reason(exc), 2 * stage)
                return False
            if not keep:
                self.result.filtered += 1
                return False
            return self._stage(stage, pos + 1, event, marks)
        if isinstance(op, nodes.Map):
            try:
                new = op.fn(value)
            except USER_ERRORS as exc:
                self._dead(event, op, reason(exc), 2 * stage)
                return False
            if not isinstance(new, dict):
                self._dead(event, op, "not a dict", 2 * stage)
                return False
            return self._stage(stage, pos + 1, _with(event, new), marks)
        if isinstance(op, nodes.FlatMap):
            try:
                children = list(op.fn(value))
            except USER_ERRORS as exc:
                self._dead(event, op, reason(exc), 2 * stage)
                return False
            accepted = False
            for child in children:
                if not isinstance(child, dict):
                    self._dead(event, op, "not a dict", 2 * stage)
                    continue
                accepted |= self._stage(stage, pos + 1, _with(event, child), list(marks))
            return accepted
        if isinstance(op, nodes.Dedupe):
            found = value.get(op.field)
            if found is None:
                return self._stage(stage, pos + 1, event, marks)
            if not isinstance(found, str):
                try:
                    found = canonical_key(found)
                except USER_ERRORS as exc:
                    self._dead(event, op, reason(exc), 2 * stage)
                    return False
            seen = self.seen.setdefault(id(op), {})
            clock = self._clock(stage)
            earlier = seen.get(found)
            if earlier is not None and clock is not None and earlier + op.horizon_ms > clock:
                if event.index >= 0:
                    self.result.duplicates.append(event.index)
                else:
                    self.result.derived_duplicates += 1
                return False
            return self._stage(stage, pos + 1, event, [*marks, (id(op), found)])
        if isinstance(op, nodes.Join):
            key = value.get(op.on)
            if key is not None and not isinstance(key, str):
                try:
                    key = canonical_key(key)
                except USER_ERRORS as exc:
                    self._dead(event, op, reason(exc), 2 * stage)
                    return False
            table = self.tables.get(op.table.name, {})
            found = None if key is None else table.get(key)
            if found is None:
                self.result.join_misses += 1
                if op.how == "inner":
                    return False
            value[op.into] = found
            return self._stage(stage, pos + 1, event, marks)
        raise AssertionError(f"not a stage operator: {op!r}")

    def _clock(self, stage: int) -> int | None:
        if stage == self.main:
            return self.stream_time
        return self.stage_times.get(stage)

    def _remember(self, marks: list[tuple[int, Any]], ts: int) -> None:
        for op_id, found in marks:
            seen = self.seen[op_id]
            if found not in seen or ts > seen[found]:
                seen[found] = ts

    def _stage_end(self, stage: int, event: _Event, marks: list[tuple[int, Any]]) -> bool:
        if stage == RIGHT_STAGE:
            return self._arrive(1, event)
        if stage == self.main:
            return self._terminal(event, marks)
        if stage == self.last:
            return self._write(event, marks, stage)
        if stage != self.main:
            self._remember(marks, event.ts)
            previous = self.stage_times.get(stage)
            self.stage_times[stage] = event.ts if previous is None else max(previous, event.ts)
            barrier = self.barriers[stage]
            assert barrier is not None
            if isinstance(barrier, nodes.Process):
                self._process(stage, self.processes[stage], event)
                return True
            if isinstance(barrier, nodes.JoinStream):
                return self._arrive(0, event)
            try:
                value = self._barrier(barrier, event.value)
            except _Dead as dead:
                self._dead(event, barrier, dead.why, 2 * stage + 1)
                return True
            if value is _NONE:
                self.result.filtered += 1
                return True
            self._stage(stage + 1, 0, _with(event, value), [])
            return True
        raise AssertionError("unreachable")

    # -- join_stream --------------------------------------------------------------------

    def _arrive(self, side: int, event: _Event) -> bool:
        """A side's event waits for the drain (JSON first: a value a map made that JSON
        cannot hold is its record's dead letter here)."""
        join = self.join
        assert join is not None
        try:
            event = _with(event, orjson.loads(dumps(event.value)))
        except USER_ERRORS as exc:
            self._dead(event, join.op, reason(exc), 2 * self.join_stage + 1)
            return False
        join.pending[side].append(event)
        return True

    def _drain_join(self) -> None:
        """Pending events in event-time order (the left one on a tie), all of them: a model
        of a worker that has every record fetched."""
        join = self.join
        assert join is not None
        left, right = join.pending
        merged: list[tuple[int, _Event]] = []
        a = b = 0
        while a < len(left) or b < len(right):
            if b == len(right) or (a < len(left) and left[a].ts <= right[b].ts):
                merged.append((0, left[a]))
                a += 1
            else:
                merged.append((1, right[b]))
                b += 1
        left.clear()
        right.clear()
        for side, event in merged:
            self._join_event(join, side, event)

    def _join_event(self, join: _JoinModel, side: int, event: _Event) -> None:
        op = join.op
        st = join.stream_time
        if st is not None and event.ts + op.grace_ms < st:
            self.result.late_join.append(event.index)
            return
        assert event.key is not None
        entry = [event.ts, join.seq, event.value, False]
        join.seq += 1
        mine = join.buffers[side].setdefault(event.key, [])
        mine.append(entry)
        mine.sort(key=lambda e: (e[0], e[1]))
        pairs = []
        for other in join.buffers[1 - side].get(event.key, []):
            if abs(other[0] - event.ts) <= op.within_ms:
                left, right = (entry, other) if side == 0 else (other, entry)
                left[3] = True
                joined = copy_json(left[2])
                joined[op.into] = copy_json(right[2])
                pairs.append((joined, max(event.ts, other[0])))
        if st is None or event.ts > st:
            join.stream_time = event.ts
        for joined, ts in pairs:
            origin = self._origin(event.key, copy_json(joined), ts)
            self._stage(self.join_stage + 1, 0, _with(origin, joined), [])
        self._expire_join(join)

    def _expire_join(self, join: _JoinModel) -> None:
        op = join.op
        st = join.stream_time
        assert st is not None
        horizon = st - op.grace_ms - op.within_ms
        gone = sorted(
            (entry[0], entry[1], side, key)
            for side, buffers in enumerate(join.buffers)
            for key, events in buffers.items()
            for entry in events
            if entry[0] < horizon
        )
        for ts, seq, side, key in gone:
            events = join.buffers[side][key]
            entry = next(e for e in events if e[1] == seq)
            events.remove(entry)
            if not events:
                del join.buffers[side][key]
            if side == 0 and op.how == "left" and not entry[3]:
                joined = copy_json(entry[2])
                joined[op.into] = None
                origin = self._origin(key, copy_json(joined), ts)
                self._stage(self.join_stage + 1, 0, _with(origin, joined), [])

    def _idle_join(self, now_ms: int, idle: int) -> None:
        join = self.join
        assert join is not None
        self._drain_join()
        base = join.at_last_activity
        target = now_ms if base is None else max(now_ms, base + idle)
        if join.stream_time is None or target > join.stream_time:
            join.stream_time = target
            self._expire_join(join)

    # -- .process ------------------------------------------------------------------------

    def _process(self, stage: int, model: _ProcessModel, event: _Event) -> None:
        op = model.op
        rank = 2 * stage + 1
        key = event.key
        if key is None:
            self._dead(event, op, "no key", rank)
            return
        state = _ModelState(key, model.keys.get(key), op.on_timer is not None)
        try:
            returned = op.fn(event.value, state)
        except USER_ERRORS as exc:
            self._dead(event, op, reason(exc), rank)
            return
        values = _emittable(returned)
        if state.bad is not None or values is None:
            self._dead(event, op, state.bad or "not emittable", rank)
            return
        if model.stream_time is None or event.ts > model.stream_time:
            model.stream_time = event.ts
        self._keep(model, key, state)
        for value in values:
            self._stage(stage + 1, 0, _with(event, value), [])
        self._fire(stage, model)

    def _keep(self, model: _ProcessModel, key: str, state: _ModelState) -> None:
        """A call returned: its copy is the key's state now, touched at stream time."""
        if state.values or state.pending:
            model.keys[key] = {
                "values": state.values,
                "timers": state.pending,
                "touched": model.stream_time,
            }
        else:
            model.keys.pop(key, None)

    def _fire(self, stage: int, model: _ProcessModel) -> None:
        """The timers due at the operator's stream time, in (at_ms, key) order; then the
        keys untouched for ttl_ms are forgotten."""
        op = model.op
        st = model.stream_time
        assert st is not None
        due = sorted((at, k) for k, held in model.keys.items() for at in held["timers"] if at <= st)
        # Timers a timer call sets in this round (a cleared one set again included) wait for
        # the next round: a timer that re-arms itself cannot loop.
        set_now: set[tuple[int, str]] = set()
        for at, key in due:
            held = model.keys.get(key)
            if held is None or at not in held["timers"] or (at, key) in set_now:
                continue
            held["timers"].discard(at)
            self.result.timers_fired += 1
            assert op.on_timer is not None
            state = _ModelState(key, held, True)
            origin = self._origin(key, {"timer_ms": at}, at)
            values: list[Any] | None = None
            try:
                returned = op.on_timer(key, state, at)
            except USER_ERRORS as exc:
                self._dead(origin, ("timer", op.where), reason(exc), 2 * stage + 1)
            else:
                values = _emittable(returned)
                if values is None or state.bad is not None:
                    self._dead(origin, ("timer", op.where), "bad", 2 * stage + 1)
                    values = None
            if values is None:
                if not held["values"] and not held["timers"]:
                    del model.keys[key]
                continue
            fresh = state.pending if state.cleared else state.pending - held["timers"]
            set_now.update((later, key) for later in fresh)
            self._keep(model, key, state)
            for value in values:
                self._stage(stage + 1, 0, _with(origin, value), [])
        if op.ttl_ms is not None:
            horizon = st - op.ttl_ms
            for key in [k for k, held in model.keys.items() if held["touched"] <= horizon]:
                del model.keys[key]

    def _origin(self, key: str, value: Any, ts: int) -> _Event:
        """An event no input record made, registered as what its dead letters carry."""
        self.origins.append((key.encode(), value))
        return _Event(-len(self.origins), -1, value, key, ts, key.encode())

    def _barrier(self, op: nodes.Op, value: Any) -> Any:
        if isinstance(op, nodes.MapBatch):
            try:
                out = _call(op.fn, [value])
            except USER_ERRORS as exc:
                raise _Dead("map_batch", reason(exc)) from None
            if not isinstance(out, list | tuple) or len(out) != 1:
                raise _Dead("map_batch", "wrong length")
            if out[0] is None:
                return _NONE
            if not isinstance(out[0], dict):
                raise _Dead("map_batch", "not a dict")
            return out[0]
        assert isinstance(op, nodes.Enrich)
        key = value.get(op.key)
        if key is not None and not isinstance(key, str):
            try:
                key = canonical_key(key)
            except USER_ERRORS as exc:
                raise _Dead("enrich", reason(exc)) from None
        if key is None:
            value[op.into] = None
            return value
        error: BaseException | None = None
        for _ in range(op.attempts):
            try:
                returned = _call(op.fn, [key])
                if not isinstance(returned, Mapping):
                    raise TypeError("enrich must return a dict")
                value[op.into] = returned.get(key)
                return value
            except USER_ERRORS as exc:
                error = exc
        assert error is not None
        raise _Dead("enrich", reason(error))

    # -- terminals -----------------------------------------------------------------------

    def _terminal(self, event: _Event, marks: list[tuple[int, Any]]) -> bool:
        segment = self.segment
        if segment.window is None:
            return self._write(event, marks, stage=self.main)
        aggregate = segment.aggregate
        assert aggregate is not None
        st = self.stream_time
        spec = segment.window.spec
        grace = segment.window.grace_ms
        if isinstance(spec, Session):
            if st is not None and event.ts + grace < st:
                self._late(event)
                return False
        elif self.sliding is not None:
            if self.sliding.late(event.ts, st):
                self._late(event)
                return False
        else:
            assert isinstance(spec, Hopping)
            starts = range(
                event.ts - event.ts % spec.step_ms, event.ts - spec.size_ms, -spec.step_ms
            )
            open_starts = [s for s in starts if st is None or s + spec.size_ms + grace > st]
            if not open_starts:
                self._late(event)
                return False
        assert event.key is not None
        try:
            self._check_inputs(event)
            if isinstance(spec, Session):
                self._join_session(event, spec.gap_ms)
            elif self.sliding is not None:
                self.sliding.accept(event.key, event, self._fold)
            else:
                # Every window's custom accumulators first, on copies: an event that fails in
                # any of them changes none (decision 0014).
                updated = []
                for start in open_starts:
                    window = self.windows.get(start, {}).get(event.key)
                    updated.append(self._custom_add(None if window is None else window[1], event))
                for start, accs in zip(open_starts, updated, strict=True):
                    keys = self.windows.setdefault(start, {})
                    window = keys.get(event.key)
                    if window is None:
                        keys[event.key] = [[event], accs]
                    else:
                        window[0].append(event)
                        window[1] = accs
        except _Dead as dead:
            self._dead(event, aggregate, dead.why, 2 * self.main)
            return False
        self._accept(event, marks, self.main)
        self._close(self.stream_time)
        return True

    def _fold(self, events: list[_Event]) -> dict[str, Any]:
        """Each custom aggregator's accumulator over ``events``, from ``initial()``; raises
        :class:`_Dead` when a call raises or an accumulator is not JSON, or when the last
        event's value is not (a sliding window keeps it)."""
        try:
            dumps(events[-1].value)
        except USER_ERRORS as exc:
            raise _Dead("aggregate", reason(exc)) from None
        accs: dict[str, Any] | None = None
        for event in events:
            accs = self._custom_add(accs, event)
        assert accs is not None
        return accs

    def _sliding_updates(self, model: SlidingModel) -> None:
        """A batch's update records: each pending window it changed, from scratch; one whose
        custom ``result`` raises is skipped (its final will say)."""
        aggregate = self.segment.aggregate
        assert aggregate is not None
        for key, t in model.changed():
            events, accs = model.window(key, t)
            try:
                record = _window_record(aggregate, key, t - model.size + 1, t + 1, events, accs)
                record["final"] = False
                dumps(record)
            except USER_ERRORS:
                continue
            self.result.updates.append((key.encode(), record))

    def _customs(self) -> list[tuple[str, Any]]:
        aggregate = self.segment.aggregate
        assert aggregate is not None
        return [(name, agg) for name, agg in aggregate.named if not is_builtin(agg)]

    def _custom_add(self, accs: dict[str, Any] | None, event: _Event) -> dict[str, Any]:
        """Each custom aggregator's accumulator with ``event`` added, on a copy (a new
        dict); raises :class:`_Dead` when one raises or its accumulator is not JSON."""
        out: dict[str, Any] = {}
        for name, agg in self._customs():
            try:
                acc = agg.initial() if accs is None else copy_json(accs[name])
                new = agg.add(acc, event.value)
                new = acc if new is None else new
                check_accumulator(new, name)
            except USER_ERRORS as exc:
                raise _Dead("aggregate", reason(exc)) from None
            out[name] = new
        return out

    def _accept(self, event: _Event, marks: list[tuple[int, Any]], stage: int) -> None:
        self._remember(marks, event.ts)
        self.result.accepted += 1
        if stage == self.main:
            if self.stream_time is None or event.ts > self.stream_time:
                self.stream_time = event.ts
        else:
            previous = self.stage_times.get(stage)
            self.stage_times[stage] = event.ts if previous is None else max(previous, event.ts)

    def _late(self, event: _Event) -> None:
        if event.index < 0:
            self.result.late_derived.append((event.key, event.value))
        elif event.index not in self._late_seen:
            self._late_seen.add(event.index)
            self.result.late.append(event.index)

    def _write(self, event: _Event, marks: list[tuple[int, Any]], stage: int) -> bool:
        segment = self.segment
        group_by = segment.group_by
        end: nodes.Op = group_by if group_by is not None else segment.sink  # type: ignore[assignment]
        ts: int | None = None
        key = event.key_bytes
        rank = 2 * stage
        if group_by is not None and group_by.keep_key:
            key = None if event.key is None else event.key.encode()
            ts = event.ts
        elif group_by is not None:
            try:
                new = (
                    group_by.by(event.value)
                    if callable(group_by.by)
                    else event.value.get(group_by.by)
                )
                if new is None:
                    raise _Dead("group_by", "missing key")
                key = (new if isinstance(new, str) else canonical_key(new)).encode()
            except _Dead as dead:
                self._dead(event, end, dead.why, rank)
                return False
            except USER_ERRORS as exc:
                self._dead(event, end, reason(exc), rank)
                return False
            ts = event.ts
        try:
            dumps(event.value)
        except USER_ERRORS as exc:
            self._dead(event, end, reason(exc), rank)
            return False
        self.result.outputs.append((key, event.value, ts))
        self._accept(event, marks, stage)
        return True

    def _check_inputs(self, event: _Event) -> None:
        """What the engine checks of an event's inputs before aggregating it: numbers for
        sums, means, minima and maxima, JSON for values kept as they are."""
        aggregate = self.segment.aggregate
        assert aggregate is not None
        for _, aggregation in aggregate.named:
            if not is_builtin(aggregation) or aggregation.kind == "count":
                continue
            found = event.value.get(aggregation.field)
            if found is None:
                continue
            if aggregation.kind in ("sum", "mean", "min", "max"):
                if type(found) not in (int, float) or (
                    type(found) is int and abs(found) >= 2**1023
                ):
                    raise _Dead("aggregate", "not a number")
                continue
            try:
                check_json(found)
            except USER_ERRORS as exc:
                raise _Dead("aggregate", reason(exc)) from None

    def _join_session(self, event: _Event, gap: int) -> None:
        assert event.key is not None
        sessions = self.sessions.setdefault(event.key, [])
        hits = sorted(
            (s for s in sessions if s[0] - gap < event.ts < s[1] + gap), key=lambda s: s[0]
        )
        accs = self._custom_add(hits[0][3] if hits else None, event)
        for s in hits[1:]:
            for name, agg in self._customs():
                try:
                    new = agg.merge(accs[name], copy_json(s[3][name]))
                    accs[name] = accs[name] if new is None else new
                    check_accumulator(accs[name], name)
                except USER_ERRORS as exc:
                    raise _Dead("aggregate", reason(exc)) from None
        merged = [
            min([event.ts, *(s[0] for s in hits)]),
            max([event.ts, *(s[1] for s in hits)]),
            [e for s in hits for e in s[2]] + [event],
            accs,
        ]
        for s in hits:
            sessions.remove(s)
        sessions.append(merged)
        assert self.segment.window is not None
        close = merged[1] + gap + self.segment.window.grace_ms
        if self._session_close is None or close < self._session_close:
            self._session_close = close

    def _close(self, st: int | None) -> None:
        """Emit every window closed at stream time ``st`` (all of them for None)."""
        window = self.segment.window
        if window is None:
            return
        grace = window.grace_ms
        closing: list[tuple[int, str, int, list[_Event], dict[str, Any]]] = []
        if isinstance(window.spec, Session):
            gap = window.spec.gap_ms
            if st is not None and (self._session_close is None or st < self._session_close):
                return
            for key, sessions in list(self.sessions.items()):
                for s in list(sessions):
                    end = s[1] + gap
                    if st is None or end + grace <= st:
                        closing.append((end, key, s[0], s[2], s[3]))
                        sessions.remove(s)
                if not sessions:
                    del self.sessions[key]
            self._session_close = min(
                (s[1] + gap + grace for ss in self.sessions.values() for s in ss), default=None
            )
        elif self.sliding is not None:
            closing.extend(self.sliding.close(st))
        else:
            assert window.spec is not None
            size = window.spec.size_ms
            if st is not None and (not self.windows or min(self.windows) + size + grace > st):
                return
            for start in sorted(self.windows):
                if st is not None and start + size + grace > st:
                    break  # windows are all one size: later starts close later
                for key, (events, accs) in self.windows.pop(start).items():
                    closing.append((start + size, key, start, events, accs))
        closing.sort(key=lambda item: (item[0], item[1]))
        for end, key, start, events, accs in closing:
            self._emit_final(key, start, end, events, accs)

    def _emit_final(
        self, key: str, start: int, end: int, events: list[_Event], accs: dict[str, Any]
    ) -> None:
        """A closed window's final record, or its dead letter when a custom aggregator's
        ``result`` raised or the record is not JSON (decision 0014)."""
        aggregate = self.segment.aggregate
        assert aggregate is not None
        try:
            record = _window_record(aggregate, key, start, end, events, accs)
            record["final"] = True
            dumps(record)
        except USER_ERRORS:
            letter = {
                "key": key,
                "window_start": start,
                "window_end": end,
                "accumulators": accs,
            }
            origin = self._origin(key, letter, end - 1)
            self._dead(origin, aggregate, "result failed", 2 * self.main)
            return
        if self.post is None:
            self.result.outputs.append((key.encode(), record, None))
            return
        # The final record goes on: its own origin, as the engine registers it.
        origin = self._origin(key, orjson.loads(dumps(record)), end - 1)
        self._stage(self.post, 0, _with(origin, record), [])


def _split(ops: tuple[nodes.Op, ...]) -> tuple[list[list[nodes.Op]], list[nodes.Op | None]]:
    stages: list[list[nodes.Op]] = [[]]
    barriers: list[nodes.Op | None] = []
    for op in ops:
        if isinstance(op, nodes.MapBatch | nodes.Enrich | nodes.Process | nodes.JoinStream):
            barriers.append(op)
            stages.append([])
        else:
            stages[-1].append(op)
    return stages, barriers


def _window_record(
    aggregate: nodes.Aggregate,
    key: str,
    start: int,
    end: int,
    events: list[_Event],
    accs: dict[str, Any],
) -> dict[str, Any]:
    """A window's record without its ``final`` flag: built-ins from scratch over its events,
    custom aggregations by ``result`` of their accumulators (which may raise)."""
    record: dict[str, Any] = {"key": key, "window_start": start, "window_end": end}
    for name, aggregation in aggregate.named:
        if is_builtin(aggregation):
            record[name] = _aggregate(aggregation, events)
        else:
            record[name] = aggregation.result(accs[name])
    return record


def _aggregate(aggregation: Any, events: list[_Event]) -> Any:
    """A built-in aggregation computed from scratch over a window's events."""
    kind = aggregation.kind
    if kind == "count":
        return len(events)
    present = [(e, e.value.get(aggregation.field)) for e in events]
    present = [(e, x) for e, x in present if x is not None]
    if kind in ("sum", "mean", "min", "max"):
        numbers = [float(x) for _, x in present]
        if kind == "sum":
            total = 0.0
            for number in numbers:
                total += number
            return total
        if kind == "mean":
            if not numbers:
                return None
            total = 0.0
            for number in numbers:
                total += number
            return total / len(numbers)
        if not numbers:
            return None
        return min(numbers) if kind == "min" else max(numbers)
    if kind == "count_distinct":
        return len({canonical(x) for _, x in present})
    if not present:
        return None
    # Arrival order is offset order within a partition (children of one record share it).
    ranked = [(e.ts, order, x) for order, (e, x) in enumerate(present)]
    if kind == "first":
        return min(ranked, key=lambda r: (r[0], r[1]))[2]
    return max(ranked, key=lambda r: (r[0], r[1]))[2]


def _with(event: _Event, value: Any) -> _Event:
    return _Event(event.index, event.offset, value, event.key, event.ts, event.key_bytes)


def _key_bytes(segment: Segment, key: str | None, record: Any) -> bytes | None:
    if segment.key is not None and not segment.key_from_message and key is not None:
        return key.encode()
    key_bytes: bytes | None = record.key
    return key_bytes


def _call(fn: Any, arg: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(arg))
    return fn(arg)


def same_value(expected: Any, actual: Any) -> bool:
    """Equal, with floats compared to 1e-9 relative (a session's merged sum may add in
    another order than the events arrived)."""
    if isinstance(expected, float) and isinstance(actual, int | float):
        return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-6) or (
            math.isinf(expected) and expected == actual
        )
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            same_value(expected[k], actual[k]) for k in expected
        )
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            same_value(e, a) for e, a in zip(expected, actual, strict=True)
        )
    return bool(expected == actual)
