"""The Avro bench: pipeline-avro's app (the reference pipeline's shape, Avro in and out) and the
codec scenario's measurements, without a broker or a registry."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.apps.reference import build as build_reference
from streams.bench import codec
from streams.bench.avro_app import AGGREGATE_AVSC, EVENT_AVSC, build
from streams.bench.runner import BenchResult, summarise
from streams.config import Settings
from streams.core.decode import TopicDecoder
from streams.core.formats import FormatDecoder, frame, schema_id_of
from streams.generator import generate_messages
from streams.registry import MemoryRegistry
from streams.runtime.formats import encoder_for
from streams.schemas import schema_path
from streams.testing import TestDriver
from streams.topology.plan import plan

MINUTE = 60_000


def event(event_id: str, user: str, ts: int, **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": "page_view", "user_id": user, "ts": ts, **extra}


def purchase(event_id: str, user: str, ts: int, amount: float) -> dict[str, Any]:
    return event(event_id, user, ts, type="purchase", amount=amount, currency="EUR")


@pytest.fixture
def driver() -> TestDriver:
    return TestDriver(build("bench-avro", "events-avro", "aggregates-avro"))


def test_the_app_plans_the_reference_shape_on_avro_topics() -> None:
    app = build("bench-avro", "events-avro", "aggregates-avro")
    planned = plan(app.decl, "bench-avro")
    assert {name: decl.format for name, decl in planned.formats.items()} == {
        "events-avro": "avro",
        "aggregates-avro": "avro",
    }
    assert planned.formats["aggregates-avro"].schema == AGGREGATE_AVSC
    (segment,) = planned.segments
    assert segment.sink is not None
    assert segment.sink.topic == "aggregates-avro"


def test_avro_events_give_the_reference_aggregates(driver: TestDriver) -> None:
    sent = [
        event("e1", "u1", 1_000, props={"page": "/p/1"}),
        purchase("e2", "u1", 2_000, 10.5),
        purchase("e2", "u1", 2_000, 10.5),  # a duplicate: dropped
        purchase("e3", "u1", 3_000, 4.25),
        event("e4", "u2", 4_000, type="add_to_cart", props={"sku": "SKU-1", "qty": 2}),
        purchase("e5", "u1", MINUTE + 1, 1.0),
    ]
    for value in sent:
        driver.send("events-avro", value, key=value["user_id"], schema=EVENT_AVSC)
    driver.advance(10 * MINUTE)
    records = driver.records("aggregates-avro")
    assert [r.value for r in records] == [
        {
            "key": "u1",
            "window_start": 0,
            "window_end": MINUTE,
            "count": 3,
            "sum": 14.75,
            "min": 4.25,
            "max": 10.5,
            "final": True,
        },
        {
            "key": "u2",
            "window_start": 0,
            "window_end": MINUTE,
            "count": 1,
            "sum": 0.0,
            "min": None,
            "max": None,
            "final": True,
        },
        {
            "key": "u1",
            "window_start": MINUTE,
            "window_end": 2 * MINUTE,
            "count": 1,
            "sum": 1.0,
            "min": 1.0,
            "max": 1.0,
            "final": True,
        },
    ]
    # Avro on the topic, with the id the output's schema got under its subject.
    assert all(r.raw_value is not None for r in records)
    ids = {schema_id_of(r.raw_value or b"") for r in records}
    assert ids == set(driver.registry.subjects["aggregates-avro-value"])


def test_the_generators_events_give_what_the_json_reference_app_gives() -> None:
    """The same generated events (duplicates and late ones included), JSON through the
    reference app and Avro through the bench's: the same final records."""
    messages = list(
        generate_messages(3_000, users=50, seed=7, dup_ratio=0.05, late_ratio=0.02, rate=20.0)
    )
    settings = Settings()
    with TestDriver(build_reference(settings)) as reference:
        for m in messages:
            reference.send(settings.input_topic, m.value, key=m.key)
        reference.advance(60 * MINUTE)
        expected = reference.values(settings.output_topic)
    with TestDriver(build("bench-avro", "events-avro", "aggregates-avro")) as avro:
        for m in messages:
            avro.send("events-avro", orjson.loads(m.value), key=m.key, schema=EVENT_AVSC)
        avro.advance(60 * MINUTE)
        assert avro.values("aggregates-avro") == expected
    assert len(expected) > 100


