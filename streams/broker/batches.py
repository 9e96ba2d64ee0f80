"""Batched producing: records go straight into per-partition record batches.

``AIOKafkaProducer.send`` costs a coroutine and a future per record. Here records are appended
to aiokafka ``BatchBuilder`` objects (C-accelerated) and each full batch is sent once, so the
per-record cost is one ``append`` call. Partitions are picked like the Java client's default
partitioner (murmur2 of the key), so keyed records land where any Kafka producer puts them.

:meth:`BatchSender.extend_whole` puts a run of records (a changelog write) in one batch of
its own when it fits, which the broker appends whole or not at all.

A topic's size limit (``max.message.bytes``), when known, sizes its batches (so a batch is
never refused for its size, as the Java producer splits one that is), and :meth:`fits` tells
a caller before it appends a record that cannot fit at all. A batch the broker refuses for
good anyway (the limit lowered meanwhile, a denied ACL, an invalid record) fails the flush
with :class:`Refused`, which says which of its records are *poison* (refused on their own).
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)

from streams import compat

Headers = list[tuple[str, bytes]]
_NO_HEADERS: Headers = []
# A record batch's fixed overhead and a record's worst-case own overhead (varints, attributes).
BATCH_OVERHEAD = 61
RECORD_OVERHEAD = 21
# Errors no retry will cure for these records: split the batch, and past one record, give up.
PERMANENT = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
    InvalidTopicError,
    PolicyViolationError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The Java client's ``Utils.murmur2`` (as aiokafka's ``murmur2``): 32-bit words read
    by one ``struct`` call instead of byte by byte, ~3x faster (every new key's partition
    is computed once; the first sight of 100k keys cost 3 % of the worker in a profile)."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    if words:
        for k in _words(words)(data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


@lru_cache(maxsize=256)
def _words(count: int) -> Callable[[bytes], tuple[int, ...]]:
    """An unpacker of the first ``count`` little-endian 32-bit words of a bytes object."""
    return struct.Struct(f"<{count}I").unpack_from


@lru_cache(maxsize=262_144)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def record_size(key: bytes | None, value: bytes | None, headers: Headers | None) -> int:
    """An upper bound of the bytes one record takes in a batch of its own."""
    size = BATCH_OVERHEAD + RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    if headers:
        size += sum(len(k) + len(v) + 10 for k, v in headers)
    return size


# A record as appended: ``(key, value)``, ``(key, value, timestamp_ms)`` (from
# :meth:`BatchSender.extend`) or ``(key, value, timestamp_ms, headers)``; see :func:`fields`.
Record = tuple[Any, ...]


@dataclass(frozen=True)
class Acked:
    """How far the broker acknowledged a partition's records: ``end`` is the offset after
    the last one, ``last`` that record (as appended)."""

    end: int
    last: Record


def fields(record: Record) -> tuple[bytes | None, bytes | None, int | None, Headers]:
    """``(key, value, timestamp_ms, headers)`` of a kept record, whatever its length."""
    n = len(record)
    return (
        record[0],
        record[1],
        record[2] if n > 2 else None,
        record[3] if n > 3 else _NO_HEADERS,
    )


@dataclass
class Poison:
    """A record the broker refused for good, on its own."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    reason: str


