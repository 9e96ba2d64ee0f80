"""``format="avro"``/``"json-schema"`` topics: declarations, start-up settings, and pipelines
run by the test driver with its registry in memory (what a worker does with a real one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streams import App, Count, tumbling
from streams.config import RegistrySettings, Settings
from streams.core.formats import frame, schema_id_of
from streams.errors import ConfigError, DeclarationError
from streams.runtime.formats import registry_for
from streams.testing import TestDriver
from streams.topology.plan import plan

ORDER = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "customer", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
TOTAL = {
    "type": "record",
    "name": "Total",
    "fields": [
        {"name": "key", "type": "string"},
        {"name": "window_start", "type": "long"},
        {"name": "n", "type": "long"},
        {"name": "label", "type": "string", "default": "none"},
    ],
}
WELCOME = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"user": {"type": "string"}, "greeting": {"type": "string"}},
    "required": ["user", "greeting"],
    "additionalProperties": False,
}


def _write(tmp_path: Path, name: str, schema: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return path


@pytest.fixture
def schemas(tmp_path: Path) -> dict[str, Path]:
    return {
        "order": _write(tmp_path, "order.avsc", ORDER),
        "total": _write(tmp_path, "total.avsc", TOTAL),
        "welcome": _write(tmp_path, "welcome.json", WELCOME),
    }


def test_an_unknown_format_is_refused_at_its_line() -> None:
    app = App("formats")
    with pytest.raises(DeclarationError, match=r"test_topic_formats\.py:\d+: .*format must be"):
        app.topic("orders", format="protobuf")


def test_an_avsc_that_is_not_avro_is_refused_at_its_line(tmp_path: Path) -> None:
    bad = _write(tmp_path, "bad.avsc", {"type": "record", "name": "R", "fields": [{"x": 1}]})
    app = App("formats")
    with pytest.raises(DeclarationError, match=r"test_topic_formats\.py:\d+: .*not a valid Avro"):
        app.topic("orders", format="avro", schema=bad)


def test_a_format_output_without_a_schema_is_refused_at_the_to_line() -> None:
    app = App("formats")
    orders = app.topic("orders", format="avro")
    totals = app.topic("totals", format="avro")
    app.stream(orders, key="customer").to(totals)
    with pytest.raises(DeclarationError, match=r"test_topic_formats\.py:\d+: \.to\('totals'\)"):
        plan(app.decl)


def test_the_same_topic_declared_with_two_formats_is_refused() -> None:
    app = App("formats")
    app.topic("orders", format="avro")
    with pytest.raises(DeclarationError, match="different schema, dlq or format"):
        app.topic("orders")


def test_a_registry_format_needs_the_registry_url(schemas: dict[str, Path]) -> None:
    app = App("formats")
    orders = app.topic("orders", format="avro")
    app.stream(orders, key="customer").to(app.topic("out", format="avro", schema=schemas["total"]))
    planned = plan(app.decl)
    with pytest.raises(ConfigError, match="STREAMS_SCHEMA_REGISTRY_URL"):
        registry_for(planned, RegistrySettings())
    client = registry_for(planned, RegistrySettings(url="http://user:secret@127.0.0.1:1/x"))
    assert client is not None
    assert "secret" not in client.url
    # A JSON-only app never needs one.
    json_app = App("plain")
    json_app.stream(json_app.topic("a"), key="k").to("b")
    assert registry_for(plan(json_app.decl), RegistrySettings()) is None


def test_registry_settings_come_from_the_environment(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    settings = Settings.from_env(
        {
            "STREAMS_SCHEMA_REGISTRY_URL": "https://registry:8081",
            "STREAMS_SCHEMA_REGISTRY_USER": "svc",
            "STREAMS_SCHEMA_REGISTRY_PASSWORD": "hunter2",
            "STREAMS_SCHEMA_REGISTRY_CAFILE": str(ca),
        }
    ).schema_registry
    assert (settings.url, settings.user, settings.cafile) == (
        "https://registry:8081",
        "svc",
        str(ca),
    )
    assert settings.password == "hunter2"
    assert "hunter2" not in repr(settings)
    with pytest.raises(ConfigError, match="STREAMS_SCHEMA_REGISTRY_CAFILE"):
        RegistrySettings.from_env({"STREAMS_SCHEMA_REGISTRY_CAFILE": str(tmp_path / "missing")})


def _avro_app(schemas: dict[str, Path]) -> App:
    app = App("avro-totals")
    orders = app.topic("orders", format="avro")
    totals = app.topic("totals", format="avro", schema=schemas["total"])
    (
        app.stream(orders, key="customer", timestamp="ts")
        .window(tumbling(60_000))
        .aggregate(n=Count())
        .map(lambda t: {**t, "label": "big" if t["n"] > 2 else t["n"]})  # a number: misfit
        .to(totals)
    )
    return app


def test_outputs_that_do_not_fit_are_produce_dead_letters_as_json(
    schemas: dict[str, Path],
) -> None:
    driver = TestDriver(_avro_app(schemas))
    for i, customer in enumerate(["a", "a", "a", "b"]):
        order = {"id": f"o{i}", "customer": customer, "amount": 1.5, "ts": 1_000 + i}
        driver.send("orders", order, key=customer, schema=schemas["order"])
    driver.advance(120_000)
    (total,) = driver.values("totals")
    assert total == {"key": "a", "window_start": 0, "n": 3, "label": "big"}  # window_end: left out
    (letter,) = driver.dead_letters("orders")
    assert letter.headers["error.stage"] == "produce"
    assert "Total.label" in letter.headers["error.message"]
    assert letter.value["key"] == "b"  # the output value, as JSON
    assert letter.value["label"] == 1


def test_state_of_a_format_pipeline_survives_a_restart(schemas: dict[str, Path]) -> None:
    driver = TestDriver(_avro_app(schemas))
    order = {"id": "o1", "customer": "a", "amount": 1.5, "ts": 1_000}
    driver.send("orders", order, key="a", schema=schemas["order"])
    driver.restart()
    driver.send("orders", {**order, "id": "o2"}, key="a", schema=schemas["order"])
    driver.send("orders", {**order, "id": "o3"}, key="a", schema=schemas["order"])
    driver.advance(120_000)
    assert [t["n"] for t in driver.values("totals")] == [3]


def test_json_schema_topics_both_ways(schemas: dict[str, Path]) -> None:
    app = App("welcome")
    signups = app.topic("signups", format="json-schema")
    welcomed = app.topic("welcomed", format="json-schema", schema=schemas["welcome"])
    (
        app.stream(signups, key="user")
        .map(lambda s: {**s, "greeting": f"hello {s['name']}"})
        .to(welcomed)
    )
    signup = _write(
        schemas["welcome"].parent,
        "signup.json",
        {
            "type": "object",
            "properties": {"user": {"type": "string"}, "name": {"type": "string"}},
            "required": ["user"],
        },
    )
    driver = TestDriver(app)
    driver.send("signups", {"user": "u1", "name": "Ann"}, key="u1", schema=signup)
    (record,) = driver.records("welcomed")
    # "name" is not among the output schema's properties: left out, so the value validates.
    assert record.value == {"user": "u1", "greeting": "hello Ann"}
    assert record.raw_value is not None
    assert record.raw_value[5:] == b'{"user":"u1","greeting":"hello Ann"}'
    assert schema_id_of(record.raw_value) == driver.registry.subjects["welcomed-value"][0]
    signup_id = driver.registry.subjects["signups-value"][0]
    driver.send("signups", frame(signup_id, b'{"name": "no user"}'), key="x")
    (letter,) = driver.dead_letters("signups")
    assert letter.headers["error.stage"] == "decode"
    assert "user" in letter.headers["error.message"]


def test_a_value_sent_to_a_format_topic_needs_a_schema() -> None:
    app = App("formats")
    app.stream(app.topic("orders", format="avro"), key="customer").to("plain")
    driver = TestDriver(app)
    with pytest.raises(Exception, match="schema"):
        driver.send("orders", {"customer": "a"}, key="a")


def test_dlq_replay_matches_fields_of_wire_format_values(schemas: dict[str, Path]) -> None:
    from streams.core.formats import value_reader
    from streams.dlq import ReplayFilter
    from streams.registry import MemoryRegistry
    from streams.runtime.formats import encoder_for

    registry = MemoryRegistry()
    encoder = encoder_for("orders", "avro", schemas["order"], registry)
    order = {"id": "o1", "customer": "c1", "amount": 1.5, "ts": 1_000}
    framed = encoder.encode_value(order)
    wanted = ReplayFilter(matches=(("customer", "c1"),), read=value_reader(registry))
    assert wanted.wants({}, framed)
    assert not ReplayFilter(matches=(("customer", "c2"),), read=value_reader(registry)).wants(
        {}, framed
    )
    assert wanted.wants({}, b'{"customer": "c1"}')  # JSON dead letters as before
    assert not wanted.wants({}, frame(4242, b"\x02"))  # an unknown id: no fields to match
    assert not ReplayFilter(matches=(("customer", "c1"),)).wants({}, framed)  # JSON only


def test_the_format_may_follow_the_name_by_position() -> None:
    app = App("formats")
    assert app.topic("orders", "avro").decl.format == "avro"
    assert app.topic("signups", "json-schema").decl.format == "json-schema"
