"""``streams bench``: every scenario on the same pre-published input, side by side, one run.

Absolute figures on a shared 2-core machine drift; ratios measured in one run do not, so each
row also shows its throughput as a fraction of ``limit`` (a raw consume-only loop). The drift
is fast (the same ``limit`` loop measured 230k-440k events/s within an hour), so the ceiling is
measured before and after the pipelines of each round, each scenario is compared with the
ceiling of its own round, and ``--rounds N`` repeats the whole sequence on the same input and
reports, per scenario, the median round.

``pipeline-avro`` reads the same events Avro-encoded in a registry's wire format, from a
second topic published once per run with the input, the schemas in a Schema Registry the run
starts (:class:`~streams.broker.registry.LocalRegistry`) and stops, both only when it is asked
for; its row also shows its rate against ``pipeline-alo``'s in the same round. ``codec`` runs
once, after the rounds, in process: µs per record of each decoding and encoding.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from streams import __version__
from streams.bench.avro_app import EVENT_AVSC
from streams.bench.codec import INPUT_SEED, INPUT_START_TS, avro_copy, compact
from streams.broker.admin import TopicSpec, ensure_topics
from streams.broker.local import KAFKA_VERSION, free_port
from streams.broker.registry import LocalRegistry
from streams.config import KafkaSettings
from streams.errors import StreamsError
from streams.generator import generate_messages
from streams.publish import Publisher
from streams.registry import RegistryClient
from streams.runtime.formats import encoder_for

ALL_SCENARIOS = (
    "publish",
    "limit",
    "decode",
    "faust-naive",
    "pipeline-alo",
    "pipeline-avro",
    "pipeline-eos",
    "pipeline-user",
    "pipeline-process",
    "pipeline-join-stream",
    "pipeline-sliding",
    "latency",
    "state",
    "codec",
)


PIPELINES = (
    "pipeline-alo",
    "pipeline-avro",
    "pipeline-eos",
    "pipeline-user",
    "pipeline-process",
    "pipeline-join-stream",
    "pipeline-sliding",
)
# A latency rate of half the median pipeline-alo of the run (the worker's maximum rate).
HALF = "half"
# The rows of the latency scenario at each rate: the echo floor, then both guarantees.
LATENCY_RUNS = (
    ("echo", {"scenario": "echo"}),
    ("alo", {"scenario": "latency", "guarantee": "at_least_once"}),
    ("eos", {"scenario": "latency", "guarantee": "exactly_once"}),
)


@dataclass
class BenchConfig:
    """What to run: input size, partitions, scenarios, and the limits of the slow ones."""

    bootstrap: str
    events: int = 1_000_000
    partitions: int = 6
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    faust_events: int = 100_000
    # Events the codec scenario measures on (the first of the input's).
    codec_events: int = 100_000
    latency_seconds: float = 15.0
    # Events/s of the latency runs: numbers, or HALF (half the run's median pipeline-alo).
    latency_rates: tuple[float | str, ...] = (HALF,)
    users: int = 100_000
    rounds: int = 1
    # pipeline-alo again through `streams worker --processes N`, once per N here (rows
    # pipeline-alo-p<N>).
    processes: tuple[int, ...] = ()


@dataclass
class BenchResult:
    """One scenario's row."""

    scenario: str
    events: int
    seconds: float
    bytes: int
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    round: int = 1

    @property
    def events_per_second(self) -> float:
        """Throughput."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self, limit_rate: float | None) -> dict[str, Any]:
        """A JSON-ready row, with the ratio to ``limit`` when known."""
        rate = self.events_per_second
        return {
            "scenario": self.scenario,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(rate),
            "mb_per_second": round(self.bytes / self.seconds / 1e6, 2) if self.seconds else 0,
            "cpu_seconds_per_million": round(self.cpu_seconds * 1e6 / self.events, 2)
            if self.events
            else 0,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "ratio_to_limit": round(rate / limit_rate, 3) if limit_rate else None,
            **self.extra,
        }


def environment() -> dict[str, str]:
    """Machine and versions, for the benchmark record."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "kafka": KAFKA_VERSION,
        "streams": __version__,
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0))),
    }


