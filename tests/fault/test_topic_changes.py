"""Topics changing under a running worker: partitions added, the input topic deleted.

Each gives one clear log line and a defined behaviour — never a hang or a crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from streams.broker.admin import admin_client, grow_partitions, topic_partitions
from streams.worker.shutdown import STOP_DEADLINE_S
from tests.conftest import PipelineRun, Worker

pytestmark = [pytest.mark.integration, pytest.mark.fault]

CONSUMED = "streams_events_consumed_total"
DAY_MS = 86_400_000


def wait_for_log(worker: Worker, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in worker.log_path.read_text(errors="replace"):
            return
        assert worker.proc.poll() is None, f"worker exited: {worker.log_tail()}"
        time.sleep(0.2)
    pytest.fail(f"no log line with {text!r} within {timeout_s}s: {worker.log_tail()}")


async def test_partitions_added_to_the_input_are_picked_up(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    """Defined behaviour: the new partitions are consumed (the changelog grows to match) and
    results stay exact for windows that do not straddle the change."""
    run = pipeline_run(partitions=2)
    await run.create_topics()
    await run.publish(20_000, seed=41, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.01)
    worker = run.start_worker(
        exit_when_idle=4, STREAMS_GUARANTEE="exactly_once", STREAMS_METADATA_REFRESH_MS="1000"
    )
    worker.wait_metric_at_least(CONSUMED, 20_000)

    await grow_partitions(run.kafka, run.input, 4)
    # A day later in event time: no window is open on both sides of the change.
    await run.publish(20_000, seed=42, start_ts=1_735_689_600_000 + DAY_MS)
    wait_for_log(worker, "growing")
    totals = worker.finish()
    assert totals["consumed"] >= 40_000

    assert await topic_partitions(run.kafka, f"{run.app_id}-state-changelog") == [0, 1, 2, 3]
    report = await run.verify()
    assert report.exact(), report.as_dict()


async def test_deleting_the_input_topic_is_reported_and_the_worker_stays_up(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    """Defined behaviour: one error line, the worker keeps serving health and metrics and
    idles until the topic exists again; SIGTERM still stops it promptly."""
    run = pipeline_run(partitions=2)
    await run.create_topics()
    await run.publish(5_000, seed=43)
    worker = run.start_worker(STREAMS_METADATA_REFRESH_MS="1000")
    worker.wait_metric_at_least(CONSUMED, 5_000)

    async with admin_client(run.kafka) as admin:
        await admin.delete_topics([run.input])
    wait_for_log(worker, "does not exist (deleted?)")
    await asyncio.sleep(2)
    assert worker.proc.poll() is None, worker.log_tail()
    assert worker.metric(CONSUMED) == 5_000, "the worker no longer serves its metrics"

    worker.proc.terminate()
    worker.proc.communicate(timeout=STOP_DEADLINE_S + 15)
    log = worker.log_tail(100_000)
    assert worker.proc.returncode == 0, log[-3000:]
    assert "after SIGTERM: every event processed was committed" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
