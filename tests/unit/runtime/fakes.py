"""In-memory fakes of the aiokafka clients a worker uses, and a worker wired to them.

``FakeConsumer`` is the worker's group consumer: the test hands it fetches (``deliver``)
and assignments (through the worker's rebalance callbacks). ``FakeLog`` holds changelog
partitions; ``FakeLog.reader()`` is a consumer outside the group reading them, released a
record count at a time (``release``) so a test can hold a restore mid-way. ``FakeProducer``
accepts record batches and fails transactions on request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from streams.apps.reference import build
from streams.config import KafkaSettings, Settings
from streams.runtime import committer as committer_module
from streams.runtime import restorer as restorer_module
from streams.runtime import tasks as tasks_module
from streams.runtime import worker as worker_module
from streams.runtime.collector import Collector
from streams.runtime.committer import AtLeastOnce, ExactlyOnce
from streams.runtime.health import Health
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.positions import Positions
from streams.runtime.tasks import TaskManager
from streams.runtime.topics import TopicLayout
from streams.runtime.worker import Worker
from streams.topology.plan import plan

INPUT = "events"
APP_ID = "fake-app"
CHANGELOG = f"{APP_ID}-state-changelog"


@dataclass
class Rec:
    """A consumer record: what the worker and the restorer read of one."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_700_000_000_000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Wait (yielding to the event loop) until ``condition()``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f}s")
        await asyncio.sleep(0.001)


class FakeLog:
    """Changelog partitions in memory, and readers of them."""

    def __init__(self) -> None:
        self.records: dict[TopicPartition, list[Rec]] = {}
        # How many records of each partition readers may see so far (all by default).
        self.released: dict[TopicPartition, int] = {}
        self.more = asyncio.Event()
        self.readers: list[FakeReader] = []

    def append(self, tp: TopicPartition, key: bytes, value: bytes | None) -> None:
        """One record at the end of ``tp``."""
        records = self.records.setdefault(tp, [])
        records.append(Rec(len(records), key, value))

    def hold(self, tp: TopicPartition, count: int) -> None:
        """Readers see only the first ``count`` records of ``tp`` until :meth:`release`."""
        self.released[tp] = count

    def release(self, tp: TopicPartition, count: int) -> None:
        """Readers may see ``count`` more records of ``tp``."""
        self.released[tp] = self.released[tp] + count
        self.more.set()

    def visible(self, tp: TopicPartition) -> int:
        return min(len(self.records.get(tp, [])), self.released.get(tp, 1 << 62))

    def end(self, tp: TopicPartition) -> int:
        return len(self.records.get(tp, []))

    async def reader(self, kafka: KafkaSettings, *, read_committed: bool) -> FakeReader:
        """A started reader (``bulk_reader``'s signature)."""
        reader = FakeReader(self)
        self.readers.append(reader)
        return reader


class FakeReader:
    """A consumer outside any group, reading a :class:`FakeLog`."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.stopped = False
        self.fetched = 0

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        self.positions = {tp: 0 for tp in tps}
        self.paused = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.positions[tp] = 0

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.log.end(tp) for tp in tps}

    async def beginning_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in tps}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Rec]]:
        wanted = [tp for tp in tps or self.positions if tp not in self.paused]
        out = self._take(wanted, max_records or 1 << 62)
        if not out and timeout_ms:
            # Like a real fetch: wait for records up to the timeout.
            self.log.more.clear()
            try:
                await asyncio.wait_for(self.log.more.wait(), timeout_ms / 1000)
            except TimeoutError:
                return {}
            out = self._take(wanted, max_records or 1 << 62)
        return out

    def _take(self, tps: list[TopicPartition], budget: int) -> dict[TopicPartition, list[Rec]]:
        out = {}
        # Each partition gets its share of the records asked for, as fetch responses mix
        # partitions.
        share = max(1, budget // max(1, len(tps)))
        for tp in tps:
            start = self.positions[tp]
            stop = min(self.log.visible(tp), start + min(share, budget))
            records = self.log.records.get(tp, [])[start:stop]
            if records:
                out[tp] = records
                self.positions[tp] = start + len(records)
                budget -= len(records)
                self.fetched += len(records)
        return out

    async def stop(self) -> None:
        self.stopped = True


class FakeConsumer:
    """The worker's group consumer: fetches are handed to it by the test."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.assigned: set[TopicPartition] = set()
        self.paused: set[TopicPartition] = set()
        self.fetches: list[tuple[dict[TopicPartition, list[Rec]], Callable[[], bool] | None]] = []
        self.polls = 0
        self.seeks: dict[TopicPartition, int | None] = {}
        self.commits: list[dict[TopicPartition, int]] = []
        self.refuse_commits = False
        # While set and not released, an offset commit waits (a slow group coordinator).
        self.held_commits: asyncio.Event | None = None

    def deliver(
        self, fetch: dict[TopicPartition, list[Rec]], after: Callable[[], bool] | None = None
    ) -> None:
        """A poll returns ``fetch`` (once ``after()`` holds: the fetch is on the wire until
        then)."""
        self.fetches.append((fetch, after))

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Rec]]:
        self.polls += 1
        if self.fetches:
            fetch, after = self.fetches.pop(0)
            if after is not None:
                await until(after, "the condition a fetch waits for")
            return fetch
        # The poll's wait for records that do not come (kept short: nothing comes here).
        await asyncio.sleep(min(timeout_ms, 5) / 1000)
        return {}

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.held_commits is not None:
            await self.held_commits.wait()
        if self.refuse_commits:
            raise KafkaError("the group is rebalancing")
        self.commits.append(dict(offsets))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.seeks[tp] = None

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.log.end(tp) for tp in tps}

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return None

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def last_stable_offset(self, tp: TopicPartition) -> int | None:
        return None

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}


