"""``streams dlq replay``: send dead letters back after a fix."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
import orjson

from streams.config import Settings
from streams.core.formats import value_reader
from streams.dlq import ReplayFilter, replay
from streams.errors import ConfigError
from streams.registry import RegistryClient


def _time_ms(value: str | None, option: str) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError:
        raise ConfigError(
            f"{option} {value!r} is neither epoch milliseconds nor an ISO 8601 time "
            "(e.g. 2026-11-25T13:00:00+00:00)"
        ) from None


def _match(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in values:
        name, sep, expected = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--match {item!r} must look like FIELD=VALUE")
        pairs.append((name, expected))
    return tuple(pairs)


def _value_reader(settings: Settings) -> Callable[[bytes], Any]:
    """JSON, and with STREAMS_SCHEMA_REGISTRY_URL set, values in the registry's wire format:
    what ``--match FIELD=VALUE`` reads a dead letter's fields from."""
    if not settings.schema_registry.url:
        return orjson.loads
    registry = RegistryClient.from_settings(settings.schema_registry, what="dlq replay")
    registry.check()
    return value_reader(registry)


@click.group(name="dlq")
def command() -> None:
    """Dead-letter topic tools."""


@command.command(name="replay")
@click.option("--topic", "dlq_topic", default=None, help="Dead-letter topic (STREAMS_DLQ_TOPIC).")
@click.option("--since", default=None, help="Only dead letters from this time (ms or ISO 8601).")
@click.option("--until", default=None, help="Only dead letters before this time (ms or ISO).")
@click.option(
    "--match",
    "matches",
    multiple=True,
    help="FIELD=VALUE on a header or a field of the value (JSON, or Avro/JSON Schema in the "
    "registry's wire format with STREAMS_SCHEMA_REGISTRY_URL); repeatable.",
)
@click.option("--to", "to_topic", default=None, help="Destination (default: each source topic).")
@click.option(
    "--max-replays", default=1, show_default=True, help="Skip letters replayed this often."
)
@click.option("--dry-run", is_flag=True, help="Only count what would be replayed.")
@click.option(
    "--from-beginning", is_flag=True, help="Rescan letters an earlier replay already scanned."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def replay_command(
    dlq_topic: str | None,
    since: str | None,
    until: str | None,
    matches: tuple[str, ...],
    to_topic: str | None,
    max_replays: int,
    dry_run: bool,
    from_beginning: bool,
    as_json: bool,
) -> None:
    """Re-publish dead letters (original key and bytes) to their source topic or --to.

    Messages that fail again return to the DLQ with a replay count and are not replayed
    again (past --max-replays): no loops.
    """
    settings = Settings.from_env()
    selection = ReplayFilter(
        since_ms=_time_ms(since, "--since"),
        until_ms=_time_ms(until, "--until"),
        matches=_match(matches),
        max_replays=max_replays,
        read=_value_reader(settings),
    )
    report = asyncio.run(
        replay(
            settings.kafka,
            dlq_topic or settings.dlq_topic,
            to_topic=to_topic,
            selection=selection,
            dry_run=dry_run,
            from_beginning=from_beginning,
        )
    )
    if as_json:
        click.echo(orjson.dumps(report.as_dict()).decode())
        return
    verb = "would replay" if dry_run else "replayed"
    targets = ", ".join(f"{n} to {t}" for t, n in report.by_destination.items()) or "nothing"
    click.echo(
        f"scanned {report.scanned} dead letters; {verb} {report.replayed} ({targets}); "
        f"skipped {report.skipped_filter} by filter, {report.skipped_looping} already replayed, "
        f"{report.skipped_derived} of no input message (a window's failed result)"
    )
