"""Committing a batch under each delivery guarantee.

A :class:`Batch` is what one fetched batch (or one tick) produced: record batches per
partition, not sent yet. The worker fills one while the previous one commits, and commits
them in order (decision 0010).

**at_least_once** (one idempotent producer): first the outputs, dead letters and late
events are flushed and acknowledged, then the changelog records, then the input offsets are
committed. State therefore never runs ahead of delivered outputs: if the outputs fail, the
changelog has none of the batch and a replay produces every result again; if the changelog
write fails, the state in memory is complete and the write is retried; a crash between the
two leaves outputs that a replay repeats (duplicates, never a loss).

**exactly_once** (one transactional producer per input partition, ``transactional.id =
<app id>-<topic>-<partition>``, decision 0002): outputs, changelog records and the input
offsets commit in one transaction per partition and batch; starting the producer when a
partition is adopted fences the previous owner and aborts its open transaction.

Both wait for a slow output with the input paused (backpressure). A batch the broker
refuses for good fails the commit (``refused`` keeps it); the worker learns its poison and
replays. Once a batch's changelog records are written for good (acknowledged; under
exactly_once, their transaction committed), ``on_written`` hears where each partition's
records end (the local state checkpoints, decision 0017).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams import compat
from streams.broker.admin import start_client, stop_within
from streams.broker.batches import Acked, BatchSender, Refused
from streams.config import Settings
from streams.errors import StreamsError
from streams.publish import make_producer
from streams.runtime.metrics import WorkerMetrics

log = logging.getLogger(__name__)

TXN_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
BACKPRESSURE_AFTER_S = 1.0
RETRY_BACKOFF_S = 2.0


class Backpressure:
    """Pauses the consumer's partitions while an output flush is slow."""

    def __init__(self, consumer: AIOKafkaConsumer, metrics: WorkerMetrics) -> None:
        self._consumer = consumer
        self._metrics = metrics

    async def wait(self, flush: Awaitable[None]) -> None:
        """Await ``flush``; after ``BACKPRESSURE_AFTER_S`` pause fetching until it is done."""
        task = asyncio.ensure_future(flush)
        done, _ = await asyncio.wait({task}, timeout=BACKPRESSURE_AFTER_S)
        if done:
            task.result()
            return
        paused = list(self._consumer.assignment())
        self._consumer.pause(*paused)
        self._metrics.paused.set(len(paused))
        log.warning("output is slow: paused %d partitions until it catches up", len(paused))
        try:
            await task
        finally:
            self._consumer.resume(*[tp for tp in paused if tp in self._consumer.assignment()])
            self._metrics.paused.set(0)


def alone(tp: TopicPartition) -> TopicPartition:
    """An input partition that is a task of its own (its task is named after it)."""
    return tp


class Batch:
    """One batch's records, per task: ``senders(tp)`` gives the outputs' and the changelog
    records' senders of the task of input partition ``tp`` (the same one under exactly_once:
    one transaction). A task is one input partition, or partition ``p`` of the topics a join
    reads together, named after the first (``task_of``)."""

    def __init__(
        self,
        make: Callable[[TopicPartition], tuple[BatchSender, BatchSender]],
        task_of: Callable[[TopicPartition], TopicPartition] = alone,
    ) -> None:
        self._make = make
        self.task_of = task_of
        self.by_tp: dict[TopicPartition, tuple[BatchSender, BatchSender]] = {}
        # When its outputs began to go and when the last of them was acknowledged
        # (time.monotonic()): its produce phase (streams_batch_phase_seconds).
        self.sent = 0.0
        self.produced = 0.0
        # Sending its outputs before its commit failed (at_least_once): so does its commit.
        self.unsent: KafkaError | None = None

    def senders(self, tp: TopicPartition) -> tuple[BatchSender, BatchSender]:
        """``tp``'s task's outputs and changelog senders in this batch."""
        task = self.task_of(tp)
        pair = self.by_tp.get(task)
        if pair is None:
            pair = self.by_tp[task] = self._make(task)
        return pair

    def has_records(self, tp: TopicPartition) -> bool:
        """True when ``tp``'s task appended anything to this batch."""
        pair = self.by_tp.get(self.task_of(tp))
        return pair is not None and bool(pair[0].records or pair[1].records)

    def abandon(self) -> None:
        """The batch will not be committed (a failure before it voided it; the replay
        produces its records again): what it sent already is of no further interest."""
        for outputs, changelog in self.by_tp.values():
            outputs.abandon()
            changelog.abandon()


