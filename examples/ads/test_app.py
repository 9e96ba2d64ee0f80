"""The ad example without a broker."""

from __future__ import annotations

from examples.ads.app import TEN_MINUTES, app
from streams.testing import TestDriver


def view(driver: TestDriver, user: str, ts: int, ad: str = "a") -> None:
    driver.send("ad-views", {"user": user, "ts": ts, "ad": ad}, key=user)


def click(driver: TestDriver, user: str, ts: int) -> None:
    driver.send("ad-clicks", {"user": user, "ts": ts}, key=user)


def test_a_click_pairs_with_the_views_of_its_user_within_ten_minutes() -> None:
    driver = TestDriver(app)
    view(driver, "u1", 1_000, "a")
    view(driver, "u2", 1_500, "other user")
    click(driver, "u1", 2_000)
    assert driver.values("attributed-clicks") == [
        {"user": "u1", "ts": 2_000, "view": {"user": "u1", "ts": 1_000, "ad": "a"}}
    ]
    # A view after the click, within ten minutes: its pair comes when the view does, with
    # the later event time; one more than ten minutes after pairs with nothing.
    view(driver, "u1", 2_000 + TEN_MINUTES, "b")
    view(driver, "u1", 2_001 + TEN_MINUTES, "too late")
    assert [v["view"]["ad"] for v in driver.values("attributed-clicks")] == ["a", "b"]
    assert driver.records("attributed-clicks")[-1].key == "u1"


def test_a_click_no_view_joined_comes_out_once_when_nothing_can_join_it_any_more() -> None:
    driver = TestDriver(app)
    click(driver, "u1", 1_000)
    assert driver.values("attributed-clicks") == []
    view(driver, "u2", 1_000 + TEN_MINUTES + 5_000)  # stream time at the click's limit
    assert driver.values("attributed-clicks") == []
    view(driver, "u2", 1_000 + TEN_MINUTES + 5_001)  # past it: strictly greater
    assert driver.values("attributed-clicks") == [{"user": "u1", "ts": 1_000, "view": None}]
    driver.advance(10**9)
    assert len(driver.values("attributed-clicks")) == 1


def test_an_event_more_than_the_grace_behind_is_late_and_joins_nothing() -> None:
    driver = TestDriver(app)
    view(driver, "u1", 100_000)
    click(driver, "u1", 94_000)  # 6 s behind stream time, grace 5 s
    assert driver.values("attributed-clicks") == []
    assert [r.value["ts"] for r in driver.late("ad-clicks")] == [94_000]
