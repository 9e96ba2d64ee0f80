"""How `streams bench` turns runs into rows: each run against the ceiling of its own round."""

from __future__ import annotations

import pytest

from streams.bench.runner import BenchResult, summarise


def run(scenario: str, rate: float, round_: int = 1, **extra: object) -> BenchResult:
    """A run that processed ``rate`` events in one second."""
    return BenchResult(scenario, int(rate), 1.0, int(rate) * 100, 1.0, 50.0, dict(extra), round_)


def by_name(rows: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(row["scenario"]): row for row in rows}


def test_one_round_compares_with_the_mean_of_both_ceilings() -> None:
    rows = by_name(
        summarise(
            [
                run("publish", 300_000),
                run("limit", 400_000),
                run("pipeline-alo", 90_000),
                run("limit-again", 200_000),
            ]
        )
    )
    assert rows["pipeline-alo"]["ratio_to_limit"] == pytest.approx(0.3)
    assert rows["publish"]["ratio_to_limit"] == pytest.approx(1.0)
    assert rows["limit"]["ratio_to_limit"] == pytest.approx(4 / 3, abs=0.001)
    assert "rounds" not in rows["pipeline-alo"]
    assert list(rows) == ["publish", "limit", "pipeline-alo", "limit-again"]


def test_each_round_has_its_own_ceiling_and_the_median_round_is_shown() -> None:
    # Round 2 ran on a machine twice as fast: its pipeline rate is higher, not its ratio.
    results = [
        run("limit", 200_000, 1),
        run("pipeline-alo", 50_000, 1),
        run("limit-again", 200_000, 1),
        run("limit", 400_000, 2),
        run("pipeline-alo", 100_000, 2),
        run("limit-again", 400_000, 2),
        run("limit", 300_000, 3),
        run("pipeline-alo", 60_000, 3),
        run("limit-again", 300_000, 3),
    ]
    row = by_name(summarise(results))["pipeline-alo"]
    assert row["ratio_to_limit"] == pytest.approx(0.25)  # median of 0.25, 0.25, 0.2
    assert row["events_per_second"] == 60_000  # the median run
    assert row["rounds"] == [
        {"round": 1, "events_per_second": 50_000, "ratio_to_limit": 0.25},
        {"round": 2, "events_per_second": 100_000, "ratio_to_limit": 0.25},
        {"round": 3, "events_per_second": 60_000, "ratio_to_limit": 0.2},
    ]


def test_a_round_without_a_ceiling_gives_no_ratio() -> None:
    rows = by_name(summarise([run("pipeline-alo", 90_000), run("latency", 40_000, p99_ms=80)]))
    assert rows["pipeline-alo"]["ratio_to_limit"] is None
    assert rows["latency"]["p99_ms"] == 80
