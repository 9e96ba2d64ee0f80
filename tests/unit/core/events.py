"""Shared test data for the core: events as the shell hands them over, small configs."""

from __future__ import annotations

from typing import Any

from streams.core import CoreConfig

# Small numbers so that windows close after a handful of events.
TUMBLING = CoreConfig(
    window_size_ms=10, window_step_ms=10, grace_ms=5, idle_timeout_ms=30, dedupe_horizon_ms=100
)


def event(
    event_id: str, ts: int, user_id: str = "u", amount: float | None = None
) -> dict[str, Any]:
    """A validated event as the shell hands it over."""
    fields: dict[str, Any] = {
        "event_id": event_id,
        "type": "page_view",
        "user_id": user_id,
        "ts": ts,
    }
    if amount is not None:
        fields["amount"] = amount
    return fields
