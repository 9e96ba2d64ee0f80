"""1M live (key, window) aggregates: worker RSS, and restart-to-processing time.

Publishes N events with N distinct user ids inside one hour-long window (nothing closes),
runs a worker until it has consumed them all and reports its peak RSS; then starts a second
worker on the same group and reports how long it takes from process start to consuming again
(group join + changelog restore), and the changelog records it replayed.

    python bench/state_1m.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import orjson

from streams.broker.admin import TopicSpec, ensure_topics
from streams.broker.local import free_port
from streams.config import KafkaSettings
from streams.publish import Publisher


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values) if values else None


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def start_worker(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "worker"],
        env={**env, "STREAMS_METRICS_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def wait_for(port: int, name: str, value: float, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = metric(port, name)
        if current is not None and current >= value:
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"{name} did not reach {value}")


async def publish(kafka: KafkaSettings, topic: str, events: int) -> None:
    await ensure_topics(kafka, [TopicSpec(topic, 6)])
    base = 1_700_000_000_000
    messages = (
        (
            f"u{i}".encode(),
            orjson.dumps(
                {
                    "event_id": f"e{i}",
                    "type": "purchase",
                    "user_id": f"u{i}",
                    "ts": base + i % 60_000,
                    "amount": 1.5,
                }
            ),
        )
        for i in range(events)
    )
    async with Publisher(kafka) as publisher:
        await publisher.publish(topic, messages)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    kafka = KafkaSettings.from_env()
    run = uuid.uuid4().hex[:6]
    topic = f"state1m-{run}"
    asyncio.run(publish(kafka, topic, args.events))
    env = {
        **os.environ,
        "STREAMS_APP_ID": f"state1m-{run}",
        "STREAMS_INPUT_TOPIC": topic,
        "STREAMS_OUTPUT_TOPIC": f"{topic}-out",
        "STREAMS_DLQ_TOPIC": f"{topic}-dlq",
        "STREAMS_LATE_TOPIC": f"{topic}-late",
        "STREAMS_WINDOW_SIZE_MS": "3600000",
        "STREAMS_IDLE_TIMEOUT_MS": "3600000",
    }
    first, port = start_worker(env)
    wait_for(port, "streams_events_consumed_total", args.events)
    windows = metric(port, "streams_state_open_windows")
    ids = metric(port, "streams_state_dedupe_ids")
    peak = rss_mb(first.pid)
    first.kill()
    first.wait()

    started = time.monotonic()
    second, port = start_worker(env)
    ready = wait_for(port, "streams_assigned_partitions", 1)
    wait_for(port, "streams_recovery_records_remaining", 0)
    # Processing again: readiness reports restored and assigned.
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                if orjson.loads(r.read())["ready"]:
                    break
        except OSError:
            pass
        time.sleep(0.05)
    processing = time.monotonic()
    restored = metric(port, "streams_recovery_records_restored_total")
    restored_windows = metric(port, "streams_state_open_windows")
    peak2 = rss_mb(second.pid)
    second.kill()
    print(
        orjson.dumps(
            {
                "events": args.events,
                "open_windows": windows,
                "dedupe_ids": ids,
                "peak_rss_mb_processing": round(peak, 1),
                "restart_to_ready_s": round(processing - started, 2),
                "assigned_after_s": round(ready - started, 2),
                "changelog_records_restored": restored,
                "open_windows_after_restore": restored_windows,
                "peak_rss_mb_after_restore": round(peak2, 1),
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
