"""Batched producing: records go straight into per-partition record batches.

``AIOKafkaProducer.send`` costs a coroutine and a future per record. Here records are appended
to aiokafka ``BatchBuilder`` objects (C-accelerated) and each full batch is sent once, so the
per-record cost is one ``append`` call. Partitions are picked like the Java client's default
partitioner (murmur2 of the key), so keyed records land where any Kafka producer puts them.
"""

from __future__ import annotations

import asyncio
import itertools
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

Headers = list[tuple[str, bytes]]
_NO_HEADERS: Headers = []


@lru_cache(maxsize=262_144)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class BatchSender:
    """Accumulates records per (topic, partition) and sends them as whole batches.

    Bounded: at most ``max_pending`` batches are in flight; past that, ``append`` callers
    wait in ``send_full`` for the oldest to be acknowledged (backpressure to the caller).
    """

    def __init__(self, producer: AIOKafkaProducer, *, max_pending: int = 64) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []
        self._pending: list[asyncio.Future[Any]] = []
        self._max_pending = max_pending
        self._partition_counts: dict[str, int] = {}
        self._round_robin = itertools.count()
        self.records = 0
        self.bytes = 0

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic`` (fetched once)."""
        count = self._partition_counts.get(topic)
        if count is None:
            parts = await self._producer.partitions_for(topic)
            count = self._partition_counts[topic] = len(parts)
        return count

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        *,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Add one record; a batch that fills up is queued for ``send_full``/``flush``."""
        headers = headers or _NO_HEADERS
        slot = (topic, partition)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open[slot] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
            self._full.append((topic, partition, batch))
            batch = self._open[slot] = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes exceeds the batch size")
        self.records += 1
        self.bytes += len(value or b"") + len(key or b"")

    def next_round_robin(self, partitions: int) -> int:
        """A partition for a record without a key."""
        return next(self._round_robin) % partitions

    async def send_full(self) -> None:
        """Send the batches that filled up, waiting when too many are in flight."""
        full, self._full = self._full, []
        for topic, partition, batch in full:
            await self._submit(topic, partition, batch)

    async def send_all(self) -> None:
        """Send every batch, full or not, without waiting for acknowledgements."""
        await self.send_full()
        open_batches, self._open = self._open, {}
        for (topic, partition), batch in open_batches.items():
            if batch.record_count():
                await self._submit(topic, partition, batch)

    async def flush(self) -> None:
        """Send everything appended so far and wait until the broker acknowledged all of it."""
        await self.send_all()
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

    async def _submit(self, topic: str, partition: int, batch: Any) -> None:
        while len(self._pending) >= self._max_pending:
            oldest = self._pending.pop(0)
            await oldest
        self._pending.append(await self._producer.send_batch(batch, topic, partition=partition))
