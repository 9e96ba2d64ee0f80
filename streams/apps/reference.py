"""The reference pipeline, declared with the public API: what ``streams worker`` runs.

Validate (``schemas/event/v1.json``), dedupe by ``event_id``, window per ``user_id``
(tumbling, or hopping when ``STREAMS_WINDOW_STEP_MS`` < size), count/sum/min/max of
``amount``, finals to ``aggregates``. Topic names, window, grace, horizon and emit mode come
from the ``STREAMS_*`` variables (README, "Configuration"). Its state keeps the changelog
name the hand-written pipeline used, ``<app id>-state-changelog``.
"""

from __future__ import annotations

from streams.api import App, Count, Max, Min, Sum, hopping
from streams.config import Settings
from streams.schemas import schema_path


def build(settings: Settings) -> App:
    """The reference app for ``settings``."""
    app = App(settings.app_id)
    events = app.topic(settings.input_topic, schema=schema_path("event", 1), dlq=settings.dlq_topic)
    (
        app.stream(events, key="user_id", timestamp="ts", changelog="{app_id}-state-changelog")
        .dedupe("event_id", horizon_ms=settings.dedupe_horizon_ms)
        .window(
            hopping(settings.window_size_ms, settings.window_step_ms),
            grace_ms=settings.grace_ms,
            late_topic=settings.late_topic,
        )
        .aggregate(count=Count(), sum=Sum("amount"), min=Min("amount"), max=Max("amount"))
        .to(settings.output_topic, emit=settings.emit)
    )
    return app
