"""Reading whole topics (audits, replays): every partition from its beginning to its end."""

from __future__ import annotations

import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.broker.admin import start_client, topic_partitions, unreachable
from streams.broker.records import RawRecordsConsumer
from streams.config import KafkaSettings
from streams.errors import BrokerError


async def bulk_reader(
    kafka: KafkaSettings, *, read_committed: bool, raw: bool = True
) -> AIOKafkaConsumer:
    """A started consumer outside any group, with large fetches, for reading whole partitions:
    a :class:`~streams.broker.records.RawRecordsConsumer` (changelog restores, tables), or a
    plain one with ``raw=False``."""
    consumer = (RawRecordsConsumer if raw else AIOKafkaConsumer)(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await start_client(consumer, kafka)
    return consumer


async def log_starts(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    """Each partition's first offset (above 0 once records were deleted below it)."""
    consumer = await bulk_reader(kafka, read_committed=False, raw=False)
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(kafka, topic)]
        starts = await consumer.beginning_offsets(tps)
        return {tp.partition: offset for tp, offset in starts.items()}
    except OSError:
        raise unreachable(kafka) from None
    finally:
        await consumer.stop()


async def read_topic(
    kafka: KafkaSettings,
    topic: str,
    *,
    read_committed: bool = True,
    timeout_s: float = 300.0,
    start_offsets: dict[int, int] | None = None,
) -> dict[int, list[Any]]:
    """All records of ``topic`` up to its current end, per partition, in offset order.

    With ``read_committed`` the end is the last stable offset: aborted transactions are
    skipped and open ones are waited for (up to ``timeout_s``). ``start_offsets`` begins
    some partitions later than their first offset.
    """
    # ConsumerRecords, whatever else runs in the process: audits, replays and tests read their
    # topic and partition too.
    consumer = await bulk_reader(kafka, read_committed=read_committed, raw=False)
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(kafka, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            if start_offsets and tp.partition in start_offsets:
                consumer.seek(tp, start_offsets[tp.partition])
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[Any]] = {tp.partition: [] for tp in tps}
        starts = start_offsets or {}
        remaining = {tp for tp in tps if ends[tp] > starts.get(tp.partition, 0)}
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"reading {topic!r} did not reach its end within {timeout_s:.0f}s "
                    "(an open transaction?); retry later"
                )
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=100_000)
            for tp, records in batches.items():
                out[tp.partition].extend(r for r in records if r.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return out
    except OSError:
        raise unreachable(kafka) from None
    finally:
        await consumer.stop()
