"""The clean-up example without a broker."""

from __future__ import annotations

from examples.cleanup.app import app
from streams.testing import TestDriver


def test_clean_signups_and_one_record_per_interest() -> None:
    driver = TestDriver(app)
    driver.send(
        "signups",
        {
            "user_id": "u1",
            "email": " Ann@Example.COM ",
            "password": "x",
            "ip": "10.0.0.1",
            "interests": ["Jazz", "chess"],
        },
        key="u1",
    )
    driver.send("signups", {"user_id": "u2", "email": "not-an-email"}, key="u2")
    (clean,) = driver.records("signups-clean")
    assert clean.key == "u1"
    assert clean.value == {
        "user_id": "u1",
        "email": "ann@example.com",
        "interests": ["jazz", "chess"],
    }
    assert [(r.key, r.value["interest"]) for r in driver.records("interests")] == [
        ("u1", "jazz"),
        ("u1", "chess"),
    ]


def test_a_value_the_clean_up_cannot_handle_is_a_dead_letter() -> None:
    driver = TestDriver(app)
    driver.send("signups", {"user_id": "u3", "email": ["@", "list"]}, key="u3")
    driver.send("signups", {"email": "x@y.z"})  # no key field
    stages = [d.headers["error.stage"] for d in driver.dead_letters("signups")]
    # Both pipelines read the topic: the clean-up fails in each; the missing key too.
    assert sorted(stages) == ["key", "key", "map", "map"]
    assert driver.records("signups-clean") == []
