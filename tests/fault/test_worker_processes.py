"""``streams worker APP --processes 2`` on a real broker: the example orders app, exactly once
across both worker processes while one of them is SIGKILLed and restarted by the supervisor,
one ``/metrics`` for both, and a SIGTERM that stops everything within the deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.orders.generate import orders
from streams.broker.local import free_port
from streams.config import KafkaSettings
from streams.publish import Publisher
from streams.worker.shutdown import STOP_DEADLINE_S

pytestmark = [pytest.mark.integration, pytest.mark.fault]

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
PAST = 1_700_000_000_000  # event times well behind the wall clock: windows close on idle
CONSUMED = "streams_events_consumed_total"


def orders_app(directory: Path, tag: str) -> Path:
    """The orders example with topics of its own (tests/integration/test_examples.py runs
    the example itself on its fixed topic names)."""
    source = (REPO / "examples" / "orders" / "app.py").read_text()
    renamed = source.replace('"orders"', f'"orders-{tag}"').replace(
        '"revenue-per-customer"', f'"revenue-{tag}"'
    )
    assert renamed.count(tag) == 2
    path = directory / "orders_app.py"
    path.write_text(renamed)
    return path


def keyed(values: list[bytes]) -> list[tuple[bytes | None, bytes]]:
    """Orders keyed by customer, as a producer keys them (unreadable ones unkeyed)."""
    out: list[tuple[bytes | None, bytes]] = []
    for value in values:
        try:
            key = orjson.loads(value)["customer_id"].encode()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            key = None
        out.append((key, value))
    return out


async def publish(
    kafka: KafkaSettings,
    topic: str,
    messages: list[tuple[bytes | None, bytes]],
    pace_s: float = 0.0,
) -> None:
    """Publish ``messages``, in chunks of 1,000 ``pace_s`` apart."""
    async with Publisher(kafka) as publisher:
        for lo in range(0, len(messages), 1_000):
            await publisher.publish(topic, messages[lo : lo + 1_000])
            await asyncio.sleep(pace_s)


class Supervised:
    """``streams worker APP --processes 2`` and its one metrics and health port."""

    def __init__(self, app: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams", "worker", str(app), "--processes", "2"],
                cwd=REPO,
                env={**env, "STREAMS_METRICS_PORT": str(self.port)},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )

    def get(self, path: str) -> tuple[int, str] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return None

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The supervisor's /metrics, by sample name and labels (empty while it does not
        answer)."""
        answer = self.get("/metrics")
        if answer is None:
            return {}
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer[1])
            for s in family.samples
        }

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self.samples().items() if n == name)

    def ready(self) -> dict[str, Any] | None:
        answer = self.get("/health/ready")
        return orjson.loads(answer[1]) if answer is not None and answer[0] == 200 else None

    def until(self, what: str, condition: Callable[[], bool], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the supervisor exited ({self.proc.returncode}): {self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not within {timeout_s}s: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-12_000:]


def test_two_processes_exactly_once_through_a_sigkill(kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    app = orders_app(tmp_path, tag)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("STREAMS_", "KAFKA_"))},
        "PYTHONUNBUFFERED": "1",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAMS_APP_ID": f"procs-{tag}",
        "STREAMS_PARTITIONS": str(PARTITIONS),
        "STREAMS_GUARANTEE": "exactly_once",
        "STREAMS_COMMIT_INTERVAL_MS": "100",
        "STREAMS_IDLE_TIMEOUT_MS": "1500",
        "STREAMS_SESSION_TIMEOUT_MS": "10000",
        "STREAMS_GROUP_INSTANCE_ID": f"procs-{tag}",
    }
    created = subprocess.run(
        [sys.executable, "-m", "streams", "topics", "create", str(app)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    messages = keyed(orders(40_000, seed=22, start_ts=PAST))
    first, rest = messages[:20_000], messages[20_000:]
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    asyncio.run(publish(kafka, f"orders-{tag}", first))

    workers = Supervised(app, env, tmp_path / "supervisor.log")
    try:
        workers.until("the first half consumed", lambda: workers.total(CONSUMED) == len(first))
        # Both processes hold partitions: each reports the lag of its own.
        workers.until(
            "partitions on both processes",
            lambda: (
                {
                    dict(labels)["process"]
                    for (name, labels) in workers.samples()
                    if name == "streams_consumer_lag_records"
                }
                == {"0", "1"}
            ),
        )
        ready = workers.ready()
        assert ready is not None
        victim = ready["processes"][1]["pid"]

        # The rest as a steady stream, not one burst; the kill lands while it flows.
        publishing = threading.Thread(
            target=asyncio.run, args=(publish(kafka, f"orders-{tag}", rest, pace_s=0.1),)
        )
        publishing.start()
        workers.until("the second half coming in", lambda: workers.total(CONSUMED) > len(first))
        before = workers.total(CONSUMED)  # a fresh scrape of both, just before the kill
        os.kill(victim, signal.SIGKILL)
        publishing.join()

        workers.until(
            "the restart counted", lambda: workers.total("streams_worker_restarts_total") == 1
        )
        workers.until("both processes ready again", lambda: workers.ready() is not None)
        ready = workers.ready()
        assert ready is not None
        assert ready["processes"][1]["pid"] != victim

        # Everything consumed and every window closed (idle advance) and committed.
        def processed() -> bool:
            samples = workers.samples()
            lag = [v for (n, _), v in samples.items() if n == "streams_consumer_lag_records"]
            windows = ("streams_state_open_windows", (("pipeline", f"revenue-{tag}"),))
            return len(lag) == PARTITIONS and sum(lag) == 0 and samples.get(windows) == 0

        workers.until("the input processed", processed)
        samples = workers.samples()
        consumed = [
            v
            for (n, labels), v in samples.items()
            if n == CONSUMED and labels == (("topic", f"orders-{tag}"),)
        ]
        # One series for both processes. Each message was committed once (exactly_once); the
        # killed process's count is carried from its last scrape, so the sum lost at most
        # what it committed between the scrape before the kill and the kill.
        assert len(consumed) == 1
        assert before <= consumed[0] <= len(messages)
        assert consumed[0] >= len(messages) - 1_000, consumed
        assert samples[("streams_worker_processes", ())] == 2

        pids = [p["pid"] for p in ready["processes"]]
        began = time.monotonic()
        workers.proc.terminate()
        out, _ = workers.proc.communicate(timeout=STOP_DEADLINE_S + 30)
        took = time.monotonic() - began
    finally:
        if workers.proc.poll() is None:
            workers.proc.kill()
            workers.proc.communicate()
    assert workers.proc.returncode == 0, workers.log()
    assert took < STOP_DEADLINE_S, f"stopped {took:.1f}s after SIGTERM"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    log = workers.log()
    assert f"group instance procs-{tag}-0" in log
    assert f"group instance procs-{tag}-1" in log
    assert "worker consumed" in out

    audit = subprocess.run(
        [sys.executable, "-m", "streams", "verify", str(app), "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    report = orjson.loads(audit.stdout)
    assert report["exact"], report
    assert audit.returncode == 0, audit.stderr
    (pipeline,) = report["pipelines"]
    assert pipeline["expected_finals"] > 100
