"""Shared fixtures. Integration tests get a real Apache Kafka broker or fail loudly.

Where the broker comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a
testcontainers ``apache/kafka`` container when a Docker daemon answers; else the project's
local broker (``streams.broker.local``) on free ports with a fresh data dir. There is no
skip: a test that needs a broker and cannot have one fails with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest

from streams.broker.admin import TopicSpec, ensure_topics, pipeline_topics
from streams.broker.local import (
    KAFKA_VERSION,
    LocalCluster,
    LocalKafka,
    free_port,
    free_ports,
    metadata_answers,
)
from streams.broker.reading import read_topic
from streams.broker.registry import LocalRegistry
from streams.config import KafkaSettings, Settings
from streams.generator import generate_messages
from streams.publish import Publisher
from streams.verify import VerifyReport, verify_pipeline


def _docker_daemon_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    """The local broker this session started, or None when the broker came from elsewhere."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        if not metadata_answers(configured, timeout_s=15):
            pytest.fail(
                f"KAFKA_BOOTSTRAP_SERVERS={configured} does not answer; start that broker "
                "or unset the variable to let the tests start their own",
                pytrace=False,
            )
        yield None
        return
    if _docker_daemon_answers():
        yield None
        return
    broker = start_broker(tmp_path_factory.mktemp("kafka"), "integration tests")
    yield broker
    broker.stop()


def start_broker(home: Path, purpose: str) -> LocalKafka:
    """A new local broker in ``home`` on free ports; fails the test loudly if it cannot start."""
    broker = LocalKafka(home, port=free_port(), controller_port=free_port())
    try:
        broker.start(timeout_s=120)
    except Exception as exc:
        pytest.fail(f"no Kafka broker for {purpose}: {exc}", pytrace=False)
    return broker


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node local cluster of the session's own (RF 3, min ISR 2), on free ports with fresh
    data dirs; started the first time a test asks for it. Tests kill and restart its nodes,
    so it is never a ``KAFKA_BOOTSTRAP_SERVERS`` cluster; it fails loudly if it cannot start."""
    ports = free_ports(6)
    cluster = LocalCluster(
        tmp_path_factory.mktemp("cluster"), list(zip(ports[::2], ports[1::2], strict=True))
    )
    try:
        cluster.start(timeout_s=180)
    except Exception as exc:
        cluster.stop()
        pytest.fail(f"no local Kafka cluster for the cluster tests: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (``http://127.0.0.1:<port>/apis/ccompat/v7``) of a real Schema Registry
    (Apicurio, Confluent's API, in memory) this session starts on a free port, the first time
    a test asks for it, and stops at the end. Its first start on a machine builds the server
    with Maven (about a minute, within the first test's timeout). It is shared: tests use
    unique subjects. It fails loudly, with the log's tail, if it cannot be built or started."""
    registry = LocalRegistry(tmp_path_factory.mktemp("registry"), port=free_port())
    try:
        registry.start(timeout_s=120)
    except Exception as exc:
        pytest.fail(f"no Schema Registry for the tests: {exc}", pytrace=False)
    yield registry.url
    registry.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalKafka | None) -> Iterator[str]:
    """Bootstrap address of a real Kafka broker for this test session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
    elif local_broker is not None:
        yield local_broker.bootstrap
    else:
        from testcontainers.kafka import KafkaContainer

        try:
            container = KafkaContainer(f"apache/kafka:{KAFKA_VERSION}").with_kraft()
            container.start()
        except Exception as exc:
            pytest.fail(f"no Kafka broker: testcontainers failed: {exc}", pytrace=False)
        yield container.get_bootstrap_server()
        container.stop()


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Client settings pointing at the test broker."""
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names (topics, group ids) no other test or run uses."""
    test = request.node.name.split("[")[0].replace("_", "-")[:40]

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def create_topic(
    kafka_settings: KafkaSettings, unique_name: Callable[[str], str]
) -> Callable[..., Awaitable[str]]:
    """Create a fresh topic: ``await create_topic("events", partitions=3)`` returns its name."""

    async def make(prefix: str, partitions: int = 1, **configs: str) -> str:
        name = unique_name(prefix)
        await ensure_topics(kafka_settings, [TopicSpec(name, partitions, configs)])
        return name

    return make


@pytest.fixture
def project_env(kafka_bootstrap: str) -> dict[str, str]:
    """Environment for a ``streams`` subprocess that talks to the test broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
    env["PYTHONUNBUFFERED"] = "1"
    return env


