"""Soak: a steady stream through an exactly-once worker that is restarted periodically.

    python -m streams.bench.soak --minutes 20 --rate 3000 --restart-every 120 --out docs/soak

Publishes live events (event time = wall clock) at a steady rate for the whole run, and keeps
one worker running on them, replacing it every ``--restart-every`` seconds (alternately
SIGTERM and SIGKILL). Every ``--sample-every`` seconds it records the worker's RSS, open file
descriptors, consumer lag (records and seconds) and the p99 of append->emit latency over the
interval. At the end the publisher stops, a last worker drains the input and closes every
window, and ``verify`` audits the output. Writes ``soak.json`` (series + verify report) and
``soak.svg`` (a plot of the series) to ``--out``.

Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else starts the local broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.bench.probe import metrics_text, status_mb
from streams.broker.admin import ensure_topics, pipeline_topics
from streams.broker.local import LocalKafka, free_port
from streams.config import KafkaSettings, Settings
from streams.verify import verify_pipeline


@dataclass
class Sample:
    """One observation of the running worker."""

    t: float
    worker: int
    rss_mb: float
    open_fds: int
    lag_records: float
    lag_seconds: float
    p99_ms: float | None
    consumed: float


_SUMMED = (
    "streams_consumer_lag_records",
    "streams_consumer_lag_seconds",
    "streams_events_consumed_total",
)


def _metrics(port: int) -> dict[str, float] | None:
    text = metrics_text(port)
    if text is None:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{", 1)[0]
        if base in _SUMMED:
            out[base] = out.get(base, 0.0) + float(value)
        elif base == "streams_emit_latency_seconds_bucket" and 'since="append"' in name:
            le = name.split('le="', 1)[1].split('"', 1)[0]
            out[f"bucket:{le}"] = float(value)
    return out


def _p99_ms(now: dict[str, float], before: dict[str, float] | None) -> float | None:
    """p99 of the observations between two scrapes, from histogram bucket deltas."""
    buckets = sorted(
        (
            (float(k[7:]), v - (before or {}).get(k, 0.0))
            for k, v in now.items()
            if k[:7] == "bucket:"
        ),
        key=lambda kv: kv[0],
    )
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    for upper, cumulative in buckets:
        if cumulative >= 0.99 * total:
            return upper * 1000 if upper != float("inf") else None
    return None


def _proc_stats(pid: int) -> tuple[float, int]:
    try:
        rss = status_mb(pid, "VmRSS")
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return 0.0, 0
    return rss, fds


class Soak:
    """One soak run on its own topics and consumer group."""

    def __init__(
        self, bootstrap: str, *, partitions: int, log_dir: Path, dedupe_horizon_ms: int
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
        self.env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "STREAMS_APP_ID": f"soak-{tag}",
                "STREAMS_INPUT_TOPIC": f"soak-events-{tag}",
                "STREAMS_OUTPUT_TOPIC": f"soak-aggregates-{tag}",
                "STREAMS_DLQ_TOPIC": f"soak-dlq-{tag}",
                "STREAMS_LATE_TOPIC": f"soak-late-{tag}",
                "STREAMS_PARTITIONS": str(partitions),
                "STREAMS_GUARANTEE": "exactly_once",
                "STREAMS_WINDOW_SIZE_MS": "10000",
                "STREAMS_GRACE_MS": "2000",
                "STREAMS_IDLE_TIMEOUT_MS": "3000",
                "STREAMS_EMIT": "updates",
                "STREAMS_DEDUPE_HORIZON_MS": str(dedupe_horizon_ms),
            }
        )
        self.settings = Settings.from_env(self.env)
        self.log_dir = log_dir
        self.workers = 0

    def start_worker(
        self, *, exit_when_idle: float | None = None
    ) -> tuple[subprocess.Popen[str], int]:
        port = free_port()
        cmd = [sys.executable, "-m", "streams", "worker", "--json"]
        if exit_when_idle is not None:
            cmd += ["--exit-when-idle", str(exit_when_idle)]
        self.workers += 1
        with (self.log_dir / f"worker-{self.workers}.log").open("w") as log:
            proc = subprocess.Popen(
                cmd,
                env={**self.env, "STREAMS_METRICS_PORT": str(port)},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        return proc, port

    def start_publisher(self, count: int, rate: float) -> subprocess.Popen[str]:
        cmd = [
            *(sys.executable, "-m", "streams", "generate", "--count", str(count)),
            *("--rate", str(rate), "--start-ts", "now", "--seed", str(time.time_ns() % 2**32)),
            *("--dup-ratio", "0.02", "--late-ratio", "0.01", "--bad-ratio", "0.01"),
            *("--topic", self.settings.input_topic),
        ]
        with (self.log_dir / "publisher.log").open("w") as log:
            return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log, text=True)


def run_soak(
    bootstrap: str,
    *,
    seconds: float,
    rate: float,
    restart_every: float,
    sample_every: float = 5.0,
    partitions: int = 3,
    log_dir: Path | None = None,
    dedupe_horizon_ms: int = 120_000,
) -> dict[str, Any]:
    """Run a soak; returns the series, the restarts and the verify report."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    soak = Soak(
        bootstrap, partitions=partitions, log_dir=log_dir, dedupe_horizon_ms=dedupe_horizon_ms
    )
    s = soak.settings
    asyncio.run(ensure_topics(soak.kafka, pipeline_topics(s)))
    publisher = soak.start_publisher(int(seconds * rate), rate)
    started = time.monotonic()
    worker, port = soak.start_worker()
    samples: list[Sample] = []
    restarts: list[dict[str, Any]] = []
    last_restart = started
    previous: dict[str, float] | None = None
    kill_next = False
    try:
        while publisher.poll() is None:
            time.sleep(sample_every)
            now = time.monotonic()
            scraped = _metrics(port)
            if scraped is not None:
                rss, fds = _proc_stats(worker.pid)
                samples.append(
                    Sample(
                        t=round(now - started, 1),
                        worker=soak.workers,
                        rss_mb=round(rss, 1),
                        open_fds=fds,
                        lag_records=scraped.get("streams_consumer_lag_records", 0.0),
                        lag_seconds=round(scraped.get("streams_consumer_lag_seconds", 0.0), 2),
                        p99_ms=_p99_ms(scraped, previous),
                        consumed=scraped.get("streams_events_consumed_total", 0.0),
                    )
                )
                previous = scraped
            if now - last_restart >= restart_every and now - started < seconds - restart_every / 2:
                how = "SIGKILL" if kill_next else "SIGTERM"
                worker.send_signal(signal.SIGKILL if kill_next else signal.SIGTERM)
                worker.communicate(timeout=120)
                restarts.append({"t": round(now - started, 1), "signal": how})
                kill_next = not kill_next
                worker, port = soak.start_worker()
                previous = None
                last_restart = time.monotonic()
        if publisher.returncode != 0:
            raise RuntimeError(f"the publisher failed; see {log_dir / 'publisher.log'}")
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=120)
        # The last worker is `worker` too, so that the clean-up below kills it if it hangs.
        worker, _ = soak.start_worker(exit_when_idle=5)
        worker.communicate(timeout=600)
        if worker.returncode != 0:
            raise RuntimeError(f"the last worker failed; see {log_dir}")
    finally:
        for proc in (publisher, worker):
            if proc.poll() is None:
                proc.kill()
    report = asyncio.run(verify_pipeline(s))
    return {
        "seconds": seconds,
        "rate": rate,
        "restart_every": restart_every,
        "dedupe_horizon_ms": dedupe_horizon_ms,
        "published": int(seconds * rate),
        "restarts": restarts,
        "samples": [asdict(x) for x in samples],
        "verify": report.as_dict(),
        "exact": report.exact(),
        "logs": str(log_dir),
    }