class BatchSender:
    """Accumulates records per (topic, partition) and sends them as whole batches.

    Bounded: at most ``max_pending`` batches are in flight; past that, ``append`` callers
    wait in ``send_full`` for the oldest to be acknowledged (backpressure to the caller).
    ``limits`` maps topics to their ``max.message.bytes``.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        max_pending: int = 64,
        limits: dict[str, int] | None = None,
        retain: bool = False,
    ) -> None:
        self._producer = producer
        # With ``retain``, every record since the last successful flush, to resend after a
        # failure (changelog records: their replay is idempotent).
        # With retain: what was appended since the last flush, as (topic, partition, records)
        # runs (one tuple per extend, not per record: no work for the garbage collector).
        # A run written whole (extend_whole) carries its cap, any other 0.
        self._retained: list[tuple[str, int, Sequence[Record], int]] | None = [] if retain else None
        self._open: dict[tuple[str, int], tuple[Any, list[Record]]] = {}
        self._full: list[tuple[str, int, Any, list[Record]]] = []
        self._pending: list[tuple[asyncio.Future[Any], str, int, list[Record]]] = []
        self._max_pending = max_pending
        self._limits = limits or {}
        self._partition_counts: dict[str, int] = {}
        self._round_robin = itertools.count()
        self.records = 0
        # (topic, partition) -> the newest acknowledgement of its records.
        self.acked: dict[tuple[str, int], Acked] = {}

    async def partitions(self, topic: str) -> int:
        """Number of partitions of ``topic`` (fetched once)."""
        count = self._partition_counts.get(topic)
        if count is None:
            parts = await self._producer.partitions_for(topic)
            count = self._partition_counts[topic] = len(parts)
        return count

    def fits(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None
    ) -> bool:
        """Whether the record fits ``topic``'s size limit (always, when it is not known)."""
        limit = self._limits.get(topic)
        return limit is None or record_size(key, value, headers) <= limit

    def room(self, topic: str) -> int:
        """How many bytes of key and value (no headers) fit ``topic``'s size limit in a
        batch of their own (unbounded when it is not known)."""
        limit = self._limits.get(topic)
        return 2**62 if limit is None else limit - BATCH_OVERHEAD - RECORD_OVERHEAD

    def _new_batch(self, topic: str) -> Any:
        limit = self._limits.get(topic)
        producer = self._producer
        if limit is None or limit >= compat.batch_size(producer):
            return producer.create_batch()
        return compat.sized_batch(producer, max(limit - BATCH_OVERHEAD, 1))

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
        entry = self._open.get(slot)
        if entry is None:
            entry = self._open[slot] = (self._new_batch(topic), [])
        batch, kept = entry
        if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
            self._full.append((topic, partition, batch, kept))
            batch = self._new_batch(topic)
            kept = []
            self._open[slot] = (batch, kept)
            if batch.append(key=key, value=value, timestamp=timestamp_ms, headers=headers) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes exceeds the batch size")
        kept.append((key, value, timestamp_ms, headers))
        if self._retained is not None:
            self._retained.append((topic, partition, ((key, value, timestamp_ms, headers),), 0))
        self.records += 1

    def extend(
        self,
        topic: str,
        partition: int,
        records: Sequence[tuple[Any, ...]],
        *,
        timestamps: bool = False,
    ) -> None:
        """Add ``(key, value)`` records (``(key, value, timestamp_ms)`` with ``timestamps``)
        without headers to one partition, in order: :meth:`append`'s work in one loop,
        straight into the C batch builder, keeping the caller's tuples (the hot path of
        outputs and changelog records: no call, no wrapper and no new tuple per record)."""
        self._extend(topic, partition, records, timestamps, 0)

    def _extend(
        self,
        topic: str,
        partition: int,
        records: Sequence[tuple[Any, ...]],
        timestamps: bool,
        whole: int,
    ) -> None:
        """:meth:`extend`; ``whole``: the cap of an :meth:`extend_whole` (kept with the run
        for a resend), else 0."""
        if not records:
            return
        slot = (topic, partition)
        entry = self._open.get(slot)
        if entry is None:
            entry = self._open[slot] = (self._new_batch(topic), [])
        batch, kept = entry
        builder, n = compat.raw_builder(batch)
        for record in records:
            key = record[0]
            value = record[1]
            ts = record[2] if timestamps else None
            if builder.append(n, ts, key, value, _NO_HEADERS) is None:
                compat.appended(batch, n)
                batch.close()
                self._full.append((topic, partition, batch, kept))
                batch = self._new_batch(topic)
                kept = []
                self._open[slot] = (batch, kept)
                builder, n = compat.raw_builder(batch)
                if builder.append(n, ts, key, value, _NO_HEADERS) is None:
                    raise ValueError(
                        f"a record of {len(value or b'')} bytes exceeds the batch size"
                    )
            n += 1
            kept.append(record)
        compat.appended(batch, n)
        if self._retained is not None:
            self._retained.append((topic, partition, records, whole))
        self.records += len(records)

    def extend_whole(
        self, topic: str, partition: int, records: Sequence[tuple[Any, ...]], *, cap: int
    ) -> bool:
        """:meth:`extend` ``(key, value)`` records as one record batch of their own, when
        they fit ``topic``'s known limit and ``cap`` (True); the broker appends a batch whole
        or not at all, so a writer stopped (or a broker lost) mid-flush leaves all of them
        written or none. Otherwise (False) :meth:`extend`'s batches, in order."""
        if not records:
            return True
        limit = min(self._limits.get(topic, 0), cap)
        size = BATCH_OVERHEAD + RECORD_OVERHEAD * len(records)
        size += sum([len(r[0] or b"") + len(r[1] or b"") for r in records])
        if size > limit:
            self.extend(topic, partition, records)
            return False
        slot = (topic, partition)
        self._close(slot)
        producer = self._producer
        default = compat.batch_size(producer)
        batch = producer.create_batch() if size <= default else compat.sized_batch(producer, size)
        self._open[slot] = (batch, [])
        self._extend(topic, partition, records, False, cap)
        self._close(slot)
        return True

    def _close(self, slot: tuple[str, int]) -> None:
        """The open batch of ``slot`` (if any records) closed and queued as full."""
        entry = self._open.pop(slot, None)
        if entry is not None and entry[0].record_count():
            entry[0].close()
            self._full.append((slot[0], slot[1], entry[0], entry[1]))

    def next_round_robin(self, partitions: int) -> int:
        """A partition for a record without a key."""
        return next(self._round_robin) % partitions

    async def send_full(self) -> None:
        """Send the batches that filled up, waiting when too many are in flight."""
        full, self._full = self._full, []
        for topic, partition, batch, kept in full:
            await self._submit(topic, partition, batch, kept)

    async def send_all(self) -> None:
        """Send every batch, full or not, now, without waiting for acknowledgements."""
        await self.send_full()
        open_batches, self._open = self._open, {}
        for (topic, partition), (batch, kept) in open_batches.items():
            if batch.record_count():
                # Closed, it goes out at once: aiokafka holds an open batch for the producer's
                # linger (5 ms) waiting for records nobody will add; an at_least_once commit
                # waited twice, outputs then changelog (docs/decisions/0019-latency.md).
                batch.close()
                await self._submit(topic, partition, batch, kept)

    async def flush(self) -> None:
        """Send everything appended so far and wait until the broker acknowledged it all.

        Raises :class:`Refused` (with every refused batch's records) when the broker refused
        a batch for good, and the first other error otherwise; either way the caller replays.
        aiokafka's idempotent producer cannot go on after a refused batch (its sequence
        numbers no longer match the broker's: every later batch fails), so a resend needs a
        new producer.
        """
        await self.send_all()
        pending, self._pending = self._pending, []
        if not pending:
            if self._retained is not None:
                self._retained = []
            return
        results = await asyncio.gather(*(f for f, _, _, _ in pending), return_exceptions=True)
        refused = [
            (topic, partition, kept, result)
            for (_, topic, partition, kept), result in zip(pending, results, strict=True)
            if isinstance(result, PERMANENT)
        ]
        if refused:
            raise Refused(refused)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for (_, topic, partition, kept), result in zip(pending, results, strict=True):
            self._note_ack(topic, partition, kept, result)
        if self._retained is not None:
            self._retained = []

    def abandon(self) -> None:
        """Give up on the batches sent and not flushed (their records are produced again
        elsewhere): their outcomes, a failure included, are of no further interest."""
        pending, self._pending = self._pending, []
        for future, _, _, _ in pending:
            future.add_done_callback(_seen)

    def unacked(self) -> list[tuple[str, int, Record]]:
        """With ``retain``: the records appended since the last successful flush."""
        assert self._retained is not None, "a BatchSender(retain=True) keeps them"
        return [
            (topic, partition, record)
            for topic, partition, records, _ in self._retained
            for record in records
        ]

    def resend(self, records: list[tuple[str, int, Record]]) -> None:
        """Append records taken from another sender's :meth:`unacked`, in order."""
        for topic, partition, record in records:
            key, value, ts, headers = fields(record)
            self.append(topic, partition, key, value, timestamp_ms=ts, headers=headers)

    def resend_unacked(self, other: BatchSender) -> None:
        """Append what ``other`` (``retain``) holds since its last successful flush, in
        order: a write it took whole, whole again."""
        assert other._retained is not None, "a BatchSender(retain=True) keeps them"
        for topic, partition, records, cap in other._retained:
            if cap:
                self.extend_whole(topic, partition, records, cap=cap)
            else:
                self.resend([(topic, partition, record) for record in records])

    def _note_ack(self, topic: str, partition: int, kept: list[Record], metadata: Any) -> None:
        """A batch of ``kept`` was acknowledged with ``metadata`` (its base offset)."""
        offset = getattr(metadata, "offset", None)
        if offset is None or not kept:
            return
        end = offset + len(kept)
        slot = (topic, partition)
        known = self.acked.get(slot)
        if known is None or end > known.end:
            self.acked[slot] = Acked(end, kept[-1])

    async def _submit(self, topic: str, partition: int, batch: Any, kept: list[Record]) -> None:
        while len(self._pending) >= self._max_pending:
            oldest = self._pending.pop(0)
            try:
                metadata = await oldest[0]
            except PERMANENT:
                # Keep it for flush to report; the wait was only for room.
                self._pending.insert(0, oldest)
                break
            self._note_ack(oldest[1], oldest[2], oldest[3], metadata)
        future = await self._producer.send_batch(batch, topic, partition=partition)
        self._pending.append((future, topic, partition, kept))


