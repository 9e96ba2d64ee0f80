"""A task's RocksDB store kept across a restart: reused from its checkpoint with only the
changelog's tail, it goes on exactly like a task that never stopped; every store that cannot
be trusted is wiped; state kept in memory (sessions) comes back from the records kept beside
the store, in their order."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import App, Count, session
from streams.broker.batches import Acked
from streams.core import CoreConfig
from streams.core.changelog import Record
from streams.core.compile import compile_segment
from streams.core.interpreter import Batch
from streams.core.interpreter import Tick as EngineTick
from streams.core.segment import FINGERPRINT_TAG, SegmentTask, run_sync
from streams.runtime.localstate import CHECKPOINT_FILE, LocalState
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.processing import compile_plan
from streams.state import checkpoint
from streams.state.rocks import RocksStore, open_store
from streams.topology.plan import Segment, plan
from tests.unit.core.engine import PartitionProcessor, Raw
from tests.unit.core.test_core_properties import (
    FAR_FUTURE,
    Tick,
    configs,
    event_streams,
    perform,
    schedules,
)
from tests.unit.core.test_engine_properties import TABLE, Engine, flush_finals
from tests.unit.core.test_engine_properties import inputs as engine_inputs
from tests.unit.core.test_join_properties import declarations as join_declarations
from tests.unit.core.test_join_properties import inputs as join_inputs
from tests.unit.core.test_process_properties import declarations as process_declarations
from tests.unit.runtime.fakes import Rec

CHANGELOG = TopicPartition("app-state-changelog", 0)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


class Log:
    """A changelog partition: what tasks drained, written for good (acknowledged) as it
    comes."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, records: list[Record], *locals_: LocalState) -> None:
        self.records += records
        batch = object()  # the sender the records go to
        for local in locals_:
            local.drained(records, batch)
            if records:
                local.written(Acked(len(self.records), records[-1]), batch)

    def restore(self, local: LocalState, task: SegmentTask) -> int:
        """What the restorer does: from the checkpoint if the store can be reused (then
        taken up), else from the beginning; returns the records replayed. (The task's
        ``finish_restore`` is the caller's: the test adapter calls it before its first
        step.)"""
        start = local.resume_at(0, len(self.records))
        if start is not None and local.verify(Rec(start, *self.records[start])):
            local.reopen(task)
        else:
            start = 0
        tail = [Rec(n, *record) for n, record in enumerate(self.records)][start:]
        for record in tail:
            task.apply_changelog(record.key, record.value)
        if tail:
            local.replayed(tail)
        return len(tail)


def _again(store: RocksStore) -> RocksStore:
    """``store`` opened again (by the next worker)."""
    directory = store.directory
    return open_store(directory.parents[1], directory.parent.name, directory.name)


def _offset(store: RocksStore) -> int:
    """The offset the store's checkpoint file names."""
    found = checkpoint.read(store.directory / CHECKPOINT_FILE)
    assert found is not None
    return found.offset


def _local(
    store: RocksStore, task: SegmentTask, metrics: WorkerMetrics | None = None
) -> LocalState:
    local = LocalState(store, CHANGELOG, task.stored_fingerprints, metrics or WorkerMetrics())
    local.open()
    return local


def _drain(processor: PartitionProcessor) -> list[Record]:
    # Fingerprint records included: the task's own drain, not the test adapter's.
    return processor.task.drain_changelog()


