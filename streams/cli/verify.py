"""``streams verify``: audit the output topic against a recomputation from the input."""

from __future__ import annotations

import asyncio

import click
import orjson

from streams.config import Settings
from streams.core.config import CoreConfig
from streams.verify import verify


@click.command(name="verify")
@click.option("--input", "input_topic", default=None, help="Default: STREAMS_INPUT_TOPIC.")
@click.option("--output", "output_topic", default=None, help="Default: STREAMS_OUTPUT_TOPIC.")
@click.option("--window", type=int, default=None, help="Window size, ms (STREAMS_WINDOW_SIZE_MS).")
@click.option("--step", type=int, default=None, help="Hop, ms (STREAMS_WINDOW_STEP_MS).")
@click.option("--grace", type=int, default=None, help="Grace, ms (STREAMS_GRACE_MS).")
@click.option("--dedupe-horizon", type=int, default=None, help="ms (STREAMS_DEDUPE_HORIZON_MS).")
@click.option(
    "--allow-duplicates", is_flag=True, help="Repeated finals pass (at_least_once audits)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def command(
    input_topic: str | None,
    output_topic: str | None,
    window: int | None,
    step: int | None,
    grace: int | None,
    dedupe_horizon: int | None,
    allow_duplicates: bool,
    as_json: bool,
) -> None:
    """Recompute final aggregates from the input topic and compare with the output topic.

    Reports missing, extra, duplicate and wrong records; exits 0 only on an exact match.
    """
    s = Settings.from_env()
    size = window or s.window_size_ms
    config = CoreConfig(
        window_size_ms=size,
        window_step_ms=step or (s.window_step_ms if window is None else size),
        grace_ms=s.grace_ms if grace is None else grace,
        dedupe_horizon_ms=s.dedupe_horizon_ms if dedupe_horizon is None else dedupe_horizon,
    )
    report = asyncio.run(
        verify(
            s.kafka,
            input_topic=input_topic or s.input_topic,
            output_topic=output_topic or s.output_topic,
            config=config,
            dlq_topic=s.dlq_topic if input_topic is None else None,
            late_topic=s.late_topic if input_topic is None else None,
            max_message_bytes=s.max_message_bytes,
        )
    )
    ok = report.exact(allow_duplicates=allow_duplicates)
    if as_json:
        click.echo(orjson.dumps(report.as_dict()).decode())
    else:
        click.echo(
            f"input {report.input_messages} messages: {report.invalid} invalid, "
            f"{report.expected_duplicates} duplicates, {report.expected_late} late\n"
            f"expected {report.expected_finals} finals, found {report.output_finals} "
            f"(+{report.output_updates} updates)\n"
            f"missing {report.missing}, extra {report.extra}, duplicate {report.duplicate_finals}"
            f", wrong {report.wrong}, unreadable {report.unreadable}"
        )
        if report.dlq_records is not None:
            click.echo(f"dead letters {report.dlq_records}, late records {report.late_records}")
        for kind, items in report.samples.items():
            for item in items[:3]:
                click.echo(f"  {kind}: {orjson.dumps(item).decode()}")
        click.echo("EXACT MATCH" if ok else "MISMATCH")
    raise SystemExit(0 if ok else 1)
