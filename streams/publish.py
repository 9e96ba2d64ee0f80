"""Publishing events: an async, batched, idempotent (``acks=all``) Python API.

>>> async with Publisher(KafkaSettings()) as pub:          # doctest: +SKIP
...     report = await pub.publish("events", [(b"u1", b'{"event_id": "e1", ...}')])
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.broker.admin import start_client, stop_within
from streams.broker.batches import BatchSender, Refused, partition_for
from streams.config import KafkaSettings
from streams.errors import BrokerError

Message = tuple[bytes | None, bytes]
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
_CHUNK = 2_000
# Wait for acknowledgements every so many messages: bounds what a replaced producer resends.
_ACK_EVERY = 50_000
_ACK_INTERVAL_S = 0.5
RECOVER_FOR_S = 300.0
_STOP_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)


@dataclass
class PublishReport:
    """What a publish run did. ``rejections`` keeps the first 100 (line, reason) pairs."""

    sent: int = 0
    rejected: int = 0
    bytes: int = 0
    seconds: float = 0.0
    rejections: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def reject(self, line: int, reason: str) -> None:
        """Count one rejected input line."""
        self.rejected += 1
        if len(self.rejections) < 100:
            self.rejections.append((line, reason))

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        return {
            "sent": self.sent,
            "rejected": self.rejected,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate, 1),
            "rejections": [{"line": n, "reason": r} for n, r in self.rejections],
        }


def make_producer(
    kafka: KafkaSettings,
    *,
    compression: str | None = None,
    transactional_id: str | None = None,
    linger_ms: int = 5,
    client_id: str = "streams",
) -> AIOKafkaProducer:
    """A producer that never loses or duplicates on retry: idempotent, ``acks=all``."""
    return AIOKafkaProducer(
        **kafka.client_kwargs(),
        acks="all",
        enable_idempotence=True,
        compression_type=None if compression in (None, "none") else compression,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
        linger_ms=linger_ms,
        transactional_id=transactional_id,
        client_id=client_id,
    )


class Publisher:
    """Publishes (key, value) messages in batches; partitions follow the Java default.

    No loss when the broker fails: the idempotent producer retries through outages, and when
    it gives up for good (aiokafka's idempotent producer dies on e.g. ``OutOfOrderSequence``
    after a broker crash, where the Java client would reset its producer id), the publisher
    starts a new producer and resends every message not yet acknowledged. Those resends are
    the one case where a message can land twice (a new producer id cannot be deduplicated
    against the old one); the pipeline drops such repeats by ``event_id``.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        compression: str | None = None,
        recover_for_s: float = RECOVER_FOR_S,
    ) -> None:
        if compression not in (None, *COMPRESSIONS):
            raise ValueError(f"compression must be one of {COMPRESSIONS}")
        self._kafka = kafka
        self._compression = compression
        self._producer = make_producer(kafka, compression=compression)
        self._recover_for_s = recover_for_s

    async def __aenter__(self) -> Publisher:
        await start_client(self._producer, self._kafka)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await stop_within(self._producer, _STOP_TIMEOUT_S, level=logging.DEBUG)

    async def publish(
        self,
        topic: str,
        messages: Iterable[Message],
        *,
        rate: float | None = None,
        progress: Callable[[int], None] | None = None,
        report: PublishReport | None = None,
    ) -> PublishReport:
        """Send every message; returns once the broker acknowledged all of them.

        ``rate`` caps events per second; ``progress`` is called with each chunk's size.
        """
        report = report or PublishReport()
        sender = BatchSender(self._producer)
        try:
            partitions = await sender.partitions(topic)
        except KafkaError as exc:
            raise BrokerError(f"cannot publish to topic {topic!r}: {exc}") from None
        if not partitions:
            raise BrokerError(f"topic {topic!r} does not exist; create it (streams topics create)")
        started = time.perf_counter()
        # Paced publishing goes out in 20 ms slices, so a consumer sees a steady stream.
        chunk = max(1, min(_CHUNK, int(rate / 50))) if rate else _CHUNK
        sent_before = report.sent
        # Messages sent since the last acknowledged flush: what a new producer must resend.
        unacked: list[Message] = []
        acked_at = time.monotonic()
        for batch in _chunks(messages, chunk):
            unacked.extend(batch)
            try:
                _append(sender, topic, partitions, batch)
                # Paced: every chunk goes out now (latency); bulk: only full batches.
                await (sender.send_all() if rate else sender.send_full())
                if len(unacked) >= _ACK_EVERY or time.monotonic() - acked_at >= _ACK_INTERVAL_S:
                    await sender.flush()
                    unacked = []
                    acked_at = time.monotonic()
            except KafkaError as exc:
                unacked = _refused(report, unacked, exc)
                sender = await self._resend(topic, partitions, unacked, exc)
                unacked = []
            report.sent += len(batch)
            report.bytes += sum(len(v) + len(k or b"") for k, v in batch)
            if progress is not None:
                progress(len(batch))
            if rate:
                ahead = (report.sent - sent_before) / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        try:
            await sender.flush()
        except KafkaError as exc:
            await self._resend(topic, partitions, _refused(report, unacked, exc), exc)
        report.seconds += time.perf_counter() - started
        return report

    async def _resend(
        self, topic: str, partitions: int, unacked: list[Message], cause: Exception
    ) -> BatchSender:
        """Replace a failed producer and resend ``unacked``; a BatchSender on the new one."""
        deadline = time.monotonic() + self._recover_for_s
        while True:
            log.warning(
                "producer failed (%s); resending %d unacknowledged messages with a new one",
                type(cause).__name__,
                len(unacked),
            )
            await stop_within(self._producer, _STOP_TIMEOUT_S, level=logging.DEBUG)
            self._producer = make_producer(self._kafka, compression=self._compression)
            try:
                await start_client(self._producer, self._kafka)
                sender = BatchSender(self._producer)
                _append(sender, topic, partitions, unacked)
                await sender.flush()
            except (KafkaError, BrokerError) as exc:
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"publishing to {topic!r} failed for {self._recover_for_s:.0f}s "
                        f"({exc}); is the broker at {self._kafka.bootstrap_servers} up?"
                    ) from None
                cause = exc
                await asyncio.sleep(1.0)
                continue
            return sender


