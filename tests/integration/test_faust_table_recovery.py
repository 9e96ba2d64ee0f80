"""A Faust agent with a changelog-backed table keeps its state across a worker restart."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.config import KafkaSettings

pytestmark = pytest.mark.integration

TYPES = ("page_view", "add_to_cart", "purchase")


async def _publish(kafka: KafkaSettings, topic: str, start: int, count: int) -> Counter[str]:
    kinds: Counter[str] = Counter()
    producer = AIOKafkaProducer(**kafka.client_kwargs())
    await producer.start()
    try:
        for i in range(start, start + count):
            kind = TYPES[i % len(TYPES)]
            kinds[kind] += 1
            event = {"event_id": f"e{i}", "type": kind, "user_id": f"u{i % 5}", "ts": i}
            await producer.send(topic, orjson.dumps(event), key=f"u{i % 5}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    return kinds


def _run_worker(env: dict[str, str], app_id: str, topic: str, count: int) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "demo",
            "--app-id",
            app_id,
            "--topic",
            topic,
            "--count",
            str(count),
            "--timeout",
            "90",
            "--json",
        ],
        env={**env, "STREAMS_PARTITIONS": "3"},
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return orjson.loads(done.stdout.strip().splitlines()[-1])


async def test_table_survives_worker_restart(
    kafka_settings: KafkaSettings,
    create_topic: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
    project_env: dict[str, str],
) -> None:
    topic = await create_topic("faust-in", partitions=3)
    app_id = unique_name("faust-app")

    first = await _publish(kafka_settings, topic, 0, 60)
    run1 = _run_worker(project_env, app_id, topic, 60)
    assert run1["consumed"] == 60
    assert run1["table"] == dict(first)

    # The second worker is a new process with an empty in-memory store: it can only know the
    # first run's counts by restoring the table from its changelog topic.
    second = await _publish(kafka_settings, topic, 60, 30)
    run2 = _run_worker(project_env, app_id, topic, 30)
    assert run2["consumed"] == 30
    assert run2["table"] == dict(first + second)
