"""The poll loop with fake Kafka clients: a failed transaction, adoptions and restores,
and what the loop leaves to the garbage collector."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition

from streams.runtime import localstate as localstate_module
from streams.runtime.committer import AtLeastOnce, ExactlyOnce
from streams.runtime.worker import Worker
from streams.state import checkpoint
from tests.unit.runtime.fakes import (
    APP_ID,
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


def _events(first: int, count: int) -> list[Rec]:
    """Valid reference events of users ``u<first>``…, one each, in one window."""
    return [
        Rec(
            n,
            b"u%d" % n,
            orjson.dumps(
                {"event_id": f"e{n}", "type": "page_view", "user_id": f"u{n}", "ts": 1_000 + n}
            ),
        )
        for n in range(first, first + count)
    ]


async def _process_and_stop(worker: Worker, records: list[Rec]) -> None:
    """Adopt TP, process ``records``, and stop the way the worker stops (its tasks closed,
    each store checkpointed)."""
    consumer = consumer_of(worker)
    async with _running(worker) as run:
        await assign(worker, {TP})
        await until(lambda: not _alive(run) or TP in worker.tasks.active, "adopted")
        consumer.deliver({TP: records})
        end = records[-1].offset + 1
        await until(
            lambda: not _alive(run) or any(c.get(TP) == end for c in consumer.commits),
            "the batch committed",
        )
    await worker.tasks.close(clean=True)


async def test_a_worker_takes_its_store_up_again_replaying_only_what_was_written_since(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Its partition moved to a worker on another machine meanwhile, then came back."""
    log = FakeLog()
    changelog = TopicPartition(CHANGELOG, TP.partition)
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    await _process_and_stop(
        fake_worker(monkeypatch, log, guarantee="at_least_once", state_dir=here), _events(0, 40)
    )
    checkpointed = log.end(changelog)
    await _process_and_stop(
        fake_worker(monkeypatch, log, guarantee="at_least_once", state_dir=elsewhere),
        _events(40, 20),
    )
    assert log.readers[-1].fetched == checkpointed  # elsewhere: the whole changelog

    back = fake_worker(monkeypatch, log, guarantee="at_least_once", state_dir=here)
    async with _running(back) as run:
        await assign(back, {TP})
        await until(lambda: not _alive(run) or TP in back.tasks.active, "adopted")
    # From the record the checkpoint follows on.
    assert log.readers[-1].fetched == log.end(changelog) - checkpointed + 1
    [segment] = back.tasks.active[TP].segments
    assert segment.open_windows == 60
    assert segment.position == 60
    reused = back.metrics.registry.get_sample_value(
        "streams_recovery_local_stores_total", {"outcome": "reused"}
    )
    assert reused == 1
    await back.tasks.close(clean=True)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_under_load_a_store_is_checkpointed_once_its_batch_is_committed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, guarantee: str
) -> None:
    monkeypatch.setattr(localstate_module, "CHECKPOINT_RECORDS", 10)
    monkeypatch.setattr(localstate_module, "CHECKPOINT_INTERVAL_S", 0.0)
    monkeypatch.setattr(localstate_module, "IDLE_CHECKPOINT_S", 3600.0)
    log = FakeLog()
    worker = fake_worker(monkeypatch, log, guarantee=guarantee, state_dir=tmp_path)
    consumer = consumer_of(worker)
    written = tmp_path / APP_ID / "aggregates" / f"{INPUT}-0" / "checkpoint.json"
    async with _running(worker) as run:
        await assign(worker, {TP})
        await until(lambda: not _alive(run) or TP in worker.tasks.active, "adopted")
        consumer.deliver({TP: _events(0, 30)})
        await until(lambda: not _alive(run) or written.exists(), "a checkpoint")
        found = checkpoint.read(written)
        assert found is not None
        # Where the batch's changelog records end: known once they are written for good
        # (its commit), and only then checkpointed.
        assert found.offset == log.end(TopicPartition(CHANGELOG, 0))
        assert worker.tasks.active[TP].stores[0] is not None
        assert worker.tasks.active[TP].stores[0].unmarked == 0


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
