"""Live state at scale: a real worker process holding N keys, its peak RSS, and its restart.

N events with N distinct user ids and event ids, all inside one hour-long window, so nothing
closes and nothing expires: the worker ends up holding N (user, window) aggregates and N
dedupe ids. The worker is ``python -m streams worker`` (Faust app, metrics server and all);
its peak RSS (``VmHWM``) is read once it has consumed every event. Two seconds later (idle:
a RocksDB store has its checkpoint by then) it is SIGKILLed, and a second worker on the same
group and state directory is timed from process start to ready (group join + restore), with
the changelog records it replayed against the changelog's size, and its peak RSS after the
restore. With ``local_state=False`` the stores' checkpoints are deleted before the restart: a
RocksDB store is then rebuilt from the whole changelog, as every restart did before decision
0017.

Used by ``streams bench`` (the ``state`` scenario) and ``bench/state_1m.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.bench.probe import cpu_seconds, metrics_text, status_mb
from streams.broker.admin import TopicSpec, ensure_topics, partition_counts
from streams.broker.local import free_port
from streams.config import KafkaSettings
from streams.errors import StreamsError
from streams.publish import Publisher

BASE_TS = 1_700_000_000_000
HOUR_MS = 3_600_000


def event(i: int) -> dict[str, Any]:
    """Event ``i``: its own id and user, inside the first minute of one hour-long window."""
    return {
        "event_id": f"e{i}",
        "type": "purchase",
        "user_id": f"u{i}",
        "ts": BASE_TS + i % 60_000,
        "amount": 1.5,
    }


async def publish_keys(kafka: KafkaSettings, topic: str, events: int) -> int:
    """Publish events ``0 .. events-1`` to a new 6-partition ``topic``; returns their bytes."""
    await ensure_topics(kafka, [TopicSpec(topic, 6)])
    size = 0

    def messages() -> Any:
        nonlocal size
        for i in range(events):
            value = orjson.dumps(event(i))
            size += len(value)
            yield f"u{i}".encode(), value

    async with Publisher(kafka) as publisher:
        await publisher.publish(topic, messages())
    return size


def metric(port: int, name: str) -> float | None:
    """Sum of a metric's samples on a worker's /metrics; None if it does not answer."""
    text = metrics_text(port)
    if text is None:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values) if values else None


def start_worker(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """A ``streams worker`` process with its own metrics port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "worker"],
        env={**env, "STREAMS_METRICS_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def wait_for(port: int, name: str, value: float, timeout: float = 600) -> float:
    """Wait until a worker's metric reaches ``value``; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = metric(port, name)
        if current is not None and current >= value:
            return time.monotonic()
        time.sleep(0.05)
    raise StreamsError(f"{name} did not reach {value} within {timeout:.0f}s")


def wait_ready(port: int, timeout: float = 600) -> float:
    """Wait until a worker's /health/ready says ready; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                if orjson.loads(r.read())["ready"]:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.05)
    raise StreamsError(f"the worker was not ready within {timeout:.0f}s")


async def changelog_size(kafka: KafkaSettings, topic: str) -> int:
    """Records written to ``topic`` (the sum of its partitions' end offsets)."""
    partitions = (await partition_counts(kafka, [topic]))[topic]
    consumer = AIOKafkaConsumer(**kafka.client_kwargs())
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()


def measure_state(
    kafka: KafkaSettings, events: int, store: str = "memory", *, local_state: bool = True
) -> dict[str, Any]:
    """Publish ``events`` distinct keys, hold them in a worker, SIGKILL it, restart; figures."""
    run = uuid.uuid4().hex[:6]
    topic = f"state-{run}"
    input_bytes = asyncio.run(publish_keys(kafka, topic, events))
    state_dir = os.path.join(tempfile.gettempdir(), f"state-{run}")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "STREAMS_APP_ID": f"state-{run}",
        "STREAMS_INPUT_TOPIC": topic,
        "STREAMS_OUTPUT_TOPIC": f"{topic}-out",
        "STREAMS_DLQ_TOPIC": f"{topic}-dlq",
        "STREAMS_LATE_TOPIC": f"{topic}-late",
        "STREAMS_WINDOW_SIZE_MS": str(HOUR_MS),
        "STREAMS_IDLE_TIMEOUT_MS": str(HOUR_MS),
        "STREAMS_STORE": store,
        "STREAMS_STATE_DIR": state_dir,
    }
    try:
        first, port = start_worker(env)
        try:
            started = time.monotonic()
            done = wait_for(port, "streams_events_consumed_total", events)
            figures: dict[str, Any] = {
                "store": store,
                "local_state": local_state,
                "events": int(metric(port, "streams_events_consumed_total") or 0),
                "seconds": done - started,
                "bytes": input_bytes,
                "open_windows": metric(port, "streams_state_open_windows"),
                "dedupe_ids": metric(port, "streams_state_dedupe_ids"),
                "peak_rss_mb": round(status_mb(first.pid, "VmHWM"), 1),
                "cpu_seconds": cpu_seconds(first.pid),
            }
            time.sleep(2.0)
            figures["checkpoints"] = metric(port, "streams_state_checkpoints_total")
        finally:
            first.kill()
            first.wait()
        figures["changelog_size"] = asyncio.run(
            changelog_size(kafka, f"{env['STREAMS_APP_ID']}-state-changelog")
        )
        if not local_state:
            for path in Path(state_dir).rglob("checkpoint.json"):
                path.unlink()
        started = time.monotonic()
        second, port = start_worker(env)
        try:
            assigned = wait_for(port, "streams_assigned_partitions", 1)
            wait_for(port, "streams_recovery_records_remaining", 0)
            ready = wait_ready(port)
            figures.update(
                {
                    "restart_to_ready_s": round(ready - started, 2),
                    "assigned_after_s": round(assigned - started, 2),
                    "assigned_to_ready_s": round(ready - assigned, 2),
                    "changelog_records_restored": metric(
                        port, "streams_recovery_records_restored_total"
                    ),
                    "stores_reused": metric(
                        port, 'streams_recovery_local_stores_total{outcome="reused"}'
                    ),
                    "open_windows_after_restore": metric(port, "streams_state_open_windows"),
                    "peak_rss_mb_after_restore": round(status_mb(second.pid, "VmHWM"), 1),
                }
            )
        finally:
            second.kill()
            second.wait()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)  # the killed workers' RocksDB databases
    return figures