def _refused(report: PublishReport, unacked: list[Message], exc: Exception) -> list[Message]:
    """Messages the broker refused for good (e.g. over the topic's size limit) are rejected,
    counted with the broker's reason; returns the messages left to resend."""
    if not isinstance(exc, Refused):
        return unacked
    poison = {(p.key, p.value): p.reason for p in exc.poison()}
    for key, value in unacked:
        reason = poison.get((key, value))
        if reason is not None:
            report.reject(0, f"refused by the broker: {reason}")
    return [m for m in unacked if (m[0], m[1]) not in poison]


def _append(sender: BatchSender, topic: str, partitions: int, batch: list[Message]) -> None:
    for key, value in batch:
        part = (
            partition_for(key, partitions)
            if key is not None
            else sender.next_round_robin(partitions)
        )
        sender.append(topic, part, key, value)


def _chunks(messages: Iterable[Message], size: int) -> Iterator[list[Message]]:
    batch: list[Message] = []
    for message in messages:
        batch.append(message)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def messages_from_lines(
    lines: Iterable[bytes],
    report: PublishReport,
    *,
    key_field: str | None,
    validate: bool,
    encode: Callable[[Any], bytes] | None = None,
) -> Iterator[Message]:
    """JSON Lines to messages; bad lines are counted in ``report`` with their line number.
    ``encode`` writes each value (a registry format's encoder; a ValueError rejects the line)
    instead of sending the line as it is."""
    check = None
    if validate:
        from streams.validation import decode_event

        check = decode_event
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        if check is not None:
            obj, reason = check(line)
            if reason is not None:
                report.reject(number, reason)
                continue
        else:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                report.reject(number, f"not valid JSON: {exc}")
                continue
        key = None
        if key_field and isinstance(obj, dict) and obj.get(key_field) is not None:
            key = str(obj[key_field]).encode()
        if encode is None:
            yield key, line
            continue
        try:
            value = encode(obj)
        except ValueError as exc:
            report.reject(number, str(exc))
            continue
        yield key, value
