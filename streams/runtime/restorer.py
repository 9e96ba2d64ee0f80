"""Changelog-backed state: segment tasks rebuilt by replaying their changelog partitions.

A changelog is compacted and co-partitioned with its segment's input: the state of input
partition ``p`` lives in partition ``p`` of the changelog. A task adopted by a worker (at
start, after a crash, in a rebalance) replays that partition from the beginning before it
processes a single input record; or, when it has a RocksDB store kept on disk with a
checkpoint (:mod:`streams.runtime.localstate`), only the records after the checkpoint: the
first record read must be the one the checkpoint follows, else the store is wiped and the
restore starts over from the beginning.

The :class:`ChangelogReader` (Kafka Streams' ``StoreChangelogReader``) replays in steps: the
worker calls :meth:`~ChangelogReader.step` once per turn of its poll loop, and each step
applies a bounded number of records (or runs for a bounded time) and returns. So however
long a restore takes, the worker keeps polling (its group keeps it as a member) and a
rebalance gets in between two steps (:meth:`~ChangelogReader.cancel` drops the restores of
revoked partitions). A step that fails (the broker away, a record that cannot be applied, no
progress for ``STALL_TIMEOUT_S``) raises; the task manager starts the adoption over with
backoff, and the worker is not ready meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.broker.admin import stop_within
from streams.broker.reading import bulk_reader
from streams.config import KafkaSettings
from streams.core.segment import SegmentTask
from streams.errors import BrokerError, RestoreError
from streams.runtime.localstate import LocalState
from streams.runtime.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# One step: at most this many records, or this long (the loop's other work waits meanwhile).
STEP_RECORDS = 50_000
STEP_SECONDS = 0.1
# Records taken per fetch within a step (the time budget is checked between fetches).
FETCH_RECORDS = 10_000
# A restore that applies nothing for this long fails (and is started over).
STALL_TIMEOUT_S = 600.0
POSITION_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0


@dataclass
class Restore:
    """One segment task to rebuild from one changelog partition, for the task of input
    partition ``owner``; ``local``: the task's store kept on disk, if it has one."""

    task: SegmentTask
    changelog: TopicPartition
    owner: TopicPartition
    local: LocalState | None = None
    # The changelog's end when the restore started: the restore is whole there.
    end: int = 0
    # Reading from a checkpoint: its record is still to be checked.
    verifying: bool = False


