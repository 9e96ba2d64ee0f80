"""``app.table`` topics: every worker holds each whole, loaded before the first event and
followed while it runs (Kafka Streams' GlobalKTable).

The value for a message key is the latest JSON value written with it; a tombstone (null
value) deletes the key. A table is read outside the consumer group, every partition, by one
consumer that applies whole fetched batches between the worker's own batches (one event
loop: a join reads a table as of the last applied batch, never a half-applied one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.broker.admin import stop_within, topic_partitions
from streams.broker.reading import bulk_reader
from streams.config import KafkaSettings
from streams.runtime.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class Tables:
    """The app's tables by topic name: ``data[name][key]`` is the current value."""

    def __init__(
        self,
        kafka: KafkaSettings,
        names: tuple[str, ...],
        metrics: WorkerMetrics,
        *,
        read_committed: bool,
    ) -> None:
        self._kafka = kafka
        self.names = names
        self._metrics = metrics
        self._read_committed = read_committed
        self.data: dict[str, dict[str, Any]] = {name: {} for name in names}
        self._consumer: AIOKafkaConsumer | None = None
        self._follower: asyncio.Task[None] | None = None
        self._unreadable = 0

    async def load(self) -> None:
        """Read every table to its current end; then follow it in the background."""
        if not self.names:
            return
        consumer = self._consumer = await bulk_reader(
            self._kafka, read_committed=self._read_committed
        )
        tps = [
            TopicPartition(name, p)
            for name in self.names
            for p in await topic_partitions(self._kafka, name)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=50_000)
            self._apply(batches)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        log.info(
            "tables loaded: %s", ", ".join(f"{n} ({len(self.data[n])} keys)" for n in self.names)
        )
        self._follower = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                self._apply(await consumer.getmany(timeout_ms=1000, max_records=10_000))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: the consumer reconnects by itself
                log.warning("following tables failed (%r); retrying", exc)
                await asyncio.sleep(1.0)

    def _apply(self, batches: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batches.items():
            table = self.data[tp.topic]
            unreadable = apply_records(table, records)
            if unreadable and not self._unreadable:
                log.warning("table %s: %d values are not JSON; skipped", tp.topic, unreadable)
            self._unreadable += unreadable
            self._metrics.table_records.labels(tp.topic).set(len(table))

    async def stop(self) -> None:
        """Stop following."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._follower
        if self._consumer is not None:
            await stop_within(self._consumer, 10.0)


def apply_records(table: dict[str, Any], records: list[Any]) -> int:
    """Apply a table topic's records in order (the latest value per key; a tombstone
    deletes it; a keyless record is ignored); returns how many values were not JSON."""
    unreadable = 0
    for record in records:
        if record.key is None:
            continue
        key = record.key.decode("utf-8", "replace")
        if record.value is None:
            table.pop(key, None)
            continue
        try:
            table[key] = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            unreadable += 1
    return unreadable
