"""The start-up check of the library internals streams.compat uses: quiet on the versions
installed, one line naming the library, its version and the supported range when one is gone,
and run by a worker before it connects."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import prometheus_client.metrics
import pytest
from aiokafka.consumer import fetcher
from aiokafka.producer import message_accumulator, sender

from streams import compat
from streams.api.loading import load_app
from streams.config import KafkaSettings, Settings
from streams.errors import DependencyError
from streams.runtime.committer import ExactlyOnce
from streams.runtime.health import Health
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.worker import Worker
from streams.topology.plan import plan

REPO = Path(__file__).parents[2]


def test_the_installed_versions_pass() -> None:
    compat.check()


def test_the_supported_ranges_are_pyprojects() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {f"{name}{bounds}" for name, bounds in compat.SUPPORTED.items()} <= set(
        project["dependencies"]
    )


def _one_line(library: str) -> str:
    with pytest.raises(DependencyError) as raised:
        compat.check()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        f"{library} {metadata.version(library)} is installed, but streams supports "
        f"{library}{compat.SUPPORTED[library]} "
    )
    return message


def test_a_missing_fetcher_internal_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(fetcher.PartitionRecords, "_contains_abort_marker")
    assert "PartitionRecords._contains_abort_marker" in _one_line("aiokafka")


def test_a_missing_instance_attribute_is_found_without_an_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Renamed(message_accumulator.BatchBuilder):
        def __init__(self, batch_size: int, compression_type: int) -> None:
            self.builder = None  # what a release renaming ``_builder`` would do

    monkeypatch.setattr(message_accumulator, "BatchBuilder", Renamed)
    message = _one_line("aiokafka")
    assert "BatchBuilder._builder" in message
    assert "BatchBuilder(is_transactional=...)" in message


def test_missing_histogram_internals_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus_client.metrics.Histogram, "_metric_init", lambda self: None)
    assert "Histogram._buckets" in _one_line("prometheus-client")


async def test_a_worker_checks_before_it_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    app = load_app(str(REPO / "examples" / "orders" / "app.py"))
    # Nothing answers there: a worker that got past the check would fail another way.
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})
    worker = Worker(settings, plan(app.decl, app.name), WorkerMetrics(), Health())
    monkeypatch.delattr(fetcher.FetchResult, "_update_position")
    with pytest.raises(DependencyError, match=r"^aiokafka .*FetchResult\._update_position"):
        await worker.start()


async def test_an_exactly_once_worker_retries_a_busy_transaction_after_5_ms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sender, "BACKOFF_OVERRIDE", 0.02)  # aiokafka's own, restored after
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="fake:9092"), app_id="app")
    await ExactlyOnce(settings, None, WorkerMetrics(), {}, lambda _: None).start()  # type: ignore[arg-type]
    assert sender.BACKOFF_OVERRIDE == compat.TRANSACTION_RETRY_S == 0.005