def run_scenario(args: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one scenario in a child process; returns the measurements it prints."""
    cmd = [sys.executable, "-m", "streams.bench.scenarios", orjson.dumps(args).decode()]
    # Each scenario runs in a process group of its own, killed whole however the scenario
    # ends. The state scenario starts `streams worker` processes; a scenario killed at its
    # timeout, or a bench interrupted, used to leave them running (an exactly_once worker was
    # found alive ten minutes after a bench).
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise StreamsError(f"bench scenario {args['scenario']} ran over {timeout_s:.0f}s") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.returncode != 0 or not stdout.strip():
        tail = " | ".join(stderr.strip().splitlines()[-6:])
        raise StreamsError(f"bench scenario {args['scenario']} failed: {tail}")
    return dict(orjson.loads(stdout.strip().splitlines()[-1]))


@contextlib.contextmanager
def _registry(wanted: bool, progress: Callable[[str], None]) -> Iterator[str | None]:
    """The URL of a Schema Registry of the run's own (a temporary home, a free port) while
    the run lasts, when ``wanted``; else None."""
    if not wanted:
        yield None
        return
    home = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    registry = LocalRegistry(home, port=free_port())
    try:
        progress(f"starting a Schema Registry on port {registry.port} (for pipeline-avro)")
        registry.start(timeout_s=180)
        yield registry.url
    finally:
        registry.stop()
        shutil.rmtree(home, ignore_errors=True)


async def run_bench(
    config: BenchConfig, progress: Callable[[str], None] = lambda _: None
) -> list[BenchResult]:
    """Publish the input once, then run each scenario in its own process."""
    with _registry("pipeline-avro" in config.scenarios, progress) as registry_url:
        return await _run_bench(config, progress, registry_url)


async def _run_bench(
    config: BenchConfig, progress: Callable[[str], None], registry_url: str | None
) -> list[BenchResult]:
    # The security settings (KAFKA_SECURITY_PROTOCOL, ...) come from the environment, which
    # the scenario processes inherit too.
    kafka = replace(KafkaSettings.from_env(), bootstrap_servers=config.bootstrap)
    run_id = uuid.uuid4().hex[:8]
    topic = f"bench-{run_id}-events"
    avro_topic = f"{topic}-avro"
    await ensure_topics(kafka, [TopicSpec(topic, config.partitions)])
    progress(f"generating {config.events:,} events")
    # Copies of their own size: each generated value keeps orjson's 4 KB buffer (4 GB for
    # a million events, held while publishing).
    messages = [
        (m.key, compact(m.value))
        for m in generate_messages(
            config.events, users=config.users, seed=INPUT_SEED, start_ts=INPUT_START_TS
        )
    ]
    input_bytes = sum(len(v) for _, v in messages)
    avro_bytes = 0
    progress(f"publishing to {topic}")
    async with Publisher(kafka) as publisher:
        report = await publisher.publish(topic, messages)
        if "pipeline-join-stream" in config.scenarios:
            # The join's second input: the same events, keyed the same, in a topic of its own.
            await ensure_topics(kafka, [TopicSpec(f"{topic}-b", config.partitions)])
            await publisher.publish(f"{topic}-b", messages)
        if registry_url is not None:
            # pipeline-avro's input: the same events, keyed the same, Avro in the registry's
            # wire format (schema registered under <topic>-value); any that do not fit the
            # schema go as they are, to be dead letters as they are in JSON.
            encoder = encoder_for(avro_topic, "avro", EVENT_AVSC, RegistryClient(registry_url))
            values, unencodable = avro_copy([v for _, v in messages], encoder)
            avro_bytes = sum(map(len, values))
            note = f"; {unencodable:,} not encodable, sent as they are" if unencodable else ""
            progress(f"publishing to {avro_topic} (Avro, schema id {encoder.schema_id}{note})")
            await ensure_topics(kafka, [TopicSpec(avro_topic, config.partitions)])
            await publisher.publish(avro_topic, zip((k for k, _ in messages), values, strict=True))
            del values
    del messages
    results: list[BenchResult] = []
    if "publish" in config.scenarios:
        results.append(BenchResult("publish", report.sent, report.seconds, report.bytes))
    base = {
        "bootstrap": config.bootstrap,
        "topic": topic,
        "events": config.events,
        "partitions": config.partitions,
        "input_bytes": input_bytes,
    }
    plans: dict[str, dict[str, Any]] = {
        "limit": {"scenario": "limit"},
        "decode": {"scenario": "decode"},
        "faust-naive": {
            "scenario": "faust-naive",
            "events": min(config.events, config.faust_events),
        },
        "pipeline-alo": {"scenario": "pipeline", "guarantee": "at_least_once"},
        # The reference app's shape on the Avro copy of the input (its bytes are its own).
        "pipeline-avro": {
            "scenario": "pipeline-avro",
            "guarantee": "at_least_once",
            "topic": avro_topic,
            "input_bytes": avro_bytes,
            "registry_url": registry_url,
        },
        "pipeline-eos": {"scenario": "pipeline", "guarantee": "exactly_once"},
        "pipeline-user": {"scenario": "pipeline-user", "guarantee": "at_least_once"},
        "pipeline-process": {"scenario": "pipeline-process", "guarantee": "at_least_once"},
        "pipeline-join-stream": {
            "scenario": "pipeline-join-stream",
            "guarantee": "at_least_once",
            "input_bytes": 2 * input_bytes,
        },
        **{
            f"pipeline-alo-p{n}": {
                "scenario": "pipeline-processes",
                "guarantee": "at_least_once",
                "processes": n,
            }
            for n in config.processes
        },
        "pipeline-sliding": {"scenario": "pipeline-sliding", "guarantee": "at_least_once"},
    }
    wanted = set(config.scenarios) | {f"pipeline-alo-p{n}" for n in config.processes}
    for round_ in range(1, config.rounds + 1):
        for name, plan in plans.items():
            if name not in wanted or (name == "faust-naive" and round_ > 1):
                continue  # faust-naive is slow and far from every ratio: once is enough
            progress(f"running {name} (round {round_} of {config.rounds})")
            args = {**base, **plan, "app_id": f"bench-{run_id}-{name}-{round_}"}
            out = run_scenario(args, timeout_s=1800)
            if "stalled" in out and out["events"] < args["events"]:
                # Faust's own start-up or stop stalled (see scenarios.FAUST_STALL_S): it is the
                # baseline, not what is measured; try once more, and say so in the results.
                progress(f"{name} stalled ({out['stalled']}); running it again")
                out = run_scenario({**args, "app_id": f"{args['app_id']}-retry"}, timeout_s=1800)
                out["retried_after"] = args["app_id"]
            results.append(_row(name, out, round_))
        if "limit" in config.scenarios and (set(PIPELINES) & wanted or config.processes):
            # The ceiling drifts on a shared machine (the same loop measured 230k-440k events/s
            # in runs an hour apart): measure it again after the pipelines, compare to the mean.
            progress(f"running limit again (round {round_})")
            args = {**base, "scenario": "limit", "app_id": f"bench-{run_id}-limit-again-{round_}"}
            results.append(_row("limit-again", run_scenario(args, timeout_s=1800), round_))
    if "latency" in config.scenarios:
        if HALF in config.latency_rates and not any(r.scenario == "pipeline-alo" for r in results):
            progress("running pipeline-alo once: the half-rate latency runs need its rate")
            args = {**base, **plans["pipeline-alo"], "app_id": f"bench-{run_id}-alo-for-half"}
            results.append(_row("pipeline-alo", run_scenario(args, timeout_s=1800), config.rounds))
        for rate, label in _latency_rates(config.latency_rates, results):
            for kind, plan in LATENCY_RUNS:
                name = f"latency-{kind}-{label}"
                progress(f"running {name} at {rate:,.0f} events/s")
                args = {
                    **base,
                    **plan,
                    "app_id": f"bench-{run_id}-{name}",
                    "rate": rate,
                    "seconds": config.latency_seconds,
                }
                results.append(_row(name, run_scenario(args, timeout_s=600), config.rounds))
    if "state" in config.scenarios:
        progress(f"running state: a worker holding {config.events:,} distinct keys")
        args = {**base, "scenario": "state", "app_id": f"bench-{run_id}-state"}
        results.append(_row("state", run_scenario(args, timeout_s=1800), config.rounds))
    if "codec" in config.scenarios:
        events = min(config.events, config.codec_events)
        progress(f"running codec: decoding and encoding {events:,} events in process")
        args = {"scenario": "codec", "events": events, "users": config.users}
        results.append(_row("codec", run_scenario(args, timeout_s=1800), config.rounds))
    return results


def _latency_rates(
    rates: tuple[float | str, ...], results: list[BenchResult]
) -> list[tuple[float, str]]:
    """Each latency rate in events/s with the label of its rows (``2000``, ``half``)."""
    out = []
    for rate in rates:
        if rate == HALF:
            alo = [r.events_per_second for r in results if r.scenario == "pipeline-alo"]
            out.append((statistics.median(alo) / 2, HALF))
        else:
            out.append((float(rate), f"{float(rate):g}"))
    return out


def summarise(results: list[BenchResult]) -> list[dict[str, Any]]:
    """One JSON-ready row per scenario, in the order first run.

    Each run is compared with the ceiling of its own round (the mean of its ``limit`` and
    ``limit-again`` runs). A scenario run in several rounds is shown by its median run (by
    events/s), its ``ratio_to_limit`` is the median of its per-round ratios, and ``rounds``
    lists every run's events/s and ratio.
    """
    ceilings: dict[int, float] = {}
    for round_ in {r.round for r in results}:
        limits = [
            r.events_per_second
            for r in results
            if r.round == round_ and r.scenario in ("limit", "limit-again")
        ]
        if limits:
            ceilings[round_] = sum(limits) / len(limits)
    rows: list[dict[str, Any]] = []
    for name in dict.fromkeys(r.scenario for r in results):
        runs = [r for r in results if r.scenario == name]
        median = statistics.median_low(r.events_per_second for r in runs)
        shown = next(r for r in runs if r.events_per_second == median)
        row = shown.as_dict(ceilings.get(shown.round))
        ratios = [
            round(r.events_per_second / ceilings[r.round], 3) for r in runs if r.round in ceilings
        ]
        if ratios:
            row["ratio_to_limit"] = statistics.median(ratios)
        if name in ("state", "codec"):
            # state's rate includes the worker's start; codec reads no topic: no ratio
            row["ratio_to_limit"] = None
        if name == "pipeline-avro":
            row["ratio_to_pipeline_alo"] = _ratio_to(runs, results, "pipeline-alo")
        if len(runs) > 1:
            row["rounds"] = [
                {
                    "round": r.round,
                    "events_per_second": round(r.events_per_second),
                    "ratio_to_limit": round(r.events_per_second / ceilings[r.round], 3)
                    if r.round in ceilings
                    else None,
                }
                for r in runs
            ]
        rows.append(row)
    return rows


def _ratio_to(runs: list[BenchResult], results: list[BenchResult], other: str) -> float | None:
    """The median, over the rounds that ran both, of ``runs``' rate over ``other``'s in the
    same round (None when no round ran both)."""
    rates = {r.round: r.events_per_second for r in results if r.scenario == other}
    ratios = [r.events_per_second / rates[r.round] for r in runs if rates.get(r.round)]
    return round(statistics.median(ratios), 3) if ratios else None


def _row(name: str, out: dict[str, Any], round_: int) -> BenchResult:
    known = {"events", "seconds", "bytes", "cpu_seconds", "peak_rss_mb", "input_bytes"}
    return BenchResult(
        name,
        int(out["events"]),
        float(out["seconds"]),
        int(out["bytes"]),
        float(out["cpu_seconds"]),
        float(out["peak_rss_mb"]),
        {k: v for k, v in out.items() if k not in known},
        round_,
    )
