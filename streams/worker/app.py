"""The worker process: Faust runs the lifecycle and the web server; the runtime does the work.

Faust gives the worker its process model (signals, graceful shutdown, logging, a service
tree) and serves ``/metrics``, ``/health/live`` and ``/health/ready`` from its web server.
Faust's own Kafka consumer is switched off: consuming goes through the batched runtime
(:mod:`streams.runtime.worker`), whose consumer group id is the app id (see
docs/decisions/0001-batched-hot-path.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import faust
from faust.app.base import BootStrategy
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.apps.selection import plan_for
from streams.broker.local import port_in_use
from streams.config import Settings
from streams.errors import ConfigError
from streams.faust_codec import register
from streams.runtime.health import Health, RunStats
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.worker import Worker
from streams.worker.diagnostics import install_task_dump
from streams.worker.shutdown import Shutdown

log = logging.getLogger(__name__)


class _WorkerBoot(BootStrategy):
    """Faust services minus its Kafka consumer and producer: the runtime owns those."""

    enable_kafka = False
    enable_sensors = False


def create_worker(settings: Settings, app: str | None = None) -> Worker:
    """A worker of ``app`` (default ``STREAMS_APP``, else the reference pipeline), its
    declaration planned and compiled: a bad one raises here, before any connection."""
    planned, settings = plan_for(settings, app)
    return Worker(settings, planned, WorkerMetrics(), Health())


def build_app(settings: Settings, pipeline: Worker, *, exit_when_idle_s: float | None) -> Any:
    """The Faust app that hosts one worker; returns (app, outcome) for :func:`run`."""
    register()
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka.bootstrap_servers.split(',')[0]}",
        broker_credentials=settings.kafka.faust_credentials(),
        value_serializer="orjson",
        web_enabled=True,
        web_port=settings.metrics_port,
        web_bind="0.0.0.0",
        web_in_thread=False,
        datadir=settings.faust_data_dir(settings.app_id),
    )
    app.boot_strategy = _WorkerBoot(app)
    registry = pipeline.metrics.registry
    health = pipeline.health
    outcome: dict[str, Any] = {}

    @app.page("/metrics")
    async def metrics(self: Any, request: Any) -> Any:
        return self.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health/live")
    async def live(self: Any, request: Any) -> Any:
        ok = health.live()
        return self.json({"live": ok}, status=200 if ok else 503)

    @app.page("/health/ready")
    async def ready(self: Any, request: Any) -> Any:
        ok = health.ready()
        body = {"ready": ok, "rebalancing": health.rebalancing, "restoring": health.restoring}
        return self.json(body, status=200 if ok else 503)

    @app.task
    async def run_pipeline() -> None:
        install_task_dump(asyncio.get_running_loop())
        # SIGTERM/SIGINT: the batch in hand, then bounded closes, within a deadline whether or
        # not a broker answers (streams.worker.shutdown); Faust's own handler stopped its
        # services first and cancelled this task last, which under load took minutes.
        shutdown = Shutdown(pipeline.request_stop, pipeline.uncommitted)
        shutdown.install(asyncio.get_running_loop())
        try:
            await shutdown.guard(_start_and_run(pipeline, exit_when_idle_s))
        except Exception as exc:  # a StreamsError is one line; anything else is a bug
            outcome["error"] = exc
        finally:
            await shutdown.close(pipeline.stop)
            # Always, whatever ended the run: a Faust worker left running serves /metrics with
            # no pipeline behind it and ignores SIGTERM (seen when a CancelledError escaping
            # aiokafka's consumer.stop() skipped this).
            outcome["stopping"] = asyncio.ensure_future(outcome["worker"].stop())

    return app, outcome


async def _start_and_run(worker: Worker, exit_when_idle_s: float | None) -> RunStats:
    await worker.start()
    # From here on a client error is news worth a log line; before, the failure is reported
    # once, as a StreamsError.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    return await worker.run(exit_when_idle_s=exit_when_idle_s)


def run(
    settings: Settings, *, app: str | None = None, exit_when_idle_s: float | None = None
) -> RunStats:
    """Run one worker of ``app`` (``module:attr`` or ``path.py[:attr]``; default
    ``STREAMS_APP``, else the reference pipeline) until SIGTERM/SIGINT (or idle, when
    asked); returns its totals. A bad declaration fails here, before any connection."""
    worker = create_worker(settings, app)
    settings = worker.settings
    if settings.metrics_port and port_in_use(settings.metrics_port):
        raise ConfigError(
            f"STREAMS_METRICS_PORT={settings.metrics_port} is already in use; pick a free port"
        )
    host, outcome = build_app(settings, worker, exit_when_idle_s=exit_when_idle_s)
    process = faust.Worker(host, loglevel="INFO", quiet=True, redirect_stdouts=False)
    process.spinner = None
    # Our own progress at INFO; the libraries' chatter (group joins, service trees) only
    # when something is wrong.
    for noisy in ("faust", "mode", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    outcome["worker"] = process
    with contextlib.suppress(SystemExit):
        process.execute_from_commandline()
    if "error" in outcome:
        raise outcome["error"]
    return worker.stats
