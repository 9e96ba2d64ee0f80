"""Adoption in steps, with the reference app's real tasks and fake Kafka clients: where a
task resumes, a failed restore retried after a backoff, a rebalance in the middle."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from streams.runtime import tasks as tasks_module
from streams.runtime.tasks import TaskManager
from streams.runtime.worker import Worker
from tests.unit.runtime.fakes import (
    CHANGELOG,
    INPUT,
    FakeConsumer,
    FakeLog,
    consumer_of,
    fake_worker,
)

P0, P1 = TopicPartition(INPUT, 0), TopicPartition(INPUT, 1)
C0, C1 = TopicPartition(CHANGELOG, 0), TopicPartition(CHANGELOG, 1)


def _setup(
    monkeypatch: pytest.MonkeyPatch, log: FakeLog
) -> tuple[Worker, TaskManager, FakeConsumer]:
    worker = fake_worker(monkeypatch, log, guarantee="at_least_once")
    consumer = consumer_of(worker)
    consumer.assigned = {P0, P1}
    return worker, worker.tasks, consumer


async def _fence(tps: set[TopicPartition]) -> None:
    """``before_restore``: nothing to fence under at_least_once."""


def _running() -> bool:
    return False


async def _adopt_all(
    manager: TaskManager, consumer: FakeConsumer, timeout_s: float = 5.0
) -> set[TopicPartition]:
    """Adoption steps, as the poll loop takes them (a short poll between two), until
    nothing is left to adopt."""
    adopted: set[TopicPartition] = set()
    deadline = time.monotonic() + timeout_s
    while manager.adopting:
        if time.monotonic() > deadline:
            pytest.fail(f"the adoption did not finish within {timeout_s:.0f}s")
        adopted |= await manager.adopt(consumer, _fence, _running)
        await asyncio.sleep(0.005)
    return adopted


async def test_partitions_resume_where_their_restored_state_stands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = FakeLog()
    for n in range(30):
        log.append(C0, b"x%d" % n, b"{}")
    log.append(C0, b"o", b"4200")  # the input offset the state stands at
    _, manager, consumer = _setup(monkeypatch, log)
    await manager.assign({P0, P1})
    assert await _adopt_all(manager, consumer) == {P0, P1}
    assert consumer.seeks == {P0: 4200, P1: None}  # P1 has no state: from the beginning
    assert set(manager.active) == {P0, P1}


async def test_a_failed_restore_is_retried_after_a_backoff_and_nothing_is_ready_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tasks_module, "RETRY_BACKOFF_S", 0.5)
    log = FakeLog()
    log.append(C1, b"t", b"not a stream time")
    worker, manager, consumer = _setup(monkeypatch, log)
    await manager.assign({P0, P1})
    await manager.adopt(consumer, _fence, _running)
    await manager.adopt(consumer, _fence, _running)
    failures = "streams_recovery_failures_total"
    assert worker.metrics.registry.get_sample_value(failures) == 1
    # Both partitions wait (P0's restore was whole: the partitions of an adoption become
    # ready together), and steps during the backoff start nothing.
    assert manager.pending == {P0, P1}
    assert not manager.active
    readers = len(log.readers)
    assert log.readers[-1].stopped
    assert await manager.adopt(consumer, _fence, _running) == set()
    assert len(log.readers) == readers
    # The record is deleted meanwhile; the next attempt, after the backoff, restores.
    log.records[C1] = []
    assert await _adopt_all(manager, consumer) == {P0, P1}
    assert worker.metrics.registry.get_sample_value(failures) == 1


async def test_a_rebalance_mid_adoption_drops_half_restored_tasks_and_keeps_kept_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = FakeLog()
    for n in range(20):
        log.append(C0, b"x%d" % n, b"{}")
        log.append(C1, b"x%d" % n, b"{}")
    worker, manager, consumer = _setup(monkeypatch, log)
    consumer.assigned = {P0}
    await manager.assign({P0})
    await _adopt_all(manager, consumer)
    kept_task = manager.active[P0]
    await manager.suspend({P0}, consumer)  # a rebalance: P0 set aside, then P0 and P1 come
    consumer.assigned = {P0, P1}
    await manager.assign({P0, P1})
    log.hold(C1, 5)
    await manager.adopt(consumer, _fence, _running)
    assert manager.restoring == {P0: kept_task, P1: manager.restoring[P1]}
    assert not manager.reader.done  # P1 half-restored

    await manager.suspend({P0, P1}, consumer)  # another rebalance, before P1 is whole
    assert not manager.adopting
    assert manager.suspended == {P0: kept_task}  # untouched: still a candidate to keep
    assert log.readers[-1].stopped

    log.release(C1, 15)
    await manager.assign({P0, P1})
    assert await _adopt_all(manager, consumer) == {P0, P1}
    assert manager.active[P0] is kept_task
    kept = worker.metrics.registry.get_sample_value("streams_rebalance_kept_partitions_total")
    assert kept == 2
    assert log.readers[-1].fetched == 20  # P1 from its beginning
