"""``streams worker``: run one stream worker (scale out by running more)."""

from __future__ import annotations

import click
import orjson

from streams.config import Settings


@click.command(name="worker")
@click.argument("app", required=False)
@click.option(
    "--exit-when-idle",
    type=float,
    default=None,
    help="Exit once caught up with every window emitted and nothing to do for this many "
    "seconds (demos, tests).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run's totals as JSON at exit.")
def command(app: str | None, exit_when_idle: float | None, as_json: bool) -> None:
    """Run the pipelines of APP (module:attribute or path.py[:attribute]; default
    STREAMS_APP, else the reference pipeline: validate, dedupe, window, aggregate).

    Scale out by running more workers: they share the input partitions (one consumer group,
    the app id). Configured by environment variables (STREAMS_*, KAFKA_*): see the README.
    """
    from streams.worker.app import run

    stats = run(Settings.from_env(), app=app, exit_when_idle_s=exit_when_idle)
    if as_json:
        click.echo(orjson.dumps(stats.__dict__).decode())
    else:
        click.echo(
            f"worker consumed {stats.consumed} events: {stats.invalid} invalid, "
            f"{stats.duplicates} duplicates, {stats.late} late; emitted {stats.emitted} results"
        )
