"""The short soak (the 20-minute one is ``python -m streams.bench.soak``, see RELIABILITY.md):
a steady live stream, the exactly-once worker restarted with SIGTERM then SIGKILL, resources
sampled, and the output exact at the end."""

from __future__ import annotations

import asyncio

import pytest

from streams.bench.soak import plot_svg, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def test_short_soak_with_restarts_is_exact_and_leaks_no_descriptors(
    kafka_bootstrap: str,
) -> None:
    result = await asyncio.to_thread(
        run_soak, kafka_bootstrap, seconds=60, rate=1500, restart_every=20, sample_every=2
    )
    assert [r["signal"] for r in result["restarts"]] == ["SIGTERM", "SIGKILL"]
    assert result["exact"], result["verify"]
    assert result["verify"]["duplicate_finals"] == 0
    samples = result["samples"]
    assert {s["worker"] for s in samples} == {1, 2, 3}, "every worker was sampled"
    # Per worker process, open descriptors settle after start-up and do not keep growing.
    for worker in (1, 2, 3):
        fds = [s["open_fds"] for s in samples if s["worker"] == worker and s["open_fds"]]
        assert fds, f"no descriptor samples for worker {worker}"
        assert max(fds[len(fds) // 2 :]) <= max(fds[: len(fds) // 2 + 1]) + 8, fds
    svg = plot_svg(result)
    assert svg.startswith("<svg")
    assert svg.count("<polyline") == 5
