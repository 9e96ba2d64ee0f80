"""Consumed records without the per-record ``ConsumerRecord`` dataclass, taken batch by batch.

aiokafka's fetcher parses record batches in C and then wraps every record in a Python
``ConsumerRecord`` of eleven fields (plus two ``len`` calls and a ``tuple`` of the headers):
about a tenth of the worker's CPU per event in the profile (docs/BENCHMARKS.md). The parsed C
record already has what the worker reads — ``offset``, ``timestamp``, ``key``, ``value`` and
``headers`` (a list of ``(str, bytes)``) — so a :class:`RawRecordsConsumer` hands those out
directly. Code that needs ``topic``/``partition`` takes them from the ``TopicPartition`` that
``getmany`` groups records under.

``getmany`` itself still took each record through a generator, a method call and a list
append (13 % of the worker's CPU after the change above). A :class:`RawRecordsConsumer`'s
``getmany`` takes whole record batches: ``list(batch)`` in C, a slice when ``max_records``
stops inside one. Aborted transactions and control batches are skipped exactly as aiokafka's
``PartitionRecords._unpack_records`` skips them, and the positions it leaves are the same.

Both reach into aiokafka's fetcher, so the code that does lives in :mod:`streams.compat`.
The patch it installs is inert for every other consumer in the process (one in a user's
``enrich`` function, say): they get aiokafka's ``ConsumerRecord`` objects as usual.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

from streams import compat


class RawRecordsConsumer(AIOKafkaConsumer):
    """An ``AIOKafkaConsumer`` whose ``getmany``/``getone`` yield aiokafka's parsed C records
    (``offset``, ``timestamp``, ``key``, ``value``, ``headers``), batch by batch. It takes
    ``AIOKafkaConsumer``'s arguments except the deserializers (records stay bytes)."""

    def __init__(self, *topics: str, **kwargs: Any) -> None:
        compat.use_raw_records()
        super().__init__(
            *topics, key_deserializer=compat.keep_raw, value_deserializer=compat.keep_raw, **kwargs
        )
