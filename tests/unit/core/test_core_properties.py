"""Property tests: the fast processor against the reference model, and across restores."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import CoreConfig
from streams.core.changelog import Record
from tests.unit.core.engine import PartitionProcessor, recompute_partition

FAR_FUTURE = 10**15


@st.composite
def configs(draw: st.DrawFn, emit_updates: bool = False) -> CoreConfig:
    """Small windows, grace and horizon, so windows close and ids expire all the time."""
    size = draw(st.integers(1, 20))
    return CoreConfig(
        window_size_ms=size,
        window_step_ms=draw(st.just(size) | st.integers(1, size)),  # tumbling or hopping
        grace_ms=draw(st.integers(0, 15)),
        idle_timeout_ms=draw(st.integers(1, 40)),
        dedupe_horizon_ms=draw(st.integers(0, 60)),
        emit_updates=emit_updates,
    )


amounts = st.one_of(
    st.none(),
    st.integers(0, 100),
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
)


# One drawn step of an event stream. One in six replays an earlier event (picked by ``back``);
# the others make a new event whose ts runs ``ahead`` of the previous drift and ``back`` behind.
_stream_step = st.tuples(
    st.integers(0, 5),
    st.integers(0, 40),
    st.sampled_from(["ann", "bob", "cy"]),
    st.integers(0, 6),
    st.integers(0, 30),
    amounts,
)
# Hypothesis keeps plain lists short; draw the length first to get long streams too.
_stream_steps = st.integers(0, 60).flatmap(
    lambda length: st.lists(_stream_step, min_size=length, max_size=length)
)


def event_streams() -> st.SearchStrategy[list[dict[str, Any]]]:
    """Events in offset order with disorder, replays and reused ids.

    An id is drawn from a small pool, so the same id comes back with another body; or an
    earlier event is replayed as is.
    """
    return _stream_steps.map(_build_events)


def _build_events(
    steps: list[tuple[int, int, str, int, int, float | None]],
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    drift = 0
    for kind, id_number, user_id, ahead, back, amount in steps:
        if kind == 0 and events:
            events.append(dict(events[back % len(events)]))
            continue
        drift += ahead
        fields: dict[str, Any] = {
            "event_id": f"e{id_number}",
            "type": "purchase",
            "user_id": user_id,
            "ts": max(0, drift - back),
        }
        if amount is not None:
            fields["amount"] = amount
        events.append(fields)
    return events


@st.composite
def batchings(draw: st.DrawFn, count: int) -> list[tuple[int, int]]:
    """Cuts ``count`` events into consecutive batches, as ``(begin, end)`` index pairs."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(count - 1, 1)), max_size=count))))
    bounds = [0, *[cut for cut in cuts if cut < count], count]
    return list(itertools.pairwise(bounds))


@dataclass
class Run:
    """Everything a processor produced, with late and duplicate indices made global."""

    emitted: list[dict[str, Any]]
    late: list[int]
    duplicates: list[int]


def run_batches(
    processor: PartitionProcessor, events: list[dict[str, Any]], batches: list[tuple[int, int]]
) -> Run:
    run = Run([], [], [])
    for number, (begin, end) in enumerate(batches):
        outcome = processor.process(events[begin:end], number, begin)
        run.emitted += outcome.emitted
        run.late += [begin + index for index in outcome.late]
        run.duplicates += [begin + index for index in outcome.duplicates]
        assert outcome.accepted == end - begin - len(outcome.late) - len(outcome.duplicates)
    run.emitted += processor.tick(FAR_FUTURE, caught_up=True)
    return run


@settings(max_examples=250, deadline=None)
@given(config=configs(), events=event_streams(), data=st.data())
def test_processor_matches_reference(
    config: CoreConfig, events: list[dict[str, Any]], data: st.DataObject
) -> None:
    batches = data.draw(batchings(len(events)))
    run = run_batches(PartitionProcessor(config), events, batches)
    expected = recompute_partition(events, config)
    assert run.emitted == expected.finals
    assert run.late == expected.late
    assert run.duplicates == expected.duplicates


@settings(max_examples=80, deadline=None)
@given(config=configs(), events=event_streams(), data=st.data())
def test_everything_is_released_once_all_windows_close(
    config: CoreConfig, events: list[dict[str, Any]], data: st.DataObject
) -> None:
    processor = PartitionProcessor(config)
    run_batches(processor, events, data.draw(batchings(len(events))))
    assert processor.open_windows == 0
    assert processor.dedupe_size == 0
    state = compact(processor.drain_changelog(), drop_tombstones=True)
    assert [key for key, _ in state] == [b"t"]


