"""A task's drain reaches its changelog as one record batch (decision 0010, addendum of
2026-12-07): the broker appends a batch whole or not at all, so a writer stopped, or a broker
lost, mid-flush leaves a drain written whole or not at all, never its state without its
position. On a real broker: the changelog's config takes the batch, and a reader gets it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.broker.admin import start_client, topic_limits
from streams.broker.batches import BatchSender
from streams.config import KafkaSettings
from streams.publish import make_producer
from streams.topology.plan import CHANGELOG_BATCH_BYTES, CHANGELOG_CONFIGS

pytestmark = pytest.mark.integration


async def test_a_drain_is_one_batch_on_the_broker_and_reads_back_whole(
    kafka_settings: KafkaSettings, create_topic: Callable[..., Awaitable[str]]
) -> None:
    tp = TopicPartition(await create_topic("changelog", **CHANGELOG_CONFIGS), 0)
    limits = await topic_limits(kafka_settings, [tp.topic])
    assert limits == {tp.topic: CHANGELOG_BATCH_BYTES}
    # ~2.5 MB: past a default batch (16 KB) a hundred times, and past the fetch size below.
    records = [(b"w%06d" % n, b'{"count":%d,"sum":12.5}' % n + b" " * 30) for n in range(40_000)]
    producer = make_producer(kafka_settings)
    await start_client(producer, kafka_settings)
    try:
        sender = BatchSender(producer, limits=limits, retain=True)
        assert sender.extend_whole(tp.topic, tp.partition, records, cap=CHANGELOG_BATCH_BYTES)
        await sender.flush()
    finally:
        await producer.stop()
    # A fetch of at most 64 KB per partition still returns a first batch larger than that, and
    # all of it: one fetch, every record, in order, is one batch.
    consumer = AIOKafkaConsumer(
        **kafka_settings.client_kwargs(),
        enable_auto_commit=False,
        max_partition_fetch_bytes=64 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        first: list[object] = []
        for _ in range(40):
            first = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
            if first:
                break
    finally:
        await consumer.stop()
    assert [(r.key, r.value) for r in first] == records  # type: ignore[attr-defined]