def test_values_that_do_not_fit_are_sent_as_they_are() -> None:
    registry = MemoryRegistry()
    encoder = encoder_for("events", "avro", EVENT_AVSC, registry)
    good = orjson.dumps(event("e1", "u1", 1_000))
    bad = [b"not json", orjson.dumps(event("e2", "u1", -1)), orjson.dumps({"ts": 1})]
    values, unencodable = codec.avro_copy([good, *bad], encoder)
    # A negative ts is a long all the same: only the JSON schema forbids it.
    assert unencodable == 2
    assert values[0] == frame(encoder.schema_id, values[0][5:])
    assert values[2] == frame(encoder.schema_id, values[2][5:])
    assert [values[1], values[3]] == [bad[0], bad[2]]
    decoder = FormatDecoder("events", "avro", registry, 1_000_000)
    indices, decoded, failures = decoder.decode(values)
    assert list(indices) == [0, 2]
    assert decoded[0] == {
        **event("e1", "u1", 1_000),
        "amount": None,
        "currency": None,
        "props": None,
    }
    assert [index for index, _ in failures] == [1, 3]


def test_avro_decodes_the_bench_events_as_json_does() -> None:
    values = [m.value for m in generate_messages(2_000, users=100, seed=codec.INPUT_SEED)]
    registry = MemoryRegistry()
    avro, unencodable = codec.avro_copy(values, encoder_for("e", "avro", EVENT_AVSC, registry))
    assert unencodable == 0
    assert sum(map(len, avro)) < sum(map(len, values))
    json_events = TopicDecoder("e", schema_path("event", 1), 1_000_000).decode(values)[1]
    avro_events = FormatDecoder("e", "avro", registry, 1_000_000).decode(avro)[1]
    # Absent optional fields decode as None; props' integers stay integers.
    present = [{k: v for k, v in e.items() if v is not None} for e in avro_events]
    assert present == json_events


def test_codec_measures_every_way_on_a_few_events() -> None:
    out = codec.measure_codecs(500, users=50, repeats=2)
    assert out["events"] == out["json_valid"] == out["avro_valid"] == 500
    assert out["avro_unencodable"] == 0
    assert 0 < out["aggregates"] <= 500
    for name in ("json_decode_us", "avro_decode_us", "avro_encode_us", "json_encode_us"):
        assert out[name] > 0, name
    assert 0 < out["avro_bytes_per_event"] < out["json_bytes_per_event"]
    assert out["seconds"] > 0


def test_codec_aggregates_are_the_reference_records() -> None:
    events = [
        event("a", "u1", 1_000),
        {**purchase("b", "u1", 2_000, 3.0)},
        {**purchase("b", "u1", 2_000, 3.0)},
        purchase("c", "u1", MINUTE, 5.0),
    ]
    assert codec.aggregates(events) == [
        {
            "key": "u1",
            "window_start": 0,
            "window_end": MINUTE,
            "count": 2,
            "sum": 3.0,
            "min": 3.0,
            "max": 3.0,
            "final": True,
        },
        {
            "key": "u1",
            "window_start": MINUTE,
            "window_end": 2 * MINUTE,
            "count": 1,
            "sum": 5.0,
            "min": 5.0,
            "max": 5.0,
            "final": True,
        },
    ]


def run(scenario: str, rate: float, round_: int = 1) -> BenchResult:
    return BenchResult(scenario, int(rate), 1.0, int(rate) * 100, 1.0, 50.0, {}, round_)


def test_pipeline_avro_is_compared_with_pipeline_alo_of_its_round() -> None:
    rows = {
        str(row["scenario"]): row
        for row in summarise(
            [
                run("limit", 400_000, 1),
                run("pipeline-alo", 100_000, 1),
                run("pipeline-avro", 50_000, 1),
                run("limit-again", 400_000, 1),
                run("limit", 200_000, 2),
                run("pipeline-alo", 60_000, 2),
                run("pipeline-avro", 45_000, 2),
                run("limit-again", 200_000, 2),
                run("codec", 10_000, 2),
            ]
        )
    }
    avro = rows["pipeline-avro"]
    assert avro["ratio_to_limit"] == pytest.approx((0.125 + 0.225) / 2)
    assert avro["ratio_to_pipeline_alo"] == pytest.approx((0.5 + 0.75) / 2)
    assert "ratio_to_pipeline_alo" not in rows["pipeline-alo"]
    assert rows["codec"]["ratio_to_limit"] is None


def test_pipeline_avro_without_pipeline_alo_has_no_ratio_to_it() -> None:
    rows = summarise([run("limit", 400_000), run("pipeline-avro", 50_000)])
    assert rows[1]["ratio_to_pipeline_alo"] is None