@settings(max_examples=150, deadline=None)
@given(
    config=configs(emit_updates=False) | configs(emit_updates=True),
    events=event_streams(),
    data=st.data(),
)
def test_a_store_reopened_at_its_checkpoint_goes_on_like_one_that_never_stopped(
    state_dir: Path, config: CoreConfig, events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """A worker checkpoints its store after some steps and is killed later: its store on disk
    is the checkpoint's (a twin stops there, the same steps and records up to it). The next
    worker reopens it and replays the changelog after the checkpoint: from then on it emits
    and logs what the worker that never stopped does."""
    steps = data.draw(schedules(len(events)))
    marked = data.draw(st.integers(0, len(steps)))
    killed = data.draw(st.integers(marked, len(steps)))
    steps.append(Tick(FAR_FUTURE, caught_up=True))
    name = uuid.uuid4().hex
    never = PartitionProcessor(config, open_store(state_dir, "never", name))
    twin_store = open_store(state_dir, "app", name)
    twin = PartitionProcessor(config, twin_store)
    twin_local = _local(twin_store, twin.task)
    log = Log()
    for step in steps[:marked]:
        assert perform(twin, events, step) == perform(never, events, step)
        records = _drain(never)
        assert _drain(twin) == records
        log.write(records, twin_local)
    checkpointed = twin_local.write_checkpoint()
    assert checkpointed == bool(log.records)
    twin_store.close()
    for step in steps[marked:killed]:
        perform(never, events, step)
        log.write(_drain(never))

    store = open_store(state_dir, "app", name)
    restarted = PartitionProcessor(config, store)
    local = _local(store, restarted.task)
    replayed = log.restore(local, restarted.task)
    if checkpointed:
        assert replayed == len(log.records) - _offset(store) + 1
    else:
        assert replayed == len(log.records)
    for step in steps[killed:]:
        assert perform(restarted, events, step) == perform(never, events, step)
        assert _drain(restarted) == _drain(never)
        assert restarted.open_windows == never.open_windows
        assert restarted.stream_time == never.stream_time
    assert restarted.open_windows == 0
    store.close()


@pytest.fixture
def store(state_dir: Path) -> Iterator[RocksStore]:
    opened = open_store(state_dir, "app", uuid.uuid4().hex)
    yield opened
    opened.close()


CONFIG = CoreConfig(window_size_ms=10, window_step_ms=10, grace_ms=0, dedupe_horizon_ms=100)


def _checkpointed(store: RocksStore) -> tuple[PartitionProcessor, LocalState, Log]:
    """A task with state in ``store``, checkpointed at the end of its changelog."""
    processor = PartitionProcessor(CONFIG, store)
    local = _local(store, processor.task)
    log = Log()
    processor.process([{"event_id": "e1", "user_id": "u1", "ts": 3, "amount": 1.0}], 0, 0)
    log.write(_drain(processor), local)
    assert local.write_checkpoint()
    return processor, local, log


def _reopened(store: RocksStore, metrics: WorkerMetrics) -> tuple[PartitionProcessor, LocalState]:
    again = _again(store)
    processor = PartitionProcessor(CONFIG, again)
    return processor, _local(again, processor.task, metrics)


def _wiped(local: LocalState, metrics: WorkerMetrics, outcome: str) -> bool:
    return (
        local.checkpoint is None
        and local.store.get_many([b"w0:u1"]) == [None]
        and not (local.store.directory / CHECKPOINT_FILE).exists()
        and metrics.registry.get_sample_value(
            "streams_recovery_local_stores_total", {"outcome": outcome}
        )
        == 1
    )


def test_a_store_is_reused_only_with_its_checkpoint(store: RocksStore) -> None:
    _, _, log = _checkpointed(store)
    offset = _offset(store)
    store.close()
    metrics = WorkerMetrics()
    processor, again = _reopened(store, metrics)
    assert again.checkpoint is not None
    assert log.restore(again, processor.task) == 1  # the record the checkpoint follows
    assert offset == len(log.records)
    assert processor.open_windows == 1
    assert (
        metrics.registry.get_sample_value(
            "streams_recovery_local_stores_total", {"outcome": "reused"}
        )
        == 1
    )


@pytest.mark.parametrize("damage", ["missing", "corrupt", "other-changelog"])
def test_without_a_readable_checkpoint_of_its_changelog_a_store_is_wiped(
    store: RocksStore, damage: str
) -> None:
    _, _, _ = _checkpointed(store)
    path = store.directory / CHECKPOINT_FILE
    if damage == "missing":
        path.unlink()
    elif damage == "corrupt":
        path.write_bytes(path.read_bytes()[:-9])
    else:
        found = checkpoint.read(path)
        assert found is not None
        checkpoint.write(path, checkpoint.Checkpoint(**{**vars(found), "partition": 1}))
    store.close()
    metrics = WorkerMetrics()
    _, again = _reopened(store, metrics)
    outcome = "changelog_replaced" if damage == "other-changelog" else "no_checkpoint"
    assert _wiped(again, metrics, outcome)


def test_a_store_written_after_its_checkpoint_is_wiped(store: RocksStore) -> None:
    """What a process that ended without a checkpoint leaves (under exactly_once, perhaps
    state of a transaction that never committed): the stamp is gone."""
    processor, _, _ = _checkpointed(store)
    processor.process([{"event_id": "e2", "user_id": "u2", "ts": 4}], 0, 1)
    store.close()
    metrics = WorkerMetrics()
    _, again = _reopened(store, metrics)
    assert _wiped(again, metrics, "unclean")


def test_a_store_built_by_another_declaration_is_wiped(store: RocksStore) -> None:
    _checkpointed(store)
    store.close()
    again = _again(store)
    longer = CoreConfig(window_size_ms=20, window_step_ms=20, grace_ms=0, dedupe_horizon_ms=100)
    processor = PartitionProcessor(longer, again)
    metrics = WorkerMetrics()
    assert _wiped(_local(again, processor.task, metrics), metrics, "declaration")


def test_a_checkpoint_older_than_the_changelogs_delete_retention_is_wiped(
    store: RocksStore,
) -> None:
    """Compaction drops a tombstone delete.retention.ms after it: one written after the
    checkpoint may be gone, and the key it deleted would live on in the store."""
    _checkpointed(store)
    store.close()
    metrics = WorkerMetrics()
    _, again = _reopened(store, metrics)
    now_ms = time.time_ns() // 1_000_000
    again.expire(retention_ms=60_000, now_ms=now_ms)
    assert again.checkpoint is not None
    again.expire(retention_ms=60_000, now_ms=now_ms + 60_000)
    assert _wiped(again, metrics, "expired")


@pytest.mark.parametrize(
    ("changelog", "outcome"),
    [
        ("shorter", "changelog_behind"),  # deleted and created again, shorter
        ("truncated", "changelog_truncated"),  # its records deleted up to past the checkpoint
        ("other-record", "changelog_replaced"),  # created again, and as long or longer
        ("compacted", "changelog_replaced"),  # the checkpoint's record compacted away
    ],
)
def test_a_store_whose_changelog_no_longer_holds_its_checkpoint_is_wiped(
    store: RocksStore, changelog: str, outcome: str
) -> None:
    _, _, log = _checkpointed(store)
    offset = _offset(store)
    store.close()
    metrics = WorkerMetrics()
    _, again = _reopened(store, metrics)
    if changelog == "shorter":
        assert again.resume_at(0, offset - 1) is None
    elif changelog == "truncated":
        assert again.resume_at(offset, offset + 10) is None
    else:
        start = again.resume_at(0, offset + 10)
        assert start == offset - 1
        if changelog == "other-record":
            first = Rec(start, b"o", b"4711")
        else:
            first = Rec(start + 1, *log.records[-1])
        assert not again.verify(first)
    assert _wiped(again, metrics, outcome)


# -- state kept in memory: sessions ----------------------------------------------------


def _sessions_task(store: RocksStore) -> SegmentTask:
    """A dedupe (its ids in the store) and session windows (in memory)."""
    app = App("sessions")
    clicks = app.topic("clicks")
    (
        app.stream(clicks, key="user", timestamp="ts")
        .dedupe("id", horizon_ms=1_000)
        .window(session(100))
        .aggregate(n=Count())
        .to("out")
    )
    _, compiled = compile_plan(plan(app.decl), 1 << 20, spilled=True)
    return SegmentTask(compiled["clicks"][0], idle_timeout_ms=60_000, store=store)


def _click(task: SegmentTask, offset: int, events: Sequence[tuple[str, str, int]]) -> None:
    records = [Raw(offset + n, user.encode(), b"", 0, []) for n, (_, user, _) in enumerate(events)]
    values = [{"id": i, "user": user, "ts": ts} for i, user, ts in events]
    run_sync(task.process(records, range(len(values)), values, 0))


def _sessions(task: SegmentTask) -> dict[str, list[Any]]:
    return {key: [s[:2] for s in sessions] for key, sessions in task.windows.by_key.items()}


def test_state_kept_in_memory_comes_back_from_the_records_kept_beside_the_store(
    state_dir: Path, store: RocksStore
) -> None:
    """Sessions live in memory even with RocksDB: their records are kept in the store, in
    order, so a fingerprint record that started them afresh (``streams reset``) still
    clears the ones before it when the store is reopened."""
    task = _sessions_task(store)
    local = _local(store, task)
    log = Log()
    task.finish_restore()
    _click(task, 0, [("c1", "ann", 10), ("c2", "bob", 20), ("c3", "ann", 50)])
    log.write(task.drain_changelog(), local)
    assert local.write_checkpoint()
    store.close()

    # Written after the checkpoint: the sessions start over, as after `streams reset`, then
    # another owner's session of cid (its records, less its dedupe's).
    other = _sessions_task(open_store(state_dir, "other", uuid.uuid4().hex))
    other.finish_restore()
    _click(other, 0, [("c9", "cid", 200)])
    log.records += [r for r in other.drain_changelog() if r[0] in (FINGERPRINT_TAG + b"s", b"scid")]

    again = _again(store)
    reopened = _sessions_task(again)
    local = _local(again, reopened)
    assert log.restore(local, reopened) == 3
    reopened.finish_restore()
    assert _sessions(reopened) == {"cid": [[200, 200]]}
    assert reopened.dedupe_size == 3  # the ids, from the store
    _click(reopened, 3, [("c1", "ann", 60), ("c4", "dan", 70)])  # c1: a duplicate
    assert _sessions(reopened) == {"cid": [[200, 200]], "dan": [[70, 70]]}
    log.write(reopened.drain_changelog(), local)
    assert local.write_checkpoint()
    again.close()

    last = _again(store)
    third = _sessions_task(last)
    assert log.restore(_local(last, third), third) == 1
    third.finish_restore()
    assert _sessions(third) == {"cid": [[200, 200]], "dan": [[70, 70]]}
    assert third.dedupe_size == 4
    last.close()


def test_fingerprint_records_after_the_checkpoint_start_the_stored_state_over(
    store: RocksStore,
) -> None:
    """`streams reset` writes each operator's fingerprint into the changelog: replayed after
    the checkpoint, they empty the store as they empty a restore from the beginning."""
    processor, _, log = _checkpointed(store)
    tags = processor.task.stored_fingerprints
    log.records += [(FINGERPRINT_TAG + tag, fp.encode()) for tag, fp in tags.items()]
    store.close()
    metrics = WorkerMetrics()
    restarted, local = _reopened(store, metrics)
    assert log.restore(local, restarted.task) == 1 + len(tags)
    assert (restarted.open_windows, restarted.dedupe_size) == (0, 0)
    assert local.store.get_many([b"w0:u1"]) == [None]
    # The event is no duplicate any more; its window starts over.
    outcome = restarted.process([{"event_id": "e1", "user_id": "u1", "ts": 5}], 0, 1)
    assert (outcome.accepted, restarted.open_windows) == (1, 1)


def test_a_checkpoint_waits_until_the_last_batch_drained_is_written(store: RocksStore) -> None:
    """Its records must be written for good, not those of a batch before with the same last
    record (two ticks end with the same stage time record)."""
    processor = PartitionProcessor(CONFIG, store)
    local = _local(store, processor.task)
    first, second = object(), object()
    records: list[Record] = [(b"T1", b"7")]
    local.drained(records, first)
    local.drained(records, second)
    local.written(Acked(1, records[-1]), first)
    assert not local.write_checkpoint()
    local.written(Acked(2, records[-1]), second)
    assert local.write_checkpoint()
    assert _offset(store) == 2


# -- .process and join state in the store --------------------------------------------


def _since(engine: Engine, marks: dict[str, int]) -> tuple[Any, ...]:
    """What ``engine`` produced since ``marks`` (see :func:`_marks`), comparable across
    engines that saw the same input from there on."""
    return (
        engine.finals[marks["finals"] :],
        {i: v for i, v in engine.dead.items() if i >= marks["seen"]},
        engine.derived[marks["derived"] :],
        engine.late_derived[marks["late_derived"] :],
        engine.late[marks["late"] :],
        engine.late_join[marks["late_join"] :],
        sorted(i for i in engine.duplicates if i >= marks["seen"]),
        engine.derived_duplicates - marks["derived_duplicates"],
        engine.timers_fired - marks["timers_fired"],
        {name: count - marks[name] for name, count in engine.counts.items()},
    )


def _marks(engine: Engine) -> dict[str, int]:
    return {
        "finals": len(engine.finals),
        "seen": engine.seen,
        "derived": len(engine.derived),
        "late_derived": len(engine.late_derived),
        "late": len(engine.late),
        "late_join": len(engine.late_join),
        "derived_duplicates": engine.derived_duplicates,
        "timers_fired": engine.timers_fired,
        **engine.counts,
    }


def _sizes(task: SegmentTask) -> tuple[Any, ...]:
    join = task.join
    return (
        task.process_keys,
        task.timers_pending,
        None if join is None else (join.held, join.seq, join.stream_time),
        [state.stream_time for state in task.processes],
        task.stream_time,
    )


def _step(engine: Engine, item: Batch | EngineTick) -> list[Record]:
    before = len(engine.changelog)
    engine.feed(item)
    return engine.changelog[before:]


@st.composite
def _stateful_runs(draw: st.DrawFn) -> tuple[Segment, list[Batch | EngineTick]]:
    """A pipeline with ``.process`` (before a window, after an aggregation, or alone) or a
    ``join_stream`` (followed by nothing, a window, or a ``.process``), and its input."""
    if draw(st.booleans()):
        return draw(process_declarations()), draw(engine_inputs())
    return draw(join_declarations()), draw(join_inputs())


@settings(max_examples=120, deadline=None)
@given(run=_stateful_runs(), data=st.data())
def test_process_and_join_state_reopened_at_its_checkpoint_goes_on_like_a_task_that_never_stopped(
    state_dir: Path, run: tuple[Segment, list[Batch | EngineTick]], data: st.DataObject
) -> None:
    """The same with ``.process`` keys and timers, and a join's buffered and pending events
    (the first in the store, the others in memory, their records kept beside it): a worker
    checkpoints after some steps and is killed later; the next reopens its store, replays the
    changelog after the checkpoint, and from then on emits and logs what a worker that never
    stopped (state in memory) does, with the same keys, timers and buffered events."""
    segment, items = run
    marked = data.draw(st.integers(0, len(items)))
    killed = data.draw(st.integers(marked, len(items)))
    compiled = compile_segment(segment, spilled=True)
    name = uuid.uuid4().hex

    def adopted(store: RocksStore) -> tuple[SegmentTask, LocalState]:
        task = SegmentTask(compiled, idle_timeout_ms=7, tables={"products": TABLE}, store=store)
        return task, _local(store, task)

    never = Engine(segment)
    twin_store = open_store(state_dir, "app", name)
    task, twin_local = adopted(twin_store)
    task.finish_restore()
    twin = Engine(segment, task=task)
    log = Log()
    for item in items[:marked]:
        records = _step(never, item)
        assert _step(twin, item) == records
        log.write(records, twin_local)
    checkpointed = twin_local.write_checkpoint()
    assert checkpointed == bool(log.records)
    twin_store.close()
    for item in items[marked:killed]:
        log.write(_step(never, item))

    store = open_store(state_dir, "app", name)
    task, local = adopted(store)
    replayed = log.restore(local, task)
    if checkpointed:
        assert replayed == len(log.records) - _offset(store) + 1
    else:
        assert replayed == len(log.records)
    task.finish_restore()
    restarted = Engine(segment, task=task)
    restarted.seen, restarted.index_of = never.seen, dict(never.index_of)
    marks, restarted_marks = _marks(never), _marks(restarted)
    assert _sizes(restarted.task) == _sizes(never.task)
    for item in items[killed:]:
        assert _step(restarted, item) == _step(never, item)
        assert _sizes(restarted.task) == _sizes(never.task)
    flush_finals(never)
    flush_finals(restarted)
    assert _since(restarted, restarted_marks) == _since(never, marks)
    store.close()
