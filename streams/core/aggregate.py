"""The per-(user, window) aggregate and the record it is emitted as.

An aggregate is a plain 4-item list ``[count, sum, min, max]``: ``count`` counts events,
``sum`` adds their amounts as floats (an absent amount adds nothing), ``min`` and ``max`` are
floats over the events that have an amount and ``None`` while none has. A list rather than an
object keeps a million live aggregates small and lets the hot path update them in place.
"""

from __future__ import annotations

from typing import Any

Aggregate = list[Any]


def to_record(
    user_id: str, window_start: int, window_size: int, aggregate: Aggregate, final: bool
) -> dict[str, Any]:
    """The record emitted for ``aggregate``; ``final`` is False for an update of an open window."""
    count, total, low, high = aggregate
    return {
        "key": user_id,
        "window_start": window_start,
        "window_end": window_start + window_size,
        "count": count,
        "sum": total,
        "min": low,
        "max": high,
        "final": final,
    }