@settings(max_examples=120, deadline=None)
@given(config=configs(emit_updates=True), events=event_streams(), data=st.data())
def test_updates_carry_current_values_of_changed_open_windows(
    config: CoreConfig, events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """After each batch, the updates are exactly the open aggregates that changed in it.

    The reference run over the events so far gives, among its end-of-input flush, the current
    value of every open aggregate.
    """
    processor = PartitionProcessor(config)
    finals: list[dict[str, Any]] = []
    before: dict[tuple[int, str], dict[str, Any]] = {}
    for number, (begin, end) in enumerate(data.draw(batchings(len(events)))):
        emitted = processor.process(events[begin:end], number, begin).emitted
        updates = [record for record in emitted if not record["final"]]
        finals += [record for record in emitted if record["final"]]
        now_open = open_aggregates(events[:end], config)
        expected = [
            {**record, "final": False}
            for window, record in now_open.items()
            if before.get(window, {}).get("count") != record["count"]
        ]
        assert updates == expected
        # Finals come first, updates last.
        assert emitted == [record for record in emitted if record["final"]] + updates
        before = now_open
    finals += processor.tick(FAR_FUTURE, caught_up=True)
    assert finals == recompute_partition(events, config).finals


def open_aggregates(
    events: list[dict[str, Any]], config: CoreConfig
) -> dict[tuple[int, str], dict[str, Any]]:
    """Open aggregates after ``events``, by (window start, user), in emission order."""
    expected = recompute_partition(events, config)
    rejected = set(expected.late) | set(expected.duplicates)
    accepted_ts = [event["ts"] for index, event in enumerate(events) if index not in rejected]
    stream_time = max(accepted_ts, default=None)
    reach = config.window_size_ms + config.grace_ms
    return {
        (record["window_start"], record["key"]): record
        for record in expected.finals
        if stream_time is None or record["window_start"] + reach > stream_time
    }


def compact(records: list[Record], drop_tombstones: bool) -> list[Record]:
    """What a compacted topic keeps: the last record per key, in the order they were last
    written, and possibly no tombstones (once the broker has deleted them)."""
    last = {key: position for position, (key, _) in enumerate(records)}
    kept = [records[position] for position in sorted(last.values())]
    return [record for record in kept if not (drop_tombstones and record[1] is None)]


@dataclass(frozen=True)
class Batch:
    begin: int
    end: int
    now_ms: int


@dataclass(frozen=True)
class Tick:
    now_ms: int
    caught_up: bool


@dataclass(frozen=True)
class Touch:
    now_ms: int


Step = Batch | Tick | Touch


@st.composite
def schedules(draw: st.DrawFn, count: int) -> list[Step]:
    """Batches covering ``count`` events, interleaved with ticks and touches (batches of only
    invalid records) while the wall clock moves on."""
    steps: list[Step] = []
    now = draw(st.integers(0, 200))
    for begin, end in draw(batchings(count)):
        for _ in range(draw(st.integers(0, 2))):
            now += draw(st.integers(0, 40))
            idle: list[Step] = [Tick(now, True), Tick(now, False), Touch(now)]
            steps.append(draw(st.sampled_from(idle)))
        now += draw(st.integers(0, 40))
        steps.append(Batch(begin, end, now))
    return steps


def perform(
    processor: PartitionProcessor, events: list[dict[str, Any]], step: Step
) -> tuple[Any, ...]:
    if isinstance(step, Tick):
        return ("tick", processor.tick(step.now_ms, step.caught_up))
    if isinstance(step, Touch):
        processor.touch(step.now_ms)
        return ("touch",)
    outcome = processor.process(events[step.begin : step.end], step.now_ms, step.begin)
    return ("batch", outcome.emitted, outcome.late, outcome.duplicates, outcome.accepted)


@settings(max_examples=250, deadline=None)
@given(
    config=configs(emit_updates=False) | configs(emit_updates=True),
    events=event_streams(),
    data=st.data(),
)
def test_restored_processor_behaves_like_the_uninterrupted_one(
    config: CoreConfig, events: list[dict[str, Any]], data: st.DataObject
) -> None:
    steps = data.draw(schedules(len(events)))
    split = data.draw(st.integers(0, len(steps)))
    steps.append(Tick(FAR_FUTURE, caught_up=True))

    uninterrupted = PartitionProcessor(config)
    expected = [perform(uninterrupted, events, step) for step in steps]

    first = PartitionProcessor(config)
    records: list[Record] = []
    for step in steps[:split]:
        perform(first, events, step)
        if data.draw(st.booleans()):
            records += first.drain_changelog()
    records += first.drain_changelog()
    if data.draw(st.booleans()):
        records = compact(records, drop_tombstones=data.draw(st.booleans()))

    restored = PartitionProcessor(config)
    for key, value in records:
        restored.apply_changelog(key, value)
    assert restored.stream_time == first.stream_time
    assert restored.open_windows == first.open_windows
    assert [perform(restored, events, step) for step in steps[split:]] == expected[split:]
