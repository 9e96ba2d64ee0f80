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

from streams.config import Settings
from streams.core.compile import Compiled
from streams.core.decode import TopicDecoder
from streams.core.enrich import TtlCache
from streams.core.segment import SegmentTask
from streams.errors import StateMismatchError, StreamsError
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.restorer import ChangelogReader, Restore

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 2.0
MAX_BACKOFF_S = 30.0
POSITION_TIMEOUT_S = 30.0


@dataclass
class PartitionTask:
    """One assigned input partition: its topic's decoder and its segments' tasks."""

    tp: TopicPartition
    decoder: TopicDecoder
    segments: list[SegmentTask]
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


class TaskManager:
    """Creates, keeps, restores and drops the worker's partition tasks."""

    def __init__(
        self,
        settings: Settings,
        compiled: Mapping[str, list[Compiled]],
        decoders: Mapping[str, TopicDecoder],
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
        for compiled in self.compiled[tp.topic]:
            name = compiled.segment.name
            if compiled.segment.right is not None:
                shared = self._join_task(compiled, tp)
                if shared is not None:  # the partner topic's task made it: one state
                    segments.append(shared)
                    continue
            caches = self._caches.setdefault(name, {})
            store = None
            if compiled.spilled:
                store = self.settings.open_store(f"{name}/{tp.topic}-{tp.partition}")
            segments.append(
                SegmentTask(
                    compiled,
                    idle_timeout_ms=self.settings.idle_timeout_ms,
                    tables=self.tables,
                    caches=caches,
                    store=store,
                )
            )
        return PartitionTask(tp, self.decoders[tp.topic], segments)

    def _join_task(self, compiled: Compiled, tp: TopicPartition) -> SegmentTask | None:
        """The join's segment task of partition ``tp.partition`` if the task of its other
        input topic has it (adopted, being adopted, or set aside): a join's two inputs share
        one state."""
        segment = compiled.segment
        for topic in segment.inputs:
            if topic == tp.topic:
                continue
            other = TopicPartition(topic, tp.partition)
            for tasks in (self._building, self.restoring, self.active, self.suspended):
                task = tasks.get(other)
                if task is not None:
                    for each in task.segments:
                        if each.compiled is compiled:
                            return each
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
        changelogs = [ctp for task in tasks for ctp in task.changelog_tps()]
        ends: dict[TopicPartition, int] = {}
        if changelogs:
            try:
                ends = await asyncio.wait_for(consumer.end_offsets(changelogs), 10.0)
            except (KafkaError, TimeoutError) as exc:
                log.info("changelog end offsets unknown (%r): revoked state will be replayed", exc)
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
            del self.active[tp]
        for tp in [tp for tp in self.suspended if tp not in assigned]:
            del self.suspended[tp]

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

    async def close(self) -> None:
        """Drop an adoption under way (the worker stops)."""
        await self.reader.close()

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
        restores = []
        seen: set[int] = set()  # a join's segment task is in two partitions' tasks
        kept_segments = {id(s) for t in kept for s in t.segments}
        for t in fresh:
            for s in t.segments:
                if id(s) in seen or id(s) in kept_segments:
                    continue
                seen.add(id(s))
                if s.segment.changelog is None:
                    s.finish_restore()
                else:
                    changelog = TopicPartition(s.segment.changelog, t.tp.partition)
                    restores.append(Restore(s, changelog, t.tp))
        await self.reader.start(restores)

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