Written = Callable[[BatchSender, Mapping[tuple[str, int], Acked]], None]


def _ignore(sender: BatchSender, acked: Mapping[tuple[str, int], Acked]) -> None:
    """No one listens to what was written."""


class _Committer:
    """What both guarantees share: settings, consumer, metrics, the topics' size limits;
    ``on_committed`` hears of every input offset committed (the repartition purge),
    ``on_written`` of the records of a batch's sender written for good (where each
    (topic, partition)'s end)."""

    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        metrics: WorkerMetrics,
        limits: dict[str, int],
        on_committed: Callable[[Mapping[TopicPartition, int]], None],
        task_of: Callable[[TopicPartition], TopicPartition] = alone,
        on_written: Written = _ignore,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.metrics = metrics
        self.limits = limits
        self.on_committed = on_committed
        self.task_of = task_of
        self.on_written = on_written
        self._backpressure = Backpressure(consumer, metrics)
        # The last flush the broker refused for good (the worker learns poison from it).
        self.refused: Refused | None = None


class AtLeastOnce(_Committer):
    """Outputs, then changelog, then offsets; one producer for the worker."""

    eos = False
    producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Start the producer."""
        kafka = self.settings.kafka
        self.producer = make_producer(kafka, client_id=self.settings.app_id)
        await start_client(self.producer, kafka)

    def batch(self) -> Batch:
        """A new batch: one outputs sender and one changelog sender for every partition."""
        producer = self.producer
        assert producer is not None
        outputs = BatchSender(producer, limits=self.limits)
        changelog = BatchSender(producer, limits=self.limits, retain=True)
        return Batch(lambda tp: (outputs, changelog), self.task_of)

    async def send(self, batch: Batch) -> None:
        """Send the batch's outputs now, before the batch before it is committed: only its
        changelog must wait for that (and for these outputs' acknowledgement), its offsets
        for its changelog. Outputs of a batch whose predecessor then fails are repeated by
        the replay: duplicates, which at_least_once allows; none is lost."""
        if batch.by_tp:
            batch.sent = time.monotonic()
            outputs, _ = next(iter(batch.by_tp.values()))
            try:
                await outputs.send_all()
            except KafkaError as exc:
                # Some may not have left: the commit fails (a replay), as if its flush had.
                batch.unsent = exc

    async def open(self, tps: set[TopicPartition]) -> None:
        """Nothing to do per partition."""

    async def close(self, tps: Iterable[TopicPartition]) -> None:
        """Nothing to do per partition."""

    async def commit(
        self, batch: Batch, offsets: dict[TopicPartition, int], stopping: Callable[[], bool]
    ) -> set[TopicPartition]:
        """Commit a batch; returns the partitions to replay (all of them if the outputs
        failed, none otherwise)."""
        if not batch.by_tp:
            return set()
        outputs, changelog = next(iter(batch.by_tp.values()))
        try:
            if batch.unsent is not None:
                raise batch.unsent
            await self._backpressure.wait(outputs.flush())
            batch.produced = time.monotonic()
        except KafkaError as exc:
            if isinstance(exc, Refused):
                self.refused = exc
            # aiokafka's idempotent producer gives up for good on some errors after a broker
            # crash (OutOfOrderSequenceNumber): nothing of this batch counts, not even its
            # state (none of it was written): a new producer, and a replay.
            log.error("output failed (%r); replaying the batch from the last written state", exc)
            await self.restart()
            # The senders held every partition's outputs (a tick's too, with no offsets).
            return set(self.consumer.assignment())
        written = await self._write_changelog(changelog, stopping)
        if written is not None:
            self.on_written(changelog, written)
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:
                # A rebalance or an unreachable coordinator: whoever owns the partitions
                # next resumes from the committed offset or where the state stands; if that
                # is us, the next commit covers this one.
                self.metrics.commit_failures.inc()
                log.warning("offset commit failed (%r); the batch may repeat", exc)
                return set()
            self.metrics.commits.inc()
            self.on_committed(offsets)
        return set()

    async def _write_changelog(
        self, pending: BatchSender, stopping: Callable[[], bool]
    ) -> dict[tuple[str, int], Acked] | None:
        """The state in memory is complete: write its changelog until it is acknowledged;
        returns where each partition's records end (None when it gave up, stopping)."""
        acked: dict[tuple[str, int], Acked] = {}
        while True:
            try:
                await self._backpressure.wait(pending.flush())
            except Refused as exc:
                raise StreamsError(
                    f"the changelog refused a record for good ({exc}); raise the changelog "
                    "topic's max.message.bytes or fix its ACLs, then restart"
                ) from None
            except KafkaError as exc:
                if stopping():
                    log.error(
                        "changelog write failed (%r) while stopping; the next owner "
                        "replays the batch",
                        exc,
                    )
                    return None
                log.error("changelog write failed (%r); retrying with a new producer", exc)
                _merge(acked, pending.acked)
                failed = pending
                await self.restart()
                assert self.producer is not None
                pending = BatchSender(self.producer, limits=self.limits, retain=True)
                pending.resend_unacked(failed)
                continue
            _merge(acked, pending.acked)
            return acked

    async def restart(self) -> None:
        """A new producer (the old one may be dead for good), retrying while the broker is
        away."""
        kafka = self.settings.kafka
        if self.producer is not None:
            await stop_within(self.producer, CLOSE_TIMEOUT_S)
        while True:
            self.producer = make_producer(kafka, client_id=self.settings.app_id)
            try:
                await start_client(self.producer, kafka)
                break
            except Exception as exc:
                log.error("%s; retrying in %.0fs", exc, RETRY_BACKOFF_S)
                await asyncio.sleep(RETRY_BACKOFF_S)

    def clients(self) -> list[AIOKafkaProducer]:
        """The producers to close at stop."""
        return [] if self.producer is None else [self.producer]


class ExactlyOnce(_Committer):
    """One transactional producer per input partition; one transaction per batch."""

    eos = True

    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        metrics: WorkerMetrics,
        limits: dict[str, int],
        on_committed: Callable[[Mapping[TopicPartition, int]], None],
        task_of: Callable[[TopicPartition], TopicPartition] = alone,
        on_written: Written = _ignore,
    ) -> None:
        super().__init__(settings, consumer, metrics, limits, on_committed, task_of, on_written)
        # One producer per task (an input partition; a join's partition pair), named after
        # the task: the transaction of a join holds both inputs' offsets.
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}
        # A partition's producer whose transaction failed, until the partition is opened
        # again. The worker goes on processing its next fetch while a commit runs, so it
        # builds a batch on the state that failure voided: that batch appends to this
        # producer's sender, nothing sends it (``commit`` reports the partition gone), and
        # the worker drops it when it settles the failure and replays.
        self._voided: dict[TopicPartition, AIOKafkaProducer] = {}

    async def start(self) -> None:
        """Producers start per partition, when it is adopted."""
        compat.quick_transaction_retry()

    def transactional_id(self, tp: TopicPartition) -> str:
        """``<app id>-<topic>-<partition>``: stable per input partition, so the next owner
        fences this one."""
        return f"{self.settings.app_id}-{tp.topic}-{tp.partition}"

    async def open(self, tps: set[TopicPartition]) -> None:
        """Start the partitions' tasks' producers: fences previous owners, aborts their open
        transactions (so the changelog's last stable offset moves and restores finish)."""
        for tp in sorted({self.task_of(tp) for tp in tps}):
            self._voided.pop(tp, None)
            old = self.producers.pop(tp, None)
            if old is not None:
                await stop_within(old, CLOSE_TIMEOUT_S)
            producer = make_producer(
                self.settings.kafka,
                transactional_id=self.transactional_id(tp),
                client_id=self.settings.app_id,
            )
            await start_client(producer, self.settings.kafka)
            self.producers[tp] = producer

    async def close(self, tps: Iterable[TopicPartition]) -> None:
        """Stop the partitions' tasks' producers."""
        for tp in {self.task_of(tp) for tp in tps}:
            self._voided.pop(tp, None)
            producer = self.producers.pop(tp, None)
            if producer is not None:
                await stop_within(producer, CLOSE_TIMEOUT_S)

    async def send(self, batch: Batch) -> None:
        """Nothing before the commit: a task's producer is in the previous batch's
        transaction until that one is committed."""

    def batch(self) -> Batch:
        """A new batch: outputs and changelog of each partition share its transaction."""

        def make(tp: TopicPartition) -> tuple[BatchSender, BatchSender]:
            producer = self.producers.get(tp)
            if producer is None:
                producer = self._voided[tp]
            sender = BatchSender(producer, limits=self.limits)
            return sender, sender

        return Batch(make, self.task_of)

    async def commit(
        self, batch: Batch, offsets: dict[TopicPartition, int], stopping: Callable[[], bool]
    ) -> set[TopicPartition]:
        """One transaction per task with records or offsets; returns the partitions whose
        transaction failed (aborted: to rebuild and replay)."""
        task_of = self.task_of
        by_task: dict[TopicPartition, dict[TopicPartition, int]] = {
            task: {} for task in batch.by_tp if batch.has_records(task)
        }
        for tp, offset in offsets.items():
            by_task.setdefault(task_of(tp), {})[tp] = offset
        # A task whose producer a rebalance closed meanwhile: its next owner replays it.
        gone = {task for task in by_task if task not in self.producers}
        tasks = [task for task in by_task if task not in gone]
        results = await asyncio.gather(
            *(self._commit(task, batch, by_task[task]) for task in tasks)
        )
        failed = gone | {task for task, ok in zip(tasks, results, strict=True) if not ok}
        return failed | {tp for task in failed for tp in by_task[task]}

    async def _commit(
        self, tp: TopicPartition, batch: Batch, offsets: dict[TopicPartition, int]
    ) -> bool:
        producer = self.producers[tp]
        try:
            await asyncio.wait_for(self._transaction(producer, batch, tp, offsets), TXN_TIMEOUT_S)
        except Exception as exc:
            if isinstance(exc, Refused):
                self.refused = exc
            self.metrics.transactions.labels("aborted").inc()
            if isinstance(exc, TimeoutError):
                log.error(
                    "transaction for %s[%d] did not finish within %.0fs; restoring its state",
                    tp.topic,
                    tp.partition,
                    TXN_TIMEOUT_S,
                )
            else:
                log.error(
                    "transaction for %s[%d] failed (%r); restoring its state",
                    tp.topic,
                    tp.partition,
                    exc,
                )
            # Whatever it wrote is aborted by the next producer of the transactional id.
            if self.producers.get(tp) is producer:
                del self.producers[tp]
                self._voided[tp] = producer
            await stop_within(producer, CLOSE_TIMEOUT_S)
            return False
        self.metrics.transactions.labels("committed").inc()
        self.metrics.commits.inc()
        sender = batch.senders(tp)[0]
        self.on_written(sender, sender.acked)
        if offsets:
            self.on_committed(offsets)
        return True

    async def _transaction(
        self,
        producer: AIOKafkaProducer,
        batch: Batch,
        tp: TopicPartition,
        offsets: dict[TopicPartition, int],
    ) -> None:
        await producer.begin_transaction()
        batch.sent = batch.sent or time.monotonic()
        # A refused batch raises before the commit: the transaction is abandoned (the next
        # producer of the transactional id aborts it), never committed with a hole in it.
        await self._backpressure.wait(batch.senders(tp)[0].flush())
        batch.produced = max(batch.produced, time.monotonic())
        # The offsets join after the records are acknowledged, not beside them: sooner, the
        # group coordinator refuses them while the task's previous transaction is still being
        # completed (COORDINATOR_NOT_AVAILABLE, which aiokafka retries after 100 ms; measured,
        # docs/decisions/0019-latency.md).
        if offsets:
            await producer.send_offsets_to_transaction(offsets, self.settings.app_id)
        await producer.commit_transaction()

    def clients(self) -> list[AIOKafkaProducer]:
        """The producers to close at stop."""
        return list(self.producers.values())


Committer = AtLeastOnce | ExactlyOnce


def _merge(into: dict[tuple[str, int], Acked], more: Mapping[tuple[str, int], Acked]) -> None:
    """Keep the furthest acknowledgement of each partition (a resend acknowledges records a
    failed attempt had written too, at later offsets)."""
    for slot, acked in more.items():
        known = into.get(slot)
        if known is None or acked.end > known.end:
            into[slot] = acked
