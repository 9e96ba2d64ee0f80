"""A real Prometheus scraping a real worker and the lag exporter answers every dashboard and
alert expression with data.

Prometheus (Debian's ``prometheus`` package) runs on a free port with a generated config: the
two scrape jobs of deploy/prometheus/prometheus.yml pointed at this test's processes, a 1 s
scrape interval and deploy/prometheus/alerts.yml as its rules.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.broker.local import free_port
from tests.conftest import PipelineRun
from tests.unit.test_lag_dashboard import ALERTS, alert_expressions, dashboard_expressions
from tests.unit.test_lag_rules import require

pytestmark = pytest.mark.integration

_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(?!bool\b)(-?\d+(?:\.\d+)?)")


def with_bool(expr: str) -> str:
    """``expr`` with each comparison against a number turned into a ``bool`` comparison.

    An alert expression filters out healthy series (``up == 0`` is empty while workers are
    up); its ``bool`` form keeps every series the alert watches, with 0 or 1, so an empty
    answer means the alert reads a series that does not exist.
    """
    return _COMPARISON.sub(r"\1 bool \2", expr)


def test_with_bool_keeps_label_matchers() -> None:
    assert with_bool('up{job="w"} == 0') == 'up{job="w"} == bool 0'
    assert with_bool('a{s=~"X|Y"} == 1 and b > 10.5') == 'a{s=~"X|Y"} == bool 1 and b > bool 10.5'
    assert with_bool('a{s!="1"} >= bool 2') == 'a{s!="1"} >= bool 2'


class Prometheus:
    """A Prometheus process and its HTTP API."""

    def __init__(self, home: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (home / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = (home / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                require("prometheus"),
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[Any]:
        return list(self.api("query", query=expr)["result"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: dict[str, str]) -> Prometheus:
        started.append(Prometheus(tmp_path, targets))
        return started[-1]

    yield start
    for prometheus in started:
        prometheus.stop()


def start_exporter(run: PipelineRun, log_path: Path) -> tuple[subprocess.Popen[str], int]:
    """``streams lag-exporter`` on a free port, watching only this run's group.

    Its log goes to a file: a pipe nobody reads while it runs would block it once full (it
    logs a line per failed poll, two a second here).
    """
    port = free_port()
    cmd = [sys.executable, "-m", "streams", "lag-exporter", "--port", str(port)]
    cmd += ["--bind", "127.0.0.1", "--interval", "0.5", "--window", "5"]
    cmd += ["--group-pattern", re.escape(run.app_id)]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=run.env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    return proc, port


def scrape(port: int) -> str:
    """A process's ``/metrics`` text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, why: Callable[[], str] = str
) -> None:
    """Poll ``check`` without blocking the loop until it holds; fail after ``timeout_s``,
    with what ``why`` tells about the process waited on."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if await asyncio.to_thread(check):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout_s}s: {why()}")
        await asyncio.sleep(0.5)


async def test_every_dashboard_and_alert_expression_returns_data(
    pipeline_run: Callable[..., PipelineRun],
    prometheus_factory: Callable[[dict[str, str]], Prometheus],
    tmp_path: Path,
) -> None:
    require("prometheus")
    run = pipeline_run(partitions=3)
    await run.create_topics()
    # Invalid and late events too, so dead-letter and late counters move.
    await run.publish(3000, seed=11, bad_ratio=0.05, late_ratio=0.02, dup_ratio=0.02)
    worker = run.start_worker()
    exporter_log = tmp_path / "lag-exporter.log"
    exporter, exporter_port = start_exporter(run, exporter_log)

    def exporter_says() -> str:
        return (
            f"exporter {'alive' if exporter.poll() is None else 'exited'}; its log: "
            + (exporter_log.read_text(errors="replace")[-3000:])
        )

    try:
        # Each process gets a deadline of its own for its own part, in order: the worker has
        # joined its group and processed the first events (its start has no bound here: a
        # slow one used to eat into the exporter's 30 s), the exporter reports the group,
        # then Prometheus has scraped it.
        await asyncio.to_thread(worker.wait_metric_at_least, "streams_worker_ready", 1)
        await asyncio.to_thread(worker.wait_metric_at_least, "streams_events_consumed_total", 3000)
        prometheus = prometheus_factory(
            {
                "streams-worker": f"127.0.0.1:{worker.port}",
                "streams-lag-exporter": f"127.0.0.1:{exporter_port}",
            }
        )

        def targets_up() -> bool:
            active = prometheus.api("targets")["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        await wait_for("both scrape targets up", targets_up, 45)
        # Traffic while Prometheus watches: rates move and the group has lag to report.
        await run.publish(3000, seed=12, bad_ratio=0.05, late_ratio=0.02)
        sum_lag = f'kafka_consumergroup_group_sum_lag{{group="{run.app_id}"}}'
        await wait_for(
            "the worker's group in the exporter's /metrics",
            lambda: sum_lag in scrape(exporter_port),
            30,
            exporter_says,
        )
        await wait_for(
            "the worker's group in Prometheus",
            lambda: bool(prometheus.query(sum_lag)),
            30,
            lambda: f"targets: {prometheus.api('targets')['activeTargets']}",
        )

        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        assert {r["name"] for r in rules} == {name for name, _ in alert_expressions()}
        assert all(r["health"] == "ok" for r in rules), rules
        expressions = dashboard_expressions() + [
            (f"alert {r['name']}", with_bool(r["query"])) for r in rules
        ]

        # Rates need two scrapes after the traffic, finals need the idle timeout: allow a while.
        missing = dict(expressions)
        deadline = time.monotonic() + 30
        while missing and time.monotonic() < deadline:
            for where, expr in list(missing.items()):
                if await asyncio.to_thread(prometheus.query, expr):
                    del missing[where]
            if missing:
                await asyncio.sleep(1)
        assert not missing, "expressions without data:\n" + "\n".join(
            f"{where}: {expr}" for where, expr in missing.items()
        )
        assert exporter.poll() is None, exporter_says()
        stop(exporter)
        assert exporter.returncode == 0, "the exporter did not exit cleanly on SIGTERM"
    finally:
        stop(exporter)
