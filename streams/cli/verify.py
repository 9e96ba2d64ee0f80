"""``streams verify [APP]``: audit every pipeline of an app against a recomputation."""

from __future__ import annotations

import asyncio
import dataclasses

import click
import orjson

from streams.apps.selection import plan_for
from streams.config import Settings
from streams.errors import ConfigError
from streams.verify import AppReport, VerifyReport, verify_app


@click.command(name="verify")
@click.argument("app", required=False)
@click.option("--input", "input_topic", default=None, help="Reference pipeline: input topic.")
@click.option("--output", "output_topic", default=None, help="Reference pipeline: output.")
@click.option("--window", type=int, default=None, help="Reference: window size, ms.")
@click.option("--step", type=int, default=None, help="Reference: hop, ms.")
@click.option("--grace", type=int, default=None, help="Reference: grace, ms.")
@click.option("--dedupe-horizon", type=int, default=None, help="Reference: horizon, ms.")
@click.option(
    "--allow-duplicates", is_flag=True, help="Repeated records pass (at_least_once audits)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def command(
    app: str | None,
    input_topic: str | None,
    output_topic: str | None,
    window: int | None,
    step: int | None,
    grace: int | None,
    dedupe_horizon: int | None,
    allow_duplicates: bool,
    as_json: bool,
) -> None:
    """Recompute every pipeline of APP from its input topics with a plain interpreter of its
    declaration, and compare with its outputs, dead letters and late records (default APP:
    STREAMS_APP, else the reference pipeline, whose topics and windows the options override).

    Reports missing, extra, duplicate and wrong records; exits 0 only on an exact match.
    """
    settings = Settings.from_env()
    overrides = {
        "input_topic": input_topic,
        "output_topic": output_topic,
        "window_size_ms": window,
        "window_step_ms": step if step is not None else window,
        "grace_ms": grace,
        "dedupe_horizon_ms": dedupe_horizon,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    if given and (app or settings.app):
        raise ConfigError(
            "--input, --output, --window, --step, --grace and --dedupe-horizon apply to the "
            "reference pipeline only; an app declares its own"
        )
    settings = dataclasses.replace(settings, **given)  # type: ignore[arg-type]
    planned, settings = plan_for(settings, app)
    report = asyncio.run(verify_app(settings, planned))
    ok = report.exact(allow_duplicates=allow_duplicates)
    if as_json:
        data = report.as_dict()
        data["exact"] = ok
        if len(report.pipelines) == 1:  # the reference pipeline's fields at the top level too
            data.update({k: v for k, v in report.pipelines[0].as_dict().items() if k != "exact"})
        click.echo(orjson.dumps(data).decode())
    else:
        _print(report)
        click.echo("EXACT MATCH" if ok else "MISMATCH")
    raise SystemExit(0 if ok else 1)


def _print(report: AppReport) -> None:
    for p in report.pipelines:
        click.echo(f"pipeline {p.pipeline}:" if len(report.pipelines) > 1 else "", nl=False)
        if len(report.pipelines) > 1:
            click.echo()
        _print_one(p, indent="  " if len(report.pipelines) > 1 else "")


def _print_one(report: VerifyReport, indent: str) -> None:
    if report.purged:
        click.echo(
            f"{indent}not audited: its input, a repartition topic, was purged by the workers "
            f"(records deleted below offsets {report.purged}), so it cannot be recomputed from "
            "its beginning; to audit a pipeline with group_by, run its workers with "
            "STREAMS_REPARTITION_PURGE_INTERVAL_MS=-1"
        )
        return
    lines = [
        f"input {report.input_messages} messages: {report.invalid} invalid, "
        f"{report.expected_duplicates} duplicates, {report.expected_late} late",
        f"expected {report.expected_finals} results, found {report.output_finals} "
        f"(+{report.output_updates} updates)",
        f"missing {report.missing}, extra {report.extra}, duplicate {report.duplicate_finals}, "
        f"wrong {report.wrong}, unreadable {report.unreadable}",
        f"dead letters {report.dlq_records} (expected {report.expected_dead}: missing "
        f"{report.dead_missing}, extra {report.dead_extra}, duplicate "
        f"{report.dead_duplicates}); late records {report.late_records} (missing "
        f"{report.late_missing}, extra {report.late_extra}, duplicate "
        f"{report.late_duplicates})",
    ]
    if report.poison:
        lines.append(f"outputs refused by the broker, in the dead-letter topic: {report.poison}")
    if report.user_functions and not report.exact(allow_duplicates=True):
        lines.append(
            "this pipeline runs your functions: the audit assumes they are deterministic "
            "(the same result for the same input, with no clock, randomness or outside state)"
        )
    for line in lines:
        click.echo(indent + line)
    for kind, items in report.samples.items():
        for item in items[:3]:
            click.echo(f"{indent}  {kind}: {orjson.dumps(item, default=str).decode()}")
