"""The reference model against the definitions, written out the slowest possible way."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core import CoreConfig
from tests.unit.core.engine import recompute, recompute_partition
from tests.unit.core.events import TUMBLING, event

CONFIG = TUMBLING


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 30), data=st.data())
def test_an_event_lands_in_every_window_that_holds_it(size: int, data: st.DataObject) -> None:
    step = data.draw(st.integers(1, size))
    ts = data.draw(st.integers(0, 200))
    config = CoreConfig(window_size_ms=size, window_step_ms=step)
    finals = recompute_partition([event("a", ts)], config).finals
    holding = [start for start in range(ts - 2 * size, ts + 1) if start % step == 0]
    assert [record["window_start"] for record in finals] == [
        start for start in holding if start <= ts < start + size
    ]
    assert all(record["count"] == 1 for record in finals)


def test_worked_example() -> None:
    events = [
        event("a", 3, "u", 2),
        event("b", 7, "v"),
        event("a", 8, "u", 5),  # duplicate of a
        event("c", 16, "u", 1.5),  # stream time 16: [0, 10) closes
        event("d", 9, "v"),  # late
        event("e", 12, "u", 4),
    ]
    result = recompute_partition(events, CONFIG)
    assert result.duplicates == [2]
    assert result.late == [4]
    assert result.finals == [
        {
            "key": "u",
            "window_start": 0,
            "window_end": 10,
            "count": 1,
            "sum": 2.0,
            "min": 2.0,
            "max": 2.0,
            "final": True,
        },
        {
            "key": "v",
            "window_start": 0,
            "window_end": 10,
            "count": 1,
            "sum": 0.0,
            "min": None,
            "max": None,
            "final": True,
        },
        {
            "key": "u",
            "window_start": 10,
            "window_end": 20,
            "count": 2,
            "sum": 5.5,
            "min": 1.5,
            "max": 4.0,
            "final": True,
        },
    ]


def test_an_expired_id_is_accepted_again() -> None:
    result = recompute_partition([event("a", 0), event("b", 100), event("a", 100)], CONFIG)
    assert result.duplicates == []


def test_partitions_are_independent() -> None:
    first = [event("a", 0), event("b", 50)]
    second = [event("a", 1)]
    result = recompute({0: first, 1: second}, CONFIG)
    assert result == {0: recompute_partition(first, CONFIG), 1: recompute_partition(second, CONFIG)}
    assert result[1].duplicates == []
