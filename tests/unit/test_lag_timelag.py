"""Time lag from the history of a partition head: interpolation, flat runs, fallbacks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.lag.timelag import HeadHistory, Source, TimeLag, estimate_time_lag, interpolate


def history(*points: tuple[int, float], max_points: int = 360) -> HeadHistory:
    h = HeadHistory(max_points)
    for offset, at in points:
        h.add(offset, at)
    return h


def test_interpolates_linearly_between_the_points_around_the_offset() -> None:
    assert interpolate([0, 100], [10.0, 20.0], 25) == pytest.approx(12.5)
    assert interpolate([0, 100, 300], [10.0, 20.0, 21.0], 200) == pytest.approx(20.5)


def test_an_offset_on_a_point_gets_that_points_time_and_outside_none() -> None:
    assert interpolate([0, 100], [10.0, 20.0], 100) == 20.0
    assert interpolate([50, 100], [10.0, 20.0], 49) is None
    assert interpolate([50, 100], [10.0, 20.0], 101) is None
    assert interpolate([], [], 0) is None


def test_a_flat_run_keeps_its_first_and_last_sighting() -> None:
    h = history((10, 1.0), (10, 2.0), (10, 3.0), (10, 4.0), (20, 5.0))
    assert list(h.offsets) == [10, 10, 20]
    assert list(h.times) == [1.0, 4.0, 5.0]
    # The head reached 10 at the first sighting; offsets after it came after the last one.
    assert h.time_at(10) == 1.0
    assert h.time_at(15) == pytest.approx(4.5)


def test_points_at_or_before_the_last_time_are_ignored() -> None:
    h = history((10, 5.0), (20, 5.0), (30, 4.0))
    assert list(h.offsets) == [10]


def test_a_head_that_goes_back_starts_a_new_history() -> None:
    h = history((100, 1.0), (200, 2.0), (5, 3.0))
    assert list(h.offsets) == [5]
    assert list(h.times) == [3.0]


def test_the_history_is_bounded_by_dropping_the_oldest_point() -> None:
    h = history(*((i * 10, float(i)) for i in range(10)), max_points=4)
    assert list(h.offsets) == [60, 70, 80, 90]


def test_rate_is_the_average_over_the_history() -> None:
    assert history((0, 0.0), (50, 5.0), (100, 10.0)).rate() == pytest.approx(10.0)
    assert history((7, 0.0), (7, 5.0)).rate() is None
    assert history((7, 0.0)).rate() is None


def test_caught_up_is_zero_seconds() -> None:
    h = history((100, 1.0))
    assert estimate_time_lag(h, 100, 100, now=50.0) == TimeLag(0.0, Source.CAUGHT_UP)


def test_committed_inside_the_history_is_interpolated() -> None:
    h = history((0, 0.0), (100, 10.0), (200, 20.0))
    lag = estimate_time_lag(h, 150, 200, now=21.0)
    assert lag.source is Source.INTERPOLATED
    assert lag.seconds == pytest.approx(6.0)


def test_a_consumer_parked_at_an_idle_head_ages_with_the_wall_clock() -> None:
    # Producer wrote up to 100 then stopped; a consumer sits at 60 and the clock runs on.
    h = history((0, 0.0), (100, 10.0), (100, 500.0))
    assert estimate_time_lag(h, 60, 100, now=1000.0).seconds == pytest.approx(994.0)


def test_before_the_history_the_record_timestamp_is_used_capped_at_the_oldest_point() -> None:
    h = history((1000, 100.0), (1100, 110.0))
    lag = estimate_time_lag(h, 10, 1100, now=120.0, record_time=40.0)
    assert lag == TimeLag(pytest.approx(80.0), Source.RECORD)
    # A producer clock ahead of ours cannot make the record younger than the oldest point.
    skewed = estimate_time_lag(h, 10, 1100, now=120.0, record_time=115.0)
    assert skewed.seconds == pytest.approx(20.0)


def test_before_the_history_without_record_it_extrapolates_along_the_average_rate() -> None:
    h = history((1000, 100.0), (1100, 110.0))  # 10 records/s
    lag = estimate_time_lag(h, 900, 1100, now=110.0)
    assert lag.source is Source.EXTRAPOLATED
    assert lag.seconds == pytest.approx(20.0)


def test_before_a_history_that_never_moved_the_time_lag_is_unknown() -> None:
    h = history((1000, 100.0), (1000, 110.0))
    assert estimate_time_lag(h, 900, 1000, now=110.0) == TimeLag(None, Source.UNKNOWN)
    assert estimate_time_lag(HeadHistory(), 1, 5, now=1.0) == TimeLag(None, Source.UNKNOWN)


@given(
    rate=st.integers(1, 1000),
    times=st.lists(st.integers(0, 10_000), min_size=2, max_size=40, unique=True),
    data=st.data(),
)
def test_a_constant_rate_producer_is_interpolated_exactly(
    rate: int, times: list[int], data: st.DataObject
) -> None:
    """Head = rate * t, sampled at any times: t(c) = c / rate for every c in the range."""
    times.sort()
    h = history(*((rate * t, float(t)) for t in times))
    committed = data.draw(st.integers(rate * times[0], rate * times[-1]))
    assert h.time_at(committed) == pytest.approx(committed / rate)


@given(
    steps=st.lists(st.tuples(st.integers(0, 50), st.floats(0.01, 10.0)), min_size=1, max_size=60),
    data=st.data(),
)
def test_estimates_are_bounded_by_the_samples_around_them(
    steps: list[tuple[int, float]], data: st.DataObject
) -> None:
    """Any head history: t(c) lies between the sightings around c and grows with c."""
    h, offset, at, points = HeadHistory(), 0, 0.0, []
    for grow, wait in steps:
        offset, at = offset + grow, at + wait
        h.add(offset, at)
        points.append((offset, at))
    c1 = data.draw(st.integers(points[0][0], offset))
    c2 = data.draw(st.integers(c1, offset))
    t1, t2 = h.time_at(c1), h.time_at(c2)
    assert t1 is not None
    assert t2 is not None
    assert t1 <= t2 + 1e-9
    # c1 became the head after every sighting of a lower head, and by the first of a higher one.
    assert t1 >= max((t for o, t in points if o < c1), default=-1.0) - 1e-9
    assert t1 <= min(t for o, t in points if o >= c1) + 1e-9
