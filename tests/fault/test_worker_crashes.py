"""Workers SIGKILLed mid-run, joining and leaving: exactly-once stays exact, nothing is lost."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from tests.conftest import PipelineRun

pytestmark = [pytest.mark.integration, pytest.mark.fault]

EOS = {"STREAMS_GUARANTEE": "exactly_once"}
CONSUMED = "streams_events_consumed_total"


async def test_exactly_once_survives_repeated_sigkills(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=3)
    await run.create_topics()
    await run.publish(200_000, seed=21, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.01)
    rng = random.Random(7)
    for _ in range(3):
        worker = run.start_worker(**EOS)
        # Kill at a random point after the worker has committed at least one batch, and well
        # before the input runs out (a fetch brings at most 20k records).
        worker.wait_metric_at_least(CONSUMED, rng.randint(1, 30_000))
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        worker.kill()
    final = run.start_worker(exit_when_idle=3, **EOS).finish()
    assert final["consumed"] > 0, "the kills came after all input was processed"

    report = await run.verify()
    assert report.duplicate_finals == 0, report.as_dict()
    assert report.exact(), report.as_dict()
    assert report.dlq_records == report.invalid
    assert report.late_records == report.expected_late


async def test_at_least_once_loses_nothing_after_sigkill(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=3)
    await run.create_topics()
    await run.publish(100_000, seed=22, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.01)
    worker = run.start_worker()
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


async def test_three_workers_one_killed_one_added(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=6)
    await run.create_topics()
    await run.publish(150_000, seed=23, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.01)
    workers = [run.start_worker(exit_when_idle=4, **EOS) for _ in range(3)]
    workers[0].wait_metric_at_least(CONSUMED, 1)
    workers[0].kill()
    joiner = run.start_worker(exit_when_idle=4, **EOS)
    totals = [w.finish() for w in [*workers[1:], joiner]]
    assert sum(t["consumed"] for t in totals) > 0

    report = await run.verify()
    assert report.duplicate_finals == 0, report.as_dict()
    assert report.exact(), report.as_dict()
