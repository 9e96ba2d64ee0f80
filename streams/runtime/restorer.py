"""Changelog-backed state: segment tasks rebuilt by replaying their changelog partitions.

A changelog is compacted and co-partitioned with its segment's input: the state of input
partition ``p`` lives in partition ``p`` of the changelog. A task adopted by a worker (at
start, after a crash, in a rebalance) replays that partition from the beginning before it
processes a single input record. A replay that fails (the broker away, a timeout) raises;
the task manager retries it with backoff, and the worker is not ready meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition

from streams.broker.reading import bulk_reader
from streams.config import KafkaSettings
from streams.core.segment import SegmentTask
from streams.errors import BrokerError, RestoreError
from streams.runtime.metrics import WorkerMetrics

log = logging.getLogger(__name__)


@dataclass
class Restore:
    """One task to rebuild from partition ``partition`` of ``changelog``."""

    task: SegmentTask
    changelog: str
    partition: int


async def restore(
    kafka: KafkaSettings,
    restores: Sequence[Restore],
    *,
    read_committed: bool,
    metrics: WorkerMetrics,
    on_state_change: str,
    timeout_s: float = 600.0,
) -> int:
    """Replay each changelog partition into its task, then check the tasks' fingerprints
    (:meth:`~streams.core.segment.SegmentTask.finish_restore`); returns records applied."""
    if not restores:
        return 0
    by_tp = {TopicPartition(r.changelog, r.partition): r.task for r in restores}
    started = time.monotonic()
    applied = 0
    consumer = await bulk_reader(kafka, read_committed=read_committed)
    try:
        tps = list(by_tp)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        remaining = {tp: ends[tp] for tp in tps if ends[tp] > begins[tp]}
        metrics.restore_remaining.set(sum(ends[tp] - begins[tp] for tp in remaining))
        while remaining:
            if time.monotonic() - started > timeout_s:
                raise BrokerError(
                    f"restoring state from {sorted({tp.topic for tp in tps})} took over "
                    f"{timeout_s:.0f}s; check the broker, or raise the restore timeout"
                )
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=50_000)
            for tp, records in batches.items():
                apply = by_tp[tp].apply_changelog
                try:
                    for record in records:
                        apply(record.key, record.value)
                except Exception as exc:
                    raise RestoreError(
                        f"changelog {tp.topic}[{tp.partition}] offset {record.offset}: record "
                        f"{record.key!r} cannot be applied ({type(exc).__name__}: {exc}); delete "
                        "it (kafka-delete-records) or start the state over (streams reset)"
                    ) from None
                applied += len(records)
                metrics.restored.inc(len(records))
            left = 0
            for tp in list(remaining):
                position = await consumer.position(tp)
                if position >= ends[tp]:
                    del remaining[tp]
                else:
                    left += ends[tp] - position
            metrics.restore_remaining.set(left)
    finally:
        await consumer.stop()
    for r in restores:
        for line in r.task.finish_restore(on_state_change, where=f" (partition {r.partition})"):
            log.warning("%s", line)
    log.info(
        "restored %d changelog records for %d partitions of %s in %.2fs",
        applied,
        len(restores),
        ", ".join(sorted({r.changelog for r in restores})),
        time.monotonic() - started,
    )
    return applied
