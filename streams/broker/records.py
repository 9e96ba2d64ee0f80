"""Consumed records without the per-record ``ConsumerRecord`` dataclass, taken batch by batch.

aiokafka's fetcher parses record batches in C and then wraps every record in a Python
``ConsumerRecord`` of eleven fields (plus two ``len`` calls and a ``tuple`` of the headers):
about a tenth of the worker's CPU per event in the profile (docs/BENCHMARKS.md). The parsed C
record already has what the worker reads — ``offset``, ``timestamp``, ``key``, ``value`` and
``headers`` (a list of ``(str, bytes)``) — so :func:`use_raw_records` makes consumers without
deserializers hand those out directly. Code that needs ``topic``/``partition`` takes them from
the ``TopicPartition`` that ``getmany`` groups records under.

``getmany`` itself still took each record through a generator, a method call and a list
append (13 % of the worker's CPU after the change above). For the same consumers,
:func:`use_raw_records` also makes ``getmany`` take whole record batches: ``list(batch)`` in
C, a slice when ``max_records`` stops inside one. Aborted transactions and control batches are
skipped exactly as aiokafka's ``PartitionRecords._unpack_records`` skips them, and the
positions it leaves are the same.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import aiokafka.errors as errors
from aiokafka.consumer import fetcher

_ORIGINAL = fetcher.PartitionRecords._consumer_record
_ORIGINAL_GETALL = fetcher.FetchResult.getall


def _raw_record(self: Any, tp: Any, record: Any) -> Any:
    if self._key_deserializer is not None or self._value_deserializer is not None:
        return _ORIGINAL(self, tp, record)
    return record


def _record_lists(parts: Any) -> Iterator[tuple[list[Any], int]]:
    """Each record batch's records at or past the fetch offset, with the batch's next offset;
    skips what ``PartitionRecords._unpack_records`` skips (aborted transactions under
    read_committed, control batches), moving ``next_fetch_offset`` past them as it does."""
    records = parts._records
    while records.has_next():
        batch = records.next_batch()
        if parts._check_crcs and not batch.validate_crc():
            raise errors.CorruptRecordException(f"Invalid CRC - {parts._tp}")
        if parts._isolation_level == fetcher.READ_COMMITTED and batch.producer_id is not None:
            parts._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and parts._contains_abort_marker(batch):
                parts._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in parts._aborted_producers:
                parts.next_fetch_offset = batch.next_offset
                continue
        if batch.is_control_batch:
            parts.next_fetch_offset = batch.next_offset
            continue
        got = list(batch)
        if got and got[0].offset < parts.next_fetch_offset:
            start = parts.next_fetch_offset  # a compressed message set fetched from before
            got = [record for record in got if record.offset >= start]
        yield got, batch.next_offset


class _Bulk:
    """What a :class:`PartitionRecords` has left, taken in lists."""

    def __init__(self, parts: Any) -> None:
        self.batches = _record_lists(parts)
        self.left: list[Any] = []
        self.left_next = 0  # the next offset of the batch ``left`` comes from

    def take(self, parts: Any, limit: int | None) -> tuple[list[Any], bool]:
        """Up to ``limit`` records (all of them with None) and whether none are left."""
        out: list[Any] = []
        while True:
            left = self.left
            if left:
                room = len(left) if limit is None else limit - len(out)
                if room < len(left):
                    taken = left[:room]
                    self.left = left[room:]
                    out += taken
                    parts.next_fetch_offset = taken[-1].offset + 1
                    return out, False
                out += left
                self.left = []
                parts.next_fetch_offset = self.left_next
            if limit is not None and len(out) >= limit:
                return out, False
            nxt = next(self.batches, None)
            if nxt is None:
                return out, True
            self.left, self.left_next = nxt
            if not self.left:  # every record of the batch compacted away or fetched before
                parts.next_fetch_offset = self.left_next


def _getall(self: Any, max_records: int | None = None) -> list[Any]:
    parts = self._partition_records
    if (
        parts is None
        or parts._key_deserializer is not None
        or parts._value_deserializer is not None
    ):
        return _ORIGINAL_GETALL(self, max_records)
    bulk = getattr(parts, "_streams_bulk", None)
    if bulk is None:
        started = parts._records_iterator
        if started is None or inspect.getgeneratorstate(started) != inspect.GEN_CREATED:
            return _ORIGINAL_GETALL(self, max_records)  # getone() started on it: carry on
        bulk = parts._streams_bulk = _Bulk(parts)
        parts._records_iterator = _after_bulk(parts, bulk)
    if not self.check_assignment(self._topic_partition):
        return []
    taken, exhausted = bulk.take(parts, max_records)
    self._update_position()
    if exhausted:
        self._partition_records = None
    return taken


def _after_bulk(parts: Any, bulk: _Bulk) -> Iterator[Any]:
    """The record-by-record iterator (``getone``) over what the bulk path left."""
    while True:
        taken, exhausted = bulk.take(parts, 1)
        yield from taken
        if exhausted:
            return


def use_raw_records() -> None:
    """From now on, consumers in this process without deserializers yield parsed records,
    and ``getmany`` takes them batch by batch."""
    fetcher.PartitionRecords._consumer_record = _raw_record
    fetcher.FetchResult.getall = _getall


def use_consumer_records() -> None:
    """Undo :func:`use_raw_records` (tests)."""
    fetcher.PartitionRecords._consumer_record = _ORIGINAL
    fetcher.FetchResult.getall = _ORIGINAL_GETALL
