"""Static membership (KIP-345): a worker SIGKILLed and restarted under the same group instance
id takes its partitions back at once, and the rest of the group never rebalances."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.conftest import PipelineRun, Worker

pytestmark = [pytest.mark.integration, pytest.mark.fault]

SESSION_TIMEOUT_S = 30
READY = "streams_worker_ready"
REBALANCES = "streams_rebalances_total"


def assigned(worker: Worker) -> str:
    """The partitions of the worker's last assignment, as its log names them."""
    found = re.findall(r"assigned input partitions (.+)", worker.log_tail(None))
    assert found, worker.log_tail()
    return str(found[-1]).strip()


def wait_ready(worker: Worker) -> float:
    """Seconds until the worker's /health/ready answers 200 (its ready gauge is 1)."""
    began = time.monotonic()
    worker.wait_metric_at_least(READY, 1)
    return time.monotonic() - began


async def test_a_static_member_comes_back_to_its_partitions_without_a_rebalance(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=4)
    await run.create_topics()
    await run.publish(4_000, seed=31)
    env = {"STREAMS_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_S * 1000)}
    first = run.start_worker(STREAMS_GROUP_INSTANCE_ID=f"{run.app_id}-0", **env)
    wait_ready(first)
    second_id = f"{run.app_id}-1"
    second = run.start_worker(STREAMS_GROUP_INSTANCE_ID=second_id, **env)
    first.wait_metric_at_least(REBALANCES, 2)  # the group made room for the second
    wait_ready(second)
    wait_ready(first)
    theirs = assigned(second)
    rebalances = first.metric(REBALANCES)

    second.kill()
    again = run.start_worker(STREAMS_GROUP_INSTANCE_ID=second_id, **env)
    took = wait_ready(again)

    assert assigned(again) == theirs
    # Without a static id the group waits for the killed member's session to time out
    # (30 s here) before the new one gets anything.
    assert took < SESSION_TIMEOUT_S / 3, f"ready {took:.1f}s after its restart"
    assert first.metric(REBALANCES) == rebalances, "the rest of the group rebalanced"
    print(f"restarted static member ready in {took:.1f}s with {theirs}")

    # And it works its partitions: new input is consumed by both.
    consumed = again.metric("streams_events_consumed_total") or 0
    await run.publish(4_000, seed=32)
    again.wait_metric_at_least("streams_events_consumed_total", consumed + 1)
    first.stop()
    again.stop()
