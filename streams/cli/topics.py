"""``streams topics create``: the pipeline's topics."""

from __future__ import annotations

import asyncio

import click

from streams.broker.admin import ensure_topics, pipeline_topics
from streams.config import Settings


@click.group(name="topics")
def command() -> None:
    """Manage the pipeline's topics."""


@command.command()
@click.option("--partitions", type=int, default=None, help="Default: STREAMS_PARTITIONS (6).")
def create(partitions: int | None) -> None:
    """Create the input, output, DLQ and late topics if they do not exist."""
    settings = Settings.from_env()
    specs = pipeline_topics(settings)
    if partitions is not None:
        specs = [type(s)(s.name, partitions, s.configs) for s in specs]
    created = asyncio.run(ensure_topics(settings.kafka, specs))
    for spec in specs:
        if spec.name in created:
            replicas = created[spec.name]
            click.echo(f"created  {spec.name}  partitions={spec.partitions} replicas={replicas}")
        else:
            click.echo(f"exists   {spec.name}")
