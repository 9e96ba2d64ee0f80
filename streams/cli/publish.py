"""``streams publish TOPIC [FILE|-]``: JSON Lines to Kafka, batched."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import BinaryIO

import click
import orjson

from streams.cli.progress import progress_bar
from streams.config import KafkaSettings, RegistrySettings
from streams.publish import COMPRESSIONS, Publisher, PublishReport, messages_from_lines
from streams.registry import RegistryClient
from streams.runtime.formats import encoder_for


@click.command(name="publish")
@click.argument("topic")
@click.argument("source", type=click.File("rb"), default="-")
@click.option("--key-field", default="user_id", show_default=True, help="Field used as key.")
@click.option("--rate", type=float, default=None, help="Cap at N events per second.")
@click.option("--validate", is_flag=True, help="Reject schema-invalid lines before Kafka.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="none", show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "avro", "json-schema"]),
    default="json",
    show_default=True,
    help="avro/json-schema: register --schema under TOPIC-value and write the registry's "
    "wire format (STREAMS_SCHEMA_REGISTRY_URL).",
)
@click.option(
    "--schema",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The .avsc or JSON Schema file values are encoded with (with --format).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(
    topic: str,
    source: BinaryIO,
    key_field: str,
    rate: float | None,
    validate: bool,
    compression: str,
    fmt: str,
    schema: Path | None,
    as_json: bool,
) -> None:
    """Publish JSON Lines from FILE (or stdin) to TOPIC, one message per line.

    Lines that are not JSON (or, with --validate, not valid events; with --format, values
    the schema cannot hold) are reported with their line number and skipped; the run goes on.
    """
    kafka = KafkaSettings.from_env()
    report = PublishReport()
    encode = None
    if fmt != "json":
        if schema is None:
            raise click.UsageError(f"--format {fmt} needs --schema FILE (an .avsc or JSON Schema)")
        registry = RegistryClient.from_settings(RegistrySettings.from_env(), what=f"--format {fmt}")
        registry.check()
        encode = encoder_for(topic, fmt, schema, registry).encode_value

    async def run() -> None:
        with progress_bar(f"publishing to {topic}") as advance:
            async with Publisher(kafka, compression=compression) as publisher:
                messages = messages_from_lines(
                    source, report, key_field=key_field, validate=validate, encode=encode
                )
                await publisher.publish(topic, messages, rate=rate, progress=advance, report=report)

    asyncio.run(run())
    if as_json:
        click.echo(orjson.dumps(report.as_dict()).decode())
        return
    for line, reason in report.rejections:
        click.echo(f"line {line}: rejected: {reason}", err=True)
    if report.rejected > len(report.rejections):
        click.echo(f"... and {report.rejected - len(report.rejections)} more", err=True)
    click.echo(
        f"sent {report.sent}, rejected {report.rejected}, {report.bytes} bytes in "
        f"{report.seconds:.2f}s ({report.rate:,.0f} events/s)",
        file=sys.stdout,
    )
