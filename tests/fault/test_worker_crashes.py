"""Workers SIGKILLed mid-run, joining and leaving: exactly-once stays exact, nothing is lost."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import pytest

from tests.conftest import PipelineRun, Worker, assert_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]

# Commits every 100 ms while behind (the default is 1 s or 100k records: a worker here gets
# through 200k events in about a second): each worker commits several times before the
# input runs out, so the kills land mid-input, inside open batches of one or more fetches.
FREQUENT = {"STREAMS_COMMIT_INTERVAL_MS": "100"}
EOS = {"STREAMS_GUARANTEE": "exactly_once", **FREQUENT}
CONSUMED = "streams_events_consumed_total"


async def test_exactly_once_survives_repeated_sigkills(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=3)
    await run.create_topics()
    # Enough input that three workers killed early do not consume it all: a worker's metrics
    # answer between fetches, and one killed as soon as they show its first events had
    # consumed ~100k (a CI run of 2026-12-07 saw three of them consume all of 300k).
    await run.publish(600_000, seed=21, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.01)
    rng = random.Random(7)
    for _ in range(3):
        worker = run.start_worker(**EOS)
        # Kill at a random point after the worker has committed at least one batch, and well
        # before the input runs out (a commit covers 100 ms of input, ~25k events).
        worker.wait_metric_at_least(CONSUMED, rng.randint(1, 30_000))
        await asyncio.sleep(rng.uniform(0.0, 0.1))
        worker.kill()
    final = run.start_worker(exit_when_idle=3, **EOS).finish()
    assert final["consumed"] > 0, "the kills came after all input was processed"

    assert_exactly_once(await run.verify())


async def test_at_least_once_loses_nothing_after_sigkill(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=3)
    await run.create_topics()
    await run.publish(100_000, seed=22, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.01)
    worker = run.start_worker(**FREQUENT)
    worker.wait_metric_at_least(CONSUMED, 20_000)
    worker.kill()
    final = run.start_worker(exit_when_idle=3).finish()
    assert final["consumed"] > 0

    report = await run.verify()
    assert report.missing == 0, report.as_dict()
    assert report.wrong == 0, report.as_dict()
    assert report.extra == 0, report.as_dict()
    assert report.exact(allow_duplicates=True)
    assert report.dlq_records is not None
    assert report.dlq_records >= report.invalid


def first_processing(workers: list[Worker], timeout_s: float = 90) -> Worker:
    """The first of ``workers`` seen running with something consumed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.proc.poll() is None and (worker.metric(CONSUMED) or 0) >= 1:
                return worker
        time.sleep(0.05)
    pytest.fail(f"no worker consumed anything within {timeout_s}s: {workers[0].log_tail()}")


async def test_three_workers_one_killed_one_added(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=6)
    await run.create_topics()
    await run.publish(150_000, seed=23, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.01)
    workers = [run.start_worker(exit_when_idle=4, **EOS) for _ in range(3)]
    # Kill the first worker seen processing: which one gets partitions first is the group's
    # choice, and one that got none (or only finished ones) may already have exited idle.
    victim = first_processing(workers)
    victim.kill()
    joiner = run.start_worker(exit_when_idle=4, **EOS)
    totals = [w.finish() for w in [*workers, joiner] if w is not victim]
    assert sum(t["consumed"] for t in totals) > 0

    report = await run.verify()
    assert report.duplicate_finals == 0, report.as_dict()
    assert report.exact(), report.as_dict()
