"""``streams bench``: the pipeline and its baselines, side by side, in one run."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from streams.bench.runner import (
    ALL_SCENARIOS,
    HALF,
    BenchConfig,
    environment,
    run_bench,
    summarise,
)
from streams.config import KafkaSettings
from streams.runtime.metrics import BATCH_PHASES


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _rates(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Any, ...]:
    """``--latency-rate`` values: positive numbers or ``half``, each option possibly a
    comma-separated list."""
    rates: list[float | str] = []
    for item in (part.strip() for value in values for part in value.split(",")):
        if item == HALF:
            rates.append(HALF)
            continue
        try:
            rate = float(item)
        except ValueError:
            rate = 0.0
        if not rate > 0:
            raise click.BadParameter(f"{item!r} is not a positive rate (events/s) or {HALF!r}")
        rates.append(rate)
    return tuple(dict.fromkeys(rates)) or (HALF,)


@click.command(name="bench")
@click.option("--events", default=1_000_000, show_default=True, help="Input events.")
@click.option("--partitions", default=6, show_default=True, help="Input partitions.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(ALL_SCENARIOS),
    help="Run only these (repeatable). Default: all.",
)
@click.option(
    "--faust-events",
    default=100_000,
    show_default=True,
    help="Events for faust-naive (it is slow; its rate is measured on this many).",
)
@click.option(
    "--codec-events",
    default=100_000,
    show_default=True,
    help="Events codec decodes and encodes in process (the first of the input's).",
)
@click.option("--latency-seconds", default=15.0, show_default=True, help="Latency run length.")
@click.option(
    "--latency-rate",
    "latency_rates",
    multiple=True,
    callback=_rates,
    metavar="R[,R...]",
    help="Input events/s of the latency runs (repeatable or comma-separated); 'half' is half "
    "the run's median pipeline-alo (run once for it if not asked for). Each rate runs the echo "
    "floor and the reference app under both guarantees. Default: half.",
)
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    type=click.IntRange(1, 20),
    help="Run the scenarios this many times on the same input; report each one's median.",
)
@click.option(
    "--processes",
    multiple=True,
    type=click.IntRange(1, 64),
    help="Also run pipeline-alo through `streams worker --processes N` (row pipeline-alo-pN), "
    "in every round; repeatable, e.g. --processes 1 --processes 2.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results.")
def command(
    events: int,
    partitions: int,
    scenarios: tuple[str, ...],
    faust_events: int,
    codec_events: int,
    latency_seconds: float,
    latency_rates: tuple[float | str, ...],
    rounds: int,
    processes: tuple[int, ...],
    as_json: bool,
) -> None:
    """Measure publish, raw consume (limit), decode, naive Faust and our pipelines (JSON and,
    through a Schema Registry the bench starts, Avro).

    Uses KAFKA_BOOTSTRAP_SERVERS (default: the local broker, `streams kafka start`). Exits 1
    if a scenario did not process every event (the harness checks itself).
    """
    config = BenchConfig(
        bootstrap=KafkaSettings.from_env().bootstrap_servers,
        events=events,
        partitions=partitions,
        scenarios=scenarios or ALL_SCENARIOS,
        faust_events=faust_events,
        codec_events=codec_events,
        latency_seconds=latency_seconds,
        latency_rates=latency_rates,
        rounds=rounds,
        processes=processes,
    )
    err = Console(stderr=True)
    # SIGTERM (from `timeout`, a CI runner) ends the bench through its clean-up, which kills
    # the running scenario's process group (streams.bench.runner); by default it would not.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    results = asyncio.run(run_bench(config, progress=lambda msg: err.print(f"[dim]{msg}[/dim]")))
    rows = summarise(results)
    # A latency run's events are its rate times its length (it checks its own count).
    expected = {r.scenario: r.events for r in results if r.scenario.startswith("latency-")}
    expected["faust-naive"] = min(events, faust_events)
    expected["codec"] = min(events, codec_events)
    short = sorted({r.scenario for r in results if r.events < expected.get(r.scenario, events)})
    if as_json:
        click.echo(orjson.dumps({"environment": environment(), "results": rows}).decode())
    else:
        title = f"streams bench: {events:,} events, {partitions} partitions"
        if rounds > 1:
            title += f", median of {rounds} rounds"
        table = Table(title=title)
        columns = ["scenario", "events/s", "MB/s", "CPU s/M events", "peak RSS MB", "x limit"]
        if rounds > 1:
            columns.append("x limit, each round")
        for name in columns:
            table.add_column(name, justify="right" if name != "scenario" else "left")
        for r in rows:
            if r["scenario"] == "codec":
                continue  # no topic, no rate: its figures follow the table
            ratio = r["ratio_to_limit"]
            cells = [
                r["scenario"],
                f"{r['events_per_second']:,}",
                f"{r['mb_per_second']}",
                f"{r['cpu_seconds_per_million']}",
                f"{r['peak_rss_mb']}",
                f"{ratio:.3f}" if ratio is not None else "-",
            ]
            if rounds > 1:
                each = [x["ratio_to_limit"] for x in r.get("rounds", [])]
                cells.append(" ".join(f"{x:.3f}" for x in each if x is not None) or "-")
            table.add_row(*cells)
        Console().print(table)
        for line in _avro_lines(rows):
            click.echo(line)
        for r in rows:
            if r["scenario"] == "state":
                click.echo(
                    f"state: a worker holding {r['open_windows']:,.0f} aggregates and"
                    f" {r['dedupe_ids']:,.0f} dedupe ids peaked at {r['peak_rss_mb']} MB RSS;"
                    f" after SIGKILL a new one was ready in {r['restart_to_ready_s']} s"
                    f" ({r['changelog_records_restored']:,.0f} changelog records replayed,"
                    f" peak {r['peak_rss_mb_after_restore']} MB)"
                )
        latency = [r for r in rows if r["scenario"].startswith("latency-")]
        if latency:
            console = Console()
            # Its eleven columns do not fit rich's 80 when the output is not a terminal.
            (console if console.is_terminal else Console(width=140)).print(_latency_table(latency))
        click.echo(orjson.dumps(environment()).decode())
    if short:
        click.echo(f"error: scenarios that did not process every event: {short}", err=True)
        sys.exit(1)


def _avro_lines(rows: list[dict[str, Any]]) -> list[str]:
    """pipeline-avro's ratio next to pipeline-alo's, and codec's figures, one line each."""
    by_name = {r["scenario"]: r for r in rows}
    lines = []
    avro = by_name.get("pipeline-avro")
    if avro is not None and avro["ratio_to_limit"] is not None:
        line = f"pipeline-avro (Avro in and out): {avro['ratio_to_limit']:.3f} x limit"
        alo = by_name.get("pipeline-alo")
        if alo is not None and alo["ratio_to_limit"] is not None:
            line += f", pipeline-alo (JSON) {alo['ratio_to_limit']:.3f}"
        if avro.get("ratio_to_pipeline_alo") is not None:
            line += f"; {avro['ratio_to_pipeline_alo']:.3f} x pipeline-alo's rate (same round)"
        lines.append(line)
    codec = by_name.get("codec")
    if codec is not None:
        lines.append(
            f"codec, µs per record (best of {codec['repeats']}, {codec['events']:,} events):"
            f" decode JSON+validate {codec['json_decode_us']:.2f}, Avro"
            f" {codec['avro_decode_us']:.2f}; encode {codec['aggregates']:,} aggregates JSON"
            f" {codec['json_encode_us']:.2f}, Avro {codec['avro_encode_us']:.2f} (on top of"
            f" JSON); bytes per event JSON {codec['json_bytes_per_event']:.0f},"
            f" Avro {codec['avro_bytes_per_event']:.0f}"
        )
    return lines


def _latency_table(rows: list[dict[str, Any]]) -> Table:
    """Append-to-output latency per run, and where the worker's batches spent their time
    (mean ms per batch of each phase of ``streams_batch_phase_seconds``)."""
    table = Table(title="latency, input append -> output append (update mode), ms")
    for name in ("run", "events/s", "p50", "p99", "max", "measured", *BATCH_PHASES):
        table.add_column(name, justify="left" if name == "run" else "right")
    for r in rows:
        spent = r.get("phases", {})
        table.add_row(
            r["scenario"],
            f"{r['rate']:,.0f}",
            f"{r['p50_ms']:.0f}",
            f"{r['p99_ms']:.0f}",
            f"{r['max_ms']:.0f}",
            f"{r['measured']:,}",
            *(f"{spent[p]['mean_ms']:.1f}" if p in spent else "-" for p in BATCH_PHASES),
        )
    return table
