"""``join_stream`` (DESIGN.md, "Stream-stream joins and sliding windows"): the contract's
words, one behaviour per test, through the test driver (the worker's loops)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from streams import App, Count, tumbling
from streams.errors import DeclarationError, StreamsError
from streams.runtime.topics import check_copartitioned
from streams.testing import TestDriver
from streams.topology.plan import plan


def clicks_and_views(how: str = "inner", within: int = 100, grace: int = 10) -> App:
    app = App("ads")
    views = app.stream(app.topic("views"), key="user", timestamp="ts")
    (
        app.stream(app.topic("clicks"), key="user", timestamp="ts")
        .join_stream(views, within_ms=within, into="view", how=how, grace_ms=grace)
        .to("out")
    )
    return app


def send(driver: TestDriver, topic: str, user: str, ts: int, **extra: Any) -> None:
    driver.send(topic, {"user": user, "ts": ts, **extra}, key=user)


def test_each_pair_once_when_its_second_event_comes_with_the_later_event_time() -> None:
    driver = TestDriver(clicks_and_views())
    send(driver, "views", "u", 100, v=1)
    send(driver, "clicks", "u", 150, c=1)  # pairs with view 1
    send(driver, "views", "u", 200, v=2)  # pairs with click 1 (50 apart)
    send(driver, "clicks", "u", 320, c=2)  # 120 from view 2: no pair
    out = driver.records("out")
    assert [(r.value["c"], r.value["view"]["v"]) for r in out] == [(1, 1), (1, 2)]
    assert [r.key for r in out] == ["u", "u"]


def test_the_two_sides_of_one_fetch_are_taken_in_event_time_order() -> None:
    """A view 30 ms after a click, published in the same fetch before it: taken first by
    event time, the click is not late (grace 10) and they pair."""
    driver = TestDriver(clicks_and_views())
    driver.publish("clicks", {"user": "u", "ts": 1_000, "c": 1}, key="u")
    driver.publish("views", {"user": "u", "ts": 970, "v": 1}, key="u")
    driver.publish("views", {"user": "u", "ts": 1_030, "v": 2}, key="u")
    driver.process()
    assert sorted(v["view"]["v"] for v in driver.values("out")) == [1, 2]
    assert driver.late("clicks") == []


def test_a_left_miss_comes_once_when_stream_time_passes_ts_within_grace() -> None:
    driver = TestDriver(clicks_and_views(how="left", within=100, grace=10))
    send(driver, "clicks", "u", 1_000)
    send(driver, "views", "x", 1_110)  # stream time = 1000 + 100 + 10: not past yet
    assert driver.values("out") == []
    send(driver, "views", "x", 1_111)
    assert driver.values("out") == [{"user": "u", "ts": 1_000, "view": None}]
    driver.restart()  # the miss is not emitted again after a restore
    driver.advance(10**9)
    assert len(driver.values("out")) == 1


def test_a_left_event_with_pairs_never_misses() -> None:
    driver = TestDriver(clicks_and_views(how="left"))
    send(driver, "clicks", "u", 1_000)
    send(driver, "views", "u", 1_050)
    driver.advance(10**9)
    assert [v["view"] is None for v in driver.values("out")] == [False]


def test_late_events_of_either_side_go_to_their_topics_late_and_join_nothing() -> None:
    driver = TestDriver(clicks_and_views(grace=10))
    send(driver, "views", "u", 1_000)
    send(driver, "clicks", "u", 989)  # 989 + 10 < 1000: late
    send(driver, "views", "u", 985)  # late too
    assert driver.values("out") == []
    assert [r.value["ts"] for r in driver.late("clicks")] == [989]
    assert [r.value["ts"] for r in driver.late("views")] == [985]
    assert driver.late("views")[0].headers["source.topic"] == "views"


def test_a_side_without_its_key_or_timestamp_goes_to_its_own_dead_letters() -> None:
    driver = TestDriver(clicks_and_views())
    driver.send("views", {"ts": 5}, key="u")
    driver.send("clicks", {"user": "u", "ts": "soon"}, key="u")
    (view,) = driver.dead_letters("views")
    (click,) = driver.dead_letters("clicks")
    assert view.headers["error.stage"] == "key"
    assert view.headers["source.topic"] == "views"
    assert click.headers["error.stage"] == "timestamp"


def test_either_side_may_come_after_a_group_by() -> None:
    app = App("regrouped")
    views = app.stream(app.topic("views"), key="id", timestamp="ts").group_by("user")
    (
        app.stream(app.topic("clicks"), key="id", timestamp="ts")
        .group_by("user")
        .join_stream(views, within_ms=100, into="view")
        .window(tumbling(1_000))
        .aggregate(n=Count())
        .to("out")
    )
    driver = TestDriver(app, partitions=2)
    driver.send("views", {"id": "v1", "user": "u", "ts": 10}, key="v1")
    driver.send("clicks", {"id": "c1", "user": "u", "ts": 20}, key="c1")
    driver.advance(10**9)
    assert [(f["key"], f["n"]) for f in driver.finals("out")] == [("u", 1)]


def test_not_copartitioned_inputs_stop_the_worker_with_one_line() -> None:
    planned = plan(clicks_and_views().decl)
    with pytest.raises(StreamsError, match="not co-partitioned; re-key one side with") as caught:
        check_copartitioned(planned, {"clicks": 6, "views": 3})
    assert "\n" not in str(caught.value)
    check_copartitioned(planned, {"clicks": 6, "views": 6})


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda a, s, r: s.join_stream(r, within_ms=-1, into="v"), "within_ms) must be an integer"),
        (lambda a, s, r: s.join_stream(r, within_ms=5, into="v", how="outer"), "'inner' or 'left'"),
        (lambda a, s, r: s.join_stream(s, within_ms=5, into="v"), "cannot be joined with itself"),
        (
            lambda a, s, r: (r.to("copy"), s.join_stream(r, within_ms=5, into="v")),
            "already ends with .to",
        ),
        (
            lambda a, s, r: (
                s.join_stream(r, within_ms=5, into="v").to("a"),
                a.stream(a.topic("x"), key="k").join_stream(r, within_ms=5, into="v"),
            ),
            "already joined at test_join.py:",
        ),
        (
            lambda a, s, r: s.join_stream(App("other").stream("t", key="k"), within_ms=5, into="v"),
            "a stream of another app",
        ),
        (
            lambda a, s, r: s.join_stream(r.dedupe("id"), within_ms=5, into="v"),
            "may only have stateless operators",
        ),
    ],
)
def test_a_bad_join_declaration_stops_with_one_line_naming_its_line(
    declare: Any, message: str
) -> None:
    app = App("bad")
    left = app.stream(app.topic("l"), key="k", timestamp="ts")
    right = app.stream(app.topic("r"), key="k", timestamp="ts")
    with pytest.raises(DeclarationError, match=re.escape(message)) as caught:
        declare(app, left, right)
    assert str(caught.value).startswith("test_join.py:")
    assert "\n" not in str(caught.value)
