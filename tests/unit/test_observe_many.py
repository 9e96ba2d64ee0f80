"""observe_many equals that many single observations, bucket for bucket."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from streams.compat import observe_many


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


@pytest.mark.parametrize(("amount", "count"), [(0.0, 1), (0.007, 3), (0.1, 10), (999.0, 4)])
def test_observe_many_is_count_single_observations(amount: float, count: int) -> None:
    one, many = (
        Histogram("h", "h", ["since"], buckets=(0.005, 0.01, 0.1, 1), registry=CollectorRegistry())
        for _ in range(2)
    )
    for _ in range(count):
        one.labels("x").observe(amount)
    observe_many(many.labels("x"), [(amount, count)])
    singles, batched = _samples(one), _samples(many)
    assert batched.pop(("h_sum", "")) == pytest.approx(singles.pop(("h_sum", "")))
    assert singles == batched


def test_observations_of_many_amounts_are_grouped_by_bucket() -> None:
    one, many = (
        Histogram("h", "h", ["since"], buckets=(0.005, 0.01, 0.1, 1), registry=CollectorRegistry())
        for _ in range(2)
    )
    observations = [(0.0, 2), (0.005, 1), (0.006, 3), (0.01, 1), (0.5, 2), (7.0, 1), (0.004, 4)]
    for amount, count in observations:
        for _ in range(count):
            one.labels("x").observe(amount)
    observe_many(many.labels("x"), observations)
    singles, batched = _samples(one), _samples(many)
    assert batched.pop(("h_sum", "")) == pytest.approx(singles.pop(("h_sum", "")))
    assert singles == batched
