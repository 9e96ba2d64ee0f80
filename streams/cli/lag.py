"""``streams lag``: consumer lag per partition, in offsets and seconds, with a status per group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Sequence

import click
import orjson
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from streams.config import KafkaSettings
from streams.errors import StreamsError
from streams.lag.collect import LagCollector
from streams.lag.monitor import GroupReport, LagMonitor
from streams.lag.snapshot import Snapshot
from streams.lag.status import Status

_STATUS_STYLE = {
    Status.OK: "green",
    Status.WARNING: "yellow",
    Status.STALLED: "red",
    Status.STOPPED: "bold red",
}


def duration(seconds: float | None) -> str:
    """A short human duration: ``-``, ``0.4s``, ``42s``, ``3m07s``, ``2h05m``, ``3d04h``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def render(reports: Sequence[GroupReport], heading: str) -> RenderableType:
    """Partitions (as ``kafka-consumer-groups --describe`` lists them), then group totals."""
    partitions = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("GROUP", "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "TIME-LAG"):
        numeric = name in ("PARTITION", "COMMITTED", "LOG-END", "LAG", "TIME-LAG")
        partitions.add_column(name, justify="right" if numeric else "left", no_wrap=True)
    for name in ("CONSUMER-ID", "HOST", "CLIENT-ID"):
        partitions.add_column(name, no_wrap=True, overflow="fold")
    for report in reports:
        for p in report.partitions:
            partitions.add_row(
                report.group,
                p.topic,
                str(p.partition),
                _cell(p.committed),
                _cell(p.log_end),
                _cell(p.lag),
                duration(p.time_lag.seconds),
                _cell(p.consumer_id),
                _cell(p.host),
                _cell(p.client_id),
            )
    groups = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("GROUP", "STATE", "MEMBERS", "STATUS", "SUM-LAG", "MAX-LAG", "MAX-TIME-LAG"):
        right = name in ("MEMBERS", "SUM-LAG", "MAX-LAG", "MAX-TIME-LAG")
        groups.add_column(name, justify="right" if right else "left", no_wrap=True)
    for report in reports:
        groups.add_row(
            report.group,
            report.state,
            str(report.members),
            Text(report.status.value, style=_STATUS_STYLE[report.status]),
            str(report.sum_lag),
            str(report.max_lag),
            duration(report.max_time_lag),
        )
    if not reports:
        return Group(Text(heading, style="dim"), Text("no consumer groups"))
    return Group(Text(heading, style="dim"), partitions, groups)


class _Session:
    """One collector and one monitor shared by every sample of a run."""

    def __init__(
        self, collector: LagCollector, groups: Sequence[str], topic: str | None, window_s: float
    ) -> None:
        self.collector = collector
        self.groups = list(groups)
        self.topic = topic
        self.monitor = LagMonitor(window_s=window_s)
        self.samples = 0
        self.started = time.monotonic()

    async def sample(self) -> None:
        """Poll once and feed the monitor; named groups that do not exist are an error."""
        c = self.collector
        names = self.groups or await c.list_groups()
        snapshot = await c.snapshot(names, topics=[self.topic] if self.topic else None)
        for group in snapshot.groups:
            if self.groups and not group.exists:
                raise StreamsError(
                    f"consumer group {group.group!r} not found at {c.kafka.bootstrap_servers}; "
                    "`streams lag` without --group lists every group"
                )
        if self.topic and not self.groups:
            kept = tuple(g for g in snapshot.groups if g.partitions())
            snapshot = Snapshot(snapshot.taken_at, kept, snapshot.log_end)
        self.monitor.observe(snapshot)
        self.samples += 1

    async def reports(self) -> list[GroupReport]:
        """Reports of the latest sample, time lags completed with record timestamps."""
        wanted = self.monitor.record_times_wanted()
        if wanted:
            self.monitor.add_record_times(await self.collector.record_times(wanted))
        return self.monitor.report()

    def heading(self, kafka: KafkaSettings) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"{kafka.bootstrap_servers}  {time.strftime('%H:%M:%S')}  "
            f"status over {self.samples} samples in {elapsed:.1f}s"
        )


