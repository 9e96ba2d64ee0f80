"""A small Faust app: one agent counts events per type in a changelog-backed table.

It is the first stage of ``make run`` and the integration test that a Faust table survives a
worker restart: the table lives in memory, so a second run can only know the first run's
counts by recovering them from the table's changelog topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import orjson

from streams.config import Settings
from streams.faust_codec import register


@dataclass
class DemoResult:
    """What one demo run consumed and what its table held at the end."""

    consumed: int = 0
    table: dict[str, int] = field(default_factory=dict)
    #: the input offsets consumed, per partition: what a short run is missing is visible
    offsets: dict[int, list[int]] = field(default_factory=dict)


def build_app(settings: Settings, app_id: str, topic_name: str) -> tuple[faust.App, Any]:
    """A Faust app whose agent counts events per ``type`` in the table ``event_types``."""
    codec = register()
    broker = ",".join(f"kafka://{h}" for h in settings.kafka.bootstrap_servers.split(","))
    app = faust.App(
        app_id,
        broker=broker,
        broker_credentials=settings.kafka.faust_credentials(),
        store="memory://",
        value_serializer=codec,
        web_enabled=False,
        topic_partitions=settings.partitions,
        datadir=settings.faust_data_dir(app_id),
    )
    topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")
    table = app.Table("event_types", default=int, partitions=settings.partitions)
    return app, (topic, table)


def run(
    settings: Settings,
    *,
    app_id: str,
    topic_name: str,
    count: int,
    every: int = 100,
    timeout_s: float = 120.0,
) -> DemoResult:
    """Run a Faust worker until ``count`` events were consumed (or ``timeout_s`` passed)."""
    app, (topic, table) = build_app(settings, app_id, topic_name)
    result = DemoResult()
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.spinner = None
    stopping: list[asyncio.Future[None]] = []

    @app.task
    async def announce_ready() -> None:
        # Recovery (the table's changelog read back, the input seeked to the committed offsets)
        # is complete: events published from now on cannot meet the first rebalance.
        await cast(Any, app.tables).recovery.completed.wait()
        print("agent: ready", flush=True)

    @app.agent(topic)
    async def count_types(stream: Any) -> None:
        async for event in stream.events():
            value = event.value
            message = event.message
            result.offsets.setdefault(message.partition, []).append(message.offset)
            kind = orjson.loads(value).get("type", "?") if value else "?"
            table[kind] += 1
            result.consumed += 1
            if result.consumed % every == 0:
                print(f"agent: consumed {result.consumed} events", flush=True)
            if result.consumed >= count:
                result.table = {k: int(v) for k, v in table.items()}
                stopping.append(asyncio.ensure_future(worker.stop()))

    @app.timer(timeout_s)
    async def give_up() -> None:
        print(f"agent: timed out after {timeout_s:.0f}s", file=sys.stderr, flush=True)
        await worker.stop()

    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return result
