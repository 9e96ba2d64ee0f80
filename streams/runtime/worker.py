"""The poll loop: fetch a batch, run it through the partitions' tasks, commit, repeat.

One fetched batch per partition goes through a synchronous loop per chunk (decode and
validate, then every pipeline segment reading the topic, compiled), and its results are
appended to record batches and sent together; nothing on this path creates a task or awaits
per message (an ``async`` batch function is awaited once per chunk). Then the committer
commits the batch under the app's guarantee. Between batches the loop takes a step of
adopting newly assigned partitions (their state restored a bounded step at a time, so the
loop keeps polling), advances idle partitions' stream time by the wall clock, and refreshes
lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError

from streams import compat
from streams.broker.admin import delete_records, start_client, stop_within, topic_limits
from streams.broker.batches import Refused
from streams.broker.records import RawRecordsConsumer
from streams.broker.uncommitted import Uncommitted
from streams.config import Settings
from streams.core.outcome import Outcome
from streams.core.segment import SegmentTask
from streams.errors import StreamsError
from streams.runtime import topics
from streams.runtime.calls import drive
from streams.runtime.collector import Collector, now_ms
from streams.runtime.committer import AtLeastOnce, Batch, Committer, ExactlyOnce
from streams.runtime.formats import register_outputs, registry_for
from streams.runtime.health import Health, RunStats
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.positions import Positions
from streams.runtime.processing import compile_plan, drain_partition, run_partition
from streams.runtime.purger import RepartitionPurger
from streams.runtime.tables import Tables
from streams.runtime.tasks import TaskManager
from streams.topology.plan import Plan

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 0.5
PROGRESS_EVERY_S = 10.0
CLOSE_TIMEOUT_S = 10.0
# How long a client may take to connect (streams.broker.admin.start_client's default).
CLIENT_START_S = 20.0
FETCH_TIMEOUT_MS = 200
MAX_RECORDS = 20_000
# An open batch is submitted once it holds this many records, whatever its age.
MAX_OPEN_RECORDS = 100_000


class _OpenBatch:
    """Fetches processed into one batch that is not committed yet (see ``Worker._process``):
    what its commit covers and reports."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.opened = time.monotonic()
        self.offsets: dict[TopicPartition, int] = {}
        self.consumed: dict[str, int] = {}
        self.fetches = 0
        self.newest_append = 0
        # The age of its first fetch's oldest record when the loop took it (ms), the loop's
        # time spent on it (s), and when its first fetch was processed (time.monotonic()):
        # its fetch_wait and process phases and the start of its queue phase.
        self.fetch_wait_ms = -1
        self.busy = 0.0
        self.ready = 0.0
        # Kept open only because the commit before it was under way: submitted when that
        # commit lands (see Worker._process).
        self.waiting = False

    @property
    def records(self) -> int:
        """Records processed into the batch."""
        return sum(self.consumed.values())


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._worker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._worker.on_assigned(set(assigned))


