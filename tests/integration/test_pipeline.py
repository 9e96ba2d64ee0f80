"""The reference pipeline on a real broker: every input message accounted for exactly once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest

from streams.broker.reading import read_topic
from streams.dlq import header_map
from streams.validation import decode_event
from tests.conftest import PipelineRun

pytestmark = pytest.mark.integration


async def test_pipeline_accounts_for_every_message(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=3)
    await run.create_topics()
    kinds = await run.publish(
        200_000, seed=11, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.02, users=20_000
    )
    stats = run.start_worker(exit_when_idle=3).finish()

    report = await run.verify()
    assert report.exact(), report.as_dict()
    assert report.expected_finals > 1000
    assert stats["consumed"] == 200_000
    assert stats["invalid"] == report.invalid == kinds["bad"]
    assert stats["duplicates"] == report.expected_duplicates >= kinds["duplicate"] * 0.9
    assert stats["late"] == report.expected_late
    assert report.dlq_records == report.invalid
    assert report.late_records == report.expected_late
    assert stats["emitted"] == report.output_finals == report.expected_finals

    # Dead letters carry the original key and bytes, and headers that point back at them.
    inputs = await read_topic(run.kafka, run.input)
    invalid_at = {
        (p, r.offset)
        for p, records in inputs.items()
        for r in records
        if decode_event(r.value)[1] is not None
    }
    dead = await read_topic(run.kafka, run.dlq)
    seen = set()
    for records in dead.values():
        for letter in records:
            headers = header_map(letter.headers)
            assert headers["error.stage"] == "validate"
            assert headers["error.message"]
            assert headers["source.topic"] == run.input
            assert int(headers["error.ts"]) > 0
            where = (int(headers["source.partition"]), int(headers["source.offset"]))
            original = inputs[where[0]][where[1]]
            assert (letter.key, letter.value) == (original.key, original.value)
            assert headers["error.message"] == decode_event(original.value)[1]
            seen.add(where)
    assert seen == invalid_at


async def test_idle_partition_still_closes_its_last_windows(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=2)
    await run.create_topics()
    await run.publish(500, seed=5, start_ts=1_600_000_000_000)
    worker = run.start_worker()  # no exit: it must close windows on its own
    worker.wait_metric_at_least("streams_events_consumed_total", 500)
    expected = (await run.verify()).expected_finals
    # Nothing but the idle timeout (2 s here) can close these windows: no input follows, and
    # the worker does not exit. A deadline, not a timing assert: how soon depends on the
    # machine's load as much as on the worker.
    deadline = time.monotonic() + 60
    finals: list[object] = []
    while len(finals) < expected:
        assert time.monotonic() < deadline, f"{len(finals)} of {expected} finals within 60s"
        await asyncio.sleep(0.2)
        outputs = await read_topic(run.kafka, run.output)
        finals = [orjson.loads(r.value) for recs in outputs.values() for r in recs]
    worker.kill()
    assert (await run.verify()).exact()
