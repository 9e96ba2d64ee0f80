"""The ``pipeline-join-stream`` bench scenario's app: the bench's events joined with a second
topic of the same events (``<topic>-b``), inner, within ten minutes.

Both topics are keyed by user (the bench's producer keys), so the twins of an event are on the
same partition of both: the join reads them by ``event_id``, each event pairs with its twin
(and with a duplicate's), and its buffers hold ten minutes and the grace of both sides'
events: the peak RSS of the scenario is what a 10-minute ``within_ms`` costs at the bench's
rate (the generator's clock moves 1 ms per event).
"""

from __future__ import annotations

from streams.api import App

TEN_MINUTES = 600_000


def build(app_id: str, topic: str, output: str) -> App:
    """The app joining ``topic`` with ``<topic>-b`` into ``output``."""
    app = App(app_id)
    twins = app.stream(app.topic(f"{topic}-b", dlq=f"{app_id}-dlq"), key="event_id", timestamp="ts")
    (
        app.stream(app.topic(topic, dlq=f"{app_id}-dlq"), key="event_id", timestamp="ts")
        .join_stream(twins, within_ms=TEN_MINUTES, into="twin", grace_ms=10_000)
        .to(output)
    )
    return app
