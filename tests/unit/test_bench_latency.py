"""The latency runs of `streams bench`: their rates, and where the worker's batches spent
their time as its histograms tell it."""

from __future__ import annotations

import click
import pytest

from streams.bench.latency import percentiles, phase_breakdown
from streams.bench.runner import HALF, BenchResult, _latency_rates
from streams.cli.bench import _rates
from streams.runtime.metrics import BATCH_PHASES, WorkerMetrics


def test_rates_are_repeatable_and_comma_separated() -> None:
    assert _rates(None, None, ("2000,10000", " half ", "2000")) == (2000.0, 10000.0, HALF)  # type: ignore[arg-type]
    assert _rates(None, None, ()) == (HALF,)  # type: ignore[arg-type]
    for bad in ("fast", "0", "-5", ""):
        with pytest.raises(click.BadParameter):
            _rates(None, None, (bad,))  # type: ignore[arg-type]


def test_half_is_half_the_median_pipeline_alo_of_the_run() -> None:
    results = [
        BenchResult("pipeline-alo", rate, 1.0, 0, round=n)
        for n, rate in enumerate((100_000, 140_000, 120_000), 1)
    ]
    assert _latency_rates((2000.0, HALF), results) == [(2000.0, "2000"), (60_000.0, HALF)]


def test_percentiles_of_latencies() -> None:
    got = percentiles(list(range(100, 0, -1)))
    assert got == {"measured": 100, "p50_ms": 51.0, "p99_ms": 100.0, "max_ms": 100.0}
    assert percentiles([])["p99_ms"] == -1.0


def test_phase_breakdown_reads_the_workers_histograms() -> None:
    metrics = WorkerMetrics()
    metrics.declare([], [], [])
    phase = metrics.batch_phase
    for seconds in (0.002, 0.004, 0.004, 0.006):
        phase.labels("produce").observe(seconds)
    phase.labels("commit").observe(20.0)  # past the last bucket
    got = phase_breakdown(metrics.registry)
    assert set(got) == set(BATCH_PHASES)
    produce = got["produce"]
    assert produce["batches"] == 4
    assert produce["mean_ms"] == pytest.approx(4.0)
    # Interpolated inside the bucket the rank falls in, as histogram_quantile does: the
    # median (rank 2) in (2.5, 5] ms, which holds ranks 2 and 3; p99 (rank 3.96) in (5, 10].
    assert produce["p50_ms"] == pytest.approx(3.75)
    assert produce["p99_ms"] == pytest.approx(9.8)
    assert got["commit"]["p99_ms"] == pytest.approx(10_000.0)  # the last finite bound
    assert got["fetch_wait"] == {"batches": 0, "mean_ms": -1.0, "p50_ms": -1.0, "p99_ms": -1.0}
