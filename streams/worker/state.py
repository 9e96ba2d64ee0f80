"""Changelog-backed state: restore partition processors by replaying their changelog partitions.

The changelog topic is compacted and co-partitioned with the input: the state of input
partition ``p`` lives in changelog partition ``p``. A worker that is assigned ``p`` (at start,
after a crash, or in a rebalance) replays that partition from the beginning before it
processes a single input record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from aiokafka import TopicPartition

from streams.broker.admin import TopicSpec, stop_within
from streams.broker.reading import bulk_reader
from streams.config import KafkaSettings, Settings
from streams.core.processor import PartitionProcessor
from streams.errors import BrokerError
from streams.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# A reader stuck closing against a broker that went away must not hold up the rebuild.
CLOSE_TIMEOUT_S = 10.0


def changelog_topic(settings: Settings) -> str:
    """Name of the worker's state changelog topic."""
    return f"{settings.app_id}-state-changelog"


def changelog_spec(settings: Settings, partitions: int) -> TopicSpec:
    """The changelog topic: compacted, exactly as many partitions as the input topic."""
    return TopicSpec(
        changelog_topic(settings),
        partitions,
        {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        copartitioned_with=settings.input_topic,
    )


async def restore(
    kafka: KafkaSettings,
    topic: str,
    processors: Mapping[int, PartitionProcessor],
    *,
    read_committed: bool,
    metrics: WorkerMetrics,
    timeout_s: float = 600.0,
) -> int:
    """Replay changelog partitions into their processors; returns records applied."""
    if not processors:
        return 0
    consumer = await bulk_reader(kafka, read_committed=read_committed)
    started = time.monotonic()
    applied = 0
    try:
        tps = [TopicPartition(topic, p) for p in processors]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        remaining = {tp: ends[tp] for tp in tps if ends[tp] > begins[tp]}
        metrics.restore_remaining.set(sum(ends[tp] - begins[tp] for tp in remaining))
        while remaining:
            if time.monotonic() - started > timeout_s:
                raise BrokerError(
                    f"restoring state from {topic} took over {timeout_s:.0f}s; "
                    "check the broker, or raise the restore timeout"
                )
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=50_000)
            for tp, records in batches.items():
                apply = processors[tp.partition].apply_changelog
                for record in records:
                    apply(record.key, record.value)
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
        await stop_within(consumer, CLOSE_TIMEOUT_S)
    for processor in processors.values():
        # Restoring is not a change: nothing replayed goes back to the changelog.
        processor.drain_changelog()
    log.info(
        "restored %d changelog records for partitions %s in %.2fs",
        applied,
        sorted(processors),
        time.monotonic() - started,
    )
    return applied
