"""A slow, plainly written model of the processing semantics, to check the fast core against.

It reads a whole partition at once and, at the end of input, closes every window that is still
open, so its finals are what the pipeline emits once stream time has passed every window. The
tests compare :class:`~streams.core.processor.PartitionProcessor` with it, and ``streams verify``
audits a pipeline's output with it. It keeps every amount and favours clarity over speed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from streams.core.config import CoreConfig

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True)
class Recomputed:
    """What one partition must produce: finals in emission order, late and duplicate indices."""

    finals: list[dict[str, Any]]
    late: list[int]
    duplicates: list[int]


def recompute(
    events_by_partition: Mapping[P, Sequence[Mapping[str, Any]]], config: CoreConfig
) -> dict[P, Recomputed]:
    """:func:`recompute_partition` for each partition (partitions are independent)."""
    return {
        partition: recompute_partition(events, config)
        for partition, events in events_by_partition.items()
    }


def recompute_partition(events: Sequence[Mapping[str, Any]], config: CoreConfig) -> Recomputed:
    """Run the semantics event by event over one partition's events in offset order."""
    size = config.window_size_ms
    step = config.window_step_ms
    grace = config.grace_ms
    horizon = config.dedupe_horizon_ms

    stream_time: int | None = None
    # event_id -> the largest ts it was accepted with: some earlier acceptance is within the
    # horizon exactly when the one with the largest ts is
    accepted_ts: dict[str, int] = {}
    # window start -> user_id -> amount of each accepted event (None when absent), in order
    amounts: dict[int, dict[str, list[float | None]]] = {}
    finals: list[dict[str, Any]] = []
    late: list[int] = []
    duplicates: list[int] = []

    def is_closed(start: int) -> bool:
        return stream_time is not None and start + size + grace <= stream_time

    for index, event in enumerate(events):
        event_id = event["event_id"]
        ts = event["ts"]

        earlier_ts = accepted_ts.get(event_id)
        if (
            earlier_ts is not None
            and stream_time is not None
            and earlier_ts + horizon > stream_time
        ):
            duplicates.append(index)
            continue

        # Every multiple of step in (ts - size, ts].
        starts = range(ts - ts % step, ts - size, -step)
        open_starts = [start for start in starts if not is_closed(start)]
        if not open_starts:
            late.append(index)
            continue

        amount = event.get("amount")
        for start in open_starts:
            per_user = amounts.setdefault(start, {})
            per_user.setdefault(event["user_id"], []).append(
                None if amount is None else float(amount)
            )

        accepted_ts[event_id] = ts if earlier_ts is None else max(earlier_ts, ts)
        stream_time = ts if stream_time is None else max(stream_time, ts)

        for start in sorted(amounts):
            if is_closed(start):
                finals.extend(_finals(start, size, amounts.pop(start)))

    for start in sorted(amounts):
        finals.extend(_finals(start, size, amounts[start]))
    return Recomputed(finals=finals, late=late, duplicates=duplicates)


def _finals(
    start: int, size: int, amounts_by_user: dict[str, list[float | None]]
) -> list[dict[str, Any]]:
    records = []
    for user_id in sorted(amounts_by_user):
        amounts = amounts_by_user[user_id]
        present = [amount for amount in amounts if amount is not None]
        # Added one at a time in arrival order, as the streaming aggregate does: float sums
        # depend on the order.
        total = 0.0
        for amount in present:
            total += amount
        records.append(
            {
                "key": user_id,
                "window_start": start,
                "window_end": start + size,
                "count": len(amounts),
                "sum": total,
                "min": min(present) if present else None,
                "max": max(present) if present else None,
                "final": True,
            }
        )
    return records
