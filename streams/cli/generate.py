"""``streams generate``: write realistic events, including the awkward ones."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import BinaryIO

import click
from rich.console import Console
from rich.progress import Progress

from streams.config import KafkaSettings
from streams.errors import StreamsError
from streams.generator import KINDS, MAX_SEED, GeneratedMessage, generate_messages, paced
from streams.publish import Publisher, PublishReport

# Progress-bar updates are batched: one per message would cost more than generating it.
# Paced runs update about ten times a second instead.
_PROGRESS_EVERY = 4096


def _start_ts(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    if value == "now":
        return time.time_ns() // 1_000_000
    try:
        ts = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither epoch milliseconds nor 'now'") from None
    if ts < 0:
        raise click.BadParameter(f"{ts} is negative; give epoch milliseconds or 'now'")
    return ts


@click.command(name="generate")
@click.option("--count", "-n", type=click.IntRange(min=0), required=True, help="How many messages.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Emit R messages per second; event time then advances 1000/R ms per message. "
    "[default: as fast as possible, 1 ms per message]",
)
@click.option(
    "--users",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Distinct users, picked Zipf-distributed.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=0,
    show_default=True,
    help="Same seed and options, same bytes. Event ids repeat across runs with one seed, "
    "so use a new seed for each run into the same topic.",
)
@click.option(
    "--dup-ratio",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of exact duplicates of recent events.",
)
@click.option(
    "--late-ratio",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of events 10-15 minutes behind the others.",
)
@click.option(
    "--bad-ratio",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of invalid messages (broken JSON, wrong types, missing fields, ...).",
)
@click.option(
    "--start-ts",
    callback=_start_ts,
    metavar="MS|now",
    help="Event time of the first message: epoch milliseconds, or 'now' for the wall clock. "
    "[default: 1735689600000, i.e. 2025-01-01T00:00:00Z]",
)
@click.option(
    "--out",
    "-o",
    metavar="FILE|-",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write JSON Lines (each message value, then a newline) to FILE, or - for stdout.",
)
@click.option(
    "--topic",
    metavar="TOPIC",
    help="Publish to this Kafka topic instead (raw bytes, invalid ones included; "
    "KAFKA_BOOTSTRAP_SERVERS).",
)
def command(
    count: int,
    rate: float | None,
    users: int,
    seed: int,
    dup_ratio: float,
    late_ratio: float,
    bad_ratio: float,
    start_ts: int | None,
    out: str | None,
    topic: str | None,
) -> None:
    """Generate realistic events: Zipf-skewed users, a mix of event types, and the requested
    fractions of duplicates, late events and invalid messages.

    A summary goes to stderr, and so does a progress bar when stderr is a terminal.
    """
    # Raises on bad arguments before the output file is created or truncated.
    messages = generate_messages(
        count,
        users=users,
        seed=seed,
        dup_ratio=dup_ratio,
        late_ratio=late_ratio,
        bad_ratio=bad_ratio,
        start_ts=start_ts,
        rate=rate,
    )
    counts: Counter[str] = Counter()
    if (out is None) == (topic is None):
        raise StreamsError("give exactly one of --out FILE and --topic TOPIC")
    if topic is not None:
        _publish(topic, messages, rate, counts)
        return
    assert out is not None
    started = time.perf_counter()
    with ExitStack() as stack:
        stream = _open(out, stack)
        if rate is not None:
            messages = paced(messages, rate, before_sleep=stream.flush)
        console = Console(stderr=True)
        if console.is_terminal:
            progress = stack.enter_context(Progress(console=console, transient=True))
            task = progress.add_task("generating", total=count)
            every = (
                _PROGRESS_EVERY if rate is None else max(1, min(_PROGRESS_EVERY, int(rate / 10)))
            )
            messages = _tracked(messages, every, lambda done: progress.update(task, completed=done))
        try:
            for message in messages:
                stream.write(message.value)
                stream.write(b"\n")
                counts[message.kind] += 1
            stream.flush()
        except BrokenPipeError:
            if out == "-":
                _detach_stdout()
            raise StreamsError("the reader closed the output early (broken pipe)") from None
    seconds = time.perf_counter() - started
    speed = f" ({counts.total() / seconds:,.0f}/s)" if seconds > 0 else ""
    click.echo(
        f"wrote {counts.total():,} messages to {'stdout' if out == '-' else out} "
        f"in {seconds:.2f} s{speed}: " + ", ".join(f"{counts[kind]:,} {kind}" for kind in KINDS),
        err=True,
    )


def _publish(
    topic: str, messages: Iterator[GeneratedMessage], rate: float | None, counts: Counter[str]
) -> None:
    """Send the messages as they are (invalid bytes too) with the batched publisher."""

    def counted() -> Iterator[tuple[bytes | None, bytes]]:
        for message in messages:
            counts[message.kind] += 1
            yield message.key, message.value

    async def run() -> PublishReport:
        async with Publisher(KafkaSettings.from_env()) as publisher:
            return await publisher.publish(topic, counted(), rate=rate)

    report = asyncio.run(run())
    click.echo(
        f"published {report.sent:,} messages to {topic} in {report.seconds:.2f} s "
        f"({report.rate:,.0f}/s): " + ", ".join(f"{counts[kind]:,} {kind}" for kind in KINDS),
        err=True,
    )


def _open(out: str, stack: ExitStack) -> BinaryIO:
    if out == "-":
        return click.get_binary_stream("stdout")
    try:
        return stack.enter_context(open(out, "wb"))
    except OSError as exc:
        raise StreamsError(f"cannot write {out}: {exc.strerror}; pick another --out") from None


def _tracked(
    messages: Iterator[GeneratedMessage], every: int, report: Callable[[int], object]
) -> Iterator[GeneratedMessage]:
    done = 0
    for done, message in enumerate(messages, 1):
        yield message
        if done % every == 0:
            report(done)
    report(done)


def _detach_stdout() -> None:
    # Point stdout at /dev/null so the interpreter's final flush does not fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
