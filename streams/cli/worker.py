"""``streams worker``: run a stream worker, or N of them under a supervisor (``--processes``)."""

from __future__ import annotations

import dataclasses
import os
import sys

import click
import orjson

from streams.config import Settings, parse_processes


@click.command(name="worker")
@click.argument("app", required=False)
@click.option(
    "--processes",
    metavar="N|auto",
    default=None,
    help="Worker processes (default STREAMS_PROCESSES, else 1). With N > 1 a supervisor starts "
    "N workers of APP in its consumer group, restarts one that dies, and serves one /metrics "
    "and /health for all; auto: one per CPU the container may use.",
)
@click.option(
    "--exit-when-idle",
    type=float,
    default=None,
    help="Exit once caught up with every window emitted and nothing to do for this many "
    "seconds (demos, tests).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run's totals as JSON at exit.")
def command(
    app: str | None, processes: str | None, exit_when_idle: float | None, as_json: bool
) -> None:
    """Run the pipelines of APP (module:attribute or path.py[:attribute]; default
    STREAMS_APP, else the reference pipeline: validate, dedupe, window, aggregate).

    Scale out by running more workers: they share the input partitions (one consumer group,
    the app id). Configured by environment variables (STREAMS_*, KAFKA_*): see the README.
    """
    settings = Settings.from_env()
    if processes is not None:
        settings = dataclasses.replace(
            settings, processes=parse_processes(processes, "--processes")
        )
    code = 0
    if settings.processes > 1:
        from streams.worker.supervisor import supervise

        stats, code = supervise(settings, app=app, exit_when_idle_s=exit_when_idle)
    else:
        from streams.worker.app import run
        from streams.worker.supervisor import follow_supervisor

        follow_supervisor(os.environ)
        stats = run(settings, app=app, exit_when_idle_s=exit_when_idle)
    if as_json:
        click.echo(orjson.dumps(stats.__dict__).decode())
    else:
        click.echo(
            f"worker consumed {stats.consumed} events: {stats.invalid} invalid, "
            f"{stats.duplicates} duplicates, {stats.late} late; emitted {stats.emitted} results"
        )
    if code:
        sys.exit(code)
