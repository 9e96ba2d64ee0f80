"""Raw records are the worker's consumers' alone: in the same process, a plain
``AIOKafkaConsumer`` (one in a user's ``enrich`` function, say) still gets ``ConsumerRecord``s."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from streams.broker.records import RawRecordsConsumer
from streams.config import KafkaSettings

pytestmark = pytest.mark.integration


async def _read(consumer: AIOKafkaConsumer, tp: TopicPartition, count: int) -> list[Any]:
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    got: list[Any] = []
    for _ in range(40):
        got += (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
        if len(got) >= count:
            break
    return got


async def test_a_plain_consumer_beside_the_workers_gets_consumer_records(
    kafka_settings: KafkaSettings, create_topic: Callable[..., Awaitable[str]]
) -> None:
    tp = TopicPartition(await create_topic("raw-records"), 0)
    values = [b'{"n": %d}' % n for n in range(3)]
    producer = AIOKafkaProducer(**kafka_settings.client_kwargs())
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(tp.topic, value, key=b"k", partition=0)
    finally:
        await producer.stop()
    kwargs = {**kafka_settings.client_kwargs(), "enable_auto_commit": False}
    workers = RawRecordsConsumer(**kwargs)  # as Worker.start makes its consumer
    plain = AIOKafkaConsumer(**kwargs)
    await workers.start()
    await plain.start()
    try:
        raw = await _read(workers, tp, len(values))
        records = await _read(plain, tp, len(values))
    finally:
        await workers.stop()
        await plain.stop()
    assert [r.value for r in records] == [r.value for r in raw] == values
    assert all(type(r) is ConsumerRecord and r.topic == tp.topic for r in records)
    assert not any(isinstance(r, ConsumerRecord) for r in raw)
