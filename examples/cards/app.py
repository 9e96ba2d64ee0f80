"""Card fraud with your own stateful processor: alert on a card paying three times within a
minute, and report cards that went quiet, forgetting them.

    streams topics create examples/cards/app.py
    python -m examples.cards.generate --count 20000 | streams publish payments - --key-field card
    streams worker examples/cards/app.py

``burst`` keeps, per card, the event times of its payments in the last minute and sets an
event-time timer a minute after each; ``quiet`` runs when a card's stream time reaches one of
them and, when no payment came in the minute before it, reports the card quiet and clears its
state (timers included). ``ttl_ms`` bounds state for cards that stop paying mid-burst. Each
call's state changes apply only when it returns: a call that raises (a payment without a
numeric ``amount`` here) leaves nothing behind and sends the payment to ``payments.dlq``.
"""

from __future__ import annotations

from typing import Any

from streams import App

MINUTE = 60_000
DAY = 24 * 60 * MINUTE


def burst(payment: dict[str, Any], state: Any) -> dict[str, Any] | None:
    """Called per payment, in offset order: three payments of a card within a minute is an
    alert."""
    total = state.get("total", 0.0) + float(payment["amount"])  # raises on a bad amount
    # The card's payments of the last minute; the last three are all "the third in a
    # minute" needs (a busy card would otherwise keep a long list).
    recent = [t for t in state.get("recent", []) if t > payment["ts"] - MINUTE]
    state.set("recent", [*recent[-2:], payment["ts"]])
    state.set("total", total)
    state.timer(payment["ts"] + MINUTE)  # on_timer runs when stream time reaches it
    if len(recent) == 2:
        return {"card": payment["card"], "ts": payment["ts"], "alert": "3 in a minute"}
    return None


def quiet(card: str, state: Any, at_ms: int) -> dict[str, Any] | None:
    """A timer of this card fired: with no payment in the minute before, it went quiet."""
    if [t for t in state.get("recent", []) if t > at_ms - MINUTE]:
        return None
    spent = state.get("total", 0.0)
    state.clear()  # bounded state: forget idle cards (their other timers too)
    return {"card": card, "ts": at_ms, "alert": "quiet", "spent": spent}


app = App("cards-app")
payments = app.topic("payments")

(
    app.stream(payments, key="card", timestamp="ts")
    .process(burst, on_timer=quiet, ttl_ms=DAY)
    .to("card-alerts")
)
