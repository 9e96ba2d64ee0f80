"""A restore that fails is retried with backoff, the worker is not ready meanwhile, and no
input record is processed (nor skipped) before its partition's state is whole.

The failure is real: the changelog holds a record the worker cannot apply. An operator
deletes it (the DeleteRecords API, as ``kafka-delete-records`` does) while the worker waits;
its next attempt restores, and the output is exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete

from streams.broker.admin import TopicSpec, admin_client, ensure_topics, start_client
from streams.publish import make_producer
from tests.conftest import PipelineRun, assert_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]


async def test_a_failing_restore_is_retried_and_nothing_is_skipped(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=2)
    await run.create_topics()
    changelog = f"{run.app_id}-state-changelog"
    # compact,delete: Kafka refuses DeleteRecords on a topic that is only compacted.
    policy = {"cleanup.policy": "compact,delete", "retention.ms": "-1"}
    await ensure_topics(run.kafka, [TopicSpec(changelog, 2, policy)])
    producer = make_producer(run.kafka)
    await start_client(producer, run.kafka)
    try:
        await producer.send_and_wait(changelog, b"not a stream time", key=b"t", partition=0)
    finally:
        await producer.stop()
    await run.publish(
        20_000, seed=71, start_ts=1_600_000_000_000, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.01
    )

    worker = run.start_worker(exit_when_idle=3, STREAMS_GUARANTEE="exactly_once")
    deadline = time.monotonic() + 60
    while "restoring partitions" not in worker.log_tail(20_000):
        assert time.monotonic() < deadline, worker.log_tail()
        await asyncio.sleep(0.2)
    assert "cannot be applied" in worker.log_tail(20_000)
    # Several attempts, none processing a record, the worker not ready throughout.
    while (worker.metric("streams_recovery_failures_total") or 0) < 2:
        assert time.monotonic() < deadline, worker.log_tail()
        assert worker.metric("streams_worker_ready") == 0.0
        await asyncio.sleep(0.2)
    assert worker.metric("streams_events_consumed_total") == 0

    async with admin_client(run.kafka) as admin:
        await admin.delete_records({TopicPartition(changelog, 0): RecordsToDelete(1)})
    totals = worker.finish()
    assert totals["consumed"] == 20_000
    assert_exactly_once(await run.verify())