class Worker:
    """Runs every pipeline of a planned app for the partitions this member is assigned."""

    def __init__(
        self, settings: Settings, plan: Plan, metrics: WorkerMetrics, health: Health
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.metrics = metrics
        self.health = health
        metrics.ready.set_function(lambda: float(health.ready()))
        # Fetched and not yet committed: what a stop now leaves to the next owner.
        self.uncommitted = Uncommitted()
        metrics.buffered.set_function(self.uncommitted.total)
        self.stats = RunStats()
        self.eos = settings.guarantee == "exactly_once"
        self.assigned = asyncio.Event()
        self.last_work = time.monotonic()
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._committer: Committer | None = None
        self._collector: Collector | None = None
        self._tasks: TaskManager | None = None
        self._tables = Tables(settings.kafka, plan.tables, metrics, read_committed=self.eos)
        self._layout: topics.TopicLayout | None = None
        self._last_tick = 0.0
        self._last_progress = (time.monotonic(), 0)
        self._positions: Positions | None = None
        # Partitions whose log end was fresh at the last tick (see _tick).
        self._confirmed: set[TopicPartition] = set()
        self._stop_requested = False
        # The commit of the last batch, running while the next one is processed.
        self._inflight: asyncio.Future[set[TopicPartition]] | None = None
        # Submitting an open batch that waited for that commit, once it landed.
        self._landing: asyncio.Future[None] | None = None
        # Fetches processed and not submitted yet (while the input is behind, see _process).
        self._open: _OpenBatch | None = None
        self._commit_interval_s = settings.commit_interval_ms / 1000
        self._processed = 0  # records run through the tasks, committed or not
        self._dlq_of_input = {segment.input: segment.dlq for segment in plan.segments}
        self._dlq_of_input.update(
            (s.right.input, s.right.dlq) for s in plan.segments if s.right is not None
        )
        # A join's inputs are read together: partition p of them is one task, named after
        # the first (one transaction under exactly_once; the same member by range assignment).
        self._task_topic = plan.joined
        self._joins = [s for s in plan.segments if s.right is not None]
        purge_ms = settings.repartition_purge_interval_ms
        self._purger = RepartitionPurger(
            [t.name for t in plan.topics if t.role == "repartition"],
            functools.partial(delete_records, settings.kafka),
            None if purge_ms < 0 else purge_ms / 1000,
        )
        # The schema registry of format="avro"/"json-schema" topics (None: JSON only).
        self._registry = registry_for(plan, settings.schema_registry)
        self._decoders, self._compiled = compile_plan(
            plan,
            settings.max_message_bytes,
            spilled=settings.store == "rocksdb",
            schemas=self._registry,
        )
        metrics.declare(
            [s.name for s in plan.segments], plan.inputs, {s.dlq for s in plan.segments}
        )

    @property
    def positions(self) -> Positions:
        """The consumer's positions and log ends, the lag gauges (after :meth:`start`)."""
        assert self._positions is not None, "start() first"
        return self._positions

    @property
    def tasks(self) -> TaskManager:
        """The partition tasks (after :meth:`start`)."""
        assert self._tasks is not None, "start() first"
        return self._tasks

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create missing topics, load tables, start the clients, join the consumer group."""
        compat.check()
        # Window and dedupe state is large, long-lived and free of reference cycles: full
        # collections over it are pure pause (hundreds of ms with a million keys). Collect
        # young objects often and the old generation rarely; restored state is frozen.
        gc.set_threshold(50_000, 50, 1_000)
        s = self.settings
        kafka = s.kafka
        encoders = (
            {}
            if self._registry is None
            else await asyncio.to_thread(register_outputs, self.plan, self._registry)
        )
        self._layout = layout = await topics.prepare(kafka, self.plan, s.partitions)
        topics.check_copartitioned(self.plan, layout.partitions)
        await self._tables.load()
        self._tasks = TaskManager(
            s,
            self._compiled,
            self._decoders,
            self._tables.data,
            self.metrics,
            read_committed=self.eos,
        )
        self._collector = Collector(
            self.plan,
            layout,
            self.metrics,
            self.stats,
            drained=self._tasks.drained,
            encoders=encoders,
        )
        self._consumer = RawRecordsConsumer(
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
            # Static membership (KIP-345): a member that comes back under its id within the
            # session timeout gets its partitions back without a rebalance of the group.
            group_instance_id=s.group_instance_id,
            heartbeat_interval_ms=max(1_000, s.session_timeout_ms // 5),
            max_poll_interval_ms=300_000,
            # How soon partitions added to the input are noticed (and a deleted topic).
            metadata_max_age_ms=s.metadata_refresh_ms,
            # A join's inputs are co-partitioned: ranges give partition p of both to one
            # member (round robin, the default, would split them).
            partition_assignment_strategy=(
                (RangePartitionAssignor,) if self._joins else (RoundRobinPartitionAssignor,)
            ),
        )
        self._positions = Positions(self._consumer, eos=self.eos, metrics=self.metrics)
        committer_type = ExactlyOnce if self.eos else AtLeastOnce
        self._committer = committer_type(
            s,
            self._consumer,
            self.metrics,
            layout.limits,
            self._purger.committed,
            self._task_of,
            on_written=self._tasks.changelog_written,
        )
        await self._committer.start()
        self._consumer.subscribe(list(self.plan.inputs), listener=_Rebalance(self))
        # start() returns with the first assignment, and a join waits for each member the
        # group still counts, a dead one until its session times out: the default bound
        # failed a worker joining a group with a dead member and a session timeout over 20 s,
        # saying the broker was unreachable.
        await start_client(
            self._consumer, kafka, timeout_s=CLIENT_START_S + s.session_timeout_ms / 1000
        )
        self.health.started = True
        log.info(
            "worker %s started: %s (guarantee=%s, %s)",
            s.app_id,
            "; ".join(
                f"{segment.name}: {segment.input} -> {segment.output}"
                for segment in self.plan.segments
            ),
            s.guarantee,
            f"group instance {s.group_instance_id}"
            if s.group_instance_id
            else "dynamic group membership",
        )

    def _task_of(self, tp: TopicPartition) -> TopicPartition:
        """The task (named after its first input partition) ``tp`` belongs to."""
        topic = self._task_topic.get(tp.topic)
        return tp if topic is None else TopicPartition(topic, tp.partition)

    def request_stop(self) -> None:
        """Ask :meth:`run` to return after the batch in hand (a signal handler)."""
        self._stop_requested = True
        self.health.stopping = True

    async def stop(self) -> None:
        """Leave the group (committed work stays committed) and close every client."""
        self.health.stopping = True
        # Not under the lock: stopping the consumer waits for its coordinator, which may be in
        # a rebalance calling on_revoked/on_assigned, which take the lock (a deadlock, seen).
        # All clients at once, each within CLOSE_TIMEOUT_S: against a broker that does not
        # answer, one deadline in all instead of one per client (six transactional producers
        # took a minute), inside the stop deadline (streams.worker.shutdown). Not under the
        # lock: stopping the consumer waits for its coordinator, which may be in a rebalance
        # calling on_revoked/on_assigned, which take the lock (a deadlock, seen). The run loop
        # has ended, so no batch uses the producers.
        clients: list[Any] = [self._consumer]
        if self._committer is not None:
            clients += self._committer.clients()
        await asyncio.gather(
            *(stop_within(c, CLOSE_TIMEOUT_S) for c in clients if c is not None),
            self._tables.stop(),
            self._purger.close(),
            # Stopped after the last batch settled (run returned): stores get a checkpoint.
            *(
                [self._tasks.close(clean=self._inflight is None and self._open is None)]
                if self._tasks is not None
                else []
            ),
        )

    async def run(
        self, *, exit_when_idle_s: float | None = None, stop_after: int | None = None
    ) -> RunStats:
        """Process until stopped, idle for ``exit_when_idle_s`` s, or ``stop_after`` events."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        while True:
            self.health.last_loop = time.monotonic()
            if self.tasks.adopting:
                await self._adopt()
            # While a restore is under way, the loop only looks at what is fetched already
            # and goes back to it.
            timeout = 0 if self.tasks.restoring else FETCH_TIMEOUT_MS
            batches = await consumer.getmany(timeout_ms=timeout, max_records=MAX_RECORDS)
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
                        # The fetch dies here, before a collection could walk it.
                        batches = {}
                        gc.enable()
                elif self._committing():
                    # Nothing new: an open batch goes when the commit under way lands.
                    if self._open is not None:
                        self._open.waiting = True
                else:
                    await self._submit_open()
                    # Nothing new: let the last batch's commit land (a failed one replays
                    # now, not at the next batch), and checkpoint.
                    if await self._settle():
                        self.tasks.checkpoint(idle=True)
                if time.monotonic() - self._last_tick >= TICK_INTERVAL_S:
                    await self._tick()
                self._purger.maybe_purge()
                if self._stop_requested or (
                    stop_after is not None and self._processed >= stop_after
                ):
                    await self._submit_open()
                    await self._settle(replay=not self._stop_requested)
            if self._stop_requested:
                log.info("stop requested: %s after the last batch", self._leaving())
                return self.stats
            if exit_when_idle_s is not None and await self._idle_for(exit_when_idle_s):
                return self.stats
            if stop_after is not None and self.stats.consumed >= stop_after:
                return self.stats

    def _leaving(self) -> str:
        s = self.settings
        if s.group_instance_id is None:
            return "leaving the group"
        # aiokafka sends no LeaveGroup for a static member (KIP-345), as Kafka's own clients.
        return (
            f"stopping as group instance {s.group_instance_id}: the group keeps its "
            f"partitions for it until its session times out ({s.session_timeout_ms} ms)"
        )

    # -- rebalancing -----------------------------------------------------------------------

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Let the in-flight batch finish (the lock), then set the partitions' tasks aside."""
        self.health.rebalancing = True
        async with self._lock:
            assert self._consumer is not None
            # The batch in flight commits before its partitions go (if it fails, their state
            # is dropped, not kept: whoever owns them next replays it).
            await self._submit_open()
            await self._settle(replay=False)
            await self.tasks.suspend(revoked, self._consumer)
            if self._committer is not None:
                await self._committer.close(revoked)
            for tp in revoked:
                self.positions.forget_lag(tp)
                self._confirmed.discard(tp)
            self.uncommitted.forget(revoked)
            self._purger.forget(revoked)
            self._update_state_gauges()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Note the assignment; new partitions stay paused until the loop has adopted them
        (restoring in this callback would hide its failures: aiokafka swallows them)."""
        self.metrics.rebalances.inc()
        self.metrics.assigned.set(len(assigned))
        async with self._lock:
            await self.tasks.assign(assigned)
            assert self._consumer is not None
            waiting = self.tasks.waiting()
            if waiting:
                self._consumer.pause(*waiting)
            self.health.restoring = self.tasks.adopting
        self.health.rebalancing = False
        self.assigned.set()
        log.info("assigned input partitions %s", _names(assigned))
        if not assigned:
            self._warn_if_input_is_gone()

    async def _adopt(self) -> None:
        """One step of adopting assigned partitions (:meth:`TaskManager.adopt`), with the
        lock held: a rebalance gets in between two steps."""
        consumer = self._consumer
        assert consumer is not None
        async with self._lock:
            adopted = await self.tasks.adopt(
                consumer, self._before_restore, lambda: self.health.stopping
            )
            self.health.restoring = self.tasks.adopting
            if not adopted:
                return
            self._update_state_gauges()
        # Freeze the restored state out of the collector's way, but collect first: garbage
        # in a reference cycle at this moment would be frozen too, and kept for good.
        gc.collect()
        gc.freeze()

    async def _before_restore(self, tps: set[TopicPartition]) -> None:
        """Grow derived topics if the input grew; exactly_once: fence previous owners."""
        layout = self._layout
        assert layout is not None
        if any(tp.partition >= layout.partitions.get(tp.topic, 0) for tp in tps):
            await topics.follow_growth(self.settings.kafka, self.plan, layout.partitions)
        assert self._committer is not None
        await self._committer.open(tps)

    def _warn_if_input_is_gone(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for topic in self.plan.inputs:
            if not consumer.partitions_for_topic(topic):
                log.error(
                    "input topic %s does not exist (deleted?); this worker idles until it is "
                    "created again",
                    topic,
                )

    # -- the hot path ----------------------------------------------------------------------

    async def _process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """Run a fetch through the partitions' tasks into the open batch, send what may
        leave before its commit (at_least_once: its outputs), and submit the batch for
        commit unless the input is behind or the commit before it is still under way: then
        the batch stays open for the next fetch, up to ``STREAMS_COMMIT_INTERVAL_MS`` (like
        Kafka Streams' ``commit.interval.ms``).

        While a full fetch more is waiting past a fetch (the input is behind), its batch
        waits for the next fetch, so a key changed in both writes one changelog record, not
        two, and the commit (offsets; under exactly_once, one transaction per partition) is
        paid once. Otherwise (caught up, or nearly: latency matters) it commits as soon as
        the commit before it has landed: at once, or when that one lands (:meth:`_landed`),
        with every fetch processed meanwhile. The loop never waits for a commit to take the
        next fetch, and a batch that arrives during a commit is committed right after it.
        """
        started = time.monotonic()
        wall = now_ms()
        committer = self._committer
        collector = self._collector
        assert committer is not None
        assert collector is not None
        open_ = self._open
        if open_ is None:
            open_ = self._open = _OpenBatch(committer.batch())
        if open_.fetch_wait_ms < 0:
            oldest = min((r[0].timestamp for r in batches.values() if r), default=wall)
            open_.fetch_wait_ms = max(0, wall - oldest)
        batch = open_.batch
        offsets = open_.offsets
        consumed = open_.consumed
        active = self.tasks.active
        for tp, records in batches.items():
            task = active.get(tp)
            if task is None or not records:
                continue  # not adopted yet: it is re-fetched from where its state stands
            outputs, changelog = batch.senders(tp)
            dlq = self._dlq_of_input[tp.topic]
            await run_partition(
                task, records, wall, collector, outputs, changelog, dlq, drain=False
            )
            offsets[tp] = records[-1].offset + 1
            self.uncommitted.fetched(tp, records[0].offset, offsets[tp], len(records))
            consumed[tp.topic] = consumed.get(tp.topic, 0) + len(records)
            self._processed += len(records)
            last_ts = records[-1].timestamp
            if last_ts > open_.newest_append:
                open_.newest_append = last_ts
        if self._joins:
            await self._drain_joins(batch, wall, {tp.partition for tp in batches})
        open_.fetches += 1
        done = time.monotonic()
        open_.busy += done - started
        open_.ready = open_.ready or done
        await committer.send(batch)
        behind = self._behind(batches)
        if (
            time.monotonic() - open_.opened >= self._commit_interval_s
            or open_.records >= MAX_OPEN_RECORDS
            or self._stop_requested
            or not (behind or self._committing())
        ):
            await self._submit_open()
            # A store due a checkpoint gets it once this batch's commit lands (decision 0017):
            # the one wait for a commit, once per checkpoint interval, with RocksDB only.
            if self.tasks.checkpoint_due() and await self._settle():
                self.tasks.checkpoint()
        else:
            open_.waiting = not behind

    def _committing(self) -> bool:
        """True while the last batch's commit is under way."""
        return self._inflight is not None and not self._inflight.done()

    def _landed(self, _: asyncio.Future[set[TopicPartition]]) -> None:
        """A commit landed: an open batch that waited only for it goes now, without waiting
        for the next fetch."""
        open_ = self._open
        if open_ is not None and open_.waiting and self._landing is None:
            self._landing = asyncio.ensure_future(self._submit_waiting())

    async def _submit_waiting(self) -> None:
        try:
            async with self._lock:
                # The loop may have submitted it meanwhile, or opened another.
                open_ = self._open
                if open_ is not None and open_.waiting:
                    await self._submit_open()
        finally:
            self._landing = None

    async def _drain_joins(self, batch: Batch, wall: int, partitions: set[int]) -> None:
        """After a fetch: each join of these partitions takes its pending events in event
        time order as far as it can (waiting, up to STREAMS_JOIN_WAIT_MS, for a side whose
        records are on the broker and not fetched yet)."""
        collector = self._collector
        assert collector is not None
        for task, segment in self._join_tasks(partitions):
            outcome = await self._drain_join(segment, task.tp.partition, wall)
            outputs, _ = batch.senders(task.tp)
            collector.outcome(outputs, segment, task.tp, (), outcome, wall)

    async def _drain_join(self, segment: SegmentTask, partition: int, wall: int) -> Outcome:
        """A join's pending events, in event time order as far as its sides allow."""
        waiting = await self.positions.not_taken(segment.segment.inputs, partition)
        return await drive(segment.drain_join(wall, waiting, self.settings.join_wait_ms))

    def _join_tasks(self, partitions: set[int] | None = None) -> list[tuple[Any, SegmentTask]]:
        """Each join's segment task (once, with a partition task holding it) of these
        partitions (all with None)."""
        found: dict[int, tuple[Any, SegmentTask]] = {}
        for tp, task in self.tasks.active.items():
            if partitions is not None and tp.partition not in partitions:
                continue
            for segment in task.segments:
                if segment.join is not None and segment.segment.input == tp.topic:
                    found[id(segment)] = (task, segment)
        return list(found.values())

    def _behind(self, batches: dict[TopicPartition, list[Any]]) -> bool:
        """True when at least a full fetch more is waiting past this one in its partitions.
        A live input at a rate the worker keeps up with always has a little more waiting;
        that is not behind: its batches commit at once."""
        return self.positions.waiting_past(batches) >= MAX_RECORDS

    async def _submit_open(self) -> None:
        """Drain the open batch's changelogs (its state stands at its offsets) and submit it
        for commit."""
        open_, self._open = self._open, None
        if open_ is None or not (open_.offsets or open_.batch.by_tp):
            return
        collector = self._collector
        assert collector is not None
        batch = open_.batch
        offsets = open_.offsets
        active = self.tasks.active
        draining = time.monotonic()
        for tp, end in offsets.items():
            task = active.get(tp)
            if task is not None:
                drain_partition(task, end, collector, batch.senders(tp)[1])
        processed = time.monotonic()
        busy = open_.busy + processed - draining
        ready = open_.ready or processed
        fetch_wait = open_.fetch_wait_ms / 1000
        started_mono = open_.opened
        consumed = open_.consumed
        newest_append = open_.newest_append
        fetches = open_.fetches

        def committed(commit_started: float) -> None:
            self.uncommitted.committed(offsets)
            self.last_work = time.monotonic()
            self._update_state_gauges()
            total = sum(consumed.values())
            st = self.stats
            st.consumed += total
            st.batches += fetches
            st.last_batch_at = time.monotonic()
            if not st.first_batch_at:
                st.first_batch_at = started_mono
            m = self.metrics
            for topic, count in consumed.items():
                m.consumed.labels(topic).inc(count)
            m.batch_size.observe(total)
            m.batch_seconds.observe(time.monotonic() - started_mono)
            if newest_append:
                latency = max(0.0, (now_ms() - newest_append) / 1000)
                m.emit_latency.labels("append").observe(latency)
            phase = m.batch_phase
            produced = batch.produced or commit_started
            if fetch_wait >= 0:
                phase.labels("fetch_wait").observe(fetch_wait)
            phase.labels("process").observe(busy)
            phase.labels("queue").observe(max(0.0, commit_started - ready))
            phase.labels("produce").observe(produced - (batch.sent or commit_started))
            phase.labels("commit").observe(time.monotonic() - max(produced, commit_started))

        await self._submit(batch, offsets, committed)

    async def _submit(
        self,
        batch: Batch,
        offsets: dict[TopicPartition, int],
        committed: Callable[[float], None],
    ) -> None:
        """Commit ``batch`` once the one before it is committed, without waiting for it: the
        loop fetches and processes the next batch meanwhile (its I/O overlaps that work).
        A batch processed on state that its predecessor's failed commit voided is dropped:
        the replay re-reads its input. ``committed`` hears when its commit started.

        What the guarantee lets go before the previous batch is committed leaves first
        (at_least_once: the outputs), so a commit in flight does not hold it back."""
        committer = self._committer
        assert committer is not None
        await committer.send(batch)
        if not await self._settle():
            batch.abandon()
            return

        async def commit() -> set[TopicPartition]:
            started = time.monotonic()
            failed = await committer.commit(batch, offsets, lambda: self.health.stopping)
            if not failed:
                committed(started)
            return failed | (set(batch.by_tp) if failed else set())

        self._inflight = asyncio.ensure_future(commit())
        self._inflight.add_done_callback(self._landed)

    async def _settle(self, *, replay: bool = True) -> bool:
        """Wait for the batch in flight; on its failure replay what it covered (with
        ``replay``); False when it failed (everything processed since is void)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return True
        failed = await inflight
        committer = self._committer
        assert committer is not None
        refused, committer.refused = committer.refused, None
        if refused is not None:
            await self._learn(refused)
        if not failed:
            return True
        # The batches processed after it built on the state the replay drops: theirs too.
        failed |= set(self.tasks.active)
        if replay:
            self._replay(failed)
        else:
            for tp in failed:
                self.tasks.active.pop(tp, None)
        return False

    async def _learn(self, refused: Refused) -> None:
        """The broker refused outputs for good: the replay sends the records refused on
        their own to the dead-letter topic, and sizes batches to the topics' limits now."""
        collector = self._collector
        layout = self._layout
        assert collector is not None
        assert layout is not None
        for record in refused.poison():
            collector.known_poison.learn(record.topic, record.key, record.value, record.reason)
        log.error(
            "the broker refused output for good (%s); replaying the batch with the records "
            "refused on their own sent to the dead-letter topic",
            refused,
        )
        written = [
            t.name for t in self.plan.topics if t.role in ("output", "dlq", "late", "repartition")
        ]
        with contextlib.suppress(StreamsError, KafkaError):
            layout.limits.update(await topic_limits(self.settings.kafka, written))

    def _replay(self, tps: set[TopicPartition]) -> None:
        """Drop these partitions' state (it may hold work that was not delivered) and have
        the loop adopt them again: restored from their changelogs, resumed where the state
        stands."""
        manager = self.tasks
        for tp in tps:
            manager.active.pop(tp, None)
        # Rewound to where their state stands: what was fetched is fetched again.
        self.uncommitted.forget(tps)
        assert self._consumer is not None
        mine = {tp for tp in tps if tp in self._consumer.assignment()}
        gone = tps - mine
        if gone:
            log.info("partitions %s are no longer ours; not restoring them", _names(gone))
        if not mine or self.health.stopping:
            return
        manager.pending |= mine - set(manager.restoring)
        self._consumer.pause(*mine)
        self.health.restoring = True

    # -- idle partitions and lag -----------------------------------------------------------

    async def _tick(self) -> None:
        """Advance idle, caught-up partitions by the wall clock; refresh lag gauges."""
        self._last_tick = time.monotonic()
        self._log_progress()
        for compiled in self._compiled.values():
            for each in compiled:
                each.sites.summarise()
        if self.health.rebalancing:
            return
        consumer = self._consumer
        collector = self._collector
        committer = self._committer
        assert consumer is not None
        assert collector is not None
        assert committer is not None
        wall = now_ms()
        produced = False
        # Into the open batch if there is one (it commits these records with its own).
        open_ = self._open
        batch = committer.batch() if open_ is None else open_.batch
        caught_up: dict[TopicPartition, bool] = {}
        for tp, task in list(self.tasks.active.items()):
            end = self.positions.fresh_end(tp)
            if end is None:
                self._confirmed.discard(tp)
                continue
            position = await self.positions.position(tp)
            if position is None:
                continue
            if tp not in self._confirmed:
                # Its log end is known again (adopted, or after an outage): the time it was
                # not is no idleness, so the idle timer restarts here.
                self._confirmed.add(tp)
                for segment in task.segments:
                    segment.touch(wall)
            self.positions.record_lag(tp, position, end)
            caught_up[tp] = position >= end
        for tp, task in list(self.tasks.active.items()):
            if tp not in caught_up:
                continue
            outputs, changelog = batch.senders(tp)
            for segment in task.segments:
                up = caught_up[tp]
                if segment.join is not None:
                    if tp.topic != segment.segment.input:
                        continue  # a join's task ticks once, with its first input
                    up = all(
                        caught_up.get(TopicPartition(topic, tp.partition), False)
                        for topic in segment.segment.inputs
                    )
                    # Its wait for a side's records may be over.
                    drained = await self._drain_join(segment, tp.partition, wall)
                    produced |= bool(drained.outputs)
                    collector.outcome(outputs, segment, tp, (), drained, wall)
                outcome = await drive(segment.tick(wall, caught_up=up))
                if outcome.outputs:
                    produced = True
                    self.last_work = time.monotonic()
                collector.outcome(outputs, segment, tp, (), outcome, wall)
                # A partition in the open batch has its changelog drained with the batch.
                if open_ is None or tp not in open_.offsets:
                    produced |= collector.changelog(changelog, segment, tp.partition) > 0
        if produced and open_ is None:
            await self._submit(batch, {}, lambda _: self._update_state_gauges())

    async def _idle_for(self, seconds: float) -> bool:
        """True when assigned, caught up, every window emitted, and nothing was consumed or
        emitted for ``seconds``.

        Windows close by idle advance once the input stops (stream time follows the wall
        clock), so a worker waiting to exit lets the last ones close: up to window size +
        grace after the last event for live event times, one idle timeout for past ones.
        """
        now = time.monotonic()
        manager = self.tasks
        if (
            not self.assigned.is_set()
            or self.health.rebalancing
            or manager.adopting
            or self._inflight is not None
            or self._open is not None
            or now - self.last_work < seconds
        ):
            return False
        if any(s.open_windows for t in manager.active.values() for s in t.segments):
            return False
        idle_turn = self.settings.idle_timeout_ms / 1000 + 2 * TICK_INTERVAL_S
        if self.stats.last_batch_at and now - self.stats.last_batch_at < idle_turn:
            return False
        consumer = self._consumer
        assert consumer is not None
        for tp in manager.active:
            end = self.positions.fresh_end(tp)
            position = await self.positions.position(tp)
            if end is None or position is None or position < end:
                return False
        return True

    def _update_state_gauges(self) -> None:
        windows: dict[str, int] = {}
        ids: dict[str, int] = {}
        keys: dict[str, int] = {}
        timers: dict[str, int] = {}
        for task in self.tasks.active.values():
            for segment in task.segments:
                name = segment.segment.name
                windows[name] = windows.get(name, 0) + segment.open_windows
                ids[name] = ids.get(name, 0) + segment.dedupe_size
                keys[name] = keys.get(name, 0) + segment.process_keys
                timers[name] = timers.get(name, 0) + segment.timers_pending
        m = self.metrics
        for planned in self.plan.segments:
            name = planned.name
            m.open_windows.labels(name).set(windows.get(name, 0))
            m.dedupe_ids.labels(name).set(ids.get(name, 0))
            m.process_keys.labels(name).set(keys.get(name, 0))
            m.timers_pending.labels(name).set(timers.get(name, 0))

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._last_progress[0] < PROGRESS_EVERY_S:
            return
        st = self.stats
        rate = (st.consumed - self._last_progress[1]) / (now - self._last_progress[0])
        log.info(
            "consumed %d (%.0f/s), invalid %d, duplicates %d, late %d, failed %d, emitted %d; "
            "partitions %s, open windows %d",
            st.consumed,
            rate,
            st.invalid,
            st.duplicates,
            st.late,
            st.failed,
            st.emitted,
            _names(self.tasks.active),
            sum(s.open_windows for t in self.tasks.active.values() for s in t.segments),
        )
        self._last_progress = (now, st.consumed)


def _names(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)) or "none"
