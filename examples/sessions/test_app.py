"""The sessions example without a broker."""

from __future__ import annotations

from examples.sessions.app import GAP_MS, app
from streams.testing import TestDriver

MINUTE = 60_000


def click(user: str, page: str, ts: int) -> dict[str, object]:
    return {"user_id": user, "page": page, "ts": ts}


def test_clicks_less_than_a_gap_apart_are_one_session() -> None:
    driver = TestDriver(app)
    for ts, page in [(0, "home"), (5 * MINUTE, "search"), (10 * MINUTE, "item")]:
        driver.send("clicks", click("u1", page, ts), key="u1")
    driver.send("clicks", click("u1", "home", 2 * GAP_MS), key="u1")  # a new session
    # Stream time 2 * gap passes the first session's end (10 min + gap) plus grace.
    (first,) = driver.finals("user-sessions")
    assert first == {
        "key": "u1",
        "window_start": 0,
        "window_end": 10 * MINUTE + GAP_MS,
        "clicks": 3,
        "pages": 3,
        "entry": "home",
        "exit": "item",
        "path": ["home", "search", "item"],
        "final": True,
    }


def test_a_click_between_two_sessions_merges_them() -> None:
    driver = TestDriver(app)
    driver.send("clicks", click("u1", "a", 0), key="u1")
    apart = GAP_MS + 30_000  # just over a gap later: a session of its own
    driver.send("clicks", click("u1", "c", apart), key="u1")
    # Arriving late but within the 60 s grace, less than a gap from both: one session.
    driver.send("clicks", click("u1", "b", GAP_MS - 6_000), key="u1")
    driver.advance(10 * GAP_MS)
    (merged,) = driver.finals("user-sessions")
    assert (merged["window_start"], merged["window_end"]) == (0, apart + GAP_MS)
    assert merged["path"] == ["a", "b", "c"]
    assert (merged["entry"], merged["exit"], merged["clicks"]) == ("a", "c", 3)


def test_a_click_without_a_page_is_filtered_and_bad_json_dead_lettered() -> None:
    driver = TestDriver(app)
    driver.send("clicks", {"user_id": "u1", "ts": 0}, key="u1")
    driver.send("clicks", b"[1, 2]", key="u1")
    driver.send("clicks", {"user_id": "u1", "page": "x"}, key="u1")  # no ts: dead letter
    driver.advance(10 * GAP_MS)
    assert driver.finals("user-sessions") == []
    stages = [d.headers["error.stage"] for d in driver.dead_letters("clicks")]
    assert stages == ["validate", "timestamp"]