class FakeProducer:
    """Accepts record batches, acknowledging each at the next offsets of its partition (a
    partition of its own per producer, or the partition of ``log`` when set: the records
    then land there); ``fail_transactions`` makes every transaction fail."""

    fail_transactions = False
    log: FakeLog | None = None

    def __init__(self, **kwargs: Any) -> None:
        self.transactional_id = kwargs.get("transactional_id")
        # What streams.compat reads of aiokafka's producer to size a batch of its own.
        self._message_accumulator = SimpleNamespace(_batch_size=1 << 20, _compression_type=0)
        self._txn_manager = SimpleNamespace(transactional_id=self.transactional_id)
        self.sent: list[tuple[str, int]] = []
        self.ends: dict[tuple[str, int], int] = {}
        self.stopped = False

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(1 << 20, 0, is_transactional=self.transactional_id is not None)

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.sent.append((topic, partition))
        base = self.ends.get((topic, partition), 0)
        self.ends[topic, partition] = base + batch.record_count()
        if self.log is not None:
            tp = TopicPartition(topic, partition)
            base = self.log.end(tp)
            for built in DefaultRecordBatch(bytes(batch._build())):
                self.log.append(tp, built.key, built.value)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(offset=base))
        return done

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def begin_transaction(self) -> None:
        if FakeProducer.fail_transactions:
            raise KafkaError("the transaction coordinator went away")

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        pass

    async def commit_transaction(self) -> None:
        pass


def make_producer(kafka: KafkaSettings, **kwargs: Any) -> FakeProducer:
    """``streams.publish.make_producer``'s signature."""
    return FakeProducer(**kwargs)


async def topic_limits(kafka: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    """``streams.broker.admin.topic_limits``'s signature: no limit known."""
    return {}


async def topic_config(kafka: KafkaSettings, topics: Iterable[str], key: str) -> dict[str, str]:
    """``streams.broker.admin.topic_config``'s signature: the broker's defaults."""
    return {}


def fake_worker(
    monkeypatch: pytest.MonkeyPatch,
    log: FakeLog,
    *,
    guarantee: str,
    state_dir: Path | None = None,
) -> Worker:
    """A reference-app worker of two input partitions whose clients are fakes (what
    ``Worker.start`` would set up, minus the broker). With ``state_dir``, its state is in
    RocksDB stores there, and what it produces lands in ``log``."""
    monkeypatch.setattr(committer_module, "make_producer", make_producer)
    monkeypatch.setattr(restorer_module, "bulk_reader", log.reader)
    monkeypatch.setattr(worker_module, "topic_limits", topic_limits)
    monkeypatch.setattr(tasks_module, "topic_config", topic_config)
    monkeypatch.setattr(FakeProducer, "fail_transactions", False)
    monkeypatch.setattr(FakeProducer, "log", None if state_dir is None else log)
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="fake:9092"),
        app_id=APP_ID,
        partitions=2,
        guarantee=guarantee,
        store="memory" if state_dir is None else "rocksdb",
        state_dir=str(state_dir),
    )
    planned = plan(build(settings).decl, APP_ID)
    worker = Worker(settings, planned, WorkerMetrics(), Health())
    consumer = FakeConsumer(log)
    layout = TopicLayout({t.name: 2 for t in planned.topics}, {})
    worker._consumer = consumer  # type: ignore[assignment]
    worker._positions = Positions(consumer, eos=guarantee == "exactly_once", metrics=worker.metrics)  # type: ignore[arg-type]
    worker._layout = layout
    worker._tasks = TaskManager(
        settings,
        worker._compiled,
        worker._decoders,
        {},
        worker.metrics,
        read_committed=guarantee == "exactly_once",
    )
    worker._collector = Collector(
        planned, layout, worker.metrics, worker.stats, drained=worker._tasks.drained
    )
    committer_type = ExactlyOnce if guarantee == "exactly_once" else AtLeastOnce
    committer = committer_type(
        settings,
        consumer,  # type: ignore[arg-type]
        worker.metrics,
        layout.limits,
        worker._purger.committed,
        on_written=worker._tasks.changelog_written,
    )
    if isinstance(committer, AtLeastOnce):
        committer.producer = FakeProducer()  # type: ignore[assignment]
    worker._committer = committer
    worker.health.started = True
    return worker


def consumer_of(worker: Worker) -> FakeConsumer:
    """The worker's fake group consumer."""
    consumer = worker._consumer
    assert isinstance(consumer, FakeConsumer)
    return consumer


async def assign(worker: Worker, tps: set[TopicPartition]) -> None:
    """A rebalance that assigns ``tps`` (what aiokafka's coordinator would call)."""
    consumer_of(worker).assigned = set(tps)
    await worker.on_assigned(set(tps))


async def revoke(worker: Worker, tps: set[TopicPartition]) -> None:
    """A rebalance that takes ``tps`` away."""
    await worker.on_revoked(set(tps))
    consumer_of(worker).assigned -= tps
