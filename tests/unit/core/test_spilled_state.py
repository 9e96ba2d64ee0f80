"""``.process`` and ``join_stream`` state in a key-value store (``STREAMS_STORE=rocksdb``)
behave exactly like the state in memory.

A task with its state in a store runs beside one with its state in memory, over random
``.process`` programs (timers due, future, cancelled, re-armed by the timer itself, up to two
dozen per key: keys move between timers in their record and bucket records; TTLs; misuses)
and random joins (inner and left, hostile side operators, disorder past the grace, fetches of
one side or both, followed by a window or a ``.process``), with idle ticks and restores from
the changelog (compacted or not, applied to the store in one piece or in many). After every
step: the same outputs, dead letters, late records and fired timers, **the same changelog
records in the same order**, the same counts of keys, timers and buffered events, and
nothing left in Python between chunks; at the end both equal the interpreter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import spill
from streams.core.interpreter import Batch, Tick
from streams.core.segment import SegmentTask
from streams.core.spilled_join import SpilledJoinState
from streams.core.spilled_process import SpilledProcessState
from streams.topology.plan import Segment
from tests.unit.core import test_join_properties as joins
from tests.unit.core import test_process_properties as processes
from tests.unit.core.kv import DictStore
from tests.unit.core.test_engine_properties import Engine, _check, flush_finals, inputs


def _observed(engine: Engine) -> tuple[Any, ...]:
    return (
        engine.finals,
        engine.dead,
        engine.derived,
        engine.late_derived,
        engine.derived_duplicates,
        engine.timers_fired,
        engine.late,
        engine.late_join,
        engine.duplicates,
        engine.counts,
    )


def _sizes(task: SegmentTask) -> tuple[Any, ...]:
    join = task.join
    return (
        task.process_keys,
        task.timers_pending,
        [(state.stream_time, state.at_last_activity) for state in task.processes],
        None if join is None else (join.held, join.seq, join.stream_time, join.pending),
    )


def _nothing_in_memory(task: SegmentTask) -> bool:
    """Between chunks a spilled task holds no key, timer or buffered event in Python."""
    for state in task.processes:
        assert isinstance(state, SpilledProcessState)
        if state.keys or state.heap or state.timer_keys or state._base:
            return False
    join = task.join
    if join is not None:
        assert isinstance(join, SpilledJoinState)
        if join.buffers[0] or join.buffers[1] or join.expiry:
            return False
    return True


@contextmanager
def _restore_flushes(every: int) -> Iterator[None]:
    """Restored records go to the store every ``every`` records (1: each on its own, onto
    what the store holds already, as after a reopen)."""
    saved = spill.RESTORE_FLUSH_AT
    spill.RESTORE_FLUSH_AT = every
    try:
        yield
    finally:
        spill.RESTORE_FLUSH_AT = saved


def side_by_side(
    segment: Segment, items: list[Batch | Tick], cuts: list[int], compacted: bool
) -> None:
    memory = Engine(segment)
    stored = Engine(segment, stores=DictStore)
    for position, item in enumerate(items):
        if position in cuts:
            memory.restart(compacted)
            stored.restart(compacted)
            assert _sizes(stored.task) == _sizes(memory.task)
        memory.feed(item)
        stored.feed(item)
        assert stored.changelog == memory.changelog
        assert _observed(stored) == _observed(memory)
        assert _sizes(stored.task) == _sizes(memory.task)
        assert _nothing_in_memory(stored.task)
    flush_finals(memory)
    flush_finals(stored)
    assert _observed(stored) == _observed(memory)
    assert stored.changelog == memory.changelog
    _check(segment, items, stored)


restores = st.tuples(
    st.lists(st.integers(0, 8), max_size=3), st.booleans(), st.sampled_from([1, 3, 50_000])
)


@settings(max_examples=500, deadline=None)
@given(processes.declarations(), inputs(), restores)
def test_process_state_in_a_store_equals_state_in_memory(
    segment: Segment, items: list[Batch | Tick], restore: tuple[list[int], bool, int]
) -> None:
    cuts, compacted, every = restore
    with _restore_flushes(every):
        side_by_side(segment, items, cuts, compacted)


@settings(max_examples=500, deadline=None)
@given(processes.declarations(), inputs(), restores)
def test_keys_moving_between_timers_in_their_record_and_bucket_records_in_a_store(
    segment: Segment, items: list[Batch | Tick], restore: tuple[list[int], bool, int]
) -> None:
    """Small thresholds (a key's timers in bucket records of 3 ms from 3 on, back at 1):
    keys split and unsplit often, between chunks and across restores."""
    cuts, compacted, every = restore
    with processes._timer_records(inline=2, again=1, bucket_ms=3), _restore_flushes(every):
        side_by_side(segment, items, cuts, compacted)


@settings(max_examples=500, deadline=None)
@given(joins.declarations(), joins.inputs(), restores)
def test_join_state_in_a_store_equals_state_in_memory(
    segment: Segment, items: list[Batch | Tick], restore: tuple[list[int], bool, int]
) -> None:
    cuts, compacted, every = restore
    with _restore_flushes(every):
        side_by_side(segment, items, cuts, compacted)
