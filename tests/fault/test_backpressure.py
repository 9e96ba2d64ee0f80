"""A slow output side pauses fetching: memory stays bounded, lag grows, nothing is lost.

The output is slowed for real: a Kafka client quota (set with Kafka's own ConfigCommand)
throttles the worker's producer to a trickle while 500k events wait in the input topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.broker.local import run_tool
from tests.conftest import PipelineRun

pytestmark = [pytest.mark.integration, pytest.mark.fault]

RSS_BOUND_MB = 300
EVENTS = 500_000


def _quota(bootstrap: str, client_id: str, rate: int | None) -> None:
    change = (
        ["--add-config", f"producer_byte_rate={rate}"]
        if rate
        else ["--delete-config", "producer_byte_rate"]
    )
    run_tool(
        "kafka.admin.ConfigCommand",
        "--bootstrap-server",
        bootstrap,
        "--alter",
        *change,
        "--entity-type",
        "clients",
        "--entity-name",
        client_id,
    )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_slow_output_pauses_fetching_with_bounded_memory(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=3)
    await run.create_topics()
    await run.publish(EVENTS, seed=41, users=50_000, dup_ratio=0.01, bad_ratio=0.01)
    bootstrap = run.kafka.bootstrap_servers
    _quota(bootstrap, run.app_id, 40_000)  # bytes/s for the worker's producers

    worker = run.start_worker(exit_when_idle=3)
    rss: list[float] = []
    paused_seen = 0.0
    buffered_seen = 0.0
    throttled_until = time.monotonic() + 25
    while time.monotonic() < throttled_until:
        rss.append(_rss_mb(worker.proc.pid))
        paused_seen = max(paused_seen, worker.metric("streams_paused_partitions") or 0.0)
        buffered_seen = max(buffered_seen, worker.metric("streams_buffered_events") or 0.0)
        await asyncio.sleep(0.5)
    consumed_while_throttled = worker.metric("streams_events_consumed_total") or 0.0
    _quota(bootstrap, run.app_id, None)

    stats = worker.finish(timeout_s=240)
    print(
        f"backpressure: peak RSS {max(rss):.0f} MB, {consumed_while_throttled:.0f} of {EVENTS} "
        f"consumed in 25 s of throttle, up to {paused_seen:.0f} partitions paused and "
        f"{buffered_seen:.0f} events fetched but not committed"
    )
    assert paused_seen > 0, "the worker never paused fetching while its output was throttled"
    assert consumed_while_throttled < EVENTS / 2, "the throttle did not hold consumption back"
    # Held while the output is slow: fetched, their outputs not yet acknowledged.
    assert buffered_seen > 0, "streams_buffered_events stayed 0 with outputs held back"
    assert max(rss) < RSS_BOUND_MB, f"RSS peaked at {max(rss):.0f} MB"
    assert stats["consumed"] == EVENTS
    report = await run.verify()
    assert report.exact(), report.as_dict()
