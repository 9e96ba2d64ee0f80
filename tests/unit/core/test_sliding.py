"""``sliding(size_ms)`` windows (DESIGN.md, "Stream-stream joins and sliding windows"; decision
0018): the contract's words, one behaviour per test, through the test driver (the worker's
loops)."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams import App, Count, First, Last, Max, Mean, Min, Sum, sliding
from streams.core.compile import compile_segment
from streams.core.segment import SegmentTask, run_sync
from streams.core.sliding import SlidingStore
from streams.errors import DeclarationError
from streams.state.rocks import open_store
from streams.testing import TestDriver
from streams.topology.plan import plan

Record = namedtuple("Record", "offset key value timestamp headers")


def payments(size_ms: int = 10, grace_ms: int = 0, emit: str = "final", **named: Any) -> App:
    app = App("spend")
    (
        app.stream(app.topic("payments"), key="card", timestamp="ts")
        .window(sliding(size_ms), grace_ms=grace_ms)
        .aggregate(**(named or {"n": Count(), "spent": Sum("amount")}))
        .to("spend", emit=emit)
    )
    return app


def pay(driver: TestDriver, *events: tuple[str, int, float]) -> None:
    driver.send_many(
        "payments",
        [{"card": card, "ts": ts, "amount": amount} for card, ts, amount in events],
        keys=[card for card, _, _ in events],
    )


def windows(driver: TestDriver) -> list[tuple[str, int, int, int, float]]:
    return [
        (f["key"], f["window_start"], f["window_end"], f["n"], f["spent"])
        for f in driver.finals("spend")
    ]


def test_a_window_per_event_time_holds_the_events_of_the_size_before_it() -> None:
    driver = TestDriver(payments(size_ms=10))
    pay(driver, ("c", 100, 1.0), ("c", 105, 2.0), ("c", 109, 4.0), ("c", 110, 8.0))
    driver.advance(60_000)
    assert windows(driver) == [
        ("c", 91, 101, 1, 1.0),
        ("c", 96, 106, 2, 3.0),
        ("c", 100, 110, 3, 7.0),
        ("c", 101, 111, 3, 14.0),  # (100, 110]: the event at 100 has left
    ]


def test_two_events_at_one_time_share_one_window() -> None:
    driver = TestDriver(payments(size_ms=10))
    pay(driver, ("c", 100, 1.0), ("c", 100, 2.0), ("d", 100, 5.0))
    driver.advance(60_000)
    assert windows(driver) == [("c", 91, 101, 2, 3.0), ("d", 91, 101, 1, 5.0)]


def test_finals_come_by_window_end_then_key_when_stream_time_passes_end_plus_grace() -> None:
    driver = TestDriver(payments(size_ms=10, grace_ms=5))
    pay(driver, ("b", 100, 1.0), ("a", 102, 1.0), ("b", 103, 1.0))
    pay(driver, ("z", 105, 1.0))  # stream time 105 = 100 + 1 + 5 - 1: nothing final yet
    assert driver.finals("spend") == []
    pay(driver, ("z", 106, 1.0))  # 106 >= 101 + 5: the window ending at 101 is final
    assert windows(driver) == [("b", 91, 101, 1, 1.0)]
    pay(driver, ("z", 109, 1.0))  # ends 103 and 104 pass: a at 102, then b at 103
    assert windows(driver)[1:] == [("a", 93, 103, 1, 1.0), ("b", 94, 104, 2, 2.0)]


def test_an_event_whose_own_window_is_closed_is_late_and_changes_nothing() -> None:
    driver = TestDriver(payments(size_ms=10, grace_ms=2))
    pay(driver, ("c", 100, 1.0), ("c", 110, 1.0))
    # Stream time 110: the window of 107 would end at 108, closed at 108 + 2 <= 110: late,
    # though windows it would belong to (the one at 110) are open. 108 is not late.
    pay(driver, ("c", 107, 100.0), ("c", 108, 10.0))
    driver.advance(60_000)
    assert [r.value["ts"] for r in driver.late("payments")] == [107]
    assert windows(driver) == [
        ("c", 91, 101, 1, 1.0),
        ("c", 99, 109, 2, 11.0),
        ("c", 101, 111, 2, 11.0),
    ]


def test_an_idle_partition_closes_its_last_windows() -> None:
    driver = TestDriver(payments(size_ms=300_000, grace_ms=2_000))
    pay(driver, ("c", 1_000, 5.0), ("c", 2_000, 7.0))
    assert driver.finals("spend") == []  # stream time 2,000 < 1,001 + 2,000
    driver.advance(60_000)  # idle: stream time follows the wall clock past both windows
    assert windows(driver) == [
        ("c", -298_999, 1_001, 1, 5.0),
        ("c", -297_999, 2_001, 2, 12.0),
    ]


def test_every_builtin_aggregation_over_a_sliding_window() -> None:
    app = payments(
        size_ms=10,
        grace_ms=10,
        n=Count(),
        spent=Sum("amount"),
        avg=Mean("amount"),
        low=Min("amount"),
        high=Max("amount"),
        first=First("shop"),
        last=Last("shop"),
    )
    driver = TestDriver(app)
    driver.send_many(
        "payments",
        [
            {"card": "c", "ts": 5, "amount": 3, "shop": "a"},
            {"card": "c", "ts": 3, "shop": "b"},  # earlier in time, no amount
            {"card": "c", "ts": 5, "amount": 1.5, "shop": "c"},
            {"card": "c", "ts": 14, "amount": 9},
        ],
        key="c",
    )
    driver.advance(60_000)
    got = {f["window_end"]: f for f in driver.finals("spend")}
    assert got[6] | {"final": True} == {
        "key": "c",
        "window_start": -4,
        "window_end": 6,
        "n": 3,
        "spent": 4.5,
        "avg": 2.25,
        "low": 1.5,
        "high": 3.0,
        "first": "b",
        "last": "c",
        "final": True,
    }
    # (4, 14]: the two events at 5 and the one at 14; shop of the latest is absent.
    assert (got[15]["n"], got[15]["spent"], got[15]["low"], got[15]["first"]) == (3, 13.5, 1.5, "a")
    assert got[15]["last"] == "c"


class Recent:
    """The amounts of a window in the order the aggregator saw them; raises on a poisoned
    one after appending it in place."""

    def initial(self) -> list[float]:
        return []

    def add(self, acc: list[float], value: dict[str, Any]) -> None:
        acc.append(value["amount"])
        if value.get("poison"):
            raise ValueError("poisoned")

    def result(self, acc: list[float]) -> list[float]:
        return acc


def test_a_custom_aggregator_sees_a_new_windows_earlier_events_then_its_own() -> None:
    driver = TestDriver(payments(size_ms=10, grace_ms=10, seen=Recent()))
    pay(driver, ("c", 104, 4.0), ("c", 101, 1.0), ("c", 103, 3.0))
    driver.advance(60_000)
    seen = {f["window_end"]: f["seen"] for f in driver.finals("spend")}
    # 101's window opens after 104's event arrived: it folds the events before it in time.
    assert seen == {102: [1.0], 104: [1.0, 3.0], 105: [4.0, 1.0, 3.0]}


def test_an_event_failing_in_add_changes_none_of_its_sliding_windows() -> None:
    events = [
        ("c", 100, 1.0, False),
        ("c", 105, 2.0, False),
        ("c", 102, 50.0, True),  # reaches 102 (new), 105 (held): add changes 105's in place
        ("c", 106, 3.0, False),
    ]

    def run(poison: bool) -> TestDriver:
        driver = TestDriver(payments(size_ms=10, grace_ms=10, seen=Recent(), n=Count()))
        driver.send_many(
            "payments",
            [
                {"card": c, "ts": ts, "amount": a, "poison": p}
                for c, ts, a, p in events
                if poison or not p
            ],
            key="c",
        )
        driver.restart()  # the changelog holds what the windows held
        driver.advance(60_000)
        return driver

    poisoned, clean = run(True), run(False)
    assert poisoned.finals("spend") == clean.finals("spend")
    assert [f["seen"] for f in clean.finals("spend")] == [[1.0], [1.0, 2.0], [1.0, 2.0, 3.0]]
    (letter,) = poisoned.dead_letters("payments")
    assert letter.value["poison"] is True
    assert letter.headers["error.stage"] == "aggregate"
    assert letter.headers["error.message"] == "ValueError: poisoned"


class Fussy:
    """``result`` raises on a window of one event."""

    def initial(self) -> int:
        return 0

    def add(self, acc: int, value: dict[str, Any]) -> int:
        return acc + 1

    def result(self, acc: int) -> float:
        return 1 / (acc - 1)


def test_a_result_that_raises_at_close_is_the_windows_dead_letter() -> None:
    driver = TestDriver(payments(size_ms=10, fussy=Fussy()))
    pay(driver, ("c", 100, 1.0), ("c", 101, 1.0))
    driver.advance(60_000)
    assert [(f["window_end"], f["fussy"]) for f in driver.finals("spend")] == [(102, 1.0)]
    (letter,) = driver.dead_letters("payments")
    assert letter.value == {
        "key": "c",
        "window_start": 91,
        "window_end": 101,
        "accumulators": {"fussy": 1},
    }
    assert letter.headers["error.stage"] == "aggregate"
    assert "source.offset" not in letter.headers


def test_updates_give_each_open_window_a_chunk_changed_its_values_so_far() -> None:
    driver = TestDriver(payments(size_ms=10, grace_ms=10, emit="updates"))
    pay(driver, ("c", 100, 1.0), ("c", 105, 2.0))
    pay(driver, ("c", 103, 4.0))  # its own window, and 105's
    updates = [
        (v["window_end"], v["n"], v["spent"]) for v in driver.values("spend") if not v["final"]
    ]
    assert updates == [(101, 1, 1.0), (106, 2, 3.0), (104, 2, 5.0), (106, 3, 7.0)]
    driver.advance(60_000)
    assert [(f["window_end"], f["n"]) for f in driver.finals("spend")] == [
        (101, 1),
        (104, 2),
        (106, 3),
    ]


def test_operators_after_aggregate_see_sliding_finals_at_window_end_minus_one() -> None:
    app = App("alerts")
    (
        app.stream(app.topic("payments"), key="card", timestamp="ts")
        .window(sliding(10))
        .aggregate(n=Count())
        .filter(lambda w: w["n"] >= 2)
        .map(lambda w: {"card": w["key"], "at": w["window_end"] - 1, "n": w["n"]})
        .to("alerts")
    )
    driver = TestDriver(app)
    pay(driver, ("c", 100, 1.0), ("c", 104, 1.0), ("c", 120, 1.0))
    driver.advance(60_000)
    assert driver.values("alerts") == [{"card": "c", "at": 104, "n": 2}]


def test_a_restart_from_the_changelog_carries_on_as_before() -> None:
    events = sorted(
        [("c", t, float(t % 7)) for t in range(100, 160, 3)] + [("d", 121, 1.0)],
        key=lambda e: e[1],
    )
    straight = TestDriver(payments(size_ms=20, grace_ms=4))
    restarted = TestDriver(payments(size_ms=20, grace_ms=4))
    for n, event in enumerate(events):
        pay(straight, event)
        pay(restarted, event)
        if n % 5 == 4:
            restarted.restart()
    straight.advance(60_000)
    restarted.advance(60_000)
    assert restarted.finals("spend") == straight.finals("spend")
    assert len(straight.finals("spend")) == len(events)


@pytest.mark.parametrize("size", [0, -5, 2.5, "300000", None])
def test_a_bad_size_stops_the_declaration_with_one_line(size: Any) -> None:
    with pytest.raises(DeclarationError) as caught:
        sliding(size)
    assert "\n" not in str(caught.value)
    assert "sliding window size must be an integer number of ms >= 1" in str(caught.value)


def test_its_state_is_fingerprinted_by_its_size() -> None:
    (store,) = plan(payments(size_ms=300_000, grace_ms=2_000).decl).segments[0].stores
    assert store.tag == b"l"
    assert '"window":"sliding(300000)"' in store.fingerprint
    assert '"grace_ms":2000' in store.fingerprint


def test_forgotten_events_leave_memory_and_a_restore_does_not_bring_them_back() -> None:
    compiled = compile_segment(plan(payments(size_ms=10).decl).segments[0])
    task = SegmentTask(compiled, idle_timeout_ms=1_000)
    task.finish_restore()
    changelog = []
    for chunk in ([100, 101, 102, 125], [130]):
        records = [Record(n, b"c", b"", 0, []) for n in range(len(chunk))]
        values = [{"card": "c", "ts": ts, "amount": 1.0} for ts in chunk]
        run_sync(task.process(records, range(len(chunk)), values, 0))
        changelog += task.drain_changelog()
    # Stream time 130: 100..102 are at or before 130 - 10 - 0, forgotten; their changelog
    # block is not (it holds 125), so the restore drops them.
    assert [ev[0] for ev in _held(task.windows)] == [125, 130]
    restored = SegmentTask(compiled, idle_timeout_ms=1_000)
    for key, value in changelog:
        restored.apply_changelog(key, value)
    restored.finish_restore()
    assert [ev[0] for ev in _held(restored.windows)] == [125, 130]
    assert len(restored.windows) == 1  # the window at 130 is pending


def test_a_spilled_segment_keeps_sliding_windows_in_memory(tmp_path: Path) -> None:
    segment = plan(payments(size_ms=10).decl).segments[0]
    store = open_store(tmp_path, "rolling", "spend/payments-0")
    try:
        task = SegmentTask(compile_segment(segment, spilled=True), idle_timeout_ms=1, store=store)
        task.finish_restore()
        records = [Record(n, b"c", b"", 0, []) for n in range(2)]
        values = [{"card": "c", "ts": ts, "amount": 2.0} for ts in (1, 5)]
        out = run_sync(task.process(records, [0, 1], values, 0))
        outputs = out.outputs + run_sync(task.flush_windows()).outputs
        assert [orjson.loads(v)["spent"] for _, v, _ in outputs] == [2.0, 4.0]
    finally:
        store.close()


def _held(store: SlidingStore) -> list[Any]:
    return [ev for ks in store.keys.values() for ev in ks.events[ks.base :]]
