"""Errors in user code (DESIGN.md, "Errors in user code"): every failure is a dead letter that
says where, nothing a user function does stops processing, and tracebacks show real lines.

Run through the test driver, which runs the worker's compiled loops and record collector.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest

from streams import App, Count, Sum, hopping, tumbling
from streams.core import failures
from streams.testing import TestDriver

HERE = "test_user_errors.py"


def _line(fn: Any) -> int:
    """The line a lambda or function was defined on."""
    return int(fn.__code__.co_firstlineno)


def _declared(text: str) -> str:
    """``test_user_errors.py:N`` of the one line of this file holding ``text`` (where an
    operator was declared)."""
    with open(__file__, encoding="utf-8") as source:
        lines = [n for n, line in enumerate(source, 1) if line.strip() == text]
    assert len(lines) == 1, (text, lines)
    return f"{HERE}:{lines[0]}"


def _value(metrics: Any, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def test_two_maps_failing_differently_say_which_one_failed() -> None:
    app = App("two-maps")
    ratio = lambda o: {**o, "ratio": o["amount"] / o["qty"]}  # noqa: E731
    region = lambda o: {**o, "region": o["address"]["region"]}  # noqa: E731
    orders = app.stream(app.topic("orders"), key="id", timestamp="ts")
    with_ratio = orders.map(ratio)
    with_ratio.map(region).to("out")
    driver = TestDriver(app)
    driver.send("orders", {"id": "a", "ts": 1, "amount": 5, "qty": 0}, key="a")
    driver.send("orders", {"id": "b", "ts": 2, "amount": 5, "qty": 1}, key="b")
    driver.send(
        "orders", {"id": "c", "ts": 3, "amount": 4, "qty": 2, "address": {"region": "eu"}}, key="c"
    )
    letters = driver.dead_letters("orders")
    assert [r.key for r in letters] == ["a", "b"]
    first, second = (r.headers for r in letters)
    assert first["error.stage"] == second["error.stage"] == "map"
    assert first["error.operator"] == _declared("with_ratio = orders.map(ratio)")
    assert second["error.operator"] == _declared('with_ratio.map(region).to("out")')
    assert first["error.message"] == "ZeroDivisionError: division by zero"
    assert second["error.message"] == "KeyError: 'address'"
    assert first["error.pipeline"] == "out"
    assert first["source.offset"] == "0"
    assert [v["id"] for v in driver.values("out")] == ["c"]
    assert _value(driver.metrics, "streams_events_failed_total", pipeline="out", stage="map") == 2


class Ratio:
    """A custom aggregator whose result divides by (events - 1): a one-event window raises."""

    def initial(self) -> list[float]:
        return [0.0, 0]

    def add(self, acc: list[float], value: dict[str, Any]) -> list[float]:
        return [acc[0] + value["x"], acc[1] + 1]

    def result(self, acc: list[float]) -> float:
        return acc[0] / (acc[1] - 1)


def test_a_result_that_raises_at_window_close_is_the_windows_dead_letter() -> None:
    app = App("ratio")
    (
        app.stream(app.topic("in"), key="k", timestamp="ts")
        .window(tumbling(10))
        .aggregate(n=Count(), ratio=Ratio())
        .to("out")
    )
    driver = TestDriver(app)
    driver.send_many(
        "in",
        [
            {"k": "a", "ts": 1, "x": 2.0},
            {"k": "b", "ts": 2, "x": 1.0},
            {"k": "b", "ts": 3, "x": 3.0},
        ],
        keys=["a", "b", "b"],
    )
    driver.advance(60_000)  # idle: the window closes; the one-event window's result raises
    assert driver.finals("out") == [
        {"key": "b", "window_start": 0, "window_end": 10, "n": 2, "ratio": 4.0, "final": True}
    ]
    (letter,) = driver.dead_letters("in")
    assert letter.key == "a"
    assert letter.value == {
        "key": "a",
        "window_start": 0,
        "window_end": 10,
        "accumulators": {"ratio": [2.0, 1]},
    }
    headers = letter.headers
    assert headers["error.stage"] == "aggregate"
    assert headers["error.operator"] == _declared(".aggregate(n=Count(), ratio=Ratio())")
    assert headers["error.message"] == "ZeroDivisionError: float division by zero"
    assert headers["source.topic"] == "in"
    assert "source.offset" not in headers  # no input message of its own
    # And the worker's state goes on: a restart rebuilds nothing of the dropped window.
    driver.restart()
    driver.advance(60_000)
    assert len(driver.finals("out")) == 1


class InPlace:
    """Appends to its accumulator in place, then raises on a poisoned value."""

    def initial(self) -> list[int]:
        return []

    def add(self, acc: list[int], value: dict[str, Any]) -> None:
        acc.append(value["x"])
        if value.get("poison"):
            raise ValueError("poisoned")

    def result(self, acc: list[int]) -> list[int]:
        return acc


def _hopping_app() -> App:
    app = App("hops")
    (
        app.stream(app.topic("in"), key="k", timestamp="ts")
        .window(hopping(30, 10))
        .aggregate(n=Count(), total=Sum("x"), xs=InPlace())
        .to("out")
    )
    return app


def test_an_event_failing_in_add_changes_none_of_its_hopping_windows() -> None:
    """``add`` changed ``acc`` in place before raising: the event must leave no trace in any
    of its three windows (the ones already updated before the raise included), and be one
    dead letter, not one per window."""
    events = [
        {"k": "a", "ts": 12, "x": 1},
        {"k": "a", "ts": 25, "x": 2},
        {"k": "a", "ts": 27, "x": 100, "poison": True},
        {"k": "a", "ts": 28, "x": 3},
    ]
    poisoned = TestDriver(_hopping_app())
    poisoned.send_many("in", events, key="a")
    poisoned.advance(60_000)
    clean = TestDriver(_hopping_app())
    clean.send_many("in", [e for e in events if not e.get("poison")], key="a")
    clean.advance(60_000)
    assert poisoned.finals("out") == clean.finals("out")
    assert any(f["xs"] == [1, 2, 3] for f in poisoned.finals("out"))
    (letter,) = poisoned.dead_letters("in")
    assert letter.value["poison"] is True
    assert letter.headers["error.stage"] == "aggregate"
    assert letter.headers["error.message"] == "ValueError: poisoned"


class SetAcc:
    """Returns a set: not JSON, so it could never reach the changelog."""

    def initial(self) -> list[int]:
        return []

    def add(self, acc: Any, value: dict[str, Any]) -> Any:
        return {value["x"]} if value["x"] == 7 else [*acc, value["x"]]

    def result(self, acc: Any) -> Any:
        return acc


def test_an_accumulator_that_is_not_json_is_the_events_dead_letter_not_a_crash() -> None:
    app = App("sets")
    (
        app.stream(app.topic("in"), key="k", timestamp="ts")
        .window(tumbling(100))
        .aggregate(xs=SetAcc())
        .to("out")
    )
    driver = TestDriver(app)
    driver.send_many("in", [{"k": "a", "ts": 1, "x": 7}, {"k": "a", "ts": 2, "x": 8}], key="a")
    driver.restart()  # the changelog holds only JSON
    driver.advance(60_000)
    assert driver.finals("out")[0]["xs"] == [8]
    (letter,) = driver.dead_letters("in")
    assert "not JSON-serialisable" in letter.headers["error.message"]
    assert "'xs'" in letter.headers["error.message"]


def test_nothing_a_user_function_raises_or_returns_stops_processing() -> None:
    """sys.exit, a list from a map, an object whose truth raises, a group_by key JSON cannot
    hold, a value JSON cannot hold, an enrich returning a list: each a dead letter with its
    stage and line."""
    app = App("hostile")
    topic = app.topic("in")

    def leave(v: dict[str, Any]) -> dict[str, Any]:
        if v["n"] == 1:
            raise SystemExit(3)
        return v

    class NoTruth:
        def __bool__(self) -> bool:
            raise ValueError("no truth")

    async def lookup(keys: list[Any]) -> Any:
        return list(keys)

    (
        app.stream(topic, key="k", timestamp="ts", name="maps")
        .map(leave)
        .map(lambda v: [v] if v["n"] == 2 else v)
        .filter(lambda v: NoTruth() if v["n"] == 3 else True)
        .map(lambda v: {**v, "when": {v["n"]}} if v["n"] == 4 else v)
        .to("maps-out")
    )
    (
        app.stream(topic, key="k", timestamp="ts", name="regroup")
        .group_by(lambda v: {v["n"]})
        .to("g")
    )
    (
        app.stream(topic, key="k", timestamp="ts", name="enriched")
        .enrich(lookup, key="k", into="extra", attempts=1)
        .to("e")
    )
    driver = TestDriver(app)
    driver.send_many("in", [{"k": "a", "ts": n, "n": n} for n in range(6)], key="a")
    stages: dict[str, list[tuple[str, str]]] = {}
    for letter in driver.dead_letters("in"):
        h = letter.headers
        stages.setdefault(h["error.pipeline"], []).append((h["error.stage"], h["source.offset"]))
    assert sorted(stages["maps"]) == [("filter", "3"), ("map", "1"), ("map", "2"), ("to", "4")]
    assert len(stages["regroup"]) == 6
    assert {stage for stage, _ in stages["regroup"]} == {"group_by"}
    assert sorted(stages["enriched"]) == [("enrich", str(n)) for n in range(6)]
    assert [v["n"] for v in driver.values("maps-out")] == [0, 5]


def test_raise_errors_raises_the_users_exception_unchained_with_real_lines() -> None:
    app = App("raising")
    divide = lambda v: {**v, "r": 1 / v["d"]}  # noqa: E731
    app.stream(app.topic("in"), key="k", timestamp="ts").map(divide).to("out")
    driver = TestDriver(app, raise_errors=True)
    with pytest.raises(ZeroDivisionError) as caught:
        driver.send("in", {"k": "a", "ts": 1, "d": 0}, key="a")
    exc = caught.value
    assert exc.__cause__ is None
    assert exc.__context__ is None
    text = "".join(traceback.format_exception(exc))
    assert "During handling" not in text
    assert f'test_user_errors.py", line {_line(divide)}' in text
    # The generated loop's own line, from the source registered with linecache.
    assert "v = map_at_test_user_errors_py_" in text
    assert "<streams pipeline out: _stage0" in text
    # The event was dead-lettered all the same; later events still flow.
    assert len(driver.dead_letters("in")) == 1
    driver.send("in", {"k": "a", "ts": 2, "d": 2}, key="a")
    assert driver.values("out")[0]["r"] == 0.5


def test_the_first_failure_is_logged_with_its_traceback_then_summarised(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = App("logged")
    app.stream(app.topic("in"), key="k", timestamp="ts").map(lambda v: v["missing"]).to("out")
    driver = TestDriver(app)
    clock = [1_000.0]
    monkeypatch.setattr(failures.time, "monotonic", lambda: clock[0])
    with caplog.at_level(logging.ERROR, logger="streams.user"):
        driver.send_many("in", [{"k": "a", "ts": n} for n in range(3)], key="a")
        first = [r for r in caplog.records if r.name == "streams.user"]
        assert len(first) == 1
        assert first[0].exc_info is not None
        assert "error.operator=test_user_errors.py:" in first[0].getMessage()
        rendered = caplog.text
        assert "KeyError: 'missing'" in rendered
        assert 'test_user_errors.py", line' in rendered
        clock[0] += 61
        driver.send("in", {"k": "a", "ts": 9}, key="a")
    logged = [r.getMessage() for r in caplog.records if r.name == "streams.user"]
    assert len(logged) == 2
    assert "failed 3 more times" in logged[1]
    assert "KeyError: 'missing'" in logged[1]
