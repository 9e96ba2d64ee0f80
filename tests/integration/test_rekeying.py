"""Re-keying, tables and enrichment on a real broker, exactly-once, audited by verify.

The contract's example: orders joined with a products table (loaded whole before the first
event), re-keyed by region through a repartition topic, windowed per region; beside it a
pipeline that enriches orders with an ``async`` lookup. The app is a file written for the
test, run by ``streams worker`` and audited by ``streams verify`` as a user would.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from streams.broker.admin import topic_config, topic_partitions
from streams.broker.local import free_port
from streams.broker.reading import read_topic
from streams.config import KafkaSettings
from streams.publish import Publisher
from tests.conftest import Worker

pytestmark = pytest.mark.integration

APP = """
import asyncio
from streams import App, Count, Sum, Max, tumbling

app = App("{app}")
orders = app.topic("{orders}")
products = app.table("{products}")

(
    app.stream(orders, key="customer_id", timestamp="ts")
    .join(products, on="sku", into="product")
    .map(lambda o: {{**o, "region": (o["product"] or {{}}).get("region", "unknown")}})
    .group_by("region")
    # A repartition partition interleaves the upstream partitions' batches: their event
    # times come minutes apart here (all input published at once), so a generous grace.
    .window(tumbling(60_000), grace_ms=600_000)
    .aggregate(revenue=Sum("amount"), orders=Count(), biggest=Max("amount"))
    .to("{by_region}")
)


async def tiers(keys):
    await asyncio.sleep(0.001)  # an external service, awaited once per batch
    return {{k: {{"tier": "gold" if k.endswith("7") else "basic"}} for k in keys}}


(
    app.stream(orders, key="customer_id", timestamp="ts", name="{app}-tiers")
    .enrich(tiers, key="customer_id", into="customer", ttl_ms=60_000, max_entries=1_000)
    .filter(lambda o: o["customer"]["tier"] == "gold")
    .to("{gold}")
)
"""


async def test_join_group_by_and_enrich_are_exact_under_exactly_once(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    names = {k: unique_name(k) for k in ("app", "orders", "products", "by_region", "gold")}
    app_file = tmp_path / "shop.py"
    app_file.write_text(textwrap.dedent(APP.format(**names)))
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAMS_PARTITIONS": "3",
        "STREAMS_IDLE_TIMEOUT_MS": "1500",
        "STREAMS_GUARANTEE": "exactly_once",
        # verify recomputes the re-keyed windows from the whole repartition topic: a run
        # longer than the purge interval would have deleted its beginning.
        "STREAMS_REPARTITION_PURGE_INTERVAL_MS": "-1",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams", *args],
            env=env,
            text=True,
            capture_output=True,
            timeout=300,
            check=False,
        )

    created = cli("topics", "create", str(app_file))
    assert created.returncode == 0, created.stderr
    repartition = f"{names['app']}-{names['by_region']}-repartition"
    assert repartition in created.stdout
    assert await topic_partitions(_kafka(kafka_bootstrap), repartition) == [0, 1, 2]
    # Its records carry event times of 2020: under time retention the broker deleted them at
    # its next retention check, before the audit read them (an ordering-dependent failure).
    retention = await topic_config(_kafka(kafka_bootstrap), [repartition], "retention.ms")
    assert retention == {repartition: "-1"}

    rng = random.Random(9)
    regions = ["eu", "us", "apac"]
    products = [(f"sku-{i}".encode(), orjson.dumps({"region": regions[i % 3]})) for i in range(40)]
    orders = []
    for i in range(6_000):
        customer = f"c{rng.randint(1, 300)}"
        order = {
            "order_id": f"o{i}",
            "customer_id": customer,
            "amount": rng.randint(1, 99),
            "sku": f"sku-{rng.randint(0, 45)}",
            "ts": 1_600_000_000_000 + i * 40,
        }
        orders.append((customer.encode(), orjson.dumps(order)))
    async with Publisher(_kafka(kafka_bootstrap)) as publisher:
        await publisher.publish(names["products"], products)
        await publisher.publish(names["orders"], orders)

    worker = _start_worker(app_file, env, tmp_path / "worker.log")
    totals = worker.finish(timeout_s=240)
    # Every order (fetched once for both pipelines) and every repartitioned one.
    assert totals["consumed"] == 2 * len(orders)

    verified = cli("verify", str(app_file), "--json")
    report = orjson.loads(verified.stdout)
    assert verified.returncode == 0, report
    by_name = {p["pipeline"]: p for p in report["pipelines"]}
    assert set(by_name) == {names["by_region"], f"{names['by_region']}#1", f"{names['app']}-tiers"}
    # The re-keyed windows: one per region and minute, "unknown" for skus not in the table.
    finals = [
        orjson.loads(r.value)
        for rs in (await read_topic(_kafka(kafka_bootstrap), names["by_region"])).values()
        for r in rs
    ]
    assert {f["key"] for f in finals} == {"eu", "us", "apac", "unknown"}
    assert sum(f["orders"] for f in finals) == len(orders)
    # The hop keeps event time: repartition records carry it as their timestamp.
    hop = await read_topic(_kafka(kafka_bootstrap), repartition)
    assert all(r.timestamp == orjson.loads(r.value)["ts"] for rs in hop.values() for r in rs)
    gold = by_name[f"{names['app']}-tiers"]
    assert 100 < gold["expected_finals"] < len(orders) / 2


def _start_worker(app_file: Path, env: dict[str, str], log_path: Path) -> Worker:
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams",
                "worker",
                str(app_file),
                "--json",
                "--exit-when-idle",
                "3",
            ],
            env={**env, "STREAMS_METRICS_PORT": str(port)},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    return Worker(proc, port, log_path)


def _kafka(bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=bootstrap)
