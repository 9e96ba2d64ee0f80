"""Burrow-style status rules over a window of (committed, lag) samples."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.lag.status import (
    OffsetSample,
    Status,
    group_status,
    partition_status,
    trim_window,
    worst,
)


def window(*pairs: tuple[int, int]) -> list[OffsetSample]:
    """Samples one second apart from (committed, lag) pairs."""
    return [OffsetSample(float(i), c, lag) for i, (c, lag) in enumerate(pairs)]


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param(window(), Status.OK, id="no samples"),
        pytest.param(window((10, 500)), Status.OK, id="one sample cannot judge"),
        pytest.param(window((10, 0), (10, 0), (10, 0)), Status.OK, id="caught up, idle"),
        pytest.param(window((10, 5), (10, 0), (10, 7)), Status.OK, id="zero lag once"),
        pytest.param(window((10, 5), (10, 9), (10, 12)), Status.STALLED, id="no commits"),
        pytest.param(window((10, 5), (10, 5)), Status.STALLED, id="no commits, flat"),
        pytest.param(window((10, 5), (20, 9), (30, 12)), Status.WARNING, id="falls behind"),
        pytest.param(window((10, 5), (20, 9), (30, 9)), Status.WARNING, id="never shrinks"),
        pytest.param(window((10, 5), (20, 9), (30, 7)), Status.OK, id="recovers"),
        pytest.param(window((10, 9), (20, 9), (30, 9)), Status.OK, id="steady behind"),
        pytest.param(window((10, 9), (20, 5), (30, 3)), Status.OK, id="catching up"),
    ],
)
def test_partition_rules(samples: list[OffsetSample], expected: Status) -> None:
    assert partition_status(samples) is expected


def test_a_group_without_members_and_with_lag_is_stopped() -> None:
    assert group_status([window((10, 5), (20, 0)), window((3, 4))], has_members=False) is (
        Status.STOPPED
    )


def test_a_group_without_members_but_without_lag_is_ok() -> None:
    assert group_status([window((10, 5), (15, 0))], has_members=False) is Status.OK


def test_a_group_takes_its_worst_partition() -> None:
    windows = [window((1, 0), (2, 0)), window((1, 5), (2, 9)), window((1, 5), (1, 9))]
    assert group_status(windows, has_members=True) is Status.STALLED
    assert group_status(windows[:2], has_members=True) is Status.WARNING
    assert group_status([], has_members=True) is Status.OK


def test_severity_orders_the_statuses() -> None:
    assert [s.severity for s in Status] == [0, 1, 2, 3]
    assert worst([Status.WARNING, Status.STOPPED, Status.OK]) is Status.STOPPED
    assert worst([]) is Status.OK


@dataclass(frozen=True)
class At:
    at: float


def test_trim_keeps_the_window_and_the_sample_at_its_start() -> None:
    samples = [At(t) for t in (0.0, 1.02, 2.05)]
    # The first poll is 2.05 s old, just past a 2 s window: kept so the window spans 2 s.
    assert trim_window(samples, 2.0) == samples
    assert trim_window([At(t) for t in (0.0, 0.5, 1.0, 3.0, 4.0)], 2.0) == [
        At(1.0),
        At(3.0),
        At(4.0),
    ]
    assert trim_window(samples, 0.0) == [At(2.05)]
    assert trim_window([], 5.0) == []


pairs = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=20)


@given(pairs)
def test_any_zero_lag_in_the_window_is_ok(values: list[tuple[int, int]]) -> None:
    samples = window(*values)
    if any(s.lag == 0 for s in samples):
        assert partition_status(samples) is Status.OK


@given(pairs)
def test_stalled_means_lag_and_a_committed_offset_that_never_moved(
    values: list[tuple[int, int]],
) -> None:
    samples = window(*values)
    if partition_status(samples) is Status.STALLED:
        assert len(samples) >= 2
        assert all(s.lag > 0 for s in samples)
        assert len({s.committed for s in samples}) == 1
