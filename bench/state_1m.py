"""1M live (key, window) aggregates: worker RSS, and restart-to-processing time.

Publishes N events with N distinct user ids inside one hour-long window (nothing closes),
runs a worker until it has consumed them all and reports its peak RSS; then starts a second
worker on the same group and reports how long it takes from process start to consuming again
(group join + changelog restore), and the changelog records it replayed.

    python bench/state_1m.py [--events 1000000] [--store memory|rocksdb]

``--core`` needs no broker: it feeds the same events straight into one
:class:`~streams.core.PartitionProcessor` (batches of ``--batch``, changelog drained after each
like the worker does) and reports the events/s of ``process`` alone, the RSS the state adds,
then the records/s of replaying the changelog into a new processor and the time to close every
window. Run it once per store; each run is its own process, so RSS figures do not mix.

    python bench/state_1m.py --core --store rocksdb [--events 1000000] [--batch 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import marshal
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

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


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:")) / 1024


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


BASE_TS = 1_700_000_000_000


def event(i: int) -> dict[str, Any]:
    """Event ``i``: its own id and user, inside the first minute of one hour-long window."""
    return {
        "event_id": f"e{i}",
        "type": "purchase",
        "user_id": f"u{i}",
        "ts": BASE_TS + i % 60_000,
        "amount": 1.5,
    }


async def publish(kafka: KafkaSettings, topic: str, events: int) -> None:
    await ensure_topics(kafka, [TopicSpec(topic, 6)])
    messages = ((f"u{i}".encode(), orjson.dumps(event(i))) for i in range(events))
    async with Publisher(kafka) as publisher:
        await publisher.publish(topic, messages)


def core(events: int, batch: int, store_kind: str) -> dict[str, Any]:
    """The state alone: N keys through one PartitionProcessor, no broker, no worker."""
    from streams.config import Settings
    from streams.core import CoreConfig, PartitionProcessor

    hour = 3_600_000
    config = CoreConfig(window_size_ms=hour, window_step_ms=hour, idle_timeout_ms=hour)
    pid = os.getpid()
    gc.set_threshold(50_000, 50, 1_000)  # as the worker sets it
    with tempfile.TemporaryDirectory(prefix="state1m-") as scratch:
        settings = Settings(store=store_kind, state_dir=scratch, app_id="state1m")
        processor = PartitionProcessor(config, settings.open_store(0))
        log_path = os.path.join(scratch, "changelog.marshal")
        baseline = rss_mb(pid, "VmRSS")
        busy = 0.0
        with open(log_path, "wb") as log:
            for begin in range(0, events, batch):
                chunk = [event(i) for i in range(begin, min(begin + batch, events))]
                started = time.perf_counter()
                processor.process(chunk, 0, begin)
                records = processor.drain_changelog()
                busy += time.perf_counter() - started
                marshal.dump(records, log)
        gc.collect()
        after = rss_mb(pid, "VmRSS")
        figures: dict[str, Any] = {
            "store": store_kind,
            "events": events,
            "batch": batch,
            "open_windows": processor.open_windows,
            "dedupe_ids": processor.dedupe_size,
            "process_events_per_s": round(events / busy),
            "rss_mb_before": round(baseline, 1),
            "rss_mb_after": round(after, 1),
            "rss_mb_state": round(after - baseline, 1),
            "peak_rss_mb": round(rss_mb(pid), 1),
        }
        del processor
        gc.collect()

        restored = PartitionProcessor(config, settings.open_store(0))
        applied = 0
        started = time.perf_counter()
        for records in _read_batches(log_path):
            for key, value in records:
                restored.apply_changelog(key, value)
            applied += len(records)
        restored.drain_changelog()
        assert restored.open_windows == events  # also finishes the restore (index, flush)
        restore_s = time.perf_counter() - started
        figures["changelog_records"] = applied
        figures["restore_records_per_s"] = round(applied / restore_s)
        figures["restore_s"] = round(restore_s, 2)
        figures["rss_mb_after_restore"] = round(rss_mb(pid, "VmRSS"), 1)

        started = time.perf_counter()
        finals = restored.tick(BASE_TS + 10 * 3_600_000, caught_up=True)
        figures["close_all_s"] = round(time.perf_counter() - started, 2)
        assert len(finals) == events
        return figures


def _read_batches(path: str) -> Iterator[list[tuple[bytes, bytes | None]]]:
    with open(path, "rb") as log:
        while True:
            try:
                yield marshal.load(log)
            except EOFError:
                return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--store", choices=("memory", "rocksdb"), default="memory")
    parser.add_argument("--core", action="store_true", help="the processor alone, no broker")
    parser.add_argument("--batch", type=int, default=5_000, help="events per batch (--core)")
    args = parser.parse_args()
    if args.core:
        print(orjson.dumps(core(args.events, args.batch, args.store)).decode())
        return
    kafka = KafkaSettings.from_env()
    run = uuid.uuid4().hex[:6]
    topic = f"state1m-{run}"
    asyncio.run(publish(kafka, topic, args.events))
    state_dir = os.path.join(tempfile.gettempdir(), f"state1m-{run}")
    env = {
        **os.environ,
        "STREAMS_APP_ID": f"state1m-{run}",
        "STREAMS_INPUT_TOPIC": topic,
        "STREAMS_OUTPUT_TOPIC": f"{topic}-out",
        "STREAMS_DLQ_TOPIC": f"{topic}-dlq",
        "STREAMS_LATE_TOPIC": f"{topic}-late",
        "STREAMS_WINDOW_SIZE_MS": "3600000",
        "STREAMS_IDLE_TIMEOUT_MS": "3600000",
        "STREAMS_STORE": args.store,
        "STREAMS_STATE_DIR": state_dir,
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
    second.wait()
    shutil.rmtree(state_dir, ignore_errors=True)  # the killed worker's RocksDB databases
    print(
        orjson.dumps(
            {
                "store": args.store,
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
