"""Topics the project creates: their replication, and existing ones that do not fit.

On the session's single broker the default replication factor is 1 (min(3, brokers)), and
asking for more than the cluster has is one clear line; three brokers (replication 3,
min.insync.replicas 2) are in tests/fault/test_cluster_faults.py. A worker's state changelog
must have exactly as many partitions as its input: a worker that finds one with another count
stops with one line naming both and what to do.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.broker.admin import (
    TopicSpec,
    admin_client,
    describe_partitions,
    ensure_topics,
    grow_partitions,
)
from streams.config import KafkaSettings
from tests.conftest import PipelineRun, Worker

pytestmark = pytest.mark.integration


def test_a_replication_factor_above_the_brokers_is_one_line(
    project_env: dict[str, str], unique_name: Callable[[str], str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams", "topics", "create"],
        env={
            **project_env,
            "STREAMS_REPLICATION_FACTOR": "2",
            "STREAMS_INPUT_TOPIC": unique_name("events"),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: STREAMS_REPLICATION_FACTOR=2 needs 2 brokers, but the cluster at "
        f"{project_env['KAFKA_BOOTSTRAP_SERVERS']} has 1; lower it, or unset it for "
        "min(3, brokers)"
    ]


async def test_the_default_replication_is_what_the_cluster_allows(
    kafka_settings: KafkaSettings, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("replicated")
    assert await ensure_topics(kafka_settings, [TopicSpec(topic, 2)]) == {topic: 1}
    replicas = await describe_partitions(kafka_settings, [topic])
    assert {len(r.replicas) for r in replicas.values()} == {1}


async def partitions(kafka: KafkaSettings, topic: str) -> int:
    return len({p for (_, p) in await describe_partitions(kafka, [topic])})


def exit_line(worker: Worker) -> str:
    """The last line of a worker that must stop by itself, with exit code 2 (a StreamsError)."""
    try:
        worker.proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        worker.fail("the worker did not stop on a topic that does not fit")
    log = worker.log_tail(100_000)
    assert worker.proc.returncode == 2, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    return log.strip().splitlines()[-1]


async def run_once(run: PipelineRun) -> None:
    """Publish a little and let a worker process it: the app's changelog exists afterwards."""
    await run.create_topics()
    await run.publish(1_000, seed=61)
    run.start_worker(exit_when_idle=3).finish()


async def test_a_changelog_with_fewer_partitions_than_the_input_stops_the_worker(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    """Partitions added to the input while no worker ran: the changelog no longer fits."""
    run = pipeline_run(partitions=2)
    await run_once(run)
    await grow_partitions(run.kafka, run.input, 3)

    line = exit_line(run.start_worker())
    assert re.fullmatch(
        rf"error: topic \S+ has 2 partitions but must have 3, as many as {run.input} .*"
        r"if partitions were added to .* add them to \S+ too .*STREAMS_APP_ID",
        line,
    ), line


async def test_a_changelog_with_more_partitions_than_the_input_stops_the_worker(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    """The input deleted and created again with fewer partitions: the state belongs to the
    old topic."""
    run = pipeline_run(partitions=3)
    await run_once(run)
    async with admin_client(run.kafka) as admin:
        await admin.delete_topics([run.input])
    # Deletion completes in the background: create again until the topic has 2 partitions.
    deadline = time.monotonic() + 60
    while await partitions(run.kafka, run.input) != 2:
        assert time.monotonic() < deadline, f"{run.input} was not created again within 60s"
        await ensure_topics(run.kafka, [TopicSpec(run.input, 2)])
        await asyncio.sleep(0.2)

    line = exit_line(run.start_worker())
    assert re.fullmatch(
        rf"error: topic \S+ has 3 partitions but must have 2, as many as {run.input} .*"
        r"recreated with fewer partitions\? delete \S+ .*STREAMS_APP_ID",
        line,
    ), line


JOIN_APP = """
from streams import App

app = App("copart")
clicks = app.stream(app.topic("{left}"), key="user", timestamp="ts")
views = app.stream(app.topic("{right}"), key="user", timestamp="ts")
clicks.join_stream(views, within_ms=60_000, into="view").to("{out}")
"""


async def test_a_join_of_topics_with_other_partition_counts_stops_with_one_line(
    project_env: dict[str, str],
    kafka_settings: KafkaSettings,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """A join reads partition p of both inputs as one task: a worker whose inputs have other
    partition counts stops before consuming, with one line naming the declaring line, both
    counts and what to do."""
    left, right, out = unique_name("clicks"), unique_name("views"), unique_name("attributed")
    await ensure_topics(kafka_settings, [TopicSpec(left, 3), TopicSpec(right, 2)])
    app = tmp_path / "copart.py"
    app.write_text(JOIN_APP.format(left=left, right=right, out=out))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams", "worker", str(app)],
        env={**project_env, "STREAMS_APP_ID": unique_name("copart")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: copart.py:7: .join_stream() reads"), line
    assert f"{left!r} (3 partitions) with {right!r} (2)" in line
    assert "re-key one side with .group_by(...) first" in line