class PipelineRun:
    """One isolated reference pipeline on the test broker: its own topics and group id."""

    def __init__(self, bootstrap: str, unique_name: Callable[[str], str], partitions: int) -> None:
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self.partitions = partitions
        self.app_id = unique_name("app")
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"{self.app_id}-"))
        self.input = unique_name("events")
        self.output = unique_name("aggregates")
        self.dlq = unique_name("dlq")
        self.late = unique_name("late")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
        self.env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "STREAMS_APP_ID": self.app_id,
                "STREAMS_INPUT_TOPIC": self.input,
                "STREAMS_OUTPUT_TOPIC": self.output,
                "STREAMS_DLQ_TOPIC": self.dlq,
                "STREAMS_LATE_TOPIC": self.late,
                "STREAMS_PARTITIONS": str(partitions),
                "STREAMS_IDLE_TIMEOUT_MS": "2000",
                "STREAMS_SESSION_TIMEOUT_MS": "6000",
            }
        )
        self.workers: list[subprocess.Popen[str]] = []

    @property
    def settings(self) -> Settings:
        """The settings a worker of this run reads."""
        return Settings.from_env(self.env)

    async def create_topics(self) -> None:
        """Create input, output, DLQ and late topics."""
        await ensure_topics(self.kafka, pipeline_topics(self.settings))

    async def publish(self, count: int, **generator_args: Any) -> Counter[str]:
        """Publish generated messages (invalid ones included, as raw bytes); counts by kind."""
        kinds: Counter[str] = Counter()

        def messages() -> Iterator[tuple[bytes | None, bytes]]:
            for message in generate_messages(count, **generator_args):
                kinds[message.kind] += 1
                yield message.key, message.value

        async with Publisher(self.kafka) as publisher:
            await publisher.publish(self.input, messages())
        return kinds

    def start_worker(self, *, exit_when_idle: float | None = None, **env: str) -> Worker:
        """Start ``streams worker`` as a subprocess with its own metrics port."""
        port = free_port()
        cmd = [sys.executable, "-m", "streams", "worker", "--json"]
        if exit_when_idle is not None:
            cmd += ["--exit-when-idle", str(exit_when_idle)]
        log_path = self.log_dir / f"worker-{len(self.workers)}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                cmd,
                env={**self.env, "STREAMS_METRICS_PORT": str(port), **env},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.workers.append(proc)
        return Worker(proc, port, log_path)

    async def verify(self, **settings: int) -> VerifyReport:
        """``streams verify`` of this run's output against its input."""
        return await verify_pipeline(self.settings, **settings)

    def kill_all(self) -> None:
        """SIGKILL every worker still running (test teardown)."""
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)


