"""The ``streams`` command line. Each verb lives in a module of its own in this package."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from streams import __version__
from streams.errors import StreamsError

# Verb modules; each defines a click command or group named ``command``.
VERBS = (
    "kafka",
    "registry",
    "topics",
    "publish",
    "generate",
    "worker",
    "verify",
    "explain",
    "reset",
    "dlq",
    "bench",
    "demo",
    "schemas",
    "lag",
    "lag_exporter",
)


class StreamsGroup(click.Group):
    """Prints a :class:`StreamsError` as one line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StreamsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=StreamsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streams")
def main() -> None:
    """Event-streaming pipeline on Apache Kafka: publish, process, monitor."""
    # Client libraries log connection retries as errors; a command reports failures itself,
    # in one line. (The worker sets its own levels.)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


for _verb in VERBS:
    main.add_command(importlib.import_module(f"streams.cli.{_verb}").command)