def plot_svg(result: dict[str, Any]) -> str:
    """A dependency-free SVG: one panel per series, restarts as vertical lines."""
    panels = [
        ("rss_mb", "worker RSS (MB)"),
        ("open_fds", "open file descriptors"),
        ("lag_records", "consumer lag (records)"),
        ("lag_seconds", "consumer lag (seconds)"),
        ("p99_ms", "append->emit p99 (ms)"),
    ]
    samples = result["samples"]
    width, height, left, top = 760, 150, 70, 30
    total_t = max([*(x["t"] for x in samples), 1.0])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 20}" '
        f'height="{len(panels) * (height + top) + 30}" font-family="sans-serif" font-size="11">',
        f'<text x="10" y="16" font-size="13">soak: {result["rate"]:.0f} events/s for '
        f"{result['seconds'] / 60:.0f} min, worker restarted every {result['restart_every']:.0f} s "
        f"(SIGTERM/SIGKILL alternately); verify exact: {result['exact']}</text>",
    ]
    for i, (key, title) in enumerate(panels):
        y0 = 30 + i * (height + top)
        values = [x[key] for x in samples if x[key] is not None]
        high = max([*values, 1.0]) * 1.1
        plot_w = width - left
        parts.append(
            f'<text x="{left}" y="{y0 + 12}">{title} (max {max([*values, 0.0]):.1f})</text>'
        )
        parts.append(
            f'<rect x="{left}" y="{y0 + 18}" width="{plot_w}" height="{height - 20}" '
            'fill="none" stroke="#999"/>'
        )
        parts.append(
            f'<text x="5" y="{y0 + 24}">{high:.0f}</text><text x="5" y="{y0 + height}">0</text>'
        )
        for r in result["restarts"]:
            x = left + plot_w * r["t"] / total_t
            parts.append(
                f'<line x1="{x:.1f}" y1="{y0 + 18}" x2="{x:.1f}" y2="{y0 + height - 2}" '
                'stroke="#e99" stroke-dasharray="3,3"/>'
            )
        points = " ".join(
            f"{left + plot_w * x['t'] / total_t:.1f},"
            f"{y0 + height - 2 - (height - 20) * x[key] / high:.1f}"
            for x in samples
            if x[key] is not None
        )
        parts.append(f'<polyline points="{points}" fill="none" stroke="#2a6" stroke-width="1.5"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=3000.0)
    parser.add_argument("--restart-every", type=float, default=120.0)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument(
        "--dedupe-horizon-ms",
        type=int,
        default=120_000,
        help="Event ids are remembered this long (event time); their memory grows until then.",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/soak"))
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not bootstrap:
        broker = LocalKafka()
        broker.start()
        bootstrap = broker.bootstrap
    result = run_soak(
        bootstrap,
        seconds=args.minutes * 60,
        rate=args.rate,
        restart_every=args.restart_every,
        sample_every=args.sample_every,
        dedupe_horizon_ms=args.dedupe_horizon_ms,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (args.out / "soak.svg").write_text(plot_svg(result))
    print(
        orjson.dumps({k: result[k] for k in ("published", "restarts", "exact", "verify")}).decode()
    )
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
