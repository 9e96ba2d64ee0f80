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

from streams.bench.runner import ALL_SCENARIOS, BenchConfig, environment, run_bench, summarise
from streams.config import KafkaSettings


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


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
@click.option("--latency-seconds", default=15.0, show_default=True, help="Latency run length.")
@click.option("--latency-rate", type=float, default=None, help="Default: half pipeline-alo.")
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
    latency_seconds: float,
    latency_rate: float | None,
    rounds: int,
    processes: tuple[int, ...],
    as_json: bool,
) -> None:
    """Measure publish, raw consume (limit), decode, naive Faust and our pipeline.

    Uses KAFKA_BOOTSTRAP_SERVERS (default: the local broker, `streams kafka start`). Exits 1
    if a scenario did not process every event (the harness checks itself).
    """
    config = BenchConfig(
        bootstrap=KafkaSettings.from_env().bootstrap_servers,
        events=events,
        partitions=partitions,
        scenarios=scenarios or ALL_SCENARIOS,
        faust_events=faust_events,
        latency_seconds=latency_seconds,
        latency_rate=latency_rate,
        rounds=rounds,
        processes=processes,
    )
    err = Console(stderr=True)
    # SIGTERM (from `timeout`, a CI runner) ends the bench through its clean-up, which kills
    # the running scenario's process group (streams.bench.runner); by default it would not.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    results = asyncio.run(run_bench(config, progress=lambda msg: err.print(f"[dim]{msg}[/dim]")))
    rows = summarise(results)
    expected = {
        "faust-naive": min(events, faust_events),
        "latency": next((r.events for r in results if r.scenario == "latency"), 0),
    }
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
        for r in rows:
            if r["scenario"] == "state":
                click.echo(
                    f"state: a worker holding {r['open_windows']:,.0f} aggregates and"
                    f" {r['dedupe_ids']:,.0f} dedupe ids peaked at {r['peak_rss_mb']} MB RSS;"
                    f" after SIGKILL a new one was ready in {r['restart_to_ready_s']} s"
                    f" ({r['changelog_records_restored']:,.0f} changelog records replayed,"
                    f" peak {r['peak_rss_mb_after_restore']} MB)"
                )
            if r["scenario"] == "latency":
                click.echo(
                    f"latency at {r['rate']:,.0f} events/s (update mode): p50 {r['p50_ms']:.0f} ms,"
                    f" p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms over {r['measured']:,}"
                )
        click.echo(orjson.dumps(environment()).decode())
    if short:
        click.echo(f"error: scenarios that did not process every event: {short}", err=True)
        sys.exit(1)
