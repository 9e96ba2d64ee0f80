"""The orders example without a broker: what a newcomer's own tests look like."""

from __future__ import annotations

from typing import Any

import pytest

from examples.orders.app import app
from streams.testing import TestDriver

MINUTE = 60_000


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


def test_revenue_per_customer_per_minute(driver: TestDriver) -> None:
    driver.send("orders", order("o1", "c1", 10.0, 1_000), key="c1")
    driver.send("orders", order("o2", "c1", 30.0, 2_000, discount=5.0, sku="sku-2"), key="c1")
    driver.send("orders", order("o3", "c2", 7.5, 3_000), key="c2")
    driver.send("orders", order("o4", "c1", 99.0, 4_000, status="created"), key="c1")  # unpaid
    driver.send("orders", order("o5", "c1", 4.0, MINUTE + 500), key="c1")  # next minute
    # The first minute closes once the partition's stream time passes its end plus the
    # 10 s grace (one partition here: every customer's first minute closes).
    driver.send("orders", order("o6", "c1", 1.0, MINUTE + 10_000), key="c1")
    assert driver.finals("revenue-per-customer") == [
        {
            "key": "c1",
            "window_start": 0,
            "window_end": MINUTE,
            "orders": 2,
            "revenue": 35.0,
            "avg": 17.5,
            "biggest": 25.0,
            "products": 2,
            "final": True,
        },
        {
            "key": "c2",
            "window_start": 0,
            "window_end": MINUTE,
            "orders": 1,
            "revenue": 7.5,
            "avg": 7.5,
            "biggest": 7.5,
            "products": 1,
            "final": True,
        },
    ]
    driver.advance(10 * MINUTE)  # no more input: idle partitions close the rest
    keys = [(f["key"], f["window_start"]) for f in driver.finals("revenue-per-customer")]
    assert sorted(keys) == [("c1", 0), ("c1", MINUTE), ("c2", 0)]


def test_a_repeated_order_counts_once(driver: TestDriver) -> None:
    driver.send("orders", order("o1", "c1", 10.0, 1_000), key="c1")
    driver.send("orders", order("o1", "c1", 10.0, 1_000), key="c1")  # producer retry
    driver.advance(10 * MINUTE)
    (final,) = driver.finals("revenue-per-customer")
    assert final["orders"] == 1
    assert final["revenue"] == 10.0


def test_invalid_and_late_orders_are_routed_not_lost(driver: TestDriver) -> None:
    driver.send("orders", order("o1", "c1", 10.0, 5 * MINUTE), key="c1")
    driver.send("orders", order("o2", "c1", 10.0, 1_000), key="c1")  # minutes too late
    driver.send("orders", {"order_id": "o3", "customer_id": "c1"}, key="c1")  # no amount
    driver.send("orders", b"{not json", key="c1")
    (late,) = driver.late("orders")
    assert late.value["order_id"] == "o2"
    letters = driver.dead_letters("orders")
    assert [d.headers["error.stage"] for d in letters] == ["validate", "validate"]
    assert letters[1].raw_value == b"{not json"
    assert letters[0].headers["source.topic"] == "orders"


def test_state_survives_a_restart(driver: TestDriver) -> None:
    driver.send("orders", order("o1", "c1", 10.0, 1_000), key="c1")
    driver.restart()  # a new worker takes over: state comes back from the changelog
    driver.send("orders", order("o1", "c1", 10.0, 1_000), key="c1")  # still a duplicate
    driver.send("orders", order("o2", "c1", 5.0, 2_000), key="c1")
    driver.advance(10 * MINUTE)
    (final,) = driver.finals("revenue-per-customer")
    assert (final["orders"], final["revenue"]) == (2, 15.0)
