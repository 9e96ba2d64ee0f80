"""Outputs the broker will not take: poison records go to the dead-letter topic, and an
output failure mid-run loses no result.

The output topic's ``max.message.bytes`` is the real broker's limit: 300 bytes takes every
final of an ordinary user but not one of a 128-character user id.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from streams.broker.admin import TopicSpec, ensure_topics
from streams.broker.local import run_tool
from streams.broker.reading import read_topic
from streams.dlq import header_map
from streams.publish import Publisher
from tests.conftest import PipelineRun

pytestmark = [pytest.mark.integration, pytest.mark.fault]

LIMIT = "300"
LONG_USER = "u" * 128
PAST = 1_600_000_000_000


def _long_user_events(count: int, step_ms: int) -> list[tuple[bytes, bytes]]:
    return [
        (
            LONG_USER.encode(),
            orjson.dumps(
                {
                    "event_id": f"long-{i}",
                    "type": "purchase",
                    "user_id": LONG_USER,
                    "ts": PAST + i * step_ms,
                    "amount": 1.5,
                }
            ),
        )
        for i in range(count)
    ]


async def _poison_letters(run: PipelineRun) -> list[dict[str, str]]:
    letters = await read_topic(run.kafka, run.dlq)
    return [
        header_map(r.headers) | {"key": r.key.decode()}
        for rs in letters.values()
        for r in rs
        if header_map(r.headers).get("error.stage") == "produce"
    ]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_an_output_too_large_for_its_topic_is_a_dead_letter(
    pipeline_run: Callable[..., PipelineRun], guarantee: str
) -> None:
    run = pipeline_run(partitions=2)
    await ensure_topics(run.kafka, [TopicSpec(run.output, 2, {"max.message.bytes": LIMIT})])
    await run.create_topics()
    await run.publish(20_000, seed=51, start_ts=PAST, users=500)
    async with Publisher(run.kafka) as publisher:
        await publisher.publish(run.input, _long_user_events(30, 7_000))
    worker = run.start_worker(exit_when_idle=3, STREAMS_GUARANTEE=guarantee)
    worker.finish()

    poison = await _poison_letters(run)
    assert poison, "no output was refused"
    assert {p["key"] for p in poison} == {LONG_USER}
    assert {p["output.topic"] for p in poison} == {run.output}
    assert {p["error.pipeline"] for p in poison} == {run.output}  # the pipeline: its output
    assert all("max.message.bytes" in p["error.message"] for p in poison)
    report = await run.verify()
    # Exactly the refused finals are missing from the output, and nothing else is.
    assert report.missing == len(poison) == report.poison, report.as_dict()
    assert report.wrong == report.extra == report.duplicate_finals == 0, report.as_dict()
    assert report.dead_missing == report.dead_extra == 0, report.as_dict()
    outputs = await read_topic(run.kafka, run.output)
    assert all(r.key != LONG_USER.encode() for rs in outputs.values() for r in rs)


async def test_outputs_refused_mid_run_are_all_produced_again(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    """at_least_once: the output topic's limit drops under a running worker, so its next
    output batches are refused (an output-only failure; the changelog is fine). The batch is
    replayed from state written before it: every final comes out, none is lost."""
    run = pipeline_run(partitions=2)
    await run.create_topics()
    # All within one minute of event time: no window closes while the input is consumed;
    # they all close by idle advance, 15 s after the input stops, long after the change.
    await run.publish(50_000, seed=52, start_ts=PAST, users=2_000, dup_ratio=0.02)
    async with Publisher(run.kafka) as publisher:
        await publisher.publish(run.input, _long_user_events(20, 2_000))
    worker = run.start_worker(exit_when_idle=3, STREAMS_IDLE_TIMEOUT_MS="15000")
    worker.wait_metric_at_least("streams_events_consumed_total", 1)
    run_tool(
        "kafka.admin.ConfigCommand",
        "--bootstrap-server",
        run.kafka.bootstrap_servers,
        "--alter",
        "--entity-type",
        "topics",
        "--entity-name",
        run.output,
        "--add-config",
        f"max.message.bytes={LIMIT}",
    )
    worker.finish(timeout_s=240)
    log = worker.log_tail(200_000)
    assert "refused output for good" in log, log[-3000:]

    poison = await _poison_letters(run)
    report = await run.verify()
    assert report.missing == len(poison), report.as_dict()
    assert {p["key"] for p in poison} <= {LONG_USER}
    assert report.wrong == report.extra == 0, report.as_dict()
    assert report.exact(allow_duplicates=True) or report.missing == report.poison
    assert report.expected_finals - report.missing > 1_000
