"""One segment of a pipeline on one input partition: its state, its batches, its changelog.

Pure and synchronous like the rest of the core: :meth:`SegmentTask.process` runs a chunk of
decoded events through the compiled stages. It is a generator: where a stage is a batch
operator whose function must be awaited (``async def`` in ``map_batch`` or ``enrich``), it
yields a :class:`Call` once per batch and the runtime sends back a :class:`CallResult`; a
segment without one never yields. :meth:`~SegmentTask.tick` advances an idle partition's
stream time by the wall clock, and :meth:`~SegmentTask.drain_changelog` returns the records
that rebuild the state, to be written with the batch.

Changelog keys (values are compact JSON, ``None`` a tombstone):

==================  =======================================================================
``t``               the segment's stream time and idle bookkeeping (``StreamClock``)
``T<stage>``        the stream time of a stage before a batch step (only dedupe reads it)
``o``               the next input offset the state stands at
``w<start>:<key>``  a (key, window) accumulator of tumbling or hopping windows
``s<key>``          a key's open sessions ``[[start, last, accumulator], ...]``
``l<seq>``          a block of a sliding window's stored events; ``L<t>:<key>`` a pending
                    window's custom accumulators (:mod:`streams.core.sliding`)
``d<seq>``          event ids the first dedupe accepted in the chunk starting at ``seq``
``D<n>:<seq>``      the same for the segment's dedupe number ``n`` (from 1)
``m<tag>``          the fingerprint of the declaration that wrote operator ``tag``'s state
==================  =======================================================================

A fingerprint record starts its operator's state afresh when replayed; records of an
operator whose last fingerprint is not the running declaration's are not applied, and
:meth:`~SegmentTask.finish_restore` then stops the worker or starts that operator empty
(decision 0009).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams.core import changelog
from streams.core.changelog import Record
from streams.core.compile import Compiled, canonical_key
from streams.core.dedupe import Deduplicator
from streams.core.enrich import MISSING, TtlCache
from streams.core.failures import USER_ERRORS, Site, reason
from streams.core.joins import JoinState
from streams.core.jsonbytes import dumps
from streams.core.outcome import Outcome
from streams.core.process import ProcessState
from streams.core.sessions import SessionStore
from streams.core.sliding import EVENT_TAG, WINDOW_TAG, SlidingStore
from streams.core.spill import KeyValueStore, Spill, SpilledDeduplicator, SpilledWindowStore
from streams.core.spilled_join import SpilledJoinState
from streams.core.spilled_process import SpilledProcessState
from streams.core.streamtime import NO_TIME, StreamClock
from streams.core.windows import WindowStore
from streams.errors import StateMismatchError, StreamsError
from streams.topology import nodes

FINGERPRINT_TAG = b"m"
JOIN_TAG = b"j"
RIGHT_POSITION_KEY = b"O"
PROCESS_TAG = b"p"
PROCESS_TIMER_TAG = b"P"
PROCESS_TIME_TAG = b"q"
STAGE_TIME_TAG = b"T"
SESSION_TAG = b"s"
ON_STATE_CHANGE = ("stop", "fresh")


@dataclass
class Call:
    """A batch operator's function for the runtime to call once (and retry up to
    ``attempts`` times with backoff); ``what`` names it in logs."""

    fn: Any
    arg: Any
    is_async: bool
    attempts: int
    what: str


@dataclass
class CallResult:
    """What a :class:`Call` returned, or the exception of its last attempt."""

    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0


CallGen = Generator[Call, CallResult, Outcome]


def run_sync(gen: CallGen) -> Outcome:
    """Drive a :meth:`SegmentTask.process` that calls only synchronous functions."""
    try:
        call = next(gen)
    except StopIteration as stop:
        outcome: Outcome = stop.value
        return outcome
    while True:
        try:
            call = gen.send(call_now(call))
        except StopIteration as stop:
            outcome = stop.value
            return outcome


def call_now(call: Call) -> CallResult:
    """Call a synchronous :class:`Call` (every attempt, no backoff): drivers and tests."""
    assert not call.is_async, "an async call needs the runtime (or the test driver)"
    started = time.perf_counter()
    error: BaseException | None = None
    for _ in range(call.attempts):
        try:
            return CallResult(call.fn(call.arg), None, time.perf_counter() - started)
        except Exception as exc:
            error = exc
    return CallResult(None, error, time.perf_counter() - started)


class SegmentTask:
    """All state and processing of one segment for one input partition."""

    def __init__(
        self,
        compiled: Compiled,
        *,
        idle_timeout_ms: int,
        tables: Mapping[str, Mapping[str, Any]] | None = None,
        caches: Mapping[int, TtlCache] | None = None,
        store: KeyValueStore | None = None,
    ) -> None:
        """State in memory, or with ``store`` (and a ``spilled`` compilation) the window
        accumulators and event ids of the segment in that store (:mod:`streams.core.spill`);
        the same records come out either way."""
        assert (store is not None) == compiled.spilled, "a spilled loop needs a store"
        self.compiled = compiled
        self.segment = compiled.segment
        self.idle_timeout_ms = idle_timeout_ms
        self.tables = tables or {}
        self.caches = caches or {}
        self.clock = StreamClock()
        self.stage_times: dict[int, int] = {}
        self._spill = None if store is None else Spill(store)
        self.dedupes = [self._new_dedupe(spec.horizon_ms, spec.tag) for spec in compiled.dedupes]
        self._dedupe_by_tag = {spec.tag: n for n, spec in enumerate(compiled.dedupes)}
        self.windows: Any = self._new_windows()
        self.session_first = compiled.session_first
        self.session_update = compiled.session_update
        self.session_merge = compiled.session_merge
        self.session_copy = compiled.session_copy
        self.processes = [
            ProcessState(
                spec.op.fn, spec.op.on_timer, spec.op.ttl_ms, spec.tag, spec.site, spec.timer_site
            )
            if self._spill is None
            else SpilledProcessState(
                spec.op.fn,
                spec.op.on_timer,
                spec.op.ttl_ms,
                spec.tag,
                spec.site,
                spec.timer_site,
                self._spill,
            )
            for spec in compiled.processes
        ]
        self._process_by_tag = {spec.tag: n for n, spec in enumerate(compiled.processes)}
        join = self.segment.join
        self.join: JoinState | None = None
        if join is not None:
            right = self.segment.right
            assert right is not None
            assert self.segment.join_late is not None
            late = (self.segment.join_late, right.late)
            if self._spill is None:
                self.join = JoinState(join.within_ms, join.grace_ms, join.how, join.into, late)
            else:
                self.join = SpilledJoinState(
                    join.within_ms, join.grace_ms, join.how, join.into, late, self._spill
                )
            self._join_site = compiled.sites.get(join.stage, join.where)
        self._right_position: int | None = None
        self._record = compiled.record
        self._encode = compiled.encode
        self._decode = compiled.decode
        self._markers: list[Record] = []
        self._pending: list[Record] = []
        # start -> key -> accumulator changed since the last drain (hopping windows).
        self._unsaved: dict[int, dict[str, list[Any]]] = {}
        self._position: int | None = None
        self._fingerprints = self._declared_fingerprints()
        # Restoring: tag -> True while the records read are the running declaration's.
        self._active: dict[bytes, bool] = {}
        self._foreign: set[bytes] = set()
        self._restored_from: dict[bytes, str] = {}
        self._restored = False
        self.mismatch_warned = False

    # -- what the runtime reads ----------------------------------------------------------

    @property
    def stateful(self) -> bool:
        """True when the segment keeps state (and so has a changelog)."""
        return bool(self._fingerprints)

    @property
    def stream_time(self) -> int | None:
        """The segment's stream time; None before any event."""
        st = self.clock.stream_time
        return None if st == NO_TIME else st

    @property
    def position(self) -> int | None:
        """The next input offset the state stands at (see :meth:`note_position`)."""
        return self._position

    def position_of(self, topic: str) -> int | None:
        """:attr:`position` in ``topic``: the input, or a join's second one."""
        right = self.segment.right
        if right is not None and topic == right.input:
            return self._right_position
        return self._position

    @property
    def open_windows(self) -> int:
        """(key, window) accumulators held (sessions for session windows)."""
        return 0 if self.windows is None else len(self.windows)

    @property
    def process_keys(self) -> int:
        """Keys holding ``.process`` state."""
        return sum(len(state) for state in self.processes)

    @property
    def timers_pending(self) -> int:
        """Timers of the segment's ``.process`` operators waiting to fire."""
        return sum(state.pending for state in self.processes)

    @property
    def dedupe_size(self) -> int:
        """Event ids held by the segment's dedupes."""
        return sum(len(d) for d in self.dedupes)

    @property
    def stored_fingerprints(self) -> dict[bytes, str]:
        """The fingerprints of the operators whose state lives in the store (dedupes,
        tumbling and hopping windows, ``.process`` operators, a join): a store kept on disk
        is taken up (:meth:`reopen`) only by a declaration with the same ones."""
        if self._spill is None:
            return {}
        stored = [spec.tag for spec in self.compiled.dedupes]
        if isinstance(self.windows, SpilledWindowStore):
            assert self.compiled.window_tag is not None
            stored.append(self.compiled.window_tag)
        stored.extend(spec.tag for spec in self.compiled.processes)
        if self.join is not None:
            stored.append(JOIN_TAG)
        return {tag: self._fingerprints[tag] for tag in stored}

    # -- batches -------------------------------------------------------------------------

    def process(
        self, records: Sequence[Any], idxs: Sequence[int], vals: list[Any], now_ms: int
    ) -> CallGen:
        """Run a chunk: ``records`` as fetched (offset order), ``vals`` the decoded valid
        values and ``idxs`` their indices in ``records``."""
        out = Outcome()
        if not records:
            return out
        seq = records[0].offset
        if self._spill is not None:
            self._spilled_index()
        yield from self._run(0, None, out, now_ms, seq, records, idxs, vals)
        if self.compiled.sessions:
            self._session_updates(out)
        elif self.compiled.sliding is not None and self.segment.emit_updates:
            self._sliding_updates(out)
        self._mark_activity(now_ms)
        self._queue_time()
        if self._spill is not None:
            self._spill.flush()
        return out

    def _run(
        self,
        start: int,
        items: Any,
        out: Outcome,
        now_ms: int,
        seq: int,
        records: Sequence[Any] = (),
        idxs: Sequence[int] | None = None,
        vals: list[Any] | None = None,
    ) -> Generator[Call, CallResult, None]:
        """Run the stages from ``start`` on: the first on ``records``, any other on the
        ``items`` the step before it handed on; the window's finals go on through the
        chain after it."""
        stages = self.compiled.stages
        for stage in stages[start:]:
            if not stage.first and not items:
                return  # nothing reaches the rest of the chain
            if stage.fn is not None:
                if stage.first:
                    items = stage.fn(self, records, idxs, vals, out, now_ms, seq)
                else:
                    items = stage.fn(self, records, items, out, now_ms, seq)
                if stage.end == "window":
                    items, out.closed = out.closed, []
            elif isinstance(stage.op, nodes.Process):
                items = self.processes[stage.process].run(items, out)
            elif isinstance(stage.op, nodes.JoinStream):
                # The left side's events wait to be taken in event-time order with the
                # right side's (drain_join): the rest of the chain runs from there.
                self._arrive(0, items, records, out)
                return
            elif isinstance(stage.op, nodes.MapBatch):
                assert stage.site is not None
                items = yield from self._map_batch(stage.op, stage.site, items, out)
            else:
                assert isinstance(stage.op, nodes.Enrich)
                assert stage.site is not None
                items = yield from self._enrich(
                    stage.op, stage.site, stage.index, items, out, now_ms
                )

    def process_right(
        self, records: Sequence[Any], idxs: Sequence[int], vals: list[Any], now_ms: int
    ) -> Outcome:
        """A chunk of a join's second input: its own operators, then its events wait with
        the left side's (:meth:`drain_join`). The outcome has this chunk's dead letters."""
        out = Outcome()
        if not records:
            return out
        right = self.compiled.right
        assert right is not None
        assert right.fn is not None
        items = right.fn(self, records, idxs, vals, out, now_ms, records[0].offset)
        self._arrive(1, items, records, out)
        self._mark_activity(now_ms)
        self._queue_time()
        return out

    def _arrive(self, side: int, items: list[Any], records: Sequence[Any], out: Outcome) -> None:
        """A side's events into the join's pending queue, as JSON (a value JSON cannot hold,
        from a map of that side, is its record's dead letter here)."""
        join = self.join
        assert join is not None
        pending = []
        site = self._join_site
        made: dict[int, int] = {}  # events made of each record so far (a flat_map's)
        for i, v, k, t in items:
            try:
                value = dumps(v)
            except USER_ERRORS as exc:
                site.bad(out.dead, i, f"value is not JSON-serialisable ({reason(exc)})")
                continue
            record = records[i]
            n = made.get(i, 0)
            made[i] = n + 1
            pending.append((t, k, value, record.offset, record.key, record.value, n))
        join.arrive(side, pending)

    def drain_join(
        self, now_ms: int, waiting: tuple[bool, bool] = (False, False), wait_ms: int = 0
    ) -> CallGen:
        """Take the join's pending events in event-time order (see
        :meth:`~streams.core.joins.JoinState.drain`); what it pairs goes on down the chain."""
        out = Outcome()
        join = self.join
        if join is None or not (join.pending[0] or join.pending[1]):
            return out
        items = join.drain(out, now_ms, waiting, wait_ms)
        start = self.compiled.join_stage
        assert start is not None
        if items:
            yield from self._run(start + 1, items, out, now_ms, -1)
        if self.compiled.sessions:
            self._session_updates(out)
        self._queue_time()
        if self._spill is not None:
            self._spill.flush()
        return out

    def _mark_activity(self, now_ms: int) -> None:
        self.clock.mark_activity(now_ms)
        for state in self.processes:
            state.at_last_activity = state.stream_time
        if self.join is not None:
            self.join.at_last_activity = self.join.stream_time

    def _spilled_index(self) -> None:
        for dedupe in self.dedupes:
            dedupe.ensure_index()
        if isinstance(self.windows, SpilledWindowStore):
            self.windows.ensure_index()

    def _map_batch(
        self, op: nodes.MapBatch, site: Site, items: list[tuple[Any, ...]], out: Outcome
    ) -> Generator[Call, CallResult, list[tuple[Any, ...]]]:
        if not items:
            return []
        values = [item[1] for item in items]
        if op.is_async:
            result = yield Call(op.fn, values, True, 1, f"map_batch at {op.where}")
        else:
            result = _call(op.fn, values)
        if result.error is not None:
            site.fail_many(
                out.dead, [item[0] for item in items], result.error, reason(result.error)
            )
            return []
        returned = result.value
        if not isinstance(returned, list | tuple) or len(returned) != len(items):
            got = (
                f"{len(returned)} values"
                if isinstance(returned, list | tuple)
                else type(returned).__name__
            )
            why = (
                f"map_batch must return a list of {len(items)} values "
                f"(one per event, None to drop one), got {got}"
            )
            site.fail_many(out.dead, [item[0] for item in items], None, why)
            return []
        kept = []
        for (index, _, key, ts), value in zip(items, returned, strict=True):
            if value is None:
                out.filtered += 1
            elif value.__class__ is dict or isinstance(value, dict):
                kept.append((index, value, key, ts))
            else:
                site.bad(out.dead, index, f"map_batch returned {type(value).__name__}, not a dict")
        return kept

    def _enrich(
        self,
        op: nodes.Enrich,
        site: Site,
        stage: int,
        items: list[tuple[Any, ...]],
        out: Outcome,
        now_ms: int,
    ) -> Generator[Call, CallResult, list[tuple[Any, ...]]]:
        if not items:
            return []
        cache = self.caches.get(stage)
        if cache is None:
            cache = self.caches[stage] = TtlCache(op.ttl_ms, op.max_entries)  # type: ignore[index]
        keys: list[Any] = []
        found: dict[Any, Any] = {}
        wanted: dict[Any, None] = {}
        unkeyable: set[int] = set()
        for item in items:
            key = item[1].get(op.key)
            if key is not None and key.__class__ is not str:
                try:
                    key = canonical_key(key)
                except USER_ERRORS as exc:  # a value a map put there that JSON cannot hold
                    site.fail(out.dead, item[0], exc)
                    unkeyable.add(id(item))
                    keys.append(None)
                    continue
            keys.append(key)
            if key is None or key in found or key in wanted:
                continue
            value = cache.get(key, now_ms)
            if value is MISSING:
                wanted[key] = None
            else:
                found[key] = value
        out.enrich_hits += len(found)
        out.enrich_misses += len(wanted)
        failed = False
        failure = ""
        if wanted:
            call = Call(op.fn, list(wanted), op.is_async, op.attempts, f"enrich at {op.where}")
            result = (yield call) if op.is_async else call_now(call)
            out.enrich_seconds.append(result.seconds)
            returned = result.value
            if result.error is None and not isinstance(returned, Mapping):
                result.error = TypeError(
                    f"enrich must return a dict of key to value, got {type(returned).__name__}"
                )
            if result.error is not None:
                failed = True
                failure = f"{op.attempts} attempts failed, the last with {reason(result.error)}"
            else:
                for key in wanted:
                    value = returned.get(key)
                    cache.put(key, value, now_ms)
                    found[key] = value
        kept = []
        lost: list[int] = []
        into = op.into
        for item, key in zip(items, keys, strict=True):
            if key is None:
                if id(item) in unkeyable:
                    continue
                item[1][into] = None
            elif key in found:
                item[1][into] = found[key]
            else:
                assert failed
                lost.append(item[0])
                continue
            kept.append(item)
        if lost:
            site.fail_many(out.dead, lost, result.error, failure)
        return kept

    def touch(self, now_ms: int) -> None:
        """Note activity at ``now_ms`` for a batch that held no valid event."""
        self._mark_activity(now_ms)
        self._queue_time()

    def tick(self, now_ms: int, caught_up: bool) -> CallGen:
        """Advance an idle, caught-up partition's stream time by the wall clock (the
        reference pipeline's rule), step by step from upstream: each ``.process`` fires the
        timers this makes due, the window closes its windows; what they emit goes on down
        the chain. Returns what that produced."""
        out = Outcome()
        if not caught_up or not self.stateful:
            return out
        clock = self.clock
        last = clock.last_activity
        if last is None:
            self._mark_activity(now_ms)
            self._queue_time()
            return out
        if now_ms - last < self.idle_timeout_ms:
            return out
        compiled = self.compiled
        post_start = compiled.post_start
        moved = False
        before_window = [
            n
            for n, spec in enumerate(compiled.processes)
            if post_start is None or spec.stage < post_start
        ]
        steps = sorted(
            [(compiled.processes[n].stage, n) for n in before_window]
            + ([] if compiled.join_stage is None else [(compiled.join_stage, -1)])
        )
        for _, n in steps:
            if n < 0:
                moved |= yield from self._advance_join(now_ms, last, out)
            else:
                moved |= yield from self._advance_process(n, now_ms, last, out)
        target = clock.idle_target(now_ms, self.idle_timeout_ms)
        if target is not None and target != clock.stream_time:
            moved = True
            clock.stream_time = target
            if self.windows is not None:
                self.close_windows(target, out)
                if post_start is not None:
                    closed, out.closed = out.closed, []
                    yield from self._run(post_start, closed, out, now_ms, -1)
            for d, spec in enumerate(compiled.dedupes):
                if compiled.stages[spec.stage].terminal:
                    dedupe = self.dedupes[d]
                    dedupe.ensure_index()
                    self._pending.extend(dedupe.purge(target))
        for n in range(len(compiled.processes)):
            if n not in before_window:
                moved |= yield from self._advance_process(n, now_ms, last, out)
        if moved:
            self._queue_time()
        if self._spill is not None:
            self._spill.flush()  # a join may have taken events without moving
        return out

    def flush_windows(self, now_ms: int = 0) -> CallGen:
        """Close every open window, as at the end of input (the interpreter's flush: tests
        and audits); the finals go on through the chain after the aggregation."""
        out = Outcome()
        if self.windows is None:
            return out
        self.close_windows(2**62, out)
        post_start = self.compiled.post_start
        if post_start is not None:
            closed, out.closed = out.closed, []
            yield from self._run(post_start, closed, out, now_ms, -1)
        if self._spill is not None:
            self._spill.flush()
        return out

    def _advance_join(
        self, now_ms: int, last: int, out: Outcome
    ) -> Generator[Call, CallResult, bool]:
        """An idle, caught-up join: nothing is waited for any more, and its stream time
        follows the wall clock (left events nothing can pair any more come out alone)."""
        join = self.join
        assert join is not None
        start = self.compiled.join_stage
        assert start is not None
        items = join.drain(out, now_ms, (False, False), 0)
        target = max(join.stream_time, now_ms, join.at_last_activity + (now_ms - last))
        moved = bool(items) or target > join.stream_time
        items += join.advance(target, out)
        if items:
            yield from self._run(start + 1, items, out, now_ms, -1)
        return moved

    def _advance_process(
        self, n: int, now_ms: int, last: int, out: Outcome
    ) -> Generator[Call, CallResult, bool]:
        """The idle advance of ``.process`` ``n``; what its timers emit goes on."""
        state = self.processes[n]
        target = max(state.stream_time, now_ms, state.at_last_activity + (now_ms - last))
        if target <= state.stream_time:
            return False
        items = state.advance(target, out)
        if items:
            yield from self._run(self.compiled.processes[n].stage + 1, items, out, now_ms, -1)
        return True

    # -- called by the generated loops ------------------------------------------------

    def remember(self, d: int, seq: int, accepted: dict[str, int], stream_time: int) -> None:
        """Dedupe ``d`` keeps the ids accepted in the chunk ``seq``; queues its records."""
        self._pending.extend(self.dedupes[d].remember(seq, accepted, stream_time))

    def windows_changed(self, touched: dict[int, dict[str, list[Any]]], out: Outcome) -> None:
        """A chunk changed these (window, key) accumulators: keep them for the next drain,
        and in update mode emit a ``"final": false`` record for each one whose window is
        still open (by window end, then key)."""
        unsaved = self._unsaved
        for start, changed in touched.items():
            held = unsaved.get(start)
            if held is None:
                unsaved[start] = changed  # a fresh dict of the chunk's, not used after it
            else:
                held.update(changed)
        if self.segment.emit_updates:
            self._updates(touched, out)
        if isinstance(self.windows, SpilledWindowStore):
            self.windows.save(touched)

    def _updates(self, touched: dict[int, dict[str, list[Any]]], out: Outcome) -> None:
        size = self.compiled.size_ms
        by_start = self.windows.by_start
        outputs = out.outputs
        for start in sorted(touched):
            if start in by_start:
                changed = touched[start]
                end = start + size
                for key in sorted(changed):
                    value = self._final_bytes(key, start, end, changed[key], False, out)
                    if value is not None:
                        outputs.append((key.encode(), value, None))
                        out.updates += 1

    def _final_bytes(
        self, key: str, start: int, end: int, acc: list[Any], final: bool, out: Outcome
    ) -> bytes | None:
        """A window's record, as JSON; None when a custom aggregator's ``result`` raised or
        returned what JSON cannot hold: a final then becomes the window's dead letter (an
        update is skipped: its window's final will say)."""
        made = self._final_record(key, start, end, acc, final, out)
        return None if made is None else made[1]

    def _final_record(
        self, key: str, start: int, end: int, acc: list[Any], final: bool, out: Outcome
    ) -> tuple[dict[str, Any], bytes] | None:
        """:meth:`_final_bytes`, with the record itself."""
        record = self._record
        assert record is not None
        try:
            value = record(key, start, end, acc, final)
        except USER_ERRORS as exc:
            self._window_failed(key, start, end, acc, final, exc, reason(exc), out)
            return None
        try:
            return value, dumps(value)
        except USER_ERRORS as exc:
            why = f"the window's record is not JSON-serialisable ({reason(exc)})"
            self._window_failed(key, start, end, acc, final, exc, why, out)
            return None

    def _window_failed(
        self,
        key: str,
        start: int,
        end: int,
        acc: list[Any],
        final: bool,
        exc: BaseException,
        why: str,
        out: Outcome,
    ) -> None:
        site = self.compiled.aggregate_site
        assert site is not None
        if not final:
            site.failed(exc, why, "an update of the window (its final will say)")
            return
        site.failed(exc, why, "the window's final")
        accumulators = {name: acc[slot] for name, slot in self.compiled.customs}
        letter = {
            "key": key,
            "window_start": start,
            "window_end": end,
            "accumulators": accumulators,
        }
        try:
            value = dumps(letter)
        except USER_ERRORS:  # checked at each add: only an aggregator that broke its own
            letter["accumulators"] = {name: repr(a) for name, a in accumulators.items()}
            value = dumps(letter)
        out.dead[out.origin(key, value)] = (site.stage, why, site.where)

    def close_windows(self, stream_time: int, out: Outcome) -> None:
        """Emit and forget every window closed at ``stream_time``: finals by window end,
        then key; their changelog records become tombstones. A window whose final cannot be
        made (a custom ``result`` raised) is a dead letter instead (decision 0014)."""
        record = self._record
        assert record is not None
        if self.compiled.post_start is not None:
            self._close_into_chain(stream_time, out)
            return
        outputs = out.outputs
        finals = out.finals
        pending = self._pending
        if self.compiled.sessions:
            gap = self.compiled.gap_ms
            for key, (start, last, acc) in self.windows.close_until(stream_time):
                end = last + gap
                value = self._final_bytes(key, start, end, acc, True, out)
                if value is not None:
                    outputs.append((key.encode(), value, None))
                    finals[end] = finals.get(end, 0) + 1
            return
        fast = orjson.dumps
        join, e = b"".join, b""  # a copy of its own size (see jsonbytes.dumps)
        careful = self._final_bytes
        if self.compiled.sliding is not None:
            for key, start, end, acc in self.windows.close_until(stream_time):
                try:
                    value = join((fast(record(key, start, end, acc, True)), e))
                except USER_ERRORS:  # an integer beyond 64 bits, or a custom result's fault
                    value = careful(key, start, end, acc, True, out)
                    if value is None:
                        continue
                outputs.append((key.encode(), value, None))
                finals[end] = finals.get(end, 0) + 1
            return
        size = self.compiled.size_ms
        tag = self.compiled.window_tag
        assert tag is not None
        for start, users in self.windows.close_until(stream_time):
            prefix = tag + b"%d:" % start
            end = start + size
            emitted = 0
            for key in sorted(users):
                kb = key.encode()
                pending.append((prefix + kb, None))
                try:
                    value = join((fast(record(key, start, end, users[key], True)), e))
                except USER_ERRORS:  # an integer beyond 64 bits, or a custom result's fault
                    value = careful(key, start, end, users[key], True, out)
                    if value is None:
                        continue
                outputs.append((kb, value, None))
                emitted += 1
            if emitted:
                finals[end] = finals.get(end, 0) + emitted

    def _close_into_chain(self, stream_time: int, out: Outcome) -> None:
        """Close windows as :meth:`close_windows` does, their final records going on to the
        operators after the aggregation (``out.closed``) with event time ``window_end - 1``,
        each registered as the origin its dead letters would carry."""
        compiled = self.compiled
        closed: list[tuple[str, int, int, list[Any]]] = []
        if compiled.sessions:
            gap = compiled.gap_ms
            for key, (start, last, acc) in self.windows.close_until(stream_time):
                closed.append((key, start, last + gap, acc))
        elif compiled.sliding is not None:
            closed.extend(self.windows.close_until(stream_time))
        else:
            size = compiled.size_ms
            tag = compiled.window_tag
            assert tag is not None
            for start, users in self.windows.close_until(stream_time):
                prefix = tag + b"%d:" % start
                for key in sorted(users):
                    self._pending.append((prefix + key.encode(), None))
                    closed.append((key, start, start + size, users[key]))
        for key, start, end, acc in closed:
            made = self._final_record(key, start, end, acc, True, out)
            if made is not None:
                final, value = made
                out.closed.append((out.origin(key, value), final, key, end - 1))

    def _session_updates(self, out: Outcome) -> None:
        store: SessionStore = self.windows
        touched = store.touched
        if not touched:
            return
        if self.segment.emit_updates:
            gap = self.compiled.gap_ms
            alive = sorted(touched.values(), key=lambda item: (item[1][1], item[0]))
            for key, (start, last, acc) in alive:
                value = self._final_bytes(key, start, last + gap, acc, False, out)
                if value is not None:
                    out.outputs.append((key.encode(), value, None))
                    out.updates += 1
        touched.clear()

    def _sliding_updates(self, out: Outcome) -> None:
        for key, start, end, acc in self.windows.updates():
            value = self._final_bytes(key, start, end, acc, False, out)
            if value is not None:
                out.outputs.append((key.encode(), value, None))
                out.updates += 1

    # -- changelog -----------------------------------------------------------------------

    def note_position(self, offset: int, topic: str | None = None) -> None:
        """Record that the input (``topic``, a join's second input) is consumed up to
        ``offset`` (the next one to read)."""
        right = self.segment.right
        if right is not None and topic == right.input:
            if self._right_position is None or offset > self._right_position:
                self._right_position = offset
                self._pending.append((RIGHT_POSITION_KEY, b"%d" % offset))
            return
        if not self.stateful or (self._position is not None and offset <= self._position):
            return
        self._position = offset
        self._pending.append((changelog.POSITION_KEY, b"%d" % offset))

    def drain_changelog(self) -> list[Record]:
        """Every state change since the last drain, as changelog records in replay order:
        fingerprints first, then the current value of each changed accumulator of a still
        open window, then tombstones, dedupe and time records as they happened."""
        records = self._markers
        self._markers = []
        if self._unsaved:
            self._drain_windows(records)
        elif self.compiled.sessions and self.windows.changed:
            self._drain_sessions(records)
        elif self.compiled.sliding is not None:
            self.windows.drain(records)
        for state in self.processes:
            if state.dirty:
                state.drain(records)
        if self.join is not None:
            self.join.drain_changelog(records)
        records.extend(self._pending)
        self._pending = []
        return records

    def _encoded(self, acc: list[Any]) -> bytes:
        try:
            return dumps(acc if self._encode is None else self._encode(acc))
        except TypeError as exc:
            raise StreamsError(
                f"pipeline {self.segment.name}: an aggregator's accumulator is not JSON "
                f"({exc}); the state lives in the changelog: make add() return lists, "
                "dicts, numbers and strings"
            ) from None

    def _drain_windows(self, records: list[Record]) -> None:
        by_start = self.windows.by_start
        tag = self.compiled.window_tag
        assert tag is not None
        # orjson directly when accumulators are JSON as they are (built-ins but sets): one C
        # call per record; anything it refuses goes the careful way.
        fast = orjson.dumps if self._encode is None else None
        join, e = b"".join, b""  # a copy of its own size (see jsonbytes.dumps)
        careful = self._encoded
        for start, changed in self._unsaved.items():
            if start in by_start:
                prefix = tag + b"%d:" % start
                if fast is not None:
                    try:
                        records.extend(
                            [(prefix + k.encode(), join((fast(a), e))) for k, a in changed.items()]
                        )
                        continue
                    except TypeError:
                        pass
                records.extend([(prefix + k.encode(), careful(a)) for k, a in changed.items()])
        self._unsaved = {}

    def _drain_sessions(self, records: list[Record]) -> None:
        store: SessionStore = self.windows
        encode = self._encode
        for key in store.changed:
            sessions = store.by_key.get(key)
            if sessions:
                value = [
                    [s, last, acc if encode is None else encode(acc)] for s, last, acc in sessions
                ]
                try:
                    records.append((SESSION_TAG + key.encode(), dumps(value)))
                except TypeError:
                    for _, _, acc in sessions:
                        self._encoded(acc)  # raises the error naming the problem
                    raise
            else:
                records.append((SESSION_TAG + key.encode(), None))
        store.changed.clear()

    def _queue_time(self) -> None:
        if not self.stateful:
            return
        clock = self.clock
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
        for stage, value in self.stage_times.items():
            self._pending.append((STAGE_TIME_TAG + b"%d" % stage, b"%d" % value))
        for state in self.processes:
            times = [
                None if state.stream_time == NO_TIME else state.stream_time,
                None if state.at_last_activity == NO_TIME else state.at_last_activity,
            ]
            self._pending.append((PROCESS_TIME_TAG + state.tag[1:], dumps(times)))

    # -- restore -------------------------------------------------------------------------

    def apply_changelog(self, key: bytes, value: bytes | None) -> None:
        """Restore from one changelog record; feed them in topic order."""
        tag = key[:1]
        if tag == b"w" or tag == SESSION_TAG:
            if self._active.get(tag):
                self._apply_window(key, value)
            else:
                self._foreign.add(tag)
        elif tag in (EVENT_TAG, WINDOW_TAG):
            if self._active.get(EVENT_TAG):
                self.windows.apply(key, value)
            else:
                self._foreign.add(EVENT_TAG)
        elif tag == b"d" or tag == b"D":
            dtag = key[: key.index(b":") + 1] if tag == b"D" else tag
            n = self._dedupe_by_tag.get(dtag)
            if n is not None and self._active.get(dtag):
                seq = int(key[len(dtag) :])
                self.dedupes[n].apply(seq, None if value is None else changelog.decode_ids(value))
            else:
                self._foreign.add(dtag)
        elif tag in (PROCESS_TAG, PROCESS_TIMER_TAG, PROCESS_TIME_TAG):
            end = key.index(b":") + 1
            ptag = PROCESS_TAG + key[1:end]
            n = self._process_by_tag.get(ptag)
            if n is None or not self._active.get(ptag):
                self._foreign.add(ptag)
            elif tag == PROCESS_TAG:
                self.processes[n].apply(key[end:], value)
            elif tag == PROCESS_TIMER_TAG:
                self.processes[n].apply_timer(key[end:], value)
            else:
                self._apply_process_time(self.processes[n], value)
        elif tag == FINGERPRINT_TAG:
            self._apply_fingerprint(key[1:], value)
        elif key == changelog.TIME_KEY:
            self._apply_time(value)
        elif tag == JOIN_TAG:
            if self.join is not None and self._active.get(JOIN_TAG):
                self.join.apply(key, value)
            else:
                self._foreign.add(JOIN_TAG)
        elif key == RIGHT_POSITION_KEY:
            self._right_position = None if value is None else int(value)
        elif key == changelog.POSITION_KEY:
            self._position = None if value is None else int(value)
        elif tag == STAGE_TIME_TAG:
            stage = int(key[1:])
            if value is None:
                self.stage_times.pop(stage, None)
            else:
                self.stage_times[stage] = int(value)
        # Anything else was written by a newer version of streams; it is not ours to read.

    def _apply_window(self, key: bytes, value: bytes | None) -> None:
        decode = self._decode
        assert decode is not None
        if key[:1] == SESSION_TAG:
            name = key[1:].decode()
            if value is None:
                self.windows.discard(name)
            else:
                self.windows.put(
                    name, [[s, last, decode(acc)] for s, last, acc in orjson.loads(value)]
                )
            return
        start, name = changelog.parse_window_key(key)
        if value is None:
            self.windows.discard(start, name)
        else:
            self.windows.put(start, name, decode(orjson.loads(value)))

    def _apply_process_time(self, state: ProcessState, value: bytes | None) -> None:
        stream_time, at_last = (None, None) if value is None else orjson.loads(value)
        state.stream_time = NO_TIME if stream_time is None else stream_time
        state.at_last_activity = NO_TIME if at_last is None else at_last

    def _apply_time(self, value: bytes | None) -> None:
        if value is None:
            self.clock = StreamClock()
            return
        clock = self.clock
        stream_time, last_activity, at_last_activity = changelog.decode_time(value)
        clock.stream_time = NO_TIME if stream_time is None else stream_time
        clock.last_activity = last_activity
        clock.at_last_activity = NO_TIME if at_last_activity is None else at_last_activity

    def _declared_fingerprints(self) -> dict[bytes, str]:
        compiled = self.compiled
        prints = {spec.tag: spec.fingerprint for spec in compiled.dedupes}
        prints.update((spec.tag, spec.fingerprint) for spec in compiled.processes)
        prints.update(
            (store.tag, store.fingerprint)
            for store in compiled.segment.stores
            if store.tag == JOIN_TAG
        )
        if compiled.window_tag is not None:
            assert compiled.window_fingerprint is not None
            prints[compiled.window_tag] = compiled.window_fingerprint
        return prints

    def _apply_fingerprint(self, tag: bytes, value: bytes | None) -> None:
        """A fingerprint record: state of ``tag`` starts again from here."""
        if tag not in self._fingerprints:
            return
        text = None if value is None else value.decode()
        self._clear(tag)
        self._foreign.discard(tag)
        if text is not None:
            self._restored_from[tag] = text
        else:
            self._restored_from.pop(tag, None)
        self._active[tag] = text == self._fingerprints[tag]

    def _clear(self, tag: bytes) -> None:
        if tag == JOIN_TAG and self.join is not None:
            self.join.clear()
            return
        process = self._process_by_tag.get(tag)
        if process is not None:
            self.processes[process].clear()
            return
        n = self._dedupe_by_tag.get(tag)
        if n is not None:
            dedupe = self.dedupes[n]
            if isinstance(dedupe, SpilledDeduplicator):
                dedupe.clear()
            else:
                self.dedupes[n] = Deduplicator(self.compiled.dedupes[n].horizon_ms, tag)
        elif tag == self.compiled.window_tag:
            if isinstance(self.windows, SpilledWindowStore):
                self.windows.clear()
            else:
                self.windows = self._new_windows()
            self._unsaved = {}

    def _new_windows(self) -> Any:
        compiled = self.compiled
        if not compiled.windowed:
            return None
        if compiled.sessions:
            # Sessions stay in memory with any store (decision 0009).
            return SessionStore(compiled.gap_ms, compiled.grace_ms)
        if compiled.sliding is not None:
            # So do sliding windows (decision 0018).
            return SlidingStore(
                compiled.size_ms, compiled.grace_ms, compiled.sliding, self.segment.emit_updates
            )
        if self._spill is not None:
            return SpilledWindowStore(compiled.size_ms, compiled.grace_ms, self._spill)
        return WindowStore(compiled.size_ms, compiled.grace_ms)

    def _new_dedupe(self, horizon_ms: int, tag: bytes) -> Deduplicator:
        if self._spill is not None:
            return SpilledDeduplicator(horizon_ms, self._spill, tag)
        return Deduplicator(horizon_ms, tag)

    def reopen(self) -> None:
        """Take up a store that already holds this declaration's state (the runtime checked
        it against its checkpoint, decision 0017): the operators whose state lives in it count
        as restored from their fingerprint records, without being cleared. The records of the
        others (which the runtime keeps in the store too) and the changelog after the
        checkpoint follow through :meth:`apply_changelog`, then :meth:`finish_restore`."""
        for dedupe in self.dedupes:
            assert isinstance(dedupe, SpilledDeduplicator)
            dedupe.reopen()
        if isinstance(self.windows, SpilledWindowStore):
            self.windows.reopen()
        for state in self.processes:
            assert isinstance(state, SpilledProcessState)
            state.reopen()
        if self.join is not None:
            assert isinstance(self.join, SpilledJoinState)
            self.join.reopen()
        for tag, fingerprint in self.stored_fingerprints.items():
            self._active[tag] = True
            self._restored_from[tag] = fingerprint

    def finish_restore(self, on_state_change: str = "stop", where: str = "") -> list[str]:
        """After the last changelog record: check that every operator's state was written
        by this declaration. A fresh partition gets its fingerprints queued. A changed
        operator raises :class:`StateMismatchError` (``stop``) or starts empty (``fresh``);
        returns a line per operator started afresh that way, for the log."""
        started_fresh: list[str] = []
        for tag, fingerprint in self._fingerprints.items():
            if self._active.get(tag):
                continue
            before = self._restored_from.get(tag)
            if before is None and tag not in self._foreign:
                self._markers.append((FINGERPRINT_TAG + tag, fingerprint.encode()))
                continue
            change = describe_change(before, fingerprint)
            if on_state_change == "stop":
                raise StateMismatchError(
                    f"pipeline {self.segment.name}{where}: its stored state was built by "
                    f"another declaration ({change}); to start that operator from empty "
                    "state, restart with STREAMS_ON_STATE_CHANGE=fresh, or reset the app with "
                    "`streams reset APP` (docs/decisions/0009)"
                )
            self._clear(tag)
            self._markers.append((FINGERPRINT_TAG + tag, fingerprint.encode()))
            started_fresh.append(f"pipeline {self.segment.name}{where}: {change}: starts empty")
        for dedupe in self.dedupes:
            dedupe.ensure_index()
        if isinstance(self.windows, SpilledWindowStore):
            self.windows.ensure_index()
        for state in self.processes:
            state.finish_restore()
        if self.join is not None:
            self.join.finish_restore()
        if self._spill is not None:
            self._spill.flush()
        self._pending = []
        self._unsaved = {}
        if self.compiled.sessions:
            self.windows.changed.clear()
            self.windows.touched.clear()
        elif self.compiled.sliding is not None:
            self.windows.finish_restore(self.clock.stream_time)
        self._restored = True
        return started_fresh


def describe_change(before: str | None, now: str) -> str:
    """What differs between two fingerprints, e.g. ``window: tumbling(60000) -> ...``."""
    if before is None:
        return "state of an unknown declaration"
    old, new = orjson.loads(before), orjson.loads(now)
    changed = [
        f"{name}: {old.get(name)!r} -> {new.get(name)!r}"
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]
    return "; ".join(changed) or "the same declaration"


def _call(fn: Any, arg: Any) -> CallResult:
    started = time.perf_counter()
    try:
        return CallResult(fn(arg), None, time.perf_counter() - started)
    except Exception as exc:
        return CallResult(None, exc, time.perf_counter() - started)
