"""Rolling 5-minute spend per card: for every payment, the card's count and total over the
five minutes up to it.

    streams topics create examples/rolling/app.py
    python -m examples.rolling.generate --count 20000 \
        | streams publish card-payments - --key-field card
    streams worker examples/rolling/app.py --exit-when-idle 5
    streams verify examples/rolling/app.py

A sliding window has one window per distinct payment time of a card: the card's payments in
the five minutes up to and including it (``window_end`` is that time plus one). Each is final
two seconds of stream time after its end; a payment whose own window is final by the time it
arrives is late and goes to ``card-payments.late``. A payment whose ``amount`` is not a
number cannot be summed: it is a dead letter.
"""

from streams import App, Count, Sum, sliding

FIVE_MINUTES = 300_000

app = App("rolling-spend")
payments = app.topic("card-payments")

(
    app.stream(payments, key="card", timestamp="ts")
    .window(sliding(FIVE_MINUTES), grace_ms=2_000)
    .aggregate(n=Count(), spent=Sum("amount"))
    .to("spend-last-5-min")
)
