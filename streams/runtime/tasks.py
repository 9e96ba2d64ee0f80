"""Which input partitions this worker owns, and the task that runs each one.

A :class:`PartitionTask` is one assigned input partition (Kafka Streams' ``StreamTask``):
the decoder of its topic and one :class:`~streams.core.segment.SegmentTask` per pipeline
segment reading that topic. The :class:`TaskManager` creates tasks when partitions are
assigned and drops them when they are gone, and in between:

- **adoption happens in the poll loop, not in the rebalance callback** (aiokafka logs and
  swallows a callback's exceptions, which would leave partitions assigned with no task):
  the callback pauses new partitions; the loop restores their state, retrying with backoff
  while that fails (the worker is not ready meanwhile), seeks them to where their state
  stands and resumes them. No record of a partition is processed before its task is ready.
- **a task survives a rebalance that gives its partition back**: on revocation its
  changelogs' end offsets are noted, and if nobody wrote to them before the partition comes
  back, the task carries on from memory instead of replaying its changelog.
"""

from __future__ import annotations

import asyncio
import logging
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
from streams.runtime.restorer import Restore, restore

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
        positions = [s.position for s in self.segments if s.stateful]
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
        self.read_committed = read_committed
        self.active: dict[TopicPartition, PartitionTask] = {}
        self.suspended: dict[TopicPartition, PartitionTask] = {}
        self.pending: set[TopicPartition] = set()
        # One cache per enrich step per process, shared by the partitions' tasks.
        self._caches: dict[str, dict[int, TtlCache]] = {}
        self.kept = 0

    def _new(self, tp: TopicPartition) -> PartitionTask:
        segments = []
        for compiled in self.compiled[tp.topic]:
            name = compiled.segment.name
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

    # -- the rebalance callbacks ---------------------------------------------------------

    async def suspend(self, tps: Iterable[TopicPartition], consumer: AIOKafkaConsumer) -> None:
        """Partitions were revoked (no batch in flight): keep their tasks aside, with their
        changelogs' end offsets, in case they come back."""
        tasks = [self.active.pop(tp) for tp in tps if tp in self.active]
        self.pending.difference_update(tps)
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

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions were assigned: tasks for those not active are adopted by the loop."""
        assigned = set(tps)
        self.pending = {tp for tp in assigned if tp not in self.active}
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
        on_restoring: Callable[[bool], None],
    ) -> set[TopicPartition]:
        """Make tasks for the pending partitions ready; returns those adopted.

        ``before_restore`` runs first (exactly_once fences the previous owners there).
        Retries until it succeeds, the partitions move away, or the worker stops.
        """
        attempt = 0
        while self.pending and not stopping():
            mine = {tp for tp in self.pending if tp in consumer.assignment()}
            self.pending = mine
            if not mine:
                break
            on_restoring(True)
            try:
                await before_restore(mine)
                tasks = await self._restore(mine, consumer)
                await self._seek(tasks, consumer)
            except StateMismatchError:
                raise
            except (StreamsError, KafkaError, TimeoutError, OSError) as exc:
                attempt += 1
                self.metrics.restore_failures.inc()
                backoff = min(MAX_BACKOFF_S, RETRY_BACKOFF_S * 2 ** min(attempt - 1, 4))
                log.error(
                    "restoring partitions %s failed (%s); retrying in %.0fs (not ready until then)",
                    _names(mine),
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                continue
            finally:
                on_restoring(False)
            for task in tasks:
                self.active[task.tp] = task
            self.pending.clear()
            consumer.resume(*[t.tp for t in tasks])
            return {t.tp for t in tasks}
        return set()

    async def _restore(
        self, tps: set[TopicPartition], consumer: AIOKafkaConsumer
    ) -> list[PartitionTask]:
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
        fresh.extend(self._new(tp) for tp in tps if tp not in {t.tp for t in kept + fresh})
        restores = [
            Restore(s, s.segment.changelog, t.tp.partition)
            for t in fresh
            for s in t.segments
            if s.segment.changelog is not None
        ]
        for task in fresh:
            for s in task.segments:
                if s.segment.changelog is None:
                    s.finish_restore()
        await restore(
            self.settings.kafka,
            restores,
            read_committed=self.read_committed,
            metrics=self.metrics,
            on_state_change=self.settings.on_state_change,
        )
        if kept:
            self.kept += len(kept)
            self.metrics.kept_partitions.inc(len(kept))
            log.info(
                "kept the state of partitions %s across the rebalance (no replay)",
                _names(t.tp for t in kept),
            )
        return kept + fresh

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
