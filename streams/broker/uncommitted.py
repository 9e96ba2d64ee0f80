"""What a consumer has handed to processing and not yet committed, per input partition.

A worker that stops (or dies) now leaves exactly these records to the partition's next owner,
which re-reads them from the last committed offset; nothing else is at stake. The worker
exports the total as ``streams_buffered_events`` and names the ranges in its last log line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition


@dataclass
class _Range:
    first: int  # the first offset not committed
    next: int  # the offset after the last record fetched
    records: int  # records fetched in between (transaction markers take offsets too)


class Uncommitted:
    """Per input partition: the records fetched since the last commit that covered them."""

    def __init__(self) -> None:
        self._ranges: dict[TopicPartition, _Range] = {}

    def fetched(self, tp: TopicPartition, first: int, next_offset: int, records: int) -> None:
        """``records`` records from offset ``first`` up to ``next_offset`` were handed out."""
        held = self._ranges.get(tp)
        if held is None:
            self._ranges[tp] = _Range(first, next_offset, records)
        else:
            held.next = next_offset
            held.records += records

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Offsets were committed (or their transaction was): what they cover is safe."""
        for tp, offset in offsets.items():
            held = self._ranges.get(tp)
            if held is not None and offset >= held.next:
                del self._ranges[tp]

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """The partitions were rewound to their committed offsets, or revoked: what was
        fetched is re-read by whoever processes them next, and no longer held here."""
        for tp in tps:
            self._ranges.pop(tp, None)

    def total(self) -> int:
        """Records fetched and not yet committed, over every partition."""
        return sum(held.records for held in list(self._ranges.values()))

    def describe(self) -> str:
        """One line: what is not committed, and who takes it over."""
        # A copy first: the stop watchdog calls this from its own thread.
        held = sorted(list(self._ranges.items()), key=lambda item: item[0])
        if not held:
            return "every event processed was committed"
        ranges = ", ".join(
            f"{tp.topic}[{tp.partition}] offsets {r.first}..{r.next - 1}" for tp, r in held
        )
        records = sum(r.records for _, r in held)
        return (
            f"{records} events were not committed ({ranges}); the partitions' next owner "
            "re-reads them from the last committed offsets"
        )
