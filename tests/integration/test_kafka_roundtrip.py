"""aiokafka against the real broker: keys, headers, partitions and consumer-group commits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.config import KafkaSettings

pytestmark = pytest.mark.integration


async def _consume_all(consumer: AIOKafkaConsumer, expected: int, timeout_ms: int = 20_000) -> list:
    got: list = []
    for _ in range(40):
        batch = await consumer.getmany(timeout_ms=timeout_ms // 40)
        for records in batch.values():
            got.extend(records)
        if len(got) >= expected:
            break
    return got


async def test_produce_consume_commit_roundtrip(
    kafka_settings: KafkaSettings,
    create_topic: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> None:
    topic = await create_topic("roundtrip", partitions=3)
    group = unique_name("group")
    sent = [
        (f"user-{i % 7}".encode(), f'{{"n":{i}}}'.encode(), [("trace", str(i).encode())])
        for i in range(120)
    ]
    producer = AIOKafkaProducer(
        **kafka_settings.client_kwargs(), acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for key, value, headers in sent:
            await producer.send(topic, value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        **kafka_settings.client_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        got = await _consume_all(consumer, len(sent))
        await consumer.commit()
        parts = consumer.assignment()
        committed = {tp: await consumer.committed(tp) for tp in parts}
        ends = await consumer.end_offsets(list(parts))
    finally:
        await consumer.stop()

    assert sorted((r.key, r.value, list(r.headers)) for r in got) == sorted(
        (k, v, h) for k, v, h in sent
    )
    # One key always lands on one partition, in the order it was sent.
    by_key: dict[bytes, set[int]] = {}
    for record in got:
        by_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in by_key.values())
    assert {tp.partition for tp in parts} == {0, 1, 2}
    assert committed == ends
    assert sum(ends.values()) == len(sent)

    # A new member of the same group resumes at the committed offsets: nothing is re-read.
    again = AIOKafkaConsumer(
        topic, **kafka_settings.client_kwargs(), group_id=group, auto_offset_reset="earliest"
    )
    await again.start()
    try:
        leftovers = await _consume_all(again, 1, timeout_ms=3_000)
        positions = {tp: await again.position(tp) for tp in again.assignment()}
    finally:
        await again.stop()
    assert leftovers == []
    assert positions == {TopicPartition(topic, p): ends[TopicPartition(topic, p)] for p in range(3)}
