"""The poll loop with fake Kafka clients: a failed transaction, adoptions and restores,
and what the loop leaves to the garbage collector."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Iterator

import pytest
from aiokafka import TopicPartition

from streams.runtime.committer import AtLeastOnce, ExactlyOnce
from streams.runtime.worker import Worker
from tests.unit.runtime.fakes import (
    CHANGELOG,
    INPUT,
    FakeLog,
    FakeProducer,
    Rec,
    assign,
    consumer_of,
    fake_worker,
    revoke,
    until,
)

TP = TopicPartition(INPUT, 0)


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    # Adoptions freeze the heap (gc.freeze): give this process its collector back.
    yield
    gc.unfreeze()


@contextlib.asynccontextmanager
async def _running(worker: Worker) -> AsyncIterator[asyncio.Future[object]]:
    run: asyncio.Future[object] = asyncio.ensure_future(worker.run())
    try:
        yield run
    finally:
        worker.request_stop()
        await asyncio.wait_for(run, 10)


def _alive(run: asyncio.Future[object]) -> bool:
    """False once the loop ended (its exception, if any, is raised here)."""
    if run.done():
        run.result()
        return False
    return True


async def test_a_failed_transaction_replays_the_partition_and_the_worker_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = fake_worker(monkeypatch, FakeLog(), guarantee="exactly_once")
    consumer = consumer_of(worker)
    committer = worker._committer
    assert isinstance(committer, ExactlyOnce)
    async with _running(worker) as run:
        await assign(worker, {TP})
        await until(lambda: TP in worker.tasks.active, "the partition adopted")
        failing = committer.producers[TP]
        FakeProducer.fail_transactions = True
        consumer.deliver({TP: [Rec(0, b"u1", b"not json")]})
        # The next fetch comes back after the first batch's transaction failed.
        consumer.deliver(
            {TP: [Rec(1, b"u1", b"not json")]}, after=lambda: TP not in committer.producers
        )
        await until(lambda: not consumer.fetches, "both fetches taken")
        FakeProducer.fail_transactions = False
        await until(
            lambda: (
                not _alive(run)
                or (
                    TP in worker.tasks.active and committer.producers.get(TP) not in (None, failing)
                )
            ),
            "the partition replayed with a new producer",
        )
        assert _alive(run)


class _Node:
    """An object that can sit in a reference cycle and be weakly referenced."""

    other: _Node | None = None


async def test_cyclic_garbage_made_before_an_adoption_is_not_frozen_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = fake_worker(monkeypatch, FakeLog(), guarantee="at_least_once")
    gc.collect()
    gc.disable()  # no collection may happen by chance between the cycle and the adoption
    try:
        node = _Node()
        node.other = _Node()
        node.other.other = node
        ref = weakref.ref(node)
        del node
        async with _running(worker) as run:
            await assign(worker, {TP})
            await until(lambda: not _alive(run) or TP in worker.tasks.active, "adopted")
        gc.collect()
        assert ref() is None, "the adoption froze garbage: it is never collected now"
    finally:
        gc.enable()


async def test_a_long_restore_keeps_polling_and_gives_way_to_a_revocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = FakeLog()
    changelog = TopicPartition(CHANGELOG, TP.partition)
    for n in range(1_000):
        log.append(changelog, b"x%d" % n, b"{}")  # records of a newer version: skipped
    log.hold(changelog, 100)  # the rest is slow to come
    worker = fake_worker(monkeypatch, log, guarantee="at_least_once")
    consumer = consumer_of(worker)
    async with _running(worker) as run:
        await assign(worker, {TP})
        await until(lambda: bool(log.readers) and log.readers[-1].fetched == 100, "restoring")
        polls = consumer.polls
        # The member keeps polling (a restore longer than max.poll.interval.ms no longer
        # drops it from the group), the partition paused, the worker not ready.
        await until(lambda: not _alive(run) or consumer.polls >= polls + 5, "polls meanwhile")
        assert TP in consumer.paused
        assert not worker.health.ready()
        # A rebalance does not wait for the restore: it drops the half-restored task.
        await asyncio.wait_for(revoke(worker, {TP}), 2)
        assert TP not in worker.tasks.active
        assert TP not in worker.tasks.suspended
        assert log.readers[-1].stopped
        # Assigned again, the partition is restored from the beginning, whole this time.
        log.release(changelog, 900)
        await assign(worker, {TP})
        await until(lambda: not _alive(run) or TP in worker.tasks.active, "adopted")
        assert log.readers[-1].fetched == 1_000
        assert TP not in consumer.paused
        assert worker.health.ready()


def _phase_counts(worker: Worker) -> dict[str, float]:
    return {
        sample.labels["phase"]: sample.value
        for family in worker.metrics.registry.collect()
        if family.name == "streams_batch_phase_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    }


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_each_committed_batch_reports_where_its_time_went(
    monkeypatch: pytest.MonkeyPatch, guarantee: str
) -> None:
    worker = fake_worker(monkeypatch, FakeLog(), guarantee=guarantee)
    consumer = consumer_of(worker)
    async with _running(worker) as run:
        await assign(worker, {TP})
        await until(lambda: TP in worker.tasks.active, "the partition adopted")
        consumer.deliver({TP: [Rec(0, b"u1", b"not json"), Rec(1, b"u1", b"not json")]})
        await until(lambda: not _alive(run) or worker.stats.consumed == 2, "the batch committed")
    assert _phase_counts(worker) == dict.fromkeys(
        ("fetch_wait", "process", "queue", "produce", "commit"), 1.0
    )


async def test_at_least_once_sends_a_batchs_outputs_while_the_one_before_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = fake_worker(monkeypatch, FakeLog(), guarantee="at_least_once")
    consumer = consumer_of(worker)
    committer = worker._committer
    assert isinstance(committer, AtLeastOnce)
    producer = committer.producer
    assert isinstance(producer, FakeProducer)
    dlq = worker._dlq_of_input[INPUT]
    consumer.held_commits = asyncio.Event()
    async with _running(worker) as run:
        await assign(worker, {TP})
        await until(lambda: TP in worker.tasks.active, "the partition adopted")
        # Each fetch's one record is a dead letter: an output of its batch. The second fetch
        # comes back once the first batch's commit is under way.
        consumer.deliver({TP: [Rec(0, b"u1", b"not json")]})
        consumer.deliver(
            {TP: [Rec(1, b"u1", b"not json")]}, after=lambda: producer.sent.count((dlq, 0)) == 1
        )
        # The first batch's offsets are not committed yet: the second batch's output left
        # anyway, while its changelog and offsets wait for the first batch's.
        await until(lambda: producer.sent.count((dlq, 0)) == 2, "the second batch's output")
        assert consumer.commits == []
        consumer.held_commits.set()
        await until(lambda: not _alive(run) or len(consumer.commits) == 2, "both committed")
    assert consumer.commits == [{TP: 1}, {TP: 2}]


async def test_fetches_taken_while_a_commit_is_under_way_commit_together_when_it_lands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = fake_worker(monkeypatch, FakeLog(), guarantee="at_least_once")
    consumer = consumer_of(worker)
    consumer.held_commits = asyncio.Event()
    async with _running(worker) as run:
        await assign(worker, {TP})
        await until(lambda: TP in worker.tasks.active, "the partition adopted")
        consumer.deliver({TP: [Rec(0, b"u1", b"not json")]})
        await until(lambda: worker._committing(), "the first batch's commit under way")
        # The loop does not wait for that commit: it takes the next fetches meanwhile, into
        # one batch.
        consumer.deliver({TP: [Rec(1, b"u1", b"not json")]})
        consumer.deliver({TP: [Rec(2, b"u1", b"not json")]})
        await until(lambda: not consumer.fetches, "both fetches taken")
        await until(lambda: worker._processed == 3, "both fetches processed")
        assert consumer.commits == []
        open_ = worker._open
        assert open_ is not None
        assert open_.fetches == 2
        # The commit lands: the batch that waited for it is committed at once, with no
        # further fetch to prompt it.
        consumer.held_commits.set()
        await until(lambda: not _alive(run) or len(consumer.commits) == 2, "both committed")
    assert consumer.commits == [{TP: 1}, {TP: 3}]
