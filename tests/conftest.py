"""Shared fixtures. Integration tests get a real Apache Kafka broker or fail loudly.

Where the broker comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; else a
testcontainers ``apache/kafka`` container when a Docker daemon answers; else the project's
local broker (``streams.broker.local``) on free ports with a fresh data dir. There is no
skip: a test that needs a broker and cannot have one fails with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest

from streams.broker.admin import TopicSpec, ensure_topics
from streams.broker.local import KAFKA_VERSION, LocalKafka, free_port, metadata_answers
from streams.config import KafkaSettings


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
    home = tmp_path_factory.mktemp("kafka")
    broker = LocalKafka(home, port=free_port(), controller_port=free_port())
    try:
        broker.start(timeout_s=120)
    except Exception as exc:
        pytest.fail(f"no Kafka broker for integration tests: {exc}", pytrace=False)
    yield broker
    broker.stop()


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
