"""``streams topics create [APP]``: every topic an app uses."""

from __future__ import annotations

import asyncio
import dataclasses

import click

from streams.apps.selection import plan_for
from streams.broker.admin import partition_counts
from streams.config import Settings
from streams.runtime import topics


@click.group(name="topics")
def command() -> None:
    """Manage an app's topics."""


@command.command()
@click.argument("app", required=False)
@click.option("--partitions", type=int, default=None, help="Default: STREAMS_PARTITIONS (6).")
def create(app: str | None, partitions: int | None) -> None:
    """Create the topics of APP that do not exist yet: inputs, outputs, dead-letter, late,
    changelog, repartition and table topics (default APP: STREAMS_APP, else the reference
    pipeline).

    Changelog and repartition topics get as many partitions as the topic they follow.
    """
    settings = Settings.from_env()
    if partitions is not None:
        settings = dataclasses.replace(settings, partitions=partitions)
    planned, settings = plan_for(settings, app)
    names = [t.name for t in planned.topics]

    async def run() -> tuple[set[str], dict[str, int]]:
        before = set(await partition_counts(settings.kafka, names))
        layout = await topics.prepare(settings.kafka, planned, settings.partitions)
        return before, layout.partitions

    existed, counts = asyncio.run(run())
    for topic in planned.topics:
        state = "exists " if topic.name in existed else "created"
        click.echo(f"{state}  {topic.name}  partitions={counts.get(topic.name)}  ({topic.role})")
