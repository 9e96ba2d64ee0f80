"""The Avro orders example without a broker or a registry: the driver keeps schemas in
memory, encodes what a test sends with the schema it names, and decodes the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from examples.avro_orders.app import app
from examples.orders.app import app as json_app
from examples.orders.generate import orders
from streams.core.formats import frame, schema_id_of
from streams.testing import TestDriver

MINUTE = 60_000
ROOT = Path(__file__).resolve().parents[2]
ORDER = ROOT / "schemas" / "order" / "v1.avsc"


def order(order_id: str, customer: str, amount: float, ts: int, **extra: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": customer,
        "status": "paid",
        "amount": amount,
        "ts": ts,
        "sku": "sku-1",
        **extra,
    }


@pytest.fixture
def driver() -> TestDriver:
    return TestDriver(app)


def test_avro_orders_give_avro_revenue(driver: TestDriver) -> None:
    driver.send("orders-avro", order("o1", "c1", 10.0, 1_000), key="c1", schema=ORDER)
    driver.send("orders-avro", order("o2", "c1", 30.0, 2_000, discount=5.0), key="c1", schema=ORDER)
    driver.send(
        "orders-avro", order("o3", "c1", 99.0, 3_000, status="created"), key="c1", schema=ORDER
    )
    driver.advance(10 * MINUTE)
    (record,) = driver.records("revenue-per-customer-avro")
    assert record.value == {
        "key": "c1",
        "window_start": 0,
        "window_end": MINUTE,
        "orders": 2,
        "revenue": 35.0,
        "avg": 17.5,
        "biggest": 25.0,
        "products": 1,
        "final": True,
    }
    # On the topic: the registry's wire format, with the id revenue's schema got.
    assert record.raw_value is not None
    assert (
        schema_id_of(record.raw_value)
        == driver.registry.subjects["revenue-per-customer-avro-value"][0]
    )


def test_values_not_in_the_wire_format_are_decode_dead_letters(driver: TestDriver) -> None:
    driver.send("orders-avro", orjson.dumps(order("o1", "c1", 10.0, 1_000)), key="c1")  # plain JSON
    driver.send("orders-avro", frame(999, b"\x02"), key="c1")  # an id no registry holds
    driver.send("orders-avro", frame(1, b"\x02"), key="c1")  # revenue's schema: does not decode
    letters = driver.dead_letters("orders-avro")
    assert [d.headers["error.stage"] for d in letters] == ["decode"] * 3
    assert "not 0" in letters[0].headers["error.message"]
    assert "999" in letters[1].headers["error.message"]
    assert letters[0].raw_value == orjson.dumps(order("o1", "c1", 10.0, 1_000))


def test_the_same_orders_give_the_json_examples_results() -> None:
    """Avro in and out changes the encoding, not the answer: the orders example's own
    generated orders (duplicates, late ones, unpaid ones) through both apps agree."""
    lines = [v for v in orders(800, seed=3, start_ts=0) if v != b'{"order_id": "broken"']
    avro, plain = TestDriver(app), TestDriver(json_app)
    for value in map(orjson.loads, lines):
        avro.publish("orders-avro", value, key=value["customer_id"], schema=ORDER)
        plain.publish("orders", value, key=value["customer_id"])
    for d in (avro, plain):
        d.process()
        d.advance(10 * MINUTE)
    got = sorted(
        orjson.dumps(v, option=orjson.OPT_SORT_KEYS)
        for v in avro.values("revenue-per-customer-avro")
    )
    want = sorted(
        orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in plain.finals("revenue-per-customer")
    )
    assert len(want) > 20
    assert got == want
