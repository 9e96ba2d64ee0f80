"""A repartition topic is purged up to what the worker committed (Kafka Streams'
``deleteRecords`` after commit): its log start offset follows the group's offset."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition

from streams.broker.admin import committed_offsets, topic_partitions
from streams.broker.local import free_port
from streams.broker.reading import bulk_reader
from streams.config import KafkaSettings
from streams.publish import Publisher
from tests.conftest import Worker

pytestmark = pytest.mark.integration

APP = """
from streams import App, Count, tumbling

app = App("{app}")
orders = app.topic("{orders}")
(
    app.stream(orders, key="customer_id", timestamp="ts")
    .group_by("region")
    .window(tumbling(60_000), grace_ms=600_000)
    .aggregate(orders=Count())
    .to("{by_region}")
)
"""
ORDERS = 3_000


async def test_the_repartition_topic_is_purged_below_the_committed_offsets(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    names = {k: unique_name(k) for k in ("app", "orders", "by_region")}
    app_file = tmp_path / "regions.py"
    app_file.write_text(textwrap.dedent(APP.format(**names)))
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAMS_PARTITIONS": "2",
        "STREAMS_GUARANTEE": "exactly_once",
        "STREAMS_REPARTITION_PURGE_INTERVAL_MS": "500",
    }
    _create_topics(app_file, env)
    repartition = f"{names['app']}-{names['by_region']}-repartition"
    regions = ["eu", "us", "apac", "latam", "mea"]
    orders = [
        {"customer_id": f"c{i % 50}", "region": regions[i % 5], "ts": 1_600_000_000_000 + i}
        for i in range(ORDERS)
    ]
    async with Publisher(kafka) as publisher:
        await publisher.publish(
            names["orders"], [(o["customer_id"].encode(), orjson.dumps(o)) for o in orders]
        )

    worker = _start_worker(app_file, env, tmp_path / "worker.log")
    try:
        # Every order, then every repartitioned one.
        worker.wait_metric_at_least("streams_events_consumed_total", 2 * ORDERS)
        tps = [TopicPartition(repartition, p) for p in await topic_partitions(kafka, repartition)]
        deadline = time.monotonic() + 60
        while True:
            committed = await committed_offsets(kafka, names["app"], repartition)
            starts = await _log_starts(kafka, tps)
            used = {p: offset for p, offset in committed.items() if offset > 0}
            if used and all(starts[p] == offset for p, offset in used.items()):
                break
            if time.monotonic() > deadline:
                worker.fail(f"log starts {starts}, committed offsets {committed}")
            await asyncio.sleep(0.2)
        assert sum(used.values()) >= ORDERS  # every repartitioned record was committed
    finally:
        worker.stop()


def _create_topics(app_file: Path, env: dict[str, str]) -> None:
    created = subprocess.run(
        [sys.executable, "-m", "streams", "topics", "create", str(app_file)],
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert created.returncode == 0, created.stderr


def _start_worker(app_file: Path, env: dict[str, str], log_path: Path) -> Worker:
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker", str(app_file)],
            env={**env, "STREAMS_METRICS_PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
    return Worker(proc, port, log_path)


async def _log_starts(kafka: KafkaSettings, tps: list[TopicPartition]) -> dict[int, int]:
    consumer = await bulk_reader(kafka, read_committed=True)
    try:
        starts = await consumer.beginning_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in starts.items()}
