"""The ``pipeline-process`` bench scenario's app: the card example's shape on the bench's events.

Per user, ``.process`` keeps the event times of the last minute in a list and sets one
event-time timer a minute after each event; the timer forgets a user who went quiet. Bursts
of three within a minute are emitted. Declared with the public API, on the same input as
every other scenario.
"""

from __future__ import annotations

from typing import Any

from streams.api import App

MINUTE = 60_000


def burst(event: dict[str, Any], state: Any) -> dict[str, Any] | None:
    """The card example's ``burst``, by user: the last three event times of the minute are
    all "the third in a minute" needs (the bench's hottest users have thousands a minute)."""
    ts = event["ts"]
    recent = [t for t in state.get("recent", ()) if t > ts - MINUTE]
    state.set("recent", [*recent[-2:], ts])
    state.timer(ts + MINUTE)
    if len(recent) == 2:
        return {"user_id": event["user_id"], "ts": ts, "alert": "3 in a minute"}
    return None


def quiet(user: str, state: Any, at_ms: int) -> None:
    """The card example's ``quiet``: forget a user with nothing in the minute before."""
    if not [t for t in state.get("recent", ()) if t > at_ms - MINUTE]:
        state.clear()


def build(app_id: str, topic: str, output: str) -> App:
    """The app reading ``topic`` and writing ``output``."""
    app = App(app_id)
    events = app.topic(topic, dlq=f"{app_id}-dlq")
    (app.stream(events, key="user_id", timestamp="ts").process(burst, on_timer=quiet).to(output))
    return app
