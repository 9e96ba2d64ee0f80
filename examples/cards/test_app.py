"""The card example without a broker."""

from __future__ import annotations

from pathlib import Path

from examples.cards.app import MINUTE, app
from examples.cards.app import __file__ as app_file
from streams.testing import TestDriver


def pay(driver: TestDriver, card: str, ts: int, amount: object = 10.0) -> None:
    driver.send("payments", {"card": card, "ts": ts, "amount": amount}, key=card)


def test_three_payments_in_a_minute_is_an_alert() -> None:
    driver = TestDriver(app)
    for ts in (0, 10_000, 59_000):
        pay(driver, "c1", ts)
    assert driver.values("card-alerts") == [{"card": "c1", "ts": 59_000, "alert": "3 in a minute"}]
    assert driver.state("card-alerts", "c1") == {"recent": [0, 10_000, 59_000], "total": 30.0}


def test_a_quiet_card_is_reported_and_forgotten_when_stream_time_passes_its_timers() -> None:
    driver = TestDriver(app)
    pay(driver, "c1", 0)
    pay(driver, "c2", 30_000)
    assert driver.timers("card-alerts", "c1") == [MINUTE]
    pay(driver, "c2", 70_000)  # stream time passes c1's timer: c1 paid nothing since
    assert driver.values("card-alerts") == [
        {"card": "c1", "ts": MINUTE, "alert": "quiet", "spent": 10.0}
    ]
    assert driver.state("card-alerts", "c1") == {}
    driver.advance(10 * MINUTE)  # idle: stream time follows the wall clock, c2 goes quiet
    assert driver.values("card-alerts")[-1]["card"] == "c2"
    assert driver.state("card-alerts", "c2") == {}


def test_a_payment_without_an_amount_changes_nothing_and_is_a_dead_letter() -> None:
    driver = TestDriver(app)
    pay(driver, "c1", 0)
    pay(driver, "c1", 1_000, amount="n/a")
    assert driver.state("card-alerts", "c1") == {"recent": [0], "total": 10.0}
    (letter,) = driver.dead_letters("payments")
    assert letter.headers["error.stage"] == "process"
    declared = next(
        n
        for n, line in enumerate(Path(app_file).read_text().splitlines(), 1)
        if ".process(" in line
    )
    assert letter.headers["error.operator"] == f"app.py:{declared}"
    assert "could not convert string to float" in letter.headers["error.message"]
