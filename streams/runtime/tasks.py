"""Which input partitions this worker owns, and the task that runs each one.

A :class:`PartitionTask` is one assigned input partition (Kafka Streams' ``StreamTask``):
the decoder of its topic and one :class:`~streams.core.segment.SegmentTask` per pipeline
segment reading that topic. The :class:`TaskManager` creates tasks when partitions are
assigned and drops them when they are gone, and in between:

- **adoption happens in the poll loop, in steps** (aiokafka logs and swallows a rebalance
  callback's exceptions, which would leave partitions assigned with no task; and a restore
  in one piece kept the worker from polling, so a long one dropped it from its group): the
  callback pauses new partitions; each turn of the loop takes one bounded
  :meth:`TaskManager.adopt` step — fence the previous owners and start the restore, replay
  a budget of changelog records (:class:`~streams.runtime.restorer.ChangelogReader`), or,
  once every task of the adoption is whole, seek the partitions to where their state stands
  and resume them. A failure drops the adoption's half-built tasks and starts it over after
  a backoff; the worker is not ready meanwhile. No record of a partition is processed
  before its task is ready, and the partitions of one adoption become ready together.
- **a revocation interrupts an adoption** between two steps: the revoked partitions'
  half-restored tasks are dropped (a partition that comes back is restored from the
  beginning).
- **a task survives a rebalance that gives its partition back**: on revocation its
  changelogs' end offsets are noted, and if nobody wrote to them before the partition comes
  back, the task carries on from memory instead of replaying its changelog.
- **a RocksDB store kept on disk** (STREAMS_STORE=rocksdb) goes with a
  :class:`~streams.runtime.localstate.LocalState`: checked when its task is adopted (reused,
  replaying only the changelog after its checkpoint, or wiped), told what the task drains and
  what is written of it, checkpointed where the worker says everything is committed
  (:meth:`TaskManager.checkpoint`), when its partition is revoked, and when the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.broker.admin import topic_config
from streams.broker.batches import Acked
from streams.config import Settings
from streams.core.changelog import Record
from streams.core.compile import Compiled
from streams.core.enrich import TtlCache
from streams.core.formats import Decoder
from streams.core.segment import SegmentTask
from streams.errors import StateMismatchError, StreamsError
from streams.runtime.localstate import LocalState
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.restorer import ChangelogReader, Restore

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 2.0
MAX_BACKOFF_S = 30.0
POSITION_TIMEOUT_S = 30.0
# Kafka's default delete.retention.ms, for a changelog whose own the broker does not say.
DELETE_RETENTION_MS = 86_400_000


@dataclass
class PartitionTask:
    """One assigned input partition: its topic's decoder and its segments' tasks."""

    tp: TopicPartition
    decoder: Decoder
    segments: list[SegmentTask]
    # Each segment's store kept on disk (None: state in memory, or a temporary store).
    stores: list[LocalState | None] = field(default_factory=list)
    # Changelog end offsets when the task was suspended (a rebalance took the partition).
    suspended_at: dict[TopicPartition, int] = field(default_factory=dict)

    def changelog_tps(self) -> list[TopicPartition]:
        """This task's partition of each of its segments' changelogs."""
        return [
            TopicPartition(s.segment.changelog, self.tp.partition)
            for s in self.segments
            if s.segment.changelog is not None
        ]

    def resume_offset(self, committed: int | None) -> int | None:
        """Where to fetch from: the committed offset, or further if every stateful segment's
        state already stands there (it was written with outputs acknowledged, or in the same
        transaction as them; the group's offset can lag behind, KIP-447)."""
        positions = [s.position_of(self.tp.topic) for s in self.segments if s.stateful]
        if (
            positions
            and all(p is not None for p in positions)
            and all(s.stateful for s in self.segments)
        ):
            ahead = min(p for p in positions if p is not None)
            if committed is None or ahead > committed:
                return ahead
        return committed

    def checkpoint(self) -> None:
        """Checkpoint the stores with records drained since their last checkpoint
        (everything drained must be committed, and nothing processed since)."""
        for local in self.stores:
            if local is not None and local.unmarked:
                local.write_checkpoint()

    def close_stores(self, *, clean: bool) -> None:
        """Close the kept stores (``clean``: with a checkpoint, as :meth:`checkpoint`)."""
        for local in self.stores:
            if local is not None:
                local.close(clean=clean)


class TaskManager:
    """Creates, keeps, restores and drops the worker's partition tasks."""

    def __init__(
        self,
        settings: Settings,
        compiled: Mapping[str, list[Compiled]],
        decoders: Mapping[str, Decoder],
        tables: Mapping[str, Mapping[str, Any]],
        metrics: WorkerMetrics,
        *,
        read_committed: bool,
    ) -> None:
        self.settings = settings
        self.compiled = compiled
        self.decoders = decoders
        self.tables = tables
        self.metrics = metrics
        self.active: dict[TopicPartition, PartitionTask] = {}
        self.suspended: dict[TopicPartition, PartitionTask] = {}
        # Assigned, with no task yet: the next adoption takes them.
        self.pending: set[TopicPartition] = set()
        # The adoption under way: its tasks, kept or being restored by the reader.
        self.restoring: dict[TopicPartition, PartitionTask] = {}
        self.reader = ChangelogReader(
            settings.kafka,
            read_committed=read_committed,
            metrics=metrics,
            on_state_change=settings.on_state_change,
        )
        # One cache per enrich step per process, shared by the partitions' tasks.
        self._caches: dict[str, dict[int, TtlCache]] = {}
        # Tasks made for the adoption under way, while it makes them (joins share).
        self._building: dict[TopicPartition, PartitionTask] = {}
        # Changelog topic -> an input topic and index of the segment it belongs to (a
        # join's is in both its inputs' tasks, with the same store).
        self._changelogs = {
            each.segment.changelog: (topic, n)
            for topic, segments in compiled.items()
            for n, each in enumerate(segments)
            if each.segment.changelog is not None
        }
        self._attempt = 0
        self._retry_at = 0.0
        self.kept = 0

    @property
    def adopting(self) -> bool:
        """True while assigned partitions wait for their tasks (the worker is not ready)."""
        return bool(self.pending or self.restoring)

    def waiting(self) -> set[TopicPartition]:
        """The partitions pending or being adopted: paused until their tasks are ready."""
        return self.pending | set(self.restoring)

    def _new(self, tp: TopicPartition) -> PartitionTask:
        segments = []
        stores: list[LocalState | None] = []
        for compiled in self.compiled[tp.topic]:
            name = compiled.segment.name
            if compiled.segment.right is not None:
                found = self._join_task(compiled, tp)
                if found is not None:  # the partner topic's task made it: one state
                    segments.append(found[0])
                    stores.append(found[1])
                    continue
            caches = self._caches.setdefault(name, {})
            store = None
            if compiled.spilled:
                # A join's store is named after its first input, whichever task opens it.
                store = self.settings.open_store(f"{name}/{compiled.segment.input}-{tp.partition}")
            task = SegmentTask(
                compiled,
                idle_timeout_ms=self.settings.idle_timeout_ms,
                tables=self.tables,
                caches=caches,
                store=store,
            )
            segments.append(task)
            local = None
            changelog = compiled.segment.changelog
            if store is not None and changelog is not None:
                if store.persistent:
                    local = LocalState(
                        store,
                        TopicPartition(changelog, tp.partition),
                        task.stored_fingerprints,
                        self.metrics,
                    )
                    local.open()
                else:
                    self.metrics.local_stores.labels("in_use").inc()
            stores.append(local)
        return PartitionTask(tp, self.decoders[tp.topic], segments, stores)

    def _join_task(
        self, compiled: Compiled, tp: TopicPartition
    ) -> tuple[SegmentTask, LocalState | None] | None:
        """The join's segment task of partition ``tp.partition`` and its store if the task
        of its other input topic has them (adopted, being adopted, or set aside): a join's
        two inputs share one state."""
        segment = compiled.segment
        for topic in segment.inputs:
            if topic == tp.topic:
                continue
            other = TopicPartition(topic, tp.partition)
            for tasks in (self._building, self.restoring, self.active, self.suspended):
                task = tasks.get(other)
                if task is not None:
                    for each, local in zip(task.segments, task.stores, strict=True):
                        if each.compiled is compiled:
                            return each, local
        return None

    # -- the rebalance callbacks ---------------------------------------------------------

    async def suspend(self, tps: Iterable[TopicPartition], consumer: AIOKafkaConsumer) -> None:
        """Partitions were revoked (no batch in flight): keep their tasks aside, with their
        changelogs' end offsets, in case they come back; an adoption under way loses them."""
        revoked = set(tps)
        tasks = [self.active.pop(tp) for tp in revoked if tp in self.active]
        self.pending -= revoked
        interrupted = revoked & set(self.restoring)
        if interrupted:
            log.info("the rebalance interrupts the adoption of partitions %s", _names(interrupted))
            await self._leave_adoption(interrupted)
        for task in tasks:
            task.checkpoint()
        changelogs = [ctp for task in tasks for ctp in task.changelog_tps()]
        ends: dict[TopicPartition, int] = {}
        if changelogs:
            try:
                ends = await asyncio.wait_for(consumer.end_offsets(changelogs), 10.0)
            except (KafkaError, TimeoutError) as exc:
                log.info("changelog end offsets unknown (%r): revoked state will be replayed", exc)
                for task in tasks:
                    task.close_stores(clean=True)
                return
        for task in tasks:
            task.suspended_at = {ctp: ends[ctp] for ctp in task.changelog_tps()}
            self.suspended[task.tp] = task

    async def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions were assigned: tasks for those not active are adopted by the loop."""
        assigned = set(tps)
        await self._leave_adoption(set(self.restoring) - assigned)
        self.pending = assigned - set(self.active) - set(self.restoring)
        for tp in [tp for tp in self.active if tp not in assigned]:
            self.active.pop(tp).close_stores(clean=False)
        for tp in [tp for tp in self.suspended if tp not in assigned]:
            # Checkpointed when suspended, untouched since.
            self.suspended.pop(tp).close_stores(clean=True)

    # -- adoption (in the poll loop) -----------------------------------------------------

    async def adopt(
        self,
        consumer: AIOKafkaConsumer,
        before_restore: Callable[[set[TopicPartition]], Any],
        stopping: Callable[[], bool],
    ) -> set[TopicPartition]:
        """One bounded step of adopting the pending partitions; returns those whose tasks
        became active (seeked to where their state stands, resumed).

        The first step runs ``before_restore`` (exactly_once fences the previous owners
        there), sets kept tasks aside for the adoption and starts the restore of the others;
        each next step replays a budget of changelog records; the step after the last
        record seeks and resumes every partition of the adoption. A failure drops the
        adoption and retries it after a backoff (steps meanwhile do nothing), until it
        succeeds, the partitions move away, or the worker stops.
        """
        if stopping() or time.monotonic() < self._retry_at:
            return set()
        try:
            if not self.restoring:
                await self._start(consumer, before_restore)
            await self.reader.step()
            if not self.reader.done:
                return set()
            tasks = list(self.restoring.values())
            await self._seek(tasks, consumer)
        except StateMismatchError:
            raise
        except (StreamsError, KafkaError, TimeoutError, OSError) as exc:
            await self._retry_later(exc)
            return set()
        self.restoring = {}
        self._attempt = 0
        for task in tasks:
            self.active[task.tp] = task
        consumer.resume(*[t.tp for t in tasks])
        return {t.tp for t in tasks}

    async def close(self, *, clean: bool = False) -> None:
        """Drop an adoption under way and close every store (the worker stops); ``clean``:
        every batch is committed, so the active tasks' stores are checkpointed first."""
        await self.reader.close()
        for task in self.restoring.values():
            task.close_stores(clean=False)
        for task in self.active.values():
            task.close_stores(clean=clean)
        for task in self.suspended.values():
            task.close_stores(clean=True)

    # -- local stores (the worker's and the committer's calls) ---------------------------

    def drained(
        self, task: SegmentTask, partition: int, sender: object, records: list[Record]
    ) -> None:
        """``task`` (of input partition ``partition``) drained these changelog records into
        ``sender``."""
        owner = self.active.get(TopicPartition(task.segment.input, partition))
        if owner is None:
            return
        for segment, local in zip(owner.segments, owner.stores, strict=True):
            if segment is task and local is not None:
                local.drained(records, sender)

    def changelog_written(self, sender: object, acked: Mapping[tuple[str, int], Acked]) -> None:
        """The records ``sender`` held are written for good: each (topic, partition)'s up to
        where noted."""
        for (topic, partition), done in acked.items():
            where = self._changelogs.get(topic)
            if where is None:
                continue
            owner = self.active.get(TopicPartition(where[0], partition))
            if owner is not None:
                local = owner.stores[where[1]]
                if local is not None:
                    local.written(done, sender)

    def checkpoint_due(self) -> bool:
        """Whether a store under load is due a checkpoint (the worker then waits for its
        commit and calls :meth:`checkpoint`)."""
        now = time.monotonic()
        return any(
            local.due(now, idle=False)
            for task in self.active.values()
            for local in task.stores
            if local is not None
        )

    def checkpoint(self, *, idle: bool = False) -> None:
        """Everything drained is committed and nothing processed since: checkpoint the stores
        that drained records since their last checkpoint (``idle``: those due one)."""
        now = time.monotonic()
        for task in self.active.values():
            for local in task.stores:
                if local is not None and (local.due(now, idle=True) if idle else local.unmarked):
                    local.write_checkpoint()

    async def _start(
        self,
        consumer: AIOKafkaConsumer,
        before_restore: Callable[[set[TopicPartition]], Any],
    ) -> None:
        mine = {tp for tp in self.pending if tp in consumer.assignment()}
        self.pending = mine
        if not mine:
            return
        await before_restore(mine)
        kept, fresh = await self._tasks_for(mine, consumer)
        self.restoring = {t.tp: t for t in kept + fresh}
        self.pending = set()
        locals_ = {id(local): local for t in fresh for local in t.stores if local is not None}
        await self._expire(list(locals_.values()))
        restores = []
        seen: set[int] = set()  # a join's segment task is in two partitions' tasks
        kept_segments = {id(s) for t in kept for s in t.segments}
        for t in fresh:
            for s, local in zip(t.segments, t.stores, strict=True):
                if id(s) in seen or id(s) in kept_segments:
                    continue
                seen.add(id(s))
                if s.segment.changelog is None:
                    s.finish_restore()
                else:
                    changelog = TopicPartition(s.segment.changelog, t.tp.partition)
                    restores.append(Restore(s, changelog, t.tp, local))
        await self.reader.start(restores)

    async def _expire(self, stores: list[LocalState]) -> None:
        """Wipe the stores whose checkpoint is older than their changelog's
        ``delete.retention.ms``."""
        candidates = [local for local in stores if local.checkpoint is not None]
        if not candidates:
            return
        topics = {local.changelog.topic for local in candidates}
        retention = await topic_config(self.settings.kafka, topics, "delete.retention.ms")
        now_ms = time.time_ns() // 1_000_000
        for local in candidates:
            local.expire(int(retention.get(local.changelog.topic, DELETE_RETENTION_MS)), now_ms)

    async def _retry_later(self, exc: BaseException) -> None:
        """The adoption failed: it starts over after a backoff."""
        self.pending |= set(self.restoring)
        await self._leave_adoption(set(self.restoring))
        self._attempt += 1
        self.metrics.restore_failures.inc()
        backoff = min(MAX_BACKOFF_S, RETRY_BACKOFF_S * 2 ** min(self._attempt - 1, 4))
        self._retry_at = time.monotonic() + backoff
        log.error(
            "restoring partitions %s failed (%s); retrying in %.0fs (not ready until then)",
            _names(self.pending),
            exc,
            backoff,
        )

    async def _leave_adoption(self, tps: set[TopicPartition]) -> None:
        """These partitions leave the adoption under way: the tasks it kept go back aside as
        they were (their state untouched), the others are dropped (half-restored)."""
        left = [self.restoring.pop(tp) for tp in tps if tp in self.restoring]
        await self.reader.cancel(tps)
        for task in left:
            if task.suspended_at:
                self.suspended[task.tp] = task
            else:
                task.close_stores(clean=False)

    async def _tasks_for(
        self, tps: set[TopicPartition], consumer: AIOKafkaConsumer
    ) -> tuple[list[PartitionTask], list[PartitionTask]]:
        """Tasks kept from before the rebalance (their changelogs unchanged since), and
        fresh ones to restore."""
        kept: list[PartitionTask] = []
        fresh: list[PartitionTask] = []
        candidates = [self.suspended.pop(tp) for tp in tps if tp in self.suspended]
        if candidates:
            changelogs = [ctp for task in candidates for ctp in task.changelog_tps()]
            ends = (
                await asyncio.wait_for(consumer.end_offsets(changelogs), 10.0) if changelogs else {}
            )
            for task in candidates:
                if task.suspended_at and all(
                    ends.get(ctp) == offset for ctp, offset in task.suspended_at.items()
                ):
                    kept.append(task)
                else:
                    # Checkpointed when suspended: its stores replay what was written since.
                    task.close_stores(clean=True)
                    fresh.append(self._new(task.tp))
        self._building = {t.tp: t for t in kept + fresh}
        for tp in sorted(tps - set(self._building), key=lambda tp: (tp.partition, tp.topic)):
            self._building[tp] = task = self._new(tp)
            fresh.append(task)
        self._building = {}
        if kept:
            self.kept += len(kept)
            self.metrics.kept_partitions.inc(len(kept))
            log.info(
                "kept the state of partitions %s across the rebalance (no replay)",
                _names(t.tp for t in kept),
            )
        return kept, fresh

    async def _seek(self, tasks: list[PartitionTask], consumer: AIOKafkaConsumer) -> None:
        for task in tasks:
            committed = await asyncio.wait_for(consumer.committed(task.tp), POSITION_TIMEOUT_S)
            offset = task.resume_offset(committed)
            if offset is not None and committed is not None and offset > committed:
                log.info(
                    "partition %s: resuming at %d, where its state stands (the group's "
                    "committed offset %d lags behind)",
                    _name(task.tp),
                    offset,
                    committed,
                )
            if offset is None:
                await consumer.seek_to_beginning(task.tp)
            else:
                consumer.seek(task.tp, offset)


def _name(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"


def _names(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(_name(tp) for tp in tps))
