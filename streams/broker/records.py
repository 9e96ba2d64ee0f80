"""Consumed records without the per-record ``ConsumerRecord`` dataclass.

aiokafka's fetcher parses record batches in C and then wraps every record in a Python
``ConsumerRecord`` of eleven fields (plus two ``len`` calls and a ``tuple`` of the headers):
about a tenth of the worker's CPU per event in the profile (docs/BENCHMARKS.md). The parsed C
record already has what the worker reads — ``offset``, ``timestamp``, ``key``, ``value`` and
``headers`` (a list of ``(str, bytes)``) — so :func:`use_raw_records` makes consumers without
deserializers hand those out directly. Code that needs ``topic``/``partition`` takes them from
the ``TopicPartition`` that ``getmany`` groups records under.
"""

from __future__ import annotations

from typing import Any

from aiokafka.consumer import fetcher

_ORIGINAL = fetcher.PartitionRecords._consumer_record


def _raw_record(self: Any, tp: Any, record: Any) -> Any:
    if self._key_deserializer is not None or self._value_deserializer is not None:
        return _ORIGINAL(self, tp, record)
    return record


def use_raw_records() -> None:
    """From now on, consumers in this process without deserializers yield parsed records."""
    fetcher.PartitionRecords._consumer_record = _raw_record


def use_consumer_records() -> None:
    """Undo :func:`use_raw_records` (tests)."""
    fetcher.PartitionRecords._consumer_record = _ORIGINAL
