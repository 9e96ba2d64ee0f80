"""A Faust agent with a changelog-backed table keeps its state across a worker restart."""

from __future__ import annotations

import asyncio
import sys
import tempfile
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


async def _run_worker(
    env: dict[str, str], app_id: str, kafka: KafkaSettings, topic: str, start: int, count: int
) -> tuple[dict, Counter[str]]:
    """Start a demo worker, publish ``count`` events once it is ready, return its summary.

    The events go in after the worker said ``agent: ready`` (its recovery done, its input seeked
    to the committed offsets), as events reach a running worker: none of them is in flight
    during the worker's first rebalance.
    """
    # stderr goes to a file, not a pipe: a chatty worker never blocks on it
    with tempfile.TemporaryFile() as stderr:
        proc = await asyncio.create_subprocess_exec(
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
            env={**env, "STREAMS_PARTITIONS": "3"},
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        assert proc.stdout is not None
        lines: list[bytes] = []
        try:
            async with asyncio.timeout(90):
                while not lines or lines[-1].strip() != b"agent: ready":
                    line = await proc.stdout.readline()
                    assert line, "the demo worker ended before it was ready"
                    lines.append(line)
            kinds = await _publish(kafka, topic, start, count)
            async with asyncio.timeout(150):
                rest, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr.seek(0)
        err = stderr.read().decode(errors="replace")
    out = b"".join(lines).decode() + rest.decode()
    assert proc.returncode == 0, f"{err[-3000:]}\n{out[-3000:]}"
    return orjson.loads(out.strip().splitlines()[-1]), kinds


async def test_table_survives_worker_restart(
    kafka_settings: KafkaSettings,
    create_topic: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
    project_env: dict[str, str],
) -> None:
    topic = await create_topic("faust-in", partitions=3)
    app_id = unique_name("faust-app")

    run1, first = await _run_worker(project_env, app_id, kafka_settings, topic, 0, 60)
    assert run1["consumed"] == 60
    assert run1["table"] == dict(first)

    # The second worker is a new process with an empty in-memory store: it can only know the
    # first run's counts by restoring the table from its changelog topic.
    run2, second = await _run_worker(project_env, app_id, kafka_settings, topic, 60, 30)
    assert run2["consumed"] == 30
    assert run2["table"] == dict(first + second)
