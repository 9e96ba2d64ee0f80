"""The ``pipeline-sliding`` bench scenario's app: rolling 5-minute spend per user.

The rolling example's shape (``sliding(300_000)`` with ``Count()`` and ``Sum("amount")``) on
the bench's events, declared with the public API, on the same input as every other scenario.
A sliding window has one window per distinct event time of a key, so nearly every event makes
a final record: the scenario writes about as many records as it reads.
"""

from __future__ import annotations

from streams.api import App, Count, Sum, sliding

FIVE_MINUTES = 300_000


def build(app_id: str, topic: str, output: str) -> App:
    """The app reading ``topic`` and writing ``output``."""
    app = App(app_id)
    events = app.topic(topic, dlq=f"{app_id}-dlq")
    (
        app.stream(events, key="user_id", timestamp="ts")
        .window(sliding(FIVE_MINUTES), grace_ms=10_000, late_topic=f"{app_id}-late")
        .aggregate(events=Count(), spent=Sum("amount"))
        .to(output)
    )
    return app
