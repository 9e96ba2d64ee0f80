"""Hostile input: fuzzing the decode + validate stage and the core behind it.

Every input must end in exactly one place — downstream (a valid event for the core) or the
dead-letter topic (a one-line reason) — with no exception escaping. Inputs: arbitrary bytes;
JSON built to hurt (deep nesting, huge numbers, huge strings, NaN/Infinity tokens, duplicate
keys, lone surrogates); and byte-level mutations (flips, inserts, deletions, invalid UTF-8)
of valid events. Valid events that come out are then pushed through a
:class:`~streams.core.processor.PartitionProcessor`, whose output must serialise.

``STREAMS_FUZZ_EXAMPLES`` sets the number of inputs per test (default 500; the figures in
docs/RELIABILITY.md come from a longer run). The inputs tried are counted and printed at the
end of the module (``pytest -s``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core import CoreConfig
from streams.core.jsonbytes import dumps
from streams.validation import EVENT_TYPES, decode_batch, decode_event
from tests.unit.core.engine import PartitionProcessor

EXAMPLES = int(os.environ.get("STREAMS_FUZZ_EXAMPLES", "500"))
LIMIT = 64 * 1024  # a small size limit, so that the over-limit path is hit often
TRIED: Counter[str] = Counter()
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def route(raw: bytes | None) -> tuple[str, dict[str, Any] | str]:
    """Where the worker sends a message: ``("downstream", event)`` or ``("dlq", reason)``."""
    event, reason = decode_event(raw, LIMIT)
    assert (event is None) != (reason is None), "exactly one of event and reason"
    if event is not None:
        return "downstream", event
    assert isinstance(reason, str), "a dead letter always has a reason"
    assert reason
    assert "\n" not in reason, f"the reason is one line: {reason!r}"
    assert len(reason) < 400, f"the reason is short, never the input: {reason[:80]!r}..."
    return "dlq", reason


@pytest.fixture(scope="module", autouse=True)
def report_inputs() -> Iterator[None]:
    yield
    total = sum(TRIED.values())
    print(f"\nfuzzed inputs: {total} ({', '.join(f'{k} {v}' for k, v in sorted(TRIED.items()))})")


# --- strategies -------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


def to_json(value: Any) -> bytes:
    """JSON text of ``value``; unlike orjson, the standard library writes integers of any size."""
    return json.dumps(value, ensure_ascii=False).encode()


def _valid_event(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(EVENT_TYPES))
    event: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=64)),
        "type": kind,
        "user_id": draw(st.text(min_size=1, max_size=128)),
        "ts": draw(st.integers(min_value=0, max_value=2**53)),
    }
    if kind in ("purchase", "refund") or draw(st.booleans()):
        event["amount"] = draw(
            st.one_of(
                st.integers(min_value=0, max_value=2**63 - 1),
                st.floats(min_value=0, max_value=1.7e308, allow_nan=False),
            )
        )
    if draw(st.booleans()):
        event["props"] = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
    return event


valid_events = st.composite(_valid_event)()


@st.composite
def hostile_json(draw: st.DrawFn) -> bytes:
    """Text that parsers and validators trip over, around an otherwise valid event."""
    base = to_json(draw(valid_events))
    attack = draw(
        st.sampled_from(
            [
                "deep",
                "huge_number",
                "huge_string",
                "non_finite",
                "duplicate_keys",
                "lone_surrogate",
                "wrong_type",
                "nested_field",
            ]
        )
    )
    TRIED[f"json:{attack}"] += 1
    if attack == "deep":
        depth = draw(st.integers(min_value=1, max_value=5000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        nest = (opener * depth + "0" + closer * depth).encode()
        return base[:-1] + b',"props":{"x":' + nest + b"}}"
    if attack == "huge_number":
        digits = "9" * draw(st.integers(min_value=19, max_value=5000))
        number = draw(st.sampled_from([digits, f"-{digits}", f"1e{digits}", f"0.{digits}e-999"]))
        field = draw(st.sampled_from(["ts", "amount"]))
        return base[:-1] + f',"{field}":{number}}}'.encode()
    if attack == "huge_string":
        size = draw(st.sampled_from([65, 129, 10_000, LIMIT - 100, LIMIT + 1, 3 * LIMIT]))
        field = draw(st.sampled_from(["event_id", "user_id", "currency", "props"]))
        return base[:-1] + f',"{field}":"{"x" * size}"}}'.encode()
    if attack == "non_finite":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "inf", "1e999"]))
        field = draw(st.sampled_from(["ts", "amount"]))
        return base[:-1] + f',"{field}":{token}}}'.encode()
    if attack == "duplicate_keys":
        field = draw(st.sampled_from(["event_id", "type", "user_id", "ts", "amount"]))
        value = to_json(draw(json_values)).decode()
        return base[:-1] + f',"{field}":{value}}}'.encode()
    if attack == "lone_surrogate":
        field = draw(st.sampled_from(["event_id", "user_id"]))
        return base[:-1] + f',"{field}":"a\\ud800b"}}'.encode()
    if attack == "wrong_type":
        field = draw(st.sampled_from(["event_id", "type", "user_id", "ts", "amount", "props"]))
        value = to_json(draw(json_values)).decode()
        return base[:-1] + f',"{field}":{value}}}'.encode()
    field = draw(st.sampled_from(["event_id", "user_id", "ts"]))
    return base[:-1] + f',"{field}":{{"{field}":1}}}}'.encode()


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A valid event's bytes with a few random byte-level edits (breaks UTF-8 often)."""
    data = bytearray(to_json(draw(valid_events)))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "splice"]))
        at = draw(st.integers(min_value=0, max_value=max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
        elif op == "splice":
            data[at:at] = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    TRIED["mutated"] += 1
    return bytes(data)


# --- properties -------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=2000), st.none()))
def test_arbitrary_bytes_end_in_exactly_one_place(raw: bytes | None) -> None:
    TRIED["bytes"] += 1
    route(raw)


@FUZZ
@given(hostile_json())
def test_hostile_json_ends_in_exactly_one_place(raw: bytes) -> None:
    destination, outcome = route(raw)
    if len(raw) > LIMIT:
        assert destination == "dlq"
        assert "limit" in str(outcome)


@FUZZ
@given(mutated_events())
def test_mutated_events_end_in_exactly_one_place(raw: bytes) -> None:
    route(raw)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.builds(to_json, valid_events),
            hostile_json(),
            mutated_events(),
            st.binary(max_size=200),
            st.none(),
            st.just(b"[" * (LIMIT + 1)),
        )
    )
)
def test_the_batch_decoder_routes_every_message_like_the_single_one(
    batch: list[bytes | None],
) -> None:
    """The worker's path (decode_batch) and decode_event agree on every message of a batch,
    whatever else the batch holds: same events in the same order, same reasons and indices."""
    singles = [decode_event(raw, LIMIT) for raw in batch]
    valid, failures = decode_batch(batch, LIMIT)
    assert valid == [event for event, _ in singles if event is not None]
    assert failures == [(i, reason) for i, (_, reason) in enumerate(singles) if reason is not None]


@FUZZ
@given(st.lists(st.one_of(hostile_json(), mutated_events(), st.builds(to_json, valid_events))))
def test_whatever_passes_validation_the_core_processes_and_serialises(batch: list[bytes]) -> None:
    """Valid but odd events (huge amounts, odd unicode ids, far-apart times) never break it."""
    valid = [outcome for d, outcome in map(route, batch) if d == "downstream"]
    assert all(isinstance(e, dict) for e in valid)
    config = CoreConfig(
        window_size_ms=1000,
        window_step_ms=500,
        grace_ms=100,
        idle_timeout_ms=1000,
        dedupe_horizon_ms=10_000,
    )
    processor = PartitionProcessor(config)
    outcome = processor.process(valid, 0, 0)  # type: ignore[arg-type]
    assert len(outcome.late) + len(outcome.duplicates) <= len(valid)
    changelog = processor.drain_changelog()
    emitted = outcome.emitted + processor.tick(2**62, caught_up=True)
    for record in emitted:
        decoded = orjson.loads(dumps(record))  # what the worker writes to the output topic
        assert decoded["key"] == record["key"]
    # The state written so far restores (a crash right after this batch).
    restored = PartitionProcessor(config)
    for key, value in changelog:
        restored.apply_changelog(key, value)