def _as_json(reports: Sequence[GroupReport], session: _Session) -> str:
    body = {
        "taken_at": time.time(),
        "samples": session.samples,
        "window_seconds": session.monitor.window_s,
        "groups": [r.as_dict() for r in reports],
    }
    return orjson.dumps(body).decode()


async def _once(
    kafka: KafkaSettings,
    groups: Sequence[str],
    topic: str | None,
    window_s: float,
    interval_s: float,
) -> tuple[list[GroupReport], _Session]:
    samples = 1 + (round(window_s / interval_s) if interval_s > 0 else 0)
    async with LagCollector(kafka) as collector:
        session = _Session(collector, groups, topic, window_s)
        start = time.monotonic()
        for i in range(samples):
            if i:
                await asyncio.sleep(max(0.0, start + i * interval_s - time.monotonic()))
            await session.sample()
        return await session.reports(), session


async def _watch(
    kafka: KafkaSettings,
    groups: Sequence[str],
    topic: str | None,
    window_s: float,
    interval_s: float,
    as_json: bool,
    console: Console,
) -> None:
    from rich.live import Live

    # Ctrl-C or SIGTERM ends the loop between samples: cancelling a request half-way can
    # leave the client's clean-up waiting on it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async def pause() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)

    async with LagCollector(kafka) as collector:
        session = _Session(collector, groups, topic, window_s)
        if as_json or not console.is_terminal:
            while not stop.is_set():
                await session.sample()
                reports = await session.reports()
                if as_json:
                    click.echo(_as_json(reports, session))
                else:
                    console.print(render(reports, session.heading(kafka)))
                await pause()
            return
        with Live(console=console, auto_refresh=False) as live:
            while not stop.is_set():
                await session.sample()
                reports = await session.reports()
                live.update(render(reports, session.heading(kafka)), refresh=True)
                await pause()


@click.command(name="lag")
@click.option(
    "-g", "--group", "groups", multiple=True, help="Group to show (repeatable). Default: all."
)
@click.option("-t", "--topic", default=None, help="Only partitions of this topic.")
@click.option("--json", "as_json", is_flag=True, help="JSON (one object per refresh with --watch).")
@click.option("--watch", is_flag=True, help="Refresh in place every --interval until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between samples (and refreshes with --watch).",
)
@click.option(
    "--window",
    type=click.FloatRange(min=0.0),
    default=2.0,
    show_default=True,
    help="Seconds of samples the status looks back over; a single run samples this long.",
)
def command(
    groups: tuple[str, ...],
    topic: str | None,
    as_json: bool,
    watch: bool,
    interval: float,
    window: float,
) -> None:
    """Consumer lag of every partition of the groups, in offsets and in seconds.

    Offsets are those `kafka-consumer-groups --describe` prints: COMMITTED, LOG-END (high
    watermark) and LAG = LOG-END - COMMITTED. TIME-LAG is how long ago the committed offset
    was the partition's head. Each group gets a status over the last --window seconds of
    samples: OK; WARNING (lag grew at every sample); STALLED (lag > 0 and the committed offset
    did not move); STOPPED (no members and lag > 0). A single run takes window/interval + 1
    samples (3 over 2 s by default); --watch keeps sampling, so its window slides.
    """
    # Without handlers Python prints aiokafka's connection errors to stderr; the one-line
    # BrokerError already says what is wrong.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    kafka = KafkaSettings.from_env()
    console = Console(width=None if sys.stdout.isatty() else 200)
    try:
        if watch:
            asyncio.run(_watch(kafka, groups, topic, window, interval, as_json, console))
            return
        reports, session = asyncio.run(_once(kafka, groups, topic, window, interval))
    except KeyboardInterrupt:
        return
    if as_json:
        click.echo(_as_json(reports, session))
    else:
        console.print(render(reports, session.heading(kafka)))
