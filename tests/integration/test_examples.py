"""The example apps on a real broker: ``streams topics create``, ``streams worker APP`` and
``streams verify APP`` as a user runs them, and the test driver equal to the real worker.

Each example's topic names are fixed by its declaration, so each runs once per session (a
fresh broker); its consumer group (``STREAMS_APP_ID``) is unique per test.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from examples.orders.generate import orders
from streams.api.loading import load_app
from streams.broker.local import free_port
from streams.broker.reading import read_topic
from streams.config import KafkaSettings
from streams.dlq import header_map
from streams.publish import Publisher
from streams.testing import TestDriver
from tests.conftest import Worker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 3
PAST = 1_700_000_000_000  # event times well behind the wall clock: windows close on idle


class AppRun:
    """One example app on the test broker, run through the CLI."""

    def __init__(self, bootstrap: str, spec: str, app_id: str, log_dir: Path) -> None:
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self.spec = spec
        self.log_dir = log_dir
        self.env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMS_APP_ID": app_id,
            "STREAMS_PARTITIONS": str(PARTITIONS),
            "STREAMS_IDLE_TIMEOUT_MS": "1500",
            "STREAMS_SESSION_TIMEOUT_MS": "6000",
        }
        self.workers: list[subprocess.Popen[str]] = []

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``streams ARGS`` from the repository root, as the README runs it."""
        return subprocess.run(
            [sys.executable, "-m", "streams", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    async def publish(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        async with Publisher(self.kafka) as publisher:
            await publisher.publish(topic, messages)

    def start_worker(self, **env: str) -> Worker:
        port = free_port()
        log_path = self.log_dir / f"worker-{len(self.workers)}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "streams",
                    "worker",
                    self.spec,
                    "--json",
                    "--exit-when-idle",
                    "3",
                ],
                cwd=REPO,
                env={**self.env, "STREAMS_METRICS_PORT": str(port), **env},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.workers.append(proc)
        return Worker(proc, port, log_path)

    def verify(self, *extra: str) -> dict[str, Any]:
        done = self.cli("verify", self.spec, "--json", *extra)
        report: dict[str, Any] = orjson.loads(done.stdout)
        assert done.returncode == (0 if report["exact"] else 1), done.stderr
        return report


@pytest.fixture
def app_run(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> Iterator[Callable[[str], AppRun]]:
    runs: list[AppRun] = []

    def make(spec: str) -> AppRun:
        run = AppRun(kafka_bootstrap, spec, unique_name("example"), tmp_path)
        runs.append(run)
        return run

    yield make
    for run in runs:
        for proc in run.workers:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)


def _keyed(values: list[bytes], field: str) -> list[tuple[bytes | None, bytes]]:
    """Messages keyed by ``field`` as a producer keys them (unkeyed when unreadable)."""
    out: list[tuple[bytes | None, bytes]] = []
    for value in values:
        try:
            key = orjson.loads(value).get(field)
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        out.append((key.encode() if isinstance(key, str) else b"broken", value))
    return out


def _topic(records: dict[int, list[Any]]) -> Counter[tuple[int, bytes | None, bytes | None]]:
    return Counter((p, r.key, r.value) for p, rs in records.items() for r in rs)


async def test_orders_example_end_to_end_equals_the_driver(
    app_run: Callable[[str], AppRun],
) -> None:
    """Example (a): created, run and audited from the CLI; and the driver, fed the same
    records, writes the same outputs, dead letters and late records as the worker."""
    run = app_run("examples/orders/app.py")
    created = run.cli("topics", "create", run.spec)
    assert created.returncode == 0, created.stderr
    assert "revenue-per-customer" in created.stdout
    assert "-revenue-per-customer-changelog" in created.stdout
    messages = _keyed(orders(6_000, seed=5, start_ts=PAST), "customer_id")
    await run.publish("orders", messages)
    totals = run.start_worker().finish()
    assert totals["consumed"] == len(messages)

    report = run.verify()
    (pipeline,) = report["pipelines"]
    assert report["exact"], pipeline
    assert pipeline["expected_finals"] > 100
    assert pipeline["invalid"] > 0
    assert pipeline["expected_duplicates"] > 0
    assert pipeline["expected_late"] > 0

    # The driver on the same records, partition by partition, as the worker fetched them.
    inputs = await read_topic(run.kafka, "orders")
    driver = TestDriver(load_app(str(REPO / run.spec)), partitions=PARTITIONS)
    for partition, records in inputs.items():
        for record in records:
            driver.publish(
                "orders",
                record.value,
                key=record.key,
                partition=partition,
                timestamp=record.timestamp,
            )
    driver.process()
    driver.advance(10**13)  # far past every window: all closed, as the idle worker closed them
    for topic in ("revenue-per-customer", "orders.late"):
        actual = _topic(await read_topic(run.kafka, topic))
        expected = Counter((r.partition, r.raw_key, r.raw_value) for r in driver.records(topic))
        assert actual == expected, topic
    letters = await read_topic(run.kafka, "orders.dlq")
    worker_letters = sorted(
        (
            header_map(r.headers)["source.partition"],
            header_map(r.headers)["source.offset"],
            header_map(r.headers)["error.stage"],
            r.value,
        )
        for rs in letters.values()
        for r in rs
    )
    driver_letters = sorted(
        (
            d.headers["source.partition"],
            d.headers["source.offset"],
            d.headers["error.stage"],
            d.raw_value,
        )
        for d in driver.dead_letters("orders")
    )
    assert worker_letters == driver_letters


async def test_sessions_example_with_a_custom_aggregator(
    app_run: Callable[[str], AppRun],
) -> None:
    """Example (b): session windows merge on a real worker as the interpreter says."""
    import random

    rng = random.Random(3)
    clicks: list[tuple[int, dict[str, Any]]] = []
    for user in range(60):
        ts = PAST + rng.randint(0, 3_600_000)
        for _ in range(rng.randint(1, 12)):
            ts += rng.choice([5_000, 60_000, 600_000, 1_900_000, 4_000_000])
            page = rng.choice(["home", "search", "item", "cart", None])
            click = {"user_id": f"u{user}", "ts": ts - rng.randint(0, 70_000)}
            if page is not None:
                click["page"] = page
            clicks.append((click["ts"] + rng.randint(0, 60_000), click))
    # Arrival roughly in event-time order (a minute of disorder, some of it past the grace).
    messages = [
        (c["user_id"].encode(), orjson.dumps(c))
        for _, c in sorted(clicks, key=lambda item: item[0])
    ]
    run = app_run("examples/sessions/app.py")
    assert run.cli("topics", "create", run.spec).returncode == 0
    await run.publish("clicks", messages)
    run.start_worker(STREAMS_GUARANTEE="exactly_once").finish()
    report = run.verify()
    (pipeline,) = report["pipelines"]
    assert report["exact"], pipeline
    assert pipeline["expected_finals"] > 60  # most users had several sessions
    sessions = [
        orjson.loads(r.value)
        for rs in (await read_topic(run.kafka, "user-sessions")).values()
        for r in rs
    ]
    assert any(s["clicks"] > 1 for s in sessions)
    assert all(len(s["path"]) == s["clicks"] for s in sessions)


async def test_cleanup_example_fans_out_two_pipelines(
    app_run: Callable[[str], AppRun],
) -> None:
    """Example (c): two stateless pipelines from one topic; `verify` checks both."""
    signups = []
    for i in range(2_000):
        value: dict[str, Any] = {"user_id": f"u{i % 300}", "email": f" User{i}@Example.com "}
        if i % 7 == 0:
            value["interests"] = ["Jazz", "chess"][: i % 3]
        if i % 11 == 0:
            value["email"] = "nobody"
        if i % 13 == 0:
            value["email"] = ["@"]  # the clean-up raises: dead letter, stage map
        signups.append((value["user_id"].encode(), orjson.dumps(value)))
    signups.append((b"u1", b"not json"))
    run = app_run("examples/cleanup/app.py")
    assert run.cli("topics", "create", run.spec).returncode == 0
    await run.publish("signups", signups)
    run.start_worker().finish()
    report = run.verify()
    assert report["exact"], report
    by_name = {p["pipeline"]: p for p in report["pipelines"]}
    assert set(by_name) == {"signups-clean", "interests"}
    assert by_name["signups-clean"]["expected_finals"] > 1_000
    assert by_name["interests"]["expected_finals"] > 100
    assert by_name["signups-clean"]["dlq_records"] > 100


async def test_cards_example_stays_exact_under_sigkills_with_exactly_once(
    app_run: Callable[[str], AppRun],
) -> None:
    """The `.process` example: per-card state and event-time timers, restored from the
    changelog after each SIGKILL, inside the transaction; the quiet cards' timers fire by
    idle advance; `verify` (which reads where each worker left the operator's stream time)
    is exact, alerts and dead letters included."""
    import asyncio
    import random

    from examples.cards.generate import payments

    events = list(payments(120_000, seed=11, start_ts=PAST, cards=2_000))
    messages = [(p["card"].encode(), orjson.dumps(p)) for p in events]
    run = app_run("examples/cards/app.py")
    assert run.cli("topics", "create", run.spec).returncode == 0
    await run.publish("payments", messages)
    eos = {"STREAMS_GUARANTEE": "exactly_once", "STREAMS_COMMIT_INTERVAL_MS": "100"}
    rng = random.Random(5)
    for _ in range(2):
        worker = run.start_worker(**eos)
        worker.wait_metric_at_least("streams_events_consumed_total", rng.randint(1, 30_000))
        await asyncio.sleep(rng.uniform(0.0, 0.1))
        worker.kill()
    final = run.start_worker(**eos).finish()
    assert final["consumed"] > 0, "the kills came after all input was processed"

    report = run.verify()
    (pipeline,) = report["pipelines"]
    assert report["exact"], pipeline
    assert pipeline["duplicate_finals"] == 0
    assert pipeline["dlq_records"] > 0  # payments without an amount
    alerts = [
        orjson.loads(r.value)
        for rs in (await read_topic(run.kafka, "card-alerts")).values()
        for r in rs
    ]
    kinds = Counter(a["alert"] for a in alerts)
    assert kinds["3 in a minute"] > 100
    assert kinds["quiet"] > 1_000  # timers fired, by the input and by idle advance


async def test_ads_example_joins_two_streams_exactly_once_under_sigkills(
    app_run: Callable[[str], AppRun],
) -> None:
    """`join_stream` on a real worker: partition p of both topics is one task (range
    assignment), one transaction holds both inputs' offsets, the buffers and pending queues
    are restored after each SIGKILL; `verify` (which takes both inputs in event-time order)
    is exact: every pair once, every unjoined click once with a null view, late events in
    their topic's .late."""
    import asyncio
    import random

    from examples.ads.generate import events

    rng = random.Random(8)
    generated = [(topic, e) for topic, e in events(40_000, seed=8, start_ts=PAST, users=500)]
    # Published about in event-time order (a few seconds of disorder, some past the grace).
    generated.sort(key=lambda item: item[1]["ts"] + rng.randint(0, 7_000))
    run = app_run("examples/ads/app.py")
    assert run.cli("topics", "create", run.spec).returncode == 0

    async def publish(part: list[tuple[str, dict[str, Any]]]) -> None:
        for topic in ("ad-views", "ad-clicks"):
            await run.publish(
                topic, [(e["user"].encode(), orjson.dumps(e)) for t, e in part if t == topic]
            )

    # The last fifth is published after the kills: the last worker always has work left.
    await publish(generated[:32_000])
    eos = {"STREAMS_GUARANTEE": "exactly_once", "STREAMS_COMMIT_INTERVAL_MS": "100"}
    for _ in range(2):
        worker = run.start_worker(**eos)
        worker.wait_metric_at_least("streams_events_consumed_total", rng.randint(1, 12_000))
        await asyncio.sleep(rng.uniform(0.0, 0.1))
        worker.kill()
    await publish(generated[32_000:])
    final = run.start_worker(**eos).finish()
    assert final["consumed"] > 0

    report = run.verify()
    (pipeline,) = report["pipelines"]
    assert report["exact"], orjson.dumps(pipeline).decode()
    assert pipeline["duplicate_finals"] == 0
    assert pipeline["expected_late"] > 0
    attributed = [
        orjson.loads(r.value)
        for rs in (await read_topic(run.kafka, "attributed-clicks")).values()
        for r in rs
    ]
    assert sum(a["view"] is None for a in attributed) > 100  # left misses, once each
    assert sum(a["view"] is not None for a in attributed) > 10_000


async def test_rolling_example_sliding_windows_stay_exact_across_a_sigkill(
    app_run: Callable[[str], AppRun],
) -> None:
    """The sliding-window example: one window per payment time of a card, restored from the
    changelog's blocks of events after a SIGKILL under exactly_once; `verify` recomputes
    every window from scratch and is exact, late payments and dead letters included."""
    import asyncio

    from examples.rolling.generate import payments

    events = list(payments(30_000, seed=13, start_ts=PAST))
    messages = [(p["card"].encode(), orjson.dumps(p)) for p in events]
    run = app_run("examples/rolling/app.py")
    created = run.cli("topics", "create", run.spec)
    assert created.returncode == 0, created.stderr
    assert "-spend-last-5-min-changelog" in created.stdout
    # The last 6,000 are published after the kill: the second worker always has work left.
    await run.publish("card-payments", messages[:24_000])
    eos = {"STREAMS_GUARANTEE": "exactly_once", "STREAMS_COMMIT_INTERVAL_MS": "100"}
    worker = run.start_worker(**eos)
    worker.wait_metric_at_least("streams_events_consumed_total", 8_000)
    await asyncio.sleep(0.05)
    worker.kill()
    await run.publish("card-payments", messages[24_000:])
    final = run.start_worker(**eos).finish()
    assert final["consumed"] > 0

    report = run.verify()
    (pipeline,) = report["pipelines"]
    assert report["exact"], pipeline
    assert pipeline["duplicate_finals"] == 0
    assert pipeline["expected_late"] > 0  # payments more than the 2 s of grace behind
    assert pipeline["dlq_records"] > 0  # payments whose amount is not a number
    finals = [
        orjson.loads(r.value)
        for rs in (await read_topic(run.kafka, "spend-last-5-min")).values()
        for r in rs
    ]
    assert len(finals) == pipeline["expected_finals"] > 25_000  # about one per payment
    assert max(f["n"] for f in finals) > 100  # busy cards: windows overlap


async def test_avro_orders_example_stays_exact_under_a_sigkill_with_exactly_once(
    app_run: Callable[[str], AppRun], schema_registry: str, tmp_path: Path
) -> None:
    """The Avro example with a real registry: `streams publish --format avro` registers the
    order schema and encodes the orders example's JSON lines (its broken lines reported and
    skipped); a worker killed with SIGKILL inside a transaction and a second one write Avro
    revenue; `verify` decodes both sides by schema id and is exact."""
    import asyncio

    from streams.core.formats import schema_id_of

    generated = orders(8_000, seed=9, start_ts=PAST)
    run = app_run("examples/avro_orders/app.py")
    run.env["STREAMS_SCHEMA_REGISTRY_URL"] = schema_registry
    created = run.cli("topics", "create", run.spec)
    assert created.returncode == 0, created.stderr

    def publish(part: list[bytes], name: str) -> dict[str, Any]:
        lines = tmp_path / name
        lines.write_bytes(b"\n".join(part) + b"\n")
        published = run.cli(
            "publish", "orders-avro", str(lines), "--key-field", "customer_id",
            "--format", "avro", "--schema", "schemas/order/v1.avsc", "--json",
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        sent: dict[str, Any] = orjson.loads(published.stdout)
        assert sent["rejected"] > 0  # the generator's lines that are not JSON
        assert sent["sent"] + sent["rejected"] == len(part)
        return sent

    # The last 2,000 are published after the kill: the second worker always has work left.
    publish(generated[:6_000], "first.jsonl")
    eos = {"STREAMS_GUARANTEE": "exactly_once", "STREAMS_COMMIT_INTERVAL_MS": "100"}
    worker = run.start_worker(**eos)
    worker.wait_metric_at_least("streams_events_consumed_total", 2_000)
    await asyncio.sleep(0.05)
    worker.kill()
    publish(generated[6_000:], "second.jsonl")
    final = run.start_worker(**eos).finish()
    assert final["consumed"] > 0

    report = run.verify()
    (pipeline,) = report["pipelines"]
    assert report["exact"], pipeline
    assert pipeline["duplicate_finals"] == 0
    assert pipeline["expected_finals"] > 100
    assert pipeline["expected_duplicates"] > 0
    written = await read_topic(run.kafka, "revenue-per-customer-avro")
    outputs = [r.value for rs in written.values() for r in rs]
    assert len(outputs) == pipeline["expected_finals"]
    (schema_id,) = {schema_id_of(v) for v in outputs}  # one schema, every value framed
    assert schema_id is not None
