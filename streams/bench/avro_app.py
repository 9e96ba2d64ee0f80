"""The ``pipeline-avro`` bench scenario's app: the reference pipeline's shape on Avro.

The same events as every other scenario, Avro-encoded in the registry's wire format
(``avro_event.avsc``, beside this module), read with ``format="avro"``; the reference
pipeline's steps and defaults (``streams/apps/reference.py`` with the default settings): key
``user_id``, event time ``ts``, dedupe by ``event_id`` over an hour, a tumbling 60 s window
with 10 s of grace, count/sum/min/max of ``amount``, final records written in Avro
(``avro_aggregate.avsc``, registered under ``<output>-value``).

How the event schema maps ``schemas/event/v1.json``:

- ``event_id``, ``user_id``: strings; ``type``: an enum of the four event types; ``ts``: a
  ``long`` (``timestamp-millis``, read back as the integer on the wire).
- ``amount`` and ``currency``: unions with null, default null. A JSON event without them
  decodes here with them ``None``; the aggregations skip ``None`` as they skip an absent field.
- ``props``, a free-form object in JSON: a map (or null) of scalars (null, boolean, long,
  double, string). The generator's props (``page``, ``sku``, ``qty``, ``items``) fit; a nested
  object or an array would not, so this is not the whole of what the JSON schema allows.
- Not carried over: the JSON schema's length limits, ``ts >= 0``, ``amount >= 0``, the
  currency pattern, "purchase and refund have an amount", and extra fields (an Avro record has
  its fields only). The Avro decoder checks types, not those rules, as a registry user's
  consumer would: that check is part of what JSON costs and Avro does not.
"""

from __future__ import annotations

from pathlib import Path

from streams.api import App, Count, Max, Min, Sum, tumbling
from streams.config import Settings

HERE = Path(__file__).resolve().parent
EVENT_AVSC = HERE / "avro_event.avsc"
AGGREGATE_AVSC = HERE / "avro_aggregate.avsc"

# The reference pipeline's defaults: a 60 s window, 10 s of grace, an hour's dedupe horizon.
_DEFAULTS = Settings()
WINDOW_MS = _DEFAULTS.window_size_ms
GRACE_MS = _DEFAULTS.grace_ms
HORIZON_MS = _DEFAULTS.dedupe_horizon_ms


def build(app_id: str, topic: str, output: str) -> App:
    """The app reading Avro events from ``topic`` and writing Avro aggregates to ``output``."""
    app = App(app_id)
    events = app.topic(topic, format="avro", dlq=f"{app_id}-dlq")
    aggregates = app.topic(output, format="avro", schema=AGGREGATE_AVSC)
    (
        app.stream(events, key="user_id", timestamp="ts")
        .dedupe("event_id", horizon_ms=HORIZON_MS)
        .window(tumbling(WINDOW_MS), grace_ms=GRACE_MS, late_topic=f"{app_id}-late")
        .aggregate(count=Count(), sum=Sum("amount"), min=Min("amount"), max=Max("amount"))
        .to(aggregates)
    )
    return app
