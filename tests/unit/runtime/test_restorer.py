"""The changelog reader with a fake changelog consumer: bounded steps, cancellation, a
record that cannot be applied, a restore that stalls."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition

from streams.config import KafkaSettings
from streams.errors import BrokerError, RestoreError
from streams.runtime import restorer as restorer_module
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.restorer import ChangelogReader, Restore
from tests.unit.runtime.fakes import FakeLog

CHANGELOG = "app-state-changelog"


class _Task:
    """What the reader uses of a segment task: records applied, one fingerprint check."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self.finished = 0

    def apply_changelog(self, key: bytes, value: bytes | None) -> None:
        if value == b"unreadable":
            raise ValueError("not a stream time")
        self.applied.append(key)

    def finish_restore(self, on_state_change: str = "stop", where: str = "") -> list[str]:
        self.finished += 1
        return []


def _restore(partition: int) -> tuple[Restore, _Task]:
    task = _Task()
    restore = Restore(task, TopicPartition(CHANGELOG, partition), TopicPartition("in", partition))  # type: ignore[arg-type]
    return restore, task


def _reader(
    monkeypatch: pytest.MonkeyPatch,
    log: FakeLog,
    metrics: WorkerMetrics | None = None,
    **kwargs: Any,
) -> ChangelogReader:
    monkeypatch.setattr(restorer_module, "bulk_reader", log.reader)
    return ChangelogReader(
        KafkaSettings(bootstrap_servers="fake:9092"),
        read_committed=True,
        metrics=metrics or WorkerMetrics(),
        on_state_change="stop",
        **kwargs,
    )


def _fill(log: FakeLog, partition: int, count: int) -> None:
    for n in range(count):
        log.append(TopicPartition(CHANGELOG, partition), b"k%d" % n, b"v")


def _remaining(metrics: WorkerMetrics) -> float | None:
    return metrics.registry.get_sample_value("streams_recovery_records_remaining")


async def test_a_restore_applies_a_bounded_step_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    log = FakeLog()
    _fill(log, 0, 25)
    metrics = WorkerMetrics()
    reader = _reader(monkeypatch, log, metrics)
    restore, task = _restore(0)
    empty, fresh = _restore(1)  # nothing in its changelog: finished at the start
    await reader.start([restore, empty])
    assert fresh.finished == 1
    assert _remaining(metrics) == 25
    for applied in (10, 20):
        await reader.step(max_records=10)
        assert len(task.applied) == applied
        assert not reader.done
        assert task.finished == 0
        assert _remaining(metrics) == 25 - applied
    await reader.step(max_records=10)
    assert task.applied == [b"k%d" % n for n in range(25)]
    assert reader.done
    assert task.finished == 1
    assert log.readers[0].stopped
    assert _remaining(metrics) == 0
    assert metrics.registry.get_sample_value("streams_recovery_records_restored_total") == 25


async def test_a_step_returns_when_records_are_slow_to_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = FakeLog()
    _fill(log, 0, 10)
    log.hold(TopicPartition(CHANGELOG, 0), 4)
    reader = _reader(monkeypatch, log)
    restore, task = _restore(0)
    await reader.start([restore])
    await reader.step(max_seconds=0.05)  # returns with what came, not after everything
    assert len(task.applied) == 4
    assert not reader.done
    log.release(TopicPartition(CHANGELOG, 0), 6)
    await reader.step()
    assert reader.done
    assert task.finished == 1


async def test_cancel_drops_the_restores_of_revoked_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = FakeLog()
    _fill(log, 0, 30)
    _fill(log, 1, 30)
    reader = _reader(monkeypatch, log)
    (first, kept_task), (second, dropped_task) = _restore(0), _restore(1)
    await reader.start([first, second])
    await reader.step(max_records=20)
    applied = len(dropped_task.applied)
    assert applied == len(kept_task.applied) == 10
    await reader.cancel({second.owner})
    assert not reader.done
    while not reader.done:
        await reader.step(max_records=20)
    assert len(kept_task.applied) == 30
    assert kept_task.finished == 1
    # Nothing more of the cancelled one was applied, and it got no fingerprint check.
    assert len(dropped_task.applied) == applied < 30
    assert dropped_task.finished == 0
    assert log.readers[0].stopped


