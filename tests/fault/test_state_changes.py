"""State is tied to its declaration: a changed window never reuses state it did not build.

The scenario of issue 12: 20k events through a worker with 60 s windows, stopped, then a
worker with ``STREAMS_WINDOW_SIZE_MS=10000``. It used to restore the 60 s windows as 10 s
windows with 60 s of counts. Now it stops with one line naming the change and the fix; with
``STREAMS_ON_STATE_CHANGE=fresh`` the changed window starts empty (and says so), and every
10 s window it emits is right for the events it saw.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import orjson
import pytest

from streams.apps.reference import build
from streams.broker.reading import read_topic
from streams.core.interpreter import Batch, interpret
from streams.topology.plan import plan
from tests.conftest import PipelineRun

pytestmark = [pytest.mark.integration, pytest.mark.fault]

PAST = 1_600_000_000_000


async def test_a_changed_window_size_never_reuses_the_old_state(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=2)
    await run.create_topics()
    await run.publish(20_000, seed=31, start_ts=PAST, users=300, dup_ratio=0.02)
    run.start_worker(exit_when_idle=3).finish()
    first = await read_topic(run.kafka, run.output)
    assert {
        orjson.loads(r.value)["window_end"] - orjson.loads(r.value)["window_start"]
        for rs in first.values()
        for r in rs
    } == {60_000}

    refused = run.start_worker(STREAMS_WINDOW_SIZE_MS="10000")
    refused.proc.communicate(timeout=120)
    assert refused.proc.returncode == 2, refused.log_tail()
    last = refused.log_tail().strip().splitlines()[-1]
    assert last.startswith(f"error: pipeline {run.output} (partition "), last
    assert "tumbling(60000)" in last
    assert "tumbling(10000)" in last
    assert "STREAMS_ON_STATE_CHANGE=fresh" in last
    assert "streams reset" in last

    # Started afresh on purpose: new events, 10 s windows from empty state. Their event
    # times are now: the partitions' stream time (kept: it is not window state) followed the
    # wall clock while the first worker idled.
    offsets = {p: len(rs) for p, rs in (await read_topic(run.kafka, run.input)).items()}
    await run.publish(5_000, seed=32, start_ts=time.time_ns() // 1_000_000 + 2_000, users=100)
    fresh = run.start_worker(
        exit_when_idle=3, STREAMS_WINDOW_SIZE_MS="10000", STREAMS_ON_STATE_CHANGE="fresh"
    )
    fresh.finish()
    assert "starts empty" in fresh.log_tail(50_000)

    settings = dataclasses.replace(run.settings, window_size_ms=10_000, window_step_ms=10_000)
    segment = plan(build(settings).decl, settings.app_id).segments[0]
    expected = []
    for partition, records in (await read_topic(run.kafka, run.input)).items():
        new = records[offsets[partition] :]
        expected += [v for _, v, _ in interpret(segment, [Batch(0, new)]).outputs]
    outputs = await read_topic(run.kafka, run.output)
    emitted = [orjson.loads(r.value) for rs in outputs.values() for r in rs]
    later = [f for f in emitted if f["window_end"] - f["window_start"] == 10_000]
    assert len(later) == len(emitted) - sum(len(rs) for rs in first.values())
    assert sorted(later, key=_window) == sorted(expected, key=_window)
    assert len(later) >= 100  # every one of the 100 users has a window


def _window(final: dict[str, object]) -> tuple[str, int]:
    return (str(final["key"]), int(str(final["window_start"])))
