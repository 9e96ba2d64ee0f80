"""The worker's batched hot path: fetch, validate, process, produce, commit — per batch.

One fetched batch per partition goes through a synchronous loop (decode + validate, then the
pure core), and its results (aggregates, dead letters, late events, changelog records) are
appended to record batches and sent together. Nothing on this path creates a task or awaits
per message. Offsets are committed only after everything the batch produced is acknowledged
(at_least_once), or in the same Kafka transaction as it (exactly_once).

Exactly-once uses one transactional producer per input partition, with a transactional id
derived from the partition: a worker that takes the partition over fences any zombie of the
previous owner and aborts its open transaction before it replays the state changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from streams.broker.admin import (
    ensure_topics,
    grow_partitions,
    pipeline_topics,
    start_client,
    stop_within,
)
from streams.broker.batches import BatchSender, partition_for
from streams.broker.records import use_raw_records
from streams.broker.uncommitted import Uncommitted
from streams.config import Settings
from streams.core.config import CoreConfig
from streams.core.jsonbytes import dumps as json_dumps
from streams.core.processor import PartitionProcessor
from streams.dlq import HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC, dead_letter_headers
from streams.errors import StreamsError
from streams.lag.timelag import HeadHistory, estimate_time_lag
from streams.publish import make_producer
from streams.validation import decode_batch
from streams.worker.metrics import WorkerMetrics, observe_many
from streams.worker.state import changelog_spec, changelog_topic, restore

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 0.5
# A partition counts as caught up (for idle advance and --exit-when-idle) only while a fetch
# response reported its log end within this long (see _fresh_end).
FRESH_END_S = 1.0
PROGRESS_EVERY_S = 10.0
POSITION_WAIT_S = 0.2
# Deadlines for client calls that aiokafka may otherwise retry forever.
TXN_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
RETRY_BACKOFF_S = 2.0
BACKPRESSURE_AFTER_S = 1.0
# A fetched batch (up to 20k records) is decoded and processed in chunks of this many: the
# decoded events of a chunk stay in the CPU cache and in memory the allocator reuses, where a
# whole batch's ~8 MB of fresh dicts cost page faults and cache misses (measured, BENCHMARKS).
DECODE_CHUNK = 2_000


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass
class Health:
    """What the health endpoints report."""

    started: bool = False
    rebalancing: bool = False
    restoring: bool = False
    stopping: bool = False
    last_loop: float = field(default_factory=time.monotonic)

    def live(self, max_stall_s: float = 60.0) -> bool:
        """The loop is turning (it passes at least every fetch timeout)."""
        return not self.stopping and time.monotonic() - self.last_loop < max_stall_s

    def ready(self) -> bool:
        """Started, not in a rebalance, not restoring state."""
        return self.started and not (self.rebalancing or self.restoring or self.stopping)


@dataclass
class RunStats:
    """Totals of one worker run (also logged periodically)."""

    consumed: int = 0
    invalid: int = 0
    duplicates: int = 0
    late: int = 0
    emitted: int = 0
    batches: int = 0
    first_batch_at: float = 0.0
    last_batch_at: float = 0.0


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._pipeline.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._pipeline.on_assigned({tp.partition for tp in assigned})


class Pipeline:
    """Runs the reference pipeline for the partitions this worker is assigned."""

    def __init__(self, settings: Settings, metrics: WorkerMetrics, health: Health) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health
        metrics.ready.set_function(lambda: float(health.ready()))
        # Fetched and not yet committed: what a stop now leaves to the next owner.
        self.uncommitted = Uncommitted()
        metrics.buffered.set_function(self.uncommitted.total)
        self.stats = RunStats()
        self.eos = settings.guarantee == "exactly_once"
        self.core_config = CoreConfig(
            window_size_ms=settings.window_size_ms,
            window_step_ms=settings.window_step_ms,
            grace_ms=settings.grace_ms,
            idle_timeout_ms=settings.idle_timeout_ms,
            dedupe_horizon_ms=settings.dedupe_horizon_ms,
            emit_updates=settings.emit == "updates",
        )
        self.changelog = changelog_topic(settings)
        self.processors: dict[int, PartitionProcessor] = {}
        self._txn_producers: dict[int, AIOKafkaProducer] = {}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._partitions: dict[str, int] = {}
        self._last_tick = 0.0
        self.last_work = time.monotonic()
        self.assigned = asyncio.Event()
        self._last_progress = (time.monotonic(), 0)
        self._heads: dict[int, HeadHistory] = {}
        # Partitions whose log end was fresh at the last tick (see _tick).
        self._confirmed: set[int] = set()
        self._stop_requested = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create missing topics, start the clients, join the consumer group."""
        # Window and dedupe state is large, long-lived and free of reference cycles: full
        # collections over it are pure pause (hundreds of ms with a million keys). Collect
        # young objects often and the old generation rarely; restored state is frozen.
        gc.set_threshold(50_000, 50, 1_000)
        use_raw_records()
        s = self.settings
        kafka = s.kafka
        await ensure_topics(kafka, pipeline_topics(s))
        probe = make_producer(kafka)
        await start_client(probe, kafka)
        try:
            for topic in (s.input_topic, s.output_topic, s.dlq_topic, s.late_topic):
                self._partitions[topic] = len(await probe.partitions_for(topic))
            await ensure_topics(kafka, [changelog_spec(s, self._partitions[s.input_topic])])
            self._partitions[self.changelog] = len(await probe.partitions_for(self.changelog))
        finally:
            await probe.stop()
        if not self.eos:
            self._producer = make_producer(kafka, client_id=s.app_id)
            await start_client(self._producer, kafka)
        self._consumer = AIOKafkaConsumer(
            **kafka.client_kwargs(),
            group_id=s.app_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if self.eos else "read_uncommitted",
            # 1 MB per partition keeps ~40 MB less prefetched than 2 MB did (1M-key state run,
            # BENCHMARKS.md) at the same throughput.
            max_partition_fetch_bytes=1024 * 1024,
            fetch_max_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=100,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(1_000, s.session_timeout_ms // 5),
            max_poll_interval_ms=300_000,
            # How soon partitions added to the input are noticed (and a deleted topic).
            metadata_max_age_ms=s.metadata_refresh_ms,
        )
        self._consumer.subscribe([s.input_topic], listener=_Rebalance(self))
        await start_client(self._consumer, kafka)
        self.health.started = True
        log.info(
            "worker %s started: %s -> %s (guarantee=%s, window=%d/%d ms, grace=%d ms)",
            s.app_id,
            s.input_topic,
            s.output_topic,
            s.guarantee,
            s.window_size_ms,
            s.window_step_ms,
            s.grace_ms,
        )

    def request_stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand (a signal handler)."""
        self._stop_requested = True
        self.health.stopping = True

    async def stop(self) -> None:
        """Leave the group (committed work stays committed) and close every client."""
        self.health.stopping = True
        # All clients at once, each within CLOSE_TIMEOUT_S: against a broker that does not
        # answer, one deadline in all instead of one per client (six transactional producers
        # took a minute), inside the stop deadline (streams.worker.shutdown). Not under the
        # lock: stopping the consumer waits for its coordinator, which may be in a rebalance
        # calling on_revoked/on_assigned, which take the lock (a deadlock, seen). The run loop
        # has ended, so no batch uses the producers.
        clients = [self._consumer, self._producer, *self._txn_producers.values()]
        self._txn_producers.clear()
        await asyncio.gather(*(stop_within(c, CLOSE_TIMEOUT_S) for c in clients if c is not None))

    async def run(
        self, *, exit_when_idle_s: float | None = None, stop_after: int | None = None
    ) -> RunStats:
        """Process until cancelled, idle for ``exit_when_idle_s`` s, or ``stop_after`` events."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        while True:
            self.health.last_loop = time.monotonic()
            batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
            async with self._lock:
                if batches:
                    # A batch keeps ~20k decoded events alive at once; with the collector on,
                    # each young collection walks and promotes them, about a fifth of the
                    # worker's CPU (measured, docs/BENCHMARKS.md). They hold no cycles and die
                    # by reference counting when the batch ends, so collect between batches.
                    gc.disable()
                    try:
                        await self._process(batches)
                    finally:
                        gc.enable()
                if time.monotonic() - self._last_tick >= TICK_INTERVAL_S:
                    await self._tick()
            if self._stop_requested:
                log.info("stop requested: leaving the group after the last batch")
                return self.stats
            if exit_when_idle_s is not None and await self._idle_for(exit_when_idle_s):
                return self.stats
            if stop_after is not None and self.stats.consumed >= stop_after:
                return self.stats

    # -- rebalancing -----------------------------------------------------------------------

    async def on_revoked(self, partitions: set[int]) -> None:
        """Let the in-flight batch finish (the lock), then forget the partitions."""
        self.health.rebalancing = True
        async with self._lock:
            for p in partitions:
                self.processors.pop(p, None)
                self._forget_lag(p)
                self._confirmed.discard(p)
                self.uncommitted.forget([TopicPartition(self.settings.input_topic, p)])
                producer = self._txn_producers.pop(p, None)
                if producer is not None:
                    await stop_within(producer, CLOSE_TIMEOUT_S)
            self._update_state_gauges()

    async def on_assigned(self, partitions: set[int]) -> None:
        """Restore state of newly assigned partitions before processing them."""
        self.metrics.rebalances.inc()
        self.metrics.assigned.set(len(partitions))
        async with self._lock:
            new = partitions - set(self.processors)
            gone = set(self.processors) - partitions
            for p in gone:
                self.processors.pop(p, None)
            if new:
                await self._follow_input_growth(max(new) + 1)
                await self._adopt(new)
        self.health.rebalancing = False
        self.assigned.set()
        log.info("assigned input partitions %s", sorted(partitions))
        if not partitions:
            self._warn_if_input_is_gone()

    async def _follow_input_growth(self, needed: int) -> None:
        """Partitions were added to the input topic: grow the changelog to match."""
        s = self.settings
        if needed <= self._partitions[self.changelog]:
            return
        log.warning(
            "input topic %s now has at least %d partitions (was %d); growing %s to match. "
            "Keys hash to new partitions from here on, so a window open across the change "
            "can be emitted once per partition that saw the key",
            s.input_topic,
            needed,
            self._partitions[s.input_topic],
            self.changelog,
        )
        await grow_partitions(s.kafka, self.changelog, needed)
        self._partitions[s.input_topic] = needed
        self._partitions[self.changelog] = needed

    def _warn_if_input_is_gone(self) -> None:
        consumer = self._consumer
        if consumer is not None and not consumer.partitions_for_topic(self.settings.input_topic):
            log.error(
                "input topic %s does not exist (deleted?); this worker idles until it is "
                "created again",
                self.settings.input_topic,
            )

    async def _adopt(self, partitions: set[int]) -> None:
        self.health.restoring = True
        try:
            if self.eos:
                # Fence the previous owner and abort its open transaction first, so that the
                # changelog's last stable offset moves and the restore below can finish.
                for p in partitions:
                    producer = make_producer(
                        self.settings.kafka,
                        transactional_id=f"{self.settings.app_id}-{self.settings.input_topic}-{p}",
                        client_id=self.settings.app_id,
                    )
                    await start_client(producer, self.settings.kafka)
                    self._txn_producers[p] = producer
            fresh = {
                p: PartitionProcessor(self.core_config, self.settings.open_store(p))
                for p in partitions
            }
            await restore(
                self.settings.kafka,
                self.changelog,
                fresh,
                read_committed=self.eos,
                metrics=self.metrics,
            )
            self.processors.update(fresh)
            self._update_state_gauges()
            gc.freeze()
        finally:
            self.health.restoring = False

    # -- the hot path ----------------------------------------------------------------------

    def _sender(self, partition: int, senders: dict[int, BatchSender]) -> BatchSender:
        key = partition if self.eos else -1
        sender = senders.get(key)
        if sender is None:
            producer = self._txn_producers[partition] if self.eos else self._producer
            assert producer is not None
            sender = senders[key] = BatchSender(producer)
        return sender

    async def _process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        started_mono = time.monotonic()
        started = time.perf_counter()
        wall = now_ms()
        s = self.settings
        m = self.metrics
        senders: dict[int, BatchSender] = {}
        offsets: dict[int, int] = {}
        newest_append = 0
        consumed = invalid = late_count = duplicates = 0
        for tp, records in batches.items():
            p = tp.partition
            processor = self.processors.get(p)
            if processor is None or not records:
                continue
            sender = self._sender(p, senders)
            for lo in range(0, len(records), DECODE_CHUNK):
                chunk = records[lo : lo + DECODE_CHUNK]
                invalid_n, late_n, dup_n = self._process_chunk(tp, processor, chunk, sender, wall)
                invalid += invalid_n
                late_count += late_n
                duplicates += dup_n
            offsets[p] = records[-1].offset + 1
            self.uncommitted.fetched(tp, records[0].offset, offsets[p], len(records))
            processor.note_position(offsets[p])
            self._append_changelog(sender, p, processor)
            consumed += len(records)
            last_ts = records[-1].timestamp
            if last_ts > newest_append:
                newest_append = last_ts
        await self._commit(senders, offsets)
        self.last_work = time.monotonic()
        st = self.stats
        st.consumed += consumed
        st.invalid += invalid
        st.late += late_count
        st.duplicates += duplicates
        st.batches += 1
        st.last_batch_at = time.monotonic()
        if not st.first_batch_at:
            st.first_batch_at = started_mono
        m.consumed.labels(s.input_topic).inc(consumed)
        m.invalid.inc(invalid)
        m.dlq_writes.inc(invalid)
        m.late.inc(late_count)
        m.duplicates.inc(duplicates)
        m.produced.labels(s.dlq_topic).inc(invalid)
        m.produced.labels(s.late_topic).inc(late_count)
        m.batch_size.observe(consumed)
        m.batch_seconds.observe(time.perf_counter() - started)
        if newest_append:
            m.emit_latency.labels("append").observe(max(0.0, (now_ms() - newest_append) / 1000))
        self._update_state_gauges()

    def _process_chunk(
        self,
        tp: TopicPartition,
        processor: PartitionProcessor,
        records: list[Any],
        sender: BatchSender,
        wall: int,
    ) -> tuple[int, int, int]:
        """Decode, validate and process consecutive records of one partition; returns the
        numbers of invalid, late and duplicate ones."""
        s = self.settings
        p = tp.partition
        append = sender.append
        max_bytes = s.max_message_bytes
        valid, failures = decode_batch([record.value for record in records], max_bytes)
        sources: list[Any] = records
        if failures:
            dlq_parts = self._partitions[s.dlq_topic]
            for index, reason in failures:
                record = records[index]
                headers = dead_letter_headers(
                    "validate", reason, tp.topic, p, record.offset, wall, record.headers
                )
                append(s.dlq_topic, p % dlq_parts, record.key, record.value, headers=headers)
            rejected = {index for index, _ in failures}
            sources = [record for index, record in enumerate(records) if index not in rejected]
        invalid = len(records) - len(valid)
        if not valid:
            processor.touch(wall)
            return invalid, 0, 0
        outcome = processor.process(valid, wall, records[0].offset)
        if outcome.late:
            late_parts = self._partitions[s.late_topic]
            for index in outcome.late:
                record = sources[index]
                headers = [
                    (HEADER_TOPIC, tp.topic.encode()),
                    (HEADER_PARTITION, str(p).encode()),
                    (HEADER_OFFSET, str(record.offset).encode()),
                ]
                append(s.late_topic, p % late_parts, record.key, record.value, headers=headers)
        self._emit(sender, outcome.emitted, wall)
        return invalid, len(outcome.late), len(outcome.duplicates)

    def _emit(self, sender: BatchSender, emitted: list[dict[str, Any]], wall: int) -> None:
        if not emitted:
            return
        topic = self.settings.output_topic
        parts = self._partitions[topic]
        append = sender.append
        dumps = orjson.dumps
        finals: dict[int, int] = {}  # window end -> finals emitted (they share a latency)
        for result in emitted:
            key = result["key"].encode()
            try:
                value = dumps(result)
            except TypeError:  # an integer beyond 64 bits (see streams.core.jsonbytes)
                value = json_dumps(result)
            append(topic, partition_for(key, parts), key, value)
            if result["final"]:
                end = result["window_end"]
                finals[end] = finals.get(end, 0) + 1
        latency = self.metrics.emit_latency.labels("event_time")
        for end, count in finals.items():
            observe_many(latency, max(0.0, (wall - end) / 1000), count)
        self.stats.emitted += len(emitted)
        self.metrics.produced.labels(topic).inc(len(emitted))

    def _append_changelog(self, sender: BatchSender, p: int, processor: PartitionProcessor) -> None:
        records = processor.drain_changelog()
        if records:
            append = sender.append
            topic = self.changelog
            for key, value in records:
                append(topic, p, key, value)
            self.metrics.produced.labels(topic).inc(len(records))

    async def _commit(self, senders: dict[int, BatchSender], offsets: dict[int, int]) -> None:
        if self.eos:
            # A transaction only where there is something to commit: records or offsets.
            parts = [p for p, sender in senders.items() if sender.records or p in offsets]
            await asyncio.gather(*(self._commit_txn(p, senders[p], offsets.get(p)) for p in parts))
            return
        sender = senders.get(-1)
        if sender is not None:
            try:
                await self._flush_with_backpressure(sender)
            except KafkaError as exc:
                # aiokafka's idempotent producer gives up for good on some errors after a
                # broker crash (e.g. OutOfOrderSequenceNumber). Nothing of this batch counts:
                # a new producer, state from the changelog, input from the committed offsets.
                log.error("output failed (%r); replaying from the committed offsets", exc)
                await self._restart_output()
                return
        if offsets:
            consumer = self._consumer
            assert consumer is not None
            topic = self.settings.input_topic
            tps = {TopicPartition(topic, p): o for p, o in offsets.items()}
            try:
                await consumer.commit(tps)
            except KafkaError as exc:
                # A rebalance (CommitFailedError) or an unreachable coordinator: whoever owns
                # the partitions next resumes from the last committed offsets and re-reads
                # this batch (at-least-once, by design); if that is us, the next commit
                # covers it.
                self.metrics.commit_failures.inc()
                log.warning("offset commit failed (%r); the batch may repeat", exc)
                return
            self.uncommitted.committed(tps)
            self.metrics.commits.inc()

    async def _restart_output(self) -> None:
        """at_least_once: replace the producer, rebuild every partition's state, rewind."""
        kafka = self.settings.kafka
        if self._producer is not None:
            await stop_within(self._producer, CLOSE_TIMEOUT_S)
        while True:
            self._producer = make_producer(kafka, client_id=self.settings.app_id)
            try:
                await start_client(self._producer, kafka)
                break
            except StreamsError as exc:
                log.error("%s; retrying in %.0fs", exc, RETRY_BACKOFF_S)
                await asyncio.sleep(RETRY_BACKOFF_S)
        partitions = set(self.processors)
        self.processors.clear()
        await self._rebuild(partitions)

    async def _rebuild(self, partitions: set[int]) -> None:
        """Rebuild partitions' state from the changelog and rewind them to their committed
        offsets, retrying while the broker is away. Partitions that moved to another worker
        meanwhile are left to it, and a stopping worker rebuilds nothing."""
        consumer = self._consumer
        assert consumer is not None
        topic = self.settings.input_topic
        while True:
            mine = {p for p in partitions if TopicPartition(topic, p) in consumer.assignment()}
            if mine != partitions:
                gone = sorted(partitions - mine)
                log.info("partitions %s are no longer ours; not restoring them", gone)
                partitions = mine
            if not partitions or self.health.stopping:
                return
            try:
                await self._adopt(partitions)
                await self._rewind(partitions)
                return
            except (StreamsError, KafkaError, TimeoutError) as exc:
                # The broker is away: drop what the attempt built, try again when it is back.
                for p in partitions:
                    self.processors.pop(p, None)
                    producer = self._txn_producers.pop(p, None)
                    if producer is not None:
                        await stop_within(producer, CLOSE_TIMEOUT_S)
                log.error(
                    "restoring partitions %s failed (%s); retrying in %.0fs",
                    sorted(partitions),
                    exc,
                    RETRY_BACKOFF_S,
                )
                await asyncio.sleep(RETRY_BACKOFF_S)

    async def _rewind(self, partitions: Iterable[int]) -> None:
        """Seek partitions back to where their restored state stands in the input.

        That is the committed offset; under exactly_once, the position the state recorded in
        its changelog when that is further. A transaction writes both, but right after it
        completes, its changelog can be readable while the group still returns the offset
        before it (the offsets become visible when the transaction's marker reaches the
        offsets topic). Resuming there replayed the transaction's input onto state that
        already held it: seen in CI, as dead letters and late records written twice after a
        broker outage. Under at_least_once the changelog can be ahead of what was delivered,
        so only the committed offset counts.
        """
        consumer = self._consumer
        assert consumer is not None
        for p in partitions:
            tp = TopicPartition(self.settings.input_topic, p)
            if tp not in consumer.assignment():
                continue
            committed = await asyncio.wait_for(consumer.committed(tp), TXN_TIMEOUT_S)
            processor = self.processors.get(p)
            recorded = processor.position if self.eos and processor is not None else None
            if recorded is not None and (committed is None or recorded > committed):
                log.warning(
                    "partition %d: committed offset %s is behind the restored state's %d; "
                    "resuming at %d",
                    p,
                    committed,
                    recorded,
                    recorded,
                )
                committed = recorded
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
            self.uncommitted.forget([tp])

    async def _flush_with_backpressure(self, sender: BatchSender) -> None:
        """Wait for the batch's output; if that is slow, pause fetching until it is through."""
        flush = asyncio.ensure_future(sender.flush())
        done, _ = await asyncio.wait({flush}, timeout=BACKPRESSURE_AFTER_S)
        if done:
            flush.result()
            return
        consumer = self._consumer
        assert consumer is not None
        paused = list(consumer.assignment())
        consumer.pause(*paused)
        self.metrics.paused.set(len(paused))
        log.warning("output is slow: paused %d partitions until it catches up", len(paused))
        try:
            await flush
        finally:
            consumer.resume(*paused)
            self.metrics.paused.set(0)

    async def _commit_txn(self, p: int, sender: BatchSender, offset: int | None) -> None:
        producer = self._txn_producers[p]
        try:
            await asyncio.wait_for(self._transaction(p, producer, sender, offset), TXN_TIMEOUT_S)
        except Exception as exc:
            self.metrics.transactions.labels("aborted").inc()
            if isinstance(exc, TimeoutError):
                log.error(
                    "transaction for partition %d did not finish within %.0fs; restoring its state",
                    p,
                    TXN_TIMEOUT_S,
                )
            else:
                log.error("transaction for partition %d failed (%r); restoring its state", p, exc)
            await self._recover(p, producer)
            return
        self.metrics.transactions.labels("committed").inc()
        self.metrics.commits.inc()
        if offset is not None:
            self.uncommitted.committed({TopicPartition(self.settings.input_topic, p): offset})

    async def _transaction(
        self, p: int, producer: AIOKafkaProducer, sender: BatchSender, offset: int | None
    ) -> None:
        await producer.begin_transaction()
        await sender.flush()
        if offset is not None:
            tp = TopicPartition(self.settings.input_topic, p)
            await producer.send_offsets_to_transaction({tp: offset}, self.settings.app_id)
        await producer.commit_transaction()

    async def _recover(self, p: int, producer: AIOKafkaProducer) -> None:
        """After a failed transaction: drop its producer (whatever it wrote is aborted by the
        next producer of the transactional id), then, if the partition is still ours, rebuild
        its state from the changelog and rewind to its committed offset."""
        self._txn_producers.pop(p, None)
        self.processors.pop(p, None)
        await stop_within(producer, CLOSE_TIMEOUT_S)
        await self._rebuild({p})

    # -- idle partitions -------------------------------------------------------------------

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress[0] < PROGRESS_EVERY_S:
            return
        st = self.stats
        rate = (st.consumed - self._last_progress[1]) / (now - self._last_progress[0])
        log.info(
            "consumed %d (%.0f/s), invalid %d, duplicates %d, late %d, emitted %d; "
            "partitions %s, open windows %d",
            st.consumed,
            rate,
            st.invalid,
            st.duplicates,
            st.late,
            st.emitted,
            sorted(self.processors),
            sum(p.open_windows for p in self.processors.values()),
        )
        self._last_progress = (now, st.consumed)

    async def _tick(self) -> None:
        """Advance idle, caught-up partitions by the wall clock; refresh lag gauges."""
        self._last_tick = time.monotonic()
        self._log_progress()
        if self.health.rebalancing:
            return
        consumer = self._consumer
        assert consumer is not None
        wall = now_ms()
        topic = self.settings.input_topic
        senders: dict[int, BatchSender] = {}
        for p, processor in self.processors.items():
            tp = TopicPartition(topic, p)
            end = self._fresh_end(tp)
            if end is None:
                self._confirmed.discard(p)
                continue
            position = await self._position(tp)
            if position is None:
                continue
            if p not in self._confirmed:
                # Its log end is known again (adopted, or after an outage): the time it was
                # not is no idleness, so the idle timer restarts here.
                self._confirmed.add(p)
                processor.touch(wall)
            self._record_lag(p, position, end)
            emitted = processor.tick(wall, caught_up=position >= end)
            sender = self._sender(p, senders)
            self._emit(sender, emitted, wall)
            self._append_changelog(sender, p, processor)
            if emitted:
                self.last_work = time.monotonic()
        if any(s.records for s in senders.values()):
            await self._commit(senders, {})

    async def _idle_for(self, seconds: float) -> bool:
        """True when assigned, caught up, every window emitted, and nothing was consumed or
        emitted for ``seconds``.

        Windows close by idle advance once the input stops (stream time follows the wall
        clock), so a worker waiting to exit lets the last ones close: up to window size +
        grace after the last event for live event times, one idle timeout for past ones.
        """
        now = time.monotonic()
        if not self.assigned.is_set() or self.health.rebalancing or now - self.last_work < seconds:
            return False
        if any(processor.open_windows for processor in self.processors.values()):
            return False
        idle_turn = self.settings.idle_timeout_ms / 1000 + 2 * TICK_INTERVAL_S
        if self.stats.last_batch_at and now - self.stats.last_batch_at < idle_turn:
            return False
        consumer = self._consumer
        assert consumer is not None
        for p in self.processors:
            tp = TopicPartition(self.settings.input_topic, p)
            end = self._fresh_end(tp)
            position = await self._position(tp)
            if end is None or position is None or position < end:
                return False
        return True

    def _fresh_end(self, tp: TopicPartition) -> int | None:
        """The partition's log end (its last stable offset under exactly_once), if a fetch
        response reported it within FRESH_END_S; else None.

        Without a broker no response comes, and the last end known stays put: every partition
        looked caught up and idle, so the idle advance closed every open window early (later
        events then late) and --exit-when-idle exited with the input unread (seen in CI, a
        broker SIGKILLed under an at_least_once worker).
        """
        consumer = self._consumer
        assert consumer is not None
        try:
            polled = consumer.last_poll_timestamp(tp)
        except AssertionError:  # not assigned (a rebalance)
            return None
        if polled is None or now_ms() - polled > FRESH_END_S * 1000:
            return None
        return consumer.last_stable_offset(tp) if self.eos else consumer.highwater(tp)

    async def _position(self, tp: TopicPartition) -> int | None:
        """The consumer's position, or None if it is not known right now.

        ``AIOKafkaConsumer.position`` waits until a position is valid, which during a rebalance
        only happens after ``on_partitions_assigned`` returns; waiting here, with the lock held,
        would deadlock with that callback. So the wait is short, and a miss is skipped.
        """
        consumer = self._consumer
        assert consumer is not None
        try:
            return await asyncio.wait_for(consumer.position(tp), POSITION_WAIT_S)
        except (TimeoutError, AssertionError, KafkaError):
            return None

    def _record_lag(self, p: int, position: int, end: int) -> None:
        history = self._heads.get(p)
        if history is None:
            history = self._heads[p] = HeadHistory(max_points=120)
        wall = time.time()
        history.add(end, wall)
        labels = (self.settings.input_topic, str(p))
        self.metrics.lag.labels(*labels).set(max(0, end - position))
        seconds = estimate_time_lag(history, position, end, wall).seconds
        if seconds is not None:
            self.metrics.lag_seconds.labels(*labels).set(seconds)

    def _forget_lag(self, p: int) -> None:
        self._heads.pop(p, None)
        labels = (self.settings.input_topic, str(p))
        for gauge in (self.metrics.lag, self.metrics.lag_seconds):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)

    def _update_state_gauges(self) -> None:
        procs = self.processors.values()
        self.metrics.open_windows.set(sum(p.open_windows for p in procs))
        self.metrics.dedupe_ids.set(sum(p.dedupe_size for p in procs))
