"""``.process`` and operators after ``.aggregate`` (DESIGN.md, "Your own stateful processors"):
the contract's words, one behaviour per test, through the test driver (the worker's loops)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from streams import App, Count, tumbling
from streams.core.compile import compile_segment
from streams.core.segment import SegmentTask, run_sync
from streams.errors import DeclarationError, StateMismatchError
from streams.testing import TestDriver
from streams.topology.plan import plan

MINUTE = 60_000


def burst(event: dict[str, Any], state: Any) -> Any:
    recent = [t for t in state.get("recent", []) if t > event["ts"] - MINUTE]
    recent.append(event["ts"])
    state.set("recent", recent)
    state.timer(event["ts"] + MINUTE)
    if len(recent) == 3:
        return {"card": event["card"], "ts": event["ts"], "alert": "3 in a minute"}
    return None


def quiet(key: str, state: Any, at_ms: int) -> Any:
    if not [t for t in state.get("recent", []) if t > at_ms - MINUTE]:
        state.clear()
        return {"card": key, "quiet_since": at_ms - MINUTE}
    return None


def cards(**process: Any) -> App:
    app = App("cards")
    payments = app.topic("payments")
    (
        app.stream(payments, key="card", timestamp="ts")
        .process(process.pop("fn", burst), **{"on_timer": quiet, **process})
        .to("alerts")
    )
    return app


def pay(driver: TestDriver, card: str, ts: int, **extra: Any) -> None:
    driver.send("payments", {"card": card, "ts": ts, **extra}, key=card)


def test_the_contracts_example_alerts_on_three_in_a_minute_and_forgets_quiet_cards() -> None:
    driver = TestDriver(cards())
    for ts in (1_000, 20_000, 50_000):
        pay(driver, "c1", ts)
    assert driver.values("alerts") == [{"card": "c1", "ts": 50_000, "alert": "3 in a minute"}]
    assert driver.state("alerts", "c1") == {"recent": [1_000, 20_000, 50_000]}
    assert driver.timers("alerts", "c1") == [61_000, 80_000, 110_000]
    # Stream time reaches 61,000 and 80,000 (a later payment of another card on the same
    # partition): those timers fire after that event; the card is not quiet yet.
    pay(driver, "c2", 90_000)
    assert driver.timers("alerts", "c1") == [110_000]
    # Idle advance: stream time follows the wall clock, the last timer fires, state goes.
    driver.advance(10 * MINUTE)
    assert driver.values("alerts")[-2:] == [
        {"card": "c1", "quiet_since": 50_000},
        {"card": "c2", "quiet_since": 90_000},
    ]
    assert driver.state("alerts", "c1") == {}
    assert driver.timers("alerts", "c1") == []


def test_due_timers_fire_in_at_then_key_order_after_the_event_that_advanced_time() -> None:
    def arm(event: dict[str, Any], state: Any) -> Any:
        state.timer(event["at"])
        return {"event": event["card"]}

    def fired(key: str, state: Any, at_ms: int) -> Any:
        return {"timer": key, "at": at_ms}

    driver = TestDriver(cards(fn=arm, on_timer=fired))
    pay(driver, "b", 1, at=50)
    pay(driver, "a", 2, at=50)
    pay(driver, "c", 3, at=40)
    pay(driver, "d", 60, at=1_000)  # advances stream time past 40 and 50
    assert driver.values("alerts") == [
        {"event": "b"},
        {"event": "a"},
        {"event": "c"},
        {"event": "d"},
        {"timer": "c", "at": 40},
        {"timer": "a", "at": 50},
        {"timer": "b", "at": 50},
    ]
    # A timer's values have its key and event time at_ms (the output's key here).
    assert [r.key for r in driver.records("alerts")][-3:] == ["c", "a", "b"]


def test_a_call_that_raises_leaves_no_trace_and_is_a_dead_letter() -> None:
    def careless(event: dict[str, Any], state: Any) -> Any:
        state.set("n", state.get("n", 0) + 1)
        state.timer(event["ts"] + 10)
        if event.get("boom"):
            raise RuntimeError("boom after changing state")
        return None

    driver = TestDriver(cards(fn=careless))
    pay(driver, "c1", 100)
    pay(driver, "c1", 200, boom=True)
    assert driver.state("alerts", "c1") == {"n": 1}
    assert driver.timers("alerts", "c1") == [110]
    (letter,) = driver.dead_letters("payments")
    assert letter.value == {"card": "c1", "ts": 200, "boom": True}
    assert letter.headers["error.stage"] == "process"
    assert letter.headers["error.message"] == "RuntimeError: boom after changing state"
    assert letter.headers["error.operator"].startswith("test_process.py:")


def test_a_timer_that_raises_is_gone_its_changes_dropped_and_a_dead_letter() -> None:
    def arm(event: dict[str, Any], state: Any) -> Any:
        state.set("armed", True)
        state.timer(event["ts"] + 5)
        return None

    def broken(key: str, state: Any, at_ms: int) -> Any:
        state.set("armed", False)
        raise KeyError("no such thing")

    driver = TestDriver(cards(fn=arm, on_timer=broken))
    pay(driver, "c1", 100)
    pay(driver, "c2", 200)  # fires c1's timer at 105
    assert driver.state("alerts", "c1") == {"armed": True}
    assert driver.timers("alerts", "c1") == []
    (letter,) = driver.dead_letters("payments")
    assert letter.key == "c1"
    assert letter.value == {"timer_ms": 105}
    assert letter.headers["error.stage"] == "timer"
    assert letter.headers["error.message"] == "KeyError: 'no such thing'"
    assert "source.offset" not in letter.headers


@pytest.mark.parametrize(
    ("misuse", "message"),
    [
        (lambda e, s: 5, "process must return None, a dict or a list of dicts, got int"),
        (lambda e, s: [e, 3], "process must return None, a dict or a list of dicts, got list"),
        (lambda e, s: s.set("x", {1, 2}), "state.set('x', ...): the value is not JSON"),
        (lambda e, s: s.timer("soon"), "state.timer('soon'): a timer is an integer >= 0"),
        (lambda e, s: s.timer(-1), "state.timer(-1): a timer is an integer >= 0"),
        (lambda e, s: s.cancel(1.5), "state.cancel(1.5): a timer is an integer >= 0"),
        (lambda e, s: s.timer(2**63), "state.timer(9223372036854775808): a timer is at most"),
    ],
)
def test_bad_returns_and_bad_uses_of_state_are_dead_letters_with_no_change(
    misuse: Any, message: str
) -> None:
    def fn(event: dict[str, Any], state: Any) -> Any:
        state.set("before", 1)
        if event["ts"] == 2:
            try:  # even a function that swallows the error does not get its changes kept
                return misuse(event, state)
            except ValueError:
                return None
        return None

    driver = TestDriver(cards(fn=fn))
    pay(driver, "c1", 1)
    driver.send("payments", {"card": "c2", "ts": 2}, key="c2")
    assert driver.state("alerts", "c2") == {}
    (letter,) = driver.dead_letters("payments")
    assert letter.headers["error.stage"] == "process"
    assert message in letter.headers["error.message"]


def test_a_timer_in_a_process_without_on_timer_is_a_dead_letter() -> None:
    app = App("cards")
    (
        app.stream(app.topic("payments"), key="card", timestamp="ts")
        .process(lambda e, s: s.timer(5))
        .to("alerts")
    )
    driver = TestDriver(app)
    pay(driver, "c1", 1)
    (letter,) = driver.dead_letters("payments")
    assert "without on_timer" in letter.headers["error.message"]


def test_ttl_forgets_keys_untouched_for_that_much_stream_time_timers_included() -> None:
    def keep(event: dict[str, Any], state: Any) -> Any:
        state.set("last", event["ts"])
        state.timer(event["ts"] + 10_000)
        return None

    driver = TestDriver(cards(fn=keep, on_timer=lambda k, s, at: None, ttl_ms=1_000))
    pay(driver, "old", 0)
    pay(driver, "new", 999)
    assert driver.state("alerts", "old") == {"last": 0}
    pay(driver, "new", 1_000)  # stream time 1,000: "old" was last touched at 0
    assert driver.state("alerts", "old") == {}
    assert driver.timers("alerts", "old") == []
    assert driver.state("alerts", "new") == {"last": 1_000}


def test_state_is_restored_from_the_changelog_timers_included() -> None:
    driver = TestDriver(cards())
    for ts in (1_000, 20_000):
        pay(driver, "c1", ts)
    driver.restart()
    assert driver.state("alerts", "c1") == {"recent": [1_000, 20_000]}
    assert driver.timers("alerts", "c1") == [61_000, 80_000]
    pay(driver, "c1", 30_000)
    assert driver.values("alerts") == [{"card": "c1", "ts": 30_000, "alert": "3 in a minute"}]


def test_a_changed_process_declaration_is_a_changed_operator() -> None:
    def other(event: dict[str, Any], state: Any) -> Any:
        return None

    first = plan(cards().decl).segments[0]
    second = plan(cards(fn=other).decl).segments[0]
    task = SegmentTask(compile_segment(first), idle_timeout_ms=1_000)
    task.finish_restore()
    changelog = task.drain_changelog()
    restored = SegmentTask(compile_segment(second), idle_timeout_ms=1_000)
    for key, value in changelog:
        restored.apply_changelog(key, value)
    with pytest.raises(StateMismatchError, match=r"fn: .*burst.* -> .*other"):
        restored.finish_restore()


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda s: s.process("fn"), ".process(fn) needs a function"),
        (lambda s: s.process(burst, ttl_ms=0), "ttl_ms) must be a positive integer"),
        (lambda s: s.process(burst, ttl_ms=1.5), "ttl_ms) must be a positive integer"),
        (lambda s: s.process(burst, on_timer=lambda k, s: None), "must take 3 arguments"),
        (lambda s: s.process(lambda e: None), ".process(fn) must take 2 arguments"),
    ],
)
def test_a_bad_process_declaration_stops_with_one_line_naming_its_line(
    declare: Any, message: str
) -> None:
    app = App("bad")
    stream = app.stream(app.topic("in"), key="k")
    with pytest.raises(DeclarationError, match=re.escape(message)) as caught:
        declare(stream)
    assert str(caught.value).startswith("test_process.py:")
    assert "\n" not in str(caught.value)


def lockouts() -> App:
    app = App("logins")
    (
        app.stream(app.topic("logins"), key="user", timestamp="ts")
        .window(tumbling(MINUTE))
        .aggregate(failures=Count())
        .filter(lambda w: w["failures"] >= 5)
        .map(lambda w: {"user": w["key"], "at": w["window_end"], "failures": w["failures"]})
        .to("lockouts")
    )
    return app


def test_operators_after_aggregate_see_final_records() -> None:
    driver = TestDriver(lockouts())
    for n in range(5):
        driver.send("logins", {"user": "u1", "ts": 1_000 + n}, key="u1")
    for n in range(4):
        driver.send("logins", {"user": "u2", "ts": 2_000 + n}, key="u2")
    driver.advance(10 * MINUTE)
    assert driver.values("lockouts") == [{"user": "u1", "at": MINUTE, "failures": 5}]
    assert [r.key for r in driver.records("lockouts")] == ["u1"]


def test_final_records_go_on_with_event_time_window_end_minus_one() -> None:
    app = App("times")
    (
        app.stream(app.topic("in"), key="k", timestamp="ts")
        .window(tumbling(100))
        .aggregate(n=Count())
        .group_by(lambda w: w["key"] + "!")
        .to("out")
    )
    driver = TestDriver(app)
    driver.send("in", {"k": "a", "ts": 130}, key="a")
    driver.advance(10 * MINUTE)
    (hop,) = driver.records("times-out-repartition")
    assert hop.key == "a!"
    assert hop.timestamp == 199
    assert driver.values("out")[0]["window_end"] == 200


def test_a_process_after_aggregate_keeps_state_per_aggregation_key() -> None:
    def streak(window: dict[str, Any], state: Any) -> Any:
        streak = state.get("streak", 0) + 1 if window["n"] >= 2 else 0
        state.set("streak", streak)
        return {"key": window["key"], "streak": streak} if streak >= 2 else None

    app = App("streaks")
    (
        app.stream(app.topic("in"), key="k", timestamp="ts")
        .window(tumbling(100))
        .aggregate(n=Count())
        .process(streak)
        .to("out")
    )
    driver = TestDriver(app)
    for ts in (10, 20, 110, 120, 210, 220):
        driver.send("in", {"k": "a", "ts": ts}, key="a")
    driver.advance(10 * MINUTE)
    assert driver.values("out") == [{"key": "a", "streak": 2}, {"key": "a", "streak": 3}]
    assert driver.state("out", "a") == {"streak": 3}


def test_updates_directly_after_aggregate_keep_their_meaning_and_nowhere_else() -> None:
    app = App("updates")
    stream = app.stream(app.topic("in"), key="k", timestamp="ts")
    stream.window(tumbling(100)).aggregate(n=Count()).to("out", emit="updates")
    driver = TestDriver(app)
    driver.send("in", {"k": "a", "ts": 10}, key="a")
    assert driver.values("out") == [
        {"key": "a", "window_start": 0, "window_end": 100, "n": 1, "final": False}
    ]
    other = App("updates2")
    later = other.stream(other.topic("in"), key="k").window(tumbling(5)).aggregate(n=Count())
    with pytest.raises(DeclarationError, match="directly after"):
        later.filter(lambda w: True).to("out", emit="updates")


def test_the_process_generator_never_awaits_per_event() -> None:
    """``fn`` runs inside the task's synchronous loop: a chunk's call of ``process`` yields
    nothing to await (no map_batch/enrich here)."""
    segment = plan(cards().decl).segments[0]
    task = SegmentTask(compile_segment(segment), idle_timeout_ms=1_000)
    task.finish_restore()

    class Rec:
        def __init__(self, offset: int) -> None:
            self.offset, self.key, self.timestamp = offset, b"c", 0

    values = [{"card": "c", "ts": n} for n in range(100)]
    gen = task.process([Rec(n) for n in range(100)], range(100), values, 0)
    with pytest.raises(StopIteration):
        next(gen)
    fired = run_sync(task.tick(10**9, caught_up=True))  # the last card's timers fire
    assert fired.timers_fired == 100


def test_a_keys_timers_restore_exactly_as_they_move_to_bucket_records_and_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key's timers are in its record up to INLINE_TIMERS, then in bucket records, back in
    its record at INLINE_AGAIN: whichever way they went, a restore from the compacted
    changelog has exactly the key's pending timers (no bucket record left behind)."""
    from streams.core import process

    monkeypatch.setattr(process, "INLINE_TIMERS", 2)
    monkeypatch.setattr(process, "INLINE_AGAIN", 1)
    monkeypatch.setattr(process, "TIMER_BUCKET_MS", 10)

    def plan_timers(event: dict[str, Any], state: Any) -> None:
        for at in event.get("set", []):
            state.timer(at)
        for at in event.get("cancel", []):
            state.cancel(at)

    app = App("t")
    app.stream(app.topic("in"), key="k", timestamp="ts").process(
        plan_timers, on_timer=lambda key, state, at: None
    ).to("out")
    compiled = compile_segment(plan(app.decl).segments[0])
    task = SegmentTask(compiled, idle_timeout_ms=1_000)
    task.finish_restore()
    changelog: list[tuple[bytes, bytes | None]] = []

    class Rec:
        def __init__(self, offset: int) -> None:
            self.offset, self.key, self.timestamp = offset, b"k", 0

    steps = [
        {"set": [100, 110, 120]},  # 3 > 2: bucket records 10, 11, 12
        {"cancel": [100, 110]},  # down to 1: back in the key's record, every bucket gone
        {"cancel": [120]},  # in the key's record only
        {"set": [130, 140, 150]},  # split again into other buckets: 120 must not come back
        {"set": [160], "cancel": [130]},
    ]
    for offset, step in enumerate(steps):
        run_sync(task.process([Rec(offset)], [0], [{"k": "k", "ts": 1, **step}], 0))
        changelog.extend(task.drain_changelog())
        expected = task.processes[0].timers_of("k")
        last = {name: n for n, (name, _) in enumerate(changelog)}
        compacted = [r for n, r in enumerate(changelog) if last[r[0]] == n and r[1] is not None]
        for records in (changelog, compacted):
            restored = SegmentTask(compiled, idle_timeout_ms=1_000)
            for name, value in records:
                restored.apply_changelog(name, value)
            restored.finish_restore()
            assert restored.processes[0].timers_of("k") == expected, (step, records)
    assert expected == [140, 150, 160]
