"""The rolling example without a broker."""

from __future__ import annotations

from examples.rolling.app import FIVE_MINUTES, app
from streams.testing import TestDriver

MINUTE = 60_000


def pay(driver: TestDriver, card: str, ts: int, amount: object = 10.0) -> None:
    driver.send("card-payments", {"card": card, "ts": ts, "amount": amount}, key=card)


def spend(driver: TestDriver) -> list[tuple[str, int, int, float]]:
    return [
        (f["key"], f["window_end"], f["n"], f["spent"]) for f in driver.finals("spend-last-5-min")
    ]


def test_each_payment_gets_the_cards_count_and_total_of_the_five_minutes_up_to_it() -> None:
    driver = TestDriver(app)
    pay(driver, "c1", 0, 10.0)
    pay(driver, "c1", 2 * MINUTE, 20.0)
    pay(driver, "c1", 4 * MINUTE, 30.0)
    pay(driver, "c1", 6 * MINUTE, 40.0)  # the payment at 0 is more than five minutes back
    driver.advance(10 * MINUTE)
    assert spend(driver) == [
        ("c1", 1, 1, 10.0),
        ("c1", 2 * MINUTE + 1, 2, 30.0),
        ("c1", 4 * MINUTE + 1, 3, 60.0),
        ("c1", 6 * MINUTE + 1, 3, 90.0),
    ]
    (first,) = driver.finals("spend-last-5-min")[:1]
    assert first["window_start"] == 1 - FIVE_MINUTES


def test_a_payment_arriving_after_its_own_window_is_final_is_late() -> None:
    driver = TestDriver(app)
    pay(driver, "c1", MINUTE)
    pay(driver, "c2", MINUTE + 5_000)  # stream time passes c1's window end + 2 s of grace
    pay(driver, "c1", MINUTE + 1_000)  # within c1's minute, but 6 s behind stream time
    driver.advance(10 * MINUTE)
    assert [r.value["ts"] for r in driver.late("card-payments")] == [MINUTE + 1_000]
    assert spend(driver) == [("c1", MINUTE + 1, 1, 10.0), ("c2", MINUTE + 5_001, 1, 10.0)]


def test_a_payment_without_a_number_to_sum_is_a_dead_letter() -> None:
    driver = TestDriver(app)
    pay(driver, "c1", 0, "n/a")
    pay(driver, "c1", 1_000, 5.0)
    driver.advance(10 * MINUTE)
    assert spend(driver) == [("c1", 1_001, 1, 5.0)]
    (letter,) = driver.dead_letters("card-payments")
    assert letter.headers["error.stage"] == "aggregate"