class ChangelogReader:
    """Replays changelog partitions into their tasks, a bounded step at a time.

    :meth:`start` a set of restores, call :meth:`step` until :attr:`done`; each restore's
    task gets its fingerprint check (:meth:`~streams.core.segment.SegmentTask.finish_restore`)
    as soon as its changelog is read to the end. :meth:`cancel` drops restores, :meth:`close`
    drops them all.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        read_committed: bool,
        metrics: WorkerMetrics,
        on_state_change: str,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        self._kafka = kafka
        self._read_committed = read_committed
        self._metrics = metrics
        self._on_state_change = on_state_change
        self._stall_timeout_s = stall_timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        # In progress, by changelog partition.
        self._restores: dict[TopicPartition, Restore] = {}
        self._started = 0.0
        self._progress_at = 0.0
        self._applied = 0
        self._count = 0
        self._reused = 0
        self._topics: set[str] = set()

    @property
    def done(self) -> bool:
        """True when no restore is in progress."""
        return not self._restores

    async def start(self, restores: Sequence[Restore]) -> None:
        """Begin replaying ``restores`` (nothing may be in progress): each changelog partition
        from its beginning, or its store's checkpoint, to its end as of now. A restore with
        nothing to replay is finished here."""
        assert self.done, "a restore is in progress"
        self._started = self._progress_at = time.monotonic()
        self._applied = 0
        self._reused = 0
        self._count = len(restores)
        self._topics = {r.changelog.topic for r in restores}
        if not restores:
            return
        consumer = self._consumer = await bulk_reader(
            self._kafka, read_committed=self._read_committed
        )
        tps = [r.changelog for r in restores]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        remaining = 0
        for r in restores:
            tp = r.changelog
            r.end = ends[tp]
            start = begins[tp]
            if r.local is not None:
                resume = r.local.resume_at(begins[tp], ends[tp])
                if resume is not None:
                    consumer.seek(tp, resume)
                    start = resume
                    r.verifying = True
            if ends[tp] > start:
                self._restores[tp] = r
                remaining += ends[tp] - start
            else:
                self._finish(r)
        self._metrics.restore_remaining.set(remaining)
        if self.done:
            await self._complete()

    async def step(
        self, max_records: int = STEP_RECORDS, max_seconds: float = STEP_SECONDS
    ) -> None:
        """Apply up to ``max_records`` changelog records, fetching for up to ``max_seconds``;
        finish the restores that reach their end."""
        consumer = self._consumer
        if consumer is None or self.done:
            return
        deadline = time.monotonic() + max_seconds
        applied = 0
        while not self.done and applied < max_records:
            wait_ms = int((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                break
            batches = await consumer.getmany(
                *self._restores,
                timeout_ms=wait_ms,
                max_records=min(FETCH_RECORDS, max_records - applied),
            )
            for tp, records in batches.items():
                r = self._restores[tp]
                if r.verifying and not await self._verified(consumer, r, records[0]):
                    continue
                _apply(r, records)
                if r.local is not None:
                    r.local.replayed(records)
                applied += len(records)
                self._metrics.restored.inc(len(records))
            # Also without records: a transaction's end marker moves the position alone.
            await self._finish_read(consumer)
            if not batches:
                break
        now = time.monotonic()
        if applied:
            self._applied += applied
            self._progress_at = now
        elif not self.done and now - self._progress_at > self._stall_timeout_s:
            raise BrokerError(
                f"restoring state from {sorted(self._topics)} made no progress for "
                f"{self._stall_timeout_s:.0f}s; check the broker"
            )
        if self.done:
            await self._complete()

    async def cancel(self, owners: Iterable[TopicPartition]) -> None:
        """Drop the restores of these input partitions' tasks (revoked: half-restored tasks
        are of no use)."""
        owners = set(owners)
        dropped = [tp for tp, r in self._restores.items() if r.owner in owners]
        for tp in dropped:
            del self._restores[tp]
        if self._consumer is not None and dropped:
            self._consumer.pause(*dropped)
        if self.done:
            await self.close()

    async def close(self) -> None:
        """Drop every restore in progress and close the changelog consumer."""
        self._restores.clear()
        self._metrics.restore_remaining.set(0)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_within(consumer, CLOSE_TIMEOUT_S)

    async def _verified(self, consumer: AIOKafkaConsumer, r: Restore, first: Any) -> bool:
        """The first record read after a checkpoint: the store is taken up if it is the one
        the checkpoint follows (True); else wiped, and its restore starts over."""
        assert r.local is not None
        r.verifying = False
        if first is not None and r.local.verify(first):
            r.local.reopen(r.task)
            self._reused += 1
            return True
        await consumer.seek_to_beginning(r.changelog)
        return False

    async def _finish_read(self, consumer: AIOKafkaConsumer) -> None:
        """Finish the restores whose changelog is read to its end; count what is left."""
        left = 0
        for tp, r in list(self._restores.items()):
            position = await asyncio.wait_for(consumer.position(tp), POSITION_TIMEOUT_S)
            if position >= r.end and r.verifying:
                # Read to the end without the record the checkpoint follows.
                await self._verified(consumer, r, None)
                left += r.end
                continue
            if position >= r.end:
                del self._restores[tp]
                consumer.pause(tp)
                self._progress_at = time.monotonic()
                self._finish(r)
            else:
                left += r.end - position
        self._metrics.restore_remaining.set(left)

    def _finish(self, r: Restore) -> None:
        where = f" (partition {r.changelog.partition})"
        started_fresh = r.task.finish_restore(self._on_state_change, where=where)
        for line in started_fresh:
            log.warning("%s", line)
        if r.local is not None and not started_fresh:
            # The store is the changelog's state, up to the last record read: a crash from
            # here on replays only what comes after.
            r.local.write_checkpoint()

    async def _complete(self) -> None:
        log.info(
            "restored %d changelog records for %d partitions of %s (%d from a local store's "
            "checkpoint) in %.2fs",
            self._applied,
            self._count,
            ", ".join(sorted(self._topics)),
            self._reused,
            time.monotonic() - self._started,
        )
        await self.close()


def _apply(restore: Restore, records: list[Any]) -> None:
    apply = restore.task.apply_changelog
    for record in records:
        try:
            apply(record.key, record.value)
        except Exception as exc:
            tp = restore.changelog
            raise RestoreError(
                f"changelog {tp.topic}[{tp.partition}] offset {record.offset}: record "
                f"{record.key!r} cannot be applied ({type(exc).__name__}: {exc}); delete it "
                "(kafka-delete-records) or start the state over (streams reset)"
            ) from None
