"""The processor with its state in RocksDB behaves exactly like the one with state in memory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import CoreConfig
from streams.core.changelog import Record
from streams.state.rocks import RocksStore, open_store
from tests.unit.core.engine import PartitionProcessor
from tests.unit.core.events import TUMBLING, event
from tests.unit.core.test_core_properties import (
    FAR_FUTURE,
    Tick,
    compact,
    configs,
    event_streams,
    perform,
    schedules,
)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


def new_store(state_dir: Path) -> RocksStore:
    """A new, empty store (stores are kept on disk under their task's name)."""
    return open_store(state_dir, "unit", uuid.uuid4().hex)


@pytest.fixture
def store(state_dir: Path) -> Iterator[RocksStore]:
    opened = new_store(state_dir)
    yield opened
    opened.close()


def held_in_memory(processor: PartitionProcessor) -> int:
    """Aggregates and ids the processor holds in Python dicts."""
    windows = sum(len(users) for users in processor._windows.by_start.values())
    return windows + len(processor._dedupe.seen)


def snapshot(processor: PartitionProcessor) -> tuple[Any, ...]:
    return (
        processor.stream_time,
        processor.open_windows,
        processor.dedupe_size,
        processor.drain_changelog(),
    )


@settings(max_examples=200, deadline=None)
@given(
    config=configs(emit_updates=False) | configs(emit_updates=True),
    events=event_streams(),
    data=st.data(),
)
def test_rocksdb_processor_emits_and_logs_what_the_memory_one_does(
    state_dir: Path, config: CoreConfig, events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Step by step over batches, ticks and touches (disorder, replays, reused ids, late
    events): the same outcomes, the same changelog records, the same sizes; and between steps
    nothing is left in the Python dicts. Then a RocksDB one restarts from the changelog
    (possibly compacted) and emits what the memory one that never stopped emits."""
    steps = data.draw(schedules(len(events)))
    split = data.draw(st.integers(0, len(steps)))
    steps.append(Tick(FAR_FUTURE, caught_up=True))
    memory = PartitionProcessor(config)
    first_store = new_store(state_dir)
    second_store = new_store(state_dir)
    try:
        rocks = PartitionProcessor(config, first_store)
        changelog: list[Record] = []
        for step in steps[:split]:
            assert perform(rocks, events, step) == perform(memory, events, step)
            expected = snapshot(memory)
            assert snapshot(rocks) == expected
            changelog += expected[3]
            assert held_in_memory(rocks) == 0
        if data.draw(st.booleans()):
            changelog = compact(changelog, drop_tombstones=data.draw(st.booleans()))

        # A restore may hold expired ids the uninterrupted run had already forgotten, so the
        # sizes are compared with a memory processor restored from the same records.
        restored = PartitionProcessor(config, second_store)
        restored_memory = PartitionProcessor(config)
        for key, value in changelog:
            restored.apply_changelog(key, value)
            restored_memory.apply_changelog(key, value)
        assert snapshot(restored) == snapshot(restored_memory)
        for step in steps[split:]:
            outcome = perform(restored, events, step)
            assert outcome == perform(memory, events, step)
            assert outcome == perform(restored_memory, events, step)
            assert snapshot(restored) == snapshot(restored_memory)
            assert held_in_memory(restored) == 0
        assert restored.open_windows == 0
    finally:
        first_store.close()
        second_store.close()


def test_state_lives_in_rocksdb_between_batches(store: RocksStore) -> None:
    processor = PartitionProcessor(TUMBLING, store)
    users = [f"user-{n}" for n in range(500)]
    processor.process([event(f"e{n}", 3, user, 1.0) for n, user in enumerate(users)], 0, 0)
    processor.process([event("f", 4, "user-7", 2.0)], 0, 500)
    assert processor.open_windows == 500
    assert processor.dedupe_size == 501
    assert held_in_memory(processor) == 0
    assert sum(1 for _ in store.scan(b"w", b"x")) == 500
    assert sum(1 for _ in store.scan(b"s", b"t")) == 501
    # One record per batch of ids, in the store under its changelog key.
    assert [key for key, _ in store.scan(b"d", b"e")] == [b"d0", b"d500"]

    emitted = processor.tick(FAR_FUTURE, caught_up=True)
    assert len(emitted) == 500
    assert [record["key"] for record in emitted] == sorted(users)
    assert emitted[sorted(users).index("user-7")] == {
        "key": "user-7",
        "window_start": 0,
        "window_end": 10,
        "count": 2,
        "sum": 3.0,
        "min": 1.0,
        "max": 2.0,
        "final": True,
    }
    assert processor.open_windows == 0
    assert processor.dedupe_size == 0
    assert list(store.scan(b"", b"\xff")) == []


def test_values_round_trip_exactly(store: RocksStore) -> None:
    """Infinite sums, ids and event times beyond 64 bits, and non-ASCII ids come back as they
    went in (the store's encoding is exact, unlike JSON's)."""
    huge = 2**70
    config = CoreConfig(window_size_ms=10, window_step_ms=5, grace_ms=0, dedupe_horizon_ms=100)
    events = [
        event("a", huge, "zoë", 1e308),
        event("b", huge + 1, "zoë", 1e308),
        event("ü", huge + 2, "émile"),
        event("a", huge + 3, "zoë", 5.0),
    ]
    memory = PartitionProcessor(config)
    rocks = PartitionProcessor(config, store)
    for number, item in enumerate(events):
        assert rocks.process([item], 0, number) == memory.process([item], 0, number)
    assert rocks.drain_changelog() == memory.drain_changelog()
    finals = rocks.tick(2 * huge, caught_up=True)
    assert finals == memory.tick(2 * huge, caught_up=True)
    assert None in [record["sum"] for record in finals]  # an infinite sum: null in JSON
    assert {record["key"] for record in finals} == {"zoë", "émile"}