class Worker:
    """A running ``streams worker`` subprocess, its metrics endpoint and its log file.

    The log goes to a file, never to a pipe nobody reads while the worker runs: a worker that
    logs a lot (a broker outage) would fill the pipe and block on its next log line.
    """

    def __init__(self, proc: subprocess.Popen[str], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    def metric(self, name: str) -> float | None:
        """Sum of a metric's samples from ``/metrics`` (None when not reachable yet)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_metric_at_least(self, name: str, value: float, timeout_s: float = 90) -> float:
        """Poll ``/metrics`` until ``name`` reaches ``value``; fails the test on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited early ({self.proc.returncode}): {self.log_tail()}")
            current = self.metric(name)
            if current is not None and current >= value:
                return current
            time.sleep(0.1)
        self.fail(f"{name} did not reach {value} within {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM, and wait for the orderly exit."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.fail(f"worker did not stop within {timeout_s}s of SIGTERM")
        assert self.proc.returncode == 0, self.log_tail()

    def finish(self, timeout_s: float = 180) -> dict[str, Any]:
        """Wait for a worker started with ``exit_when_idle``; returns its JSON totals."""
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.fail(f"worker did not finish within {timeout_s}s")
        assert self.proc.returncode == 0, self.log_tail()
        return dict(orjson.loads(out.strip().splitlines()[-1]))

    def fail(self, what: str) -> NoReturn:
        """Ask the stuck worker where it waits (streams.worker.diagnostics), stop it, fail."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10  # a worker too stuck to answer is killed anyway
            while "WARNING] tasks:" not in self.log_tail(200_000) and time.monotonic() < deadline:
                time.sleep(0.1)
        self.proc.kill()
        self.proc.communicate()
        pytest.fail(f"{what}: {self.log_tail(12_000)}")

    def log_tail(self, chars: int | None = 3000) -> str:
        """The end of the worker's log (all of it for None)."""
        text = self.log_path.read_text(errors="replace")
        return text if chars is None else text[-chars:]


def pipeline_runs(
    bootstrap: str, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., PipelineRun]]:
    """A factory of isolated pipelines on ``bootstrap``; kills their workers when closed."""
    runs: list[PipelineRun] = []

    def make(partitions: int = 3) -> PipelineRun:
        run = PipelineRun(bootstrap, unique_name, partitions)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.kill_all()


class Generator:
    """``streams generate --topic`` publishing a seeded stream at a steady rate in a subprocess
    (through broker faults: it retries, and resends what a dead producer left unacknowledged)."""

    def __init__(self, run: PipelineRun, count: int, rate: int, seed: int) -> None:
        self.count = count
        self.rate = rate
        self.args = {"seed": seed, "dup_ratio": 0.02, "late_ratio": 0.01, "bad_ratio": 0.01}
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "streams", "generate", "--count", str(count)),
                *("--rate", str(rate), "--seed", str(seed), "--topic", run.input),
                *("--dup-ratio", "0.02", "--late-ratio", "0.01", "--bad-ratio", "0.01"),
            ],
            env=run.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, timeout_s: float = 240) -> str:
        try:
            _, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"the publisher did not finish within {timeout_s}s: {err[-3000:]}")
        assert self.proc.returncode == 0, err[-3000:]
        return err


# Workers that run while brokers fail under a live publisher: a publisher stalled by a fault
# leaves partitions with nothing new for a while, which after STREAMS_IDLE_TIMEOUT_MS is
# idleness by the contract: stream time jumps to the wall clock, far past the generator's
# event times, and every later event is late (seen in CI, a rolling restart). Such workers get
# an idle timeout no fault outlasts; the worker started by finish_after_faults closes the
# last windows.
THROUGH_FAULTS = {"STREAMS_IDLE_TIMEOUT_MS": "900000"}


def finish_after_faults(
    run: PipelineRun, publisher: Generator, worker: Worker, **env: str
) -> dict[str, Any]:
    """Publishing ends; the worker that went through the faults stops (SIGTERM) and a new one
    (the run's short idle timeout) restores its state, processes the rest and exits once
    idle, every window closed. Returns its JSON totals."""
    publisher.finish()
    worker.stop()
    return run.start_worker(exit_when_idle=5, **env).finish(timeout_s=300)


async def assert_nothing_lost(run: PipelineRun, generator: Generator) -> int:
    """Every generated message is in the input topic; returns how many landed twice.

    A message lands twice only when the publisher had to replace a dead producer and resend
    what was not acknowledged (see streams.publish.Publisher); the pipeline drops those
    repeats by event_id, so verify stays exact.
    """
    records = await read_topic(run.kafka, run.input)
    landed = Counter((r.key, r.value) for part in records.values() for r in part)
    wanted = Counter(
        (m.key, m.value)
        for m in generate_messages(generator.count, rate=generator.rate, **generator.args)
    )
    lost = wanted - landed
    assert not lost, f"{sum(lost.values())} published messages are missing"
    twice = sum((landed - wanted).values())
    print(f"published {generator.count}, resent and landed twice: {twice}")
    return twice


def assert_exactly_once(report: VerifyReport) -> None:
    """Exact output, no duplicate final, every dead letter and late event accounted for."""
    assert report.duplicate_finals == 0, report.as_dict()
    assert report.exact(), report.as_dict()
    assert report.dlq_records == report.invalid
    assert report.late_records == report.expected_late


@pytest.fixture
def pipeline_run(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., PipelineRun]]:
    """Factory of isolated pipelines; every worker it started is killed at teardown."""
    yield from pipeline_runs(kafka_bootstrap, unique_name)
