"""Dead letters: the headers that say why a message was rejected, and replaying them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.broker.admin import commit_offsets, committed_offsets, start_client
from streams.broker.batches import BatchSender, partition_for
from streams.config import KafkaSettings

HEADER_STAGE = "error.stage"
HEADER_MESSAGE = "error.message"
HEADER_TOPIC = "source.topic"
HEADER_PARTITION = "source.partition"
HEADER_OFFSET = "source.offset"
HEADER_TS = "error.ts"
HEADER_OPERATOR = "error.operator"
HEADER_REPLAYS = "dlq.replays"


def dead_letter_headers(
    stage: str,
    message: str,
    topic: str,
    partition: int,
    offset: int,
    now_ms: int,
    source_headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...] = (),
) -> list[tuple[str, bytes]]:
    """Headers of a dead letter; the value and key stay the original bytes.

    A replay counter on the source message is carried over, so a dead letter that failed
    again after a replay is not replayed forever.
    """
    headers = [
        (HEADER_STAGE, stage.encode()),
        (HEADER_MESSAGE, message.encode("utf-8", "replace")),
        (HEADER_TOPIC, topic.encode()),
        (HEADER_PARTITION, str(partition).encode()),
        (HEADER_OFFSET, str(offset).encode()),
        (HEADER_TS, str(now_ms).encode()),
    ]
    headers.extend((k, v) for k, v in source_headers if k == HEADER_REPLAYS)
    return headers


def header_map(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> dict[str, str]:
    """Headers as a dict of strings (last one wins), for people and for replay."""
    return {k: v.decode("utf-8", "replace") for k, v in headers}


@dataclass
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do)."""

    scanned: int = 0
    replayed: int = 0
    skipped_filter: int = 0
    skipped_looping: int = 0
    # Dead letters of no input message (a window whose result failed): nothing to re-publish.
    skipped_derived: int = 0
    by_destination: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead letters to replay: error time window and ``FIELD=VALUE`` matches.

    A match names a header (``error.stage``, ``source.topic``, ...) or, failing that, a
    top-level field of the JSON value (``user_id``, ``type``, ...).
    """

    since_ms: int | None = None
    until_ms: int | None = None
    matches: tuple[tuple[str, str], ...] = ()
    max_replays: int = 1
    # How a dead letter's value is read for field matches: JSON, or with a schema registry
    # (``streams.core.formats.value_reader``) a value in its wire format too.
    read: Callable[[bytes], Any] = field(default=orjson.loads, compare=False)

    def wants(self, headers: dict[str, str], value: bytes | None) -> bool:
        """True when the dead letter passes the time window and every match."""
        error_ts = int(headers.get(HEADER_TS, "0") or 0)
        if self.since_ms is not None and error_ts < self.since_ms:
            return False
        if self.until_ms is not None and error_ts >= self.until_ms:
            return False
        body: Any = None
        for name, expected in self.matches:
            if name in headers:
                if headers[name] != expected:
                    return False
                continue
            if body is None:
                try:
                    body = self.read(value or b"")
                except ValueError:  # orjson's and the wire format's decode errors
                    body = {}
            if not isinstance(body, dict) or str(body.get(name)) != expected:
                return False
        return True


async def replay(
    kafka: KafkaSettings,
    dlq_topic: str,
    *,
    to_topic: str | None = None,
    selection: ReplayFilter = ReplayFilter(),
    dry_run: bool = False,
    from_beginning: bool = False,
) -> ReplayReport:
    """Re-publish dead letters to their source topic (or ``to_topic``), key and bytes intact.

    Each replayed message carries ``dlq.replays`` = previous + 1; the worker copies that header
    onto a message that fails again, and replay skips dead letters that already went round
    ``max_replays`` times — a message that keeps failing ends in the DLQ, not in a loop.
    Progress is committed for the consumer group ``<dlq_topic>.replay``: the next replay
    starts after the dead letters this one scanned, unless ``from_beginning``.
    """
    from streams.broker.reading import read_topic
    from streams.publish import make_producer

    report = ReplayReport(dry_run=dry_run)
    group = f"{dlq_topic}.replay"
    progress = {} if from_beginning else await committed_offsets(kafka, group, dlq_topic)
    letters = await read_topic(kafka, dlq_topic, start_offsets=progress)
    producer = None if dry_run else make_producer(kafka)
    if producer is not None:
        await start_client(producer, kafka)
    try:
        sender = BatchSender(producer) if producer is not None else None
        for records in letters.values():
            for letter in records:
                report.scanned += 1
                headers = header_map(letter.headers)
                if not selection.wants(headers, letter.value):
                    report.skipped_filter += 1
                    continue
                replays = int(headers.get(HEADER_REPLAYS, "0") or 0)
                if replays >= selection.max_replays:
                    report.skipped_looping += 1
                    continue
                if HEADER_TOPIC in headers and HEADER_OFFSET not in headers:
                    report.skipped_derived += 1
                    continue
                destination = to_topic or headers.get(HEADER_TOPIC)
                if not destination:
                    report.skipped_filter += 1
                    continue
                report.replayed += 1
                report.by_destination[destination] = report.by_destination.get(destination, 0) + 1
                if sender is None:
                    continue
                parts = await sender.partitions(destination)
                key = letter.key
                part = (
                    partition_for(key, parts) if key is not None else sender.next_round_robin(parts)
                )
                sender.append(
                    destination,
                    part,
                    key,
                    letter.value,
                    headers=[(HEADER_REPLAYS, str(replays + 1).encode())],
                )
                await sender.send_full()
        if sender is not None:
            await sender.flush()
            scanned_to = {p: records[-1].offset + 1 for p, records in letters.items() if records}
            await commit_offsets(kafka, group, dlq_topic, scanned_to)
    finally:
        if producer is not None:
            await producer.stop()
    return report
