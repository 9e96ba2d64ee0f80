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
_ORIGINAL_GETONE = fetcher.FetchResult.getone


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
    bulk = _bulk_of(self)
    if bulk is None:
        return _ORIGINAL_GETALL(self, max_records)
    return _take(self, bulk, max_records)


def _getone(self: Any) -> Any:
    bulk = getattr(self, "_streams_bulk", None)
    if bulk is None:  # never taken in bulk: aiokafka's own path
        return _ORIGINAL_GETONE(self)
    taken = _take(self, bulk, 1)
    return taken[0] if taken else None


def _bulk_of(result: Any) -> _Bulk | None:
    """The bulk state of a fetch result, made on first use; None when its records need
    aiokafka's own path (deserializers, or ``getone`` already started on them).

    It lives on the ``FetchResult``, never on its ``PartitionRecords``: a reference back
    would make a cycle that keeps each fetched buffer alive until a full collection, which
    the worker runs rarely (a 1M-key worker peaked 57 MB higher with one, from aiokafka's
    unstarted iterator).
    """
    bulk: _Bulk | None = getattr(result, "_streams_bulk", None)
    if bulk is not None:
        return bulk
    parts = result._partition_records
    if (
        parts is None
        or parts._key_deserializer is not None
        or parts._value_deserializer is not None
    ):
        return None
    started = parts._records_iterator
    if started is None or inspect.getgeneratorstate(started) != inspect.GEN_CREATED:
        return None
    # aiokafka's own record iterator, never started, is a generator holding its
    # PartitionRecords: a cycle until it runs out, which it never does here.
    parts._records_iterator = iter(())
    started.close()
    bulk = result._streams_bulk = _Bulk(parts)
    return bulk


def _take(result: Any, bulk: _Bulk, limit: int | None) -> list[Any]:
    parts = result._partition_records
    if parts is None or not result.check_assignment(result._topic_partition):
        result._streams_bulk = None
        return []
    taken, exhausted = bulk.take(parts, limit)
    result._update_position()
    if exhausted:
        result._partition_records = None
        result._streams_bulk = None
    return taken


def use_raw_records() -> None:
    """From now on, consumers in this process without deserializers yield parsed records,
    and ``getmany`` takes them batch by batch."""
    fetcher.PartitionRecords._consumer_record = _raw_record
    fetcher.FetchResult.getall = _getall
    fetcher.FetchResult.getone = _getone


def use_consumer_records() -> None:
    """Undo :func:`use_raw_records` (tests)."""
    fetcher.PartitionRecords._consumer_record = _ORIGINAL
    fetcher.FetchResult.getall = _ORIGINAL_GETALL
    fetcher.FetchResult.getone = _ORIGINAL_GETONE