def _seen(future: asyncio.Future[Any]) -> None:
    """Retrieve a finished future's outcome, so that asyncio does not report its error as
    never retrieved."""
    if not future.cancelled():
        future.exception()


class Refused(KafkaError):
    """The broker refused record batches for good; ``batches`` holds each one's topic,
    partition, records and error."""

    def __init__(self, batches: list[tuple[str, int, list[Record], BaseException]]) -> None:
        first = batches[0]
        super().__init__(
            f"{first[0]}[{first[1]}] refused a batch of {len(first[2])} records "
            f"for good: {_describe(first[3])}"
        )
        self.batches = batches

    def poison(self) -> list[Poison]:
        """The records refused on their own, or for a reason no smaller batch cures (an
        ACL, an invalid record): each is poison. A batch of several records refused only
        for its size is not: batches sized to the topic's limit carry them."""
        out = []
        for topic, partition, kept, error in self.batches:
            if len(kept) > 1 and isinstance(error, SIZE_ERRORS):
                continue
            for record in kept:
                key, value, _, headers = fields(record)
                out.append(Poison(topic, partition, key, value, headers, _describe(error)))
        return out


SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    text = str(error)
    if isinstance(error, KafkaError) and getattr(error, "description", None):
        text = f"{text} ({error.description})" if text and text != name else error.description
    return f"{name}: {text}" if text and text != name else name
