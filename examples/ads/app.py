"""Ad attribution: each click joined with the views of its user within ten minutes of it.

    streams topics create examples/ads/app.py
    python -m examples.ads.generate --count 20000 > ads.jsonl   # views and clicks
    streams worker examples/ads/app.py

Views and clicks are two topics, both keyed by ``user`` with the same partition count
(co-partitioned). ``join_stream`` pairs every click with every view of the same user whose
event time is at most ten minutes apart, each pair emitted once, when its second event is
processed, with the later event time. ``how="left"``: a click that no view joined is emitted
once, with ``"view": null``, when stream time passes its time plus ten minutes plus the
grace. Events more than the grace behind stream time are late: they go to their topic's
``.late`` and join nothing.
"""

from __future__ import annotations

from streams import App

TEN_MINUTES = 600_000

app = App("ads-app")
views = app.stream(app.topic("ad-views"), key="user", timestamp="ts")

(
    app.stream(app.topic("ad-clicks"), key="user", timestamp="ts")
    .join_stream(views, within_ms=TEN_MINUTES, into="view", how="left", grace_ms=5_000)
    .to("attributed-clicks")
)