async def test_cancelling_the_last_restore_closes_the_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = FakeLog()
    _fill(log, 0, 30)
    metrics = WorkerMetrics()
    reader = _reader(monkeypatch, log, metrics)
    restore, _ = _restore(0)
    await reader.start([restore])
    await reader.cancel({restore.owner})
    assert reader.done
    assert log.readers[0].stopped
    assert _remaining(metrics) == 0


async def test_a_record_that_cannot_be_applied_fails_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = FakeLog()
    log.append(TopicPartition(CHANGELOG, 0), b"t", b"unreadable")
    reader = _reader(monkeypatch, log)
    restore, _ = _restore(0)
    await reader.start([restore])
    with pytest.raises(
        RestoreError, match=r"app-state-changelog\[0\] offset 0: .* cannot be applied"
    ):
        await reader.step()


async def test_a_restore_that_makes_no_progress_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    log = FakeLog()
    _fill(log, 0, 10)
    log.hold(TopicPartition(CHANGELOG, 0), 0)  # an open transaction, a broker away
    reader = _reader(monkeypatch, log, stall_timeout_s=0.0)
    restore, _ = _restore(0)
    await reader.start([restore])
    with pytest.raises(BrokerError, match="made no progress"):
        await reader.step(max_seconds=0.01)


class _Local:
    """What the reader uses of a task's kept store: a checkpoint at ``offset``, whose record
    before it has key ``last``."""

    def __init__(self, offset: int, last: bytes) -> None:
        self.offset = offset
        self.last = last
        self.reopened = 0
        self.wiped = False
        self.read: list[int] = []
        self.checkpoints = 0

    def resume_at(self, begin: int, end: int) -> int | None:
        if begin <= self.offset - 1 < end:
            return self.offset - 1
        self.wiped = True
        return None

    def verify(self, record: Any) -> bool:
        if record.offset == self.offset - 1 and record.key == self.last:
            return True
        self.wiped = True
        return False

    def reopen(self, task: Any) -> None:
        self.reopened += 1

    def replayed(self, records: list[Any]) -> None:
        self.read += [record.offset for record in records]

    def write_checkpoint(self) -> bool:
        self.checkpoints += 1
        return True


@pytest.mark.parametrize(
    ("offset", "last", "replayed", "reused"),
    [
        (21, b"k20", 30 - 20, True),  # the changelog's tail only, from the checkpoint's record
        (21, b"other", 30, False),  # another record there: wiped, from the beginning
        (31, b"k30", 30, False),  # beyond the changelog's end: wiped, from the beginning
    ],
)
async def test_a_restore_from_a_checkpoint_reads_the_tail_once_its_record_matches(
    monkeypatch: pytest.MonkeyPatch, offset: int, last: bytes, replayed: int, reused: bool
) -> None:
    log = FakeLog()
    _fill(log, 0, 30)
    metrics = WorkerMetrics()
    reader = _reader(monkeypatch, log, metrics)
    local = _Local(offset, last)
    restore, task = _restore(0)
    restore.local = local  # type: ignore[assignment]
    await reader.start([restore])
    while not reader.done:
        await reader.step(max_records=7)
    assert task.applied == [b"k%d" % n for n in range(30 - replayed, 30)]
    assert local.read == list(range(30 - replayed, 30))
    assert (local.reopened, local.wiped) == (int(reused), not reused)
    assert task.finished == 1
    assert local.checkpoints == 1  # the store is the changelog's state at its end
    restored = metrics.registry.get_sample_value("streams_recovery_records_restored_total")
    assert restored == replayed
