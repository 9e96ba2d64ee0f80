"""Worker metrics and health after a known run: counters equal what was published."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

import orjson
import pytest

from tests.conftest import PipelineRun

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_metrics_and_health_after_a_known_run(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=3)
    await run.create_topics()
    kinds = await run.publish(20_000, seed=51, dup_ratio=0.03, late_ratio=0.02, bad_ratio=0.02)
    worker = run.start_worker()
    worker.wait_metric_at_least("streams_events_consumed_total", 20_000)
    expected = await run.verify()
    # Finals keep coming until idle advance closes the last windows.
    finals = 'streams_events_produced_total{topic="' + run.output + '"}'
    for _ in range(100):
        if worker.metric(finals) == expected.expected_finals:
            break
        await asyncio.sleep(0.2)

    def value(name: str) -> float | None:
        return worker.metric(name)

    assert value("streams_events_consumed_total") == 20_000
    assert value("streams_events_invalid_total") == kinds["bad"] == expected.invalid
    assert value("streams_dlq_writes_total") == kinds["bad"]
    assert value("streams_events_duplicate_total") == expected.expected_duplicates
    assert value("streams_events_late_total") == expected.expected_late
    assert value(finals) == expected.expected_finals
    assert value('streams_events_produced_total{topic="' + run.late + '"}') == (
        expected.expected_late
    )
    assert value("streams_assigned_partitions") == 3
    assert value("streams_consumer_lag_records") == 0
    assert value("streams_consumer_lag_seconds") == 0
    assert value("streams_worker_ready") == 1
    assert value("streams_batch_processing_seconds_count") >= 1
    assert value("streams_commits_total") >= 1
    assert value("streams_buffered_events") == 0  # everything fetched is committed

    status, body = _get(worker.port, "/health/ready")
    assert (status, orjson.loads(body)["ready"]) == (200, True)
    status, body = _get(worker.port, "/health/live")
    assert (status, orjson.loads(body)["live"]) == (200, True)
    worker.kill()
