"""User sessions: clicks less than 30 minutes apart form a session, with a custom
aggregator for the path the user took.

    streams topics create examples/sessions/app.py
    streams worker examples/sessions/app.py

A session's ``window_start`` is its first click, ``window_end`` its last click plus the gap.
Two sessions merge when a late-ish click falls between them, so the custom aggregator has a
``merge``; its result sorts by time, so it does not depend on the order sessions merged in.
"""

from __future__ import annotations

from typing import Any

from streams import App, Count, CountDistinct, First, Last, session

GAP_MS = 30 * 60 * 1000


class PagePath:
    """The pages of a session in time order: ``[[ts, page], ...]`` kept, pages out."""

    def initial(self) -> list[list[Any]]:
        return []

    def add(self, acc: list[list[Any]], click: dict[str, Any]) -> list[list[Any]]:
        return [*acc, [click["ts"], click["page"]]]

    def merge(self, a: list[list[Any]], b: list[list[Any]]) -> list[list[Any]]:
        return a + b

    def result(self, acc: list[list[Any]]) -> list[str]:
        return [page for _, page in sorted(acc)]


app = App("sessions-app")
clicks = app.topic("clicks")

(
    app.stream(clicks, key="user_id", timestamp="ts")
    .filter(lambda c: isinstance(c.get("page"), str))
    .window(session(GAP_MS), grace_ms=60_000)
    .aggregate(
        clicks=Count(),
        pages=CountDistinct("page"),
        entry=First("page"),
        exit=Last("page"),
        path=PagePath(),
    )
    .to("user-sessions")
)
