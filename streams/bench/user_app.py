"""The ``pipeline-user`` bench scenario's app: example (a)'s shape on the bench's events.

Dedupe, a filter, a map, a tumbling window and five aggregations, declared with the public
API as a user would, on the same input as every other scenario. Its topic has a schema of
its own (the event schema under another ``$id``), so it is validated by the generic compiled
validator, not by the reference pipeline's hand-written one: what a user's pipeline pays.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson

from streams.api import App, Count, CountDistinct, Max, Mean, Sum, tumbling
from streams.schemas import load_schema

MONEY = ("purchase", "refund", "add_to_cart")


def _net(event: dict[str, Any]) -> dict[str, Any]:
    amount = event.get("amount", 0.0)
    return {**event, "net": -amount if event["type"] == "refund" else amount}


def build(app_id: str, topic: str, output: str, state_dir: str | None = None) -> App:
    """The app reading ``topic`` and writing ``output``."""
    schema = load_schema("event", 1)
    schema["$id"] = "urn:streams:bench:user-event"
    path = Path(tempfile.mkdtemp(prefix="bench-user-", dir=state_dir)) / "event.json"
    path.write_bytes(orjson.dumps(schema))
    app = App(app_id)
    events = app.topic(topic, schema=str(path), dlq=f"{app_id}-dlq")
    (
        app.stream(events, key="user_id", timestamp="ts")
        .dedupe("event_id", horizon_ms=3_600_000)
        .filter(lambda e: e["type"] in MONEY)
        .map(_net)
        .window(tumbling(60_000), grace_ms=10_000, late_topic=f"{app_id}-late")
        .aggregate(
            events=Count(),
            revenue=Sum("net"),
            avg=Mean("net"),
            biggest=Max("net"),
            kinds=CountDistinct("type"),
        )
        .to(output)
    )
    return app
