"""The hot-path decoder: reasons, pitfalls, never raising, and agreement with the schema."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import fastjsonschema
import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streams.schemas import load_schema, validator
from streams.validation import (
    EVENT_TYPES,
    MAX_MESSAGE_BYTES,
    TOMBSTONE,
    check_event,
    decode_event,
)

GOOD: dict[str, Any] = {
    "event_id": "e-1",
    "type": "purchase",
    "user_id": "user-1",
    "ts": 1_735_689_600_000,
    "amount": 19.99,
    "currency": "EUR",
    "props": {"items": 2},
}


def raw(**changes: Any) -> bytes:
    """GOOD with fields replaced, or removed where the value is ``...``, as JSON bytes."""
    event = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in event.items() if v is not ...})


def reason_of(data: bytes | None) -> str | None:
    event, reason = decode_event(data)
    assert (event is None) != (reason is None)
    return reason


def test_valid_event_decodes_to_its_fields() -> None:
    assert decode_event(raw()) == (GOOD, None)


@pytest.mark.parametrize(
    "data",
    [
        raw(type="page_view", amount=..., currency=..., props=...),
        raw(type="refund", amount=0),
        raw(amount=0.0, ts=0),
        raw(amount=-0.0),
        raw(event_id="x" * 64, user_id="ü" * 128),
        raw(type="add_to_cart", amount=...),
        raw(extra={"anything": [1, None]}, props={}),
        raw(ts=2**64 - 1),
        b' {"event_id":"e","type":"refund","user_id":"u","ts":1,"amount":1} ',
    ],
    ids=lambda data: data.decode(errors="replace")[:40],
)
def test_valid_events(data: bytes) -> None:
    assert reason_of(data) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, TOMBSTONE),
        (b"", "not valid JSON: Input is a zero-length"),
        (b"{", "not valid JSON: "),
        (b"[1, 2]", "not a JSON object (got an array)"),
        (b'"event"', 'not a JSON object (got "event")'),
        (b"null", "not a JSON object (got null)"),
        (raw(event_id=...), "event_id: required field is missing"),
        (raw(event_id=""), 'event_id: must be a string of 1 to 64 characters (got "")'),
        (raw(event_id="x" * 65), "event_id: must be a string of 1 to 64 characters (got a str"),
        (raw(event_id=7), "event_id: must be a string of 1 to 64 characters (got 7)"),
        (raw(type=...), "type: required field is missing"),
        (raw(type="click"), "type: must be one of page_view, add_to_cart, purchase, refund"),
        (raw(type=["purchase"]), "type: must be one of"),
        (raw(user_id=...), "user_id: required field is missing"),
        (raw(user_id="u" * 129), "user_id: must be a string of 1 to 128 characters"),
        (raw(user_id=None), "user_id: must be a string of 1 to 128 characters (got null)"),
        (raw(ts=...), "ts: required field is missing"),
        (raw(ts=-1), "ts: must be an integer >= 0 (got -1)"),
        (raw(ts=True), "ts: must be an integer >= 0 (got true)"),
        (raw(ts=1.5), "ts: must be an integer >= 0 (got 1.5)"),
        (raw(ts=-5.0), "ts: must be an integer >= 0 (got -5.0)"),
        (raw(ts="1735689600000"), 'ts: must be an integer >= 0 (got "1735689600000")'),
        (raw(ts="2025-01-01T00:00:00Z"), "ts: must be an integer >= 0 (got a string of 20 char"),
        (raw(amount=...), "amount: required when type is purchase"),
        (raw(type="refund", amount=...), "amount: required when type is refund"),
        (raw(amount=-0.01), "amount: must be a number >= 0 (got -0.01)"),
        (raw(amount=False), "amount: must be a number >= 0 (got false)"),
        (raw(amount="19.99"), 'amount: must be a number >= 0 (got "19.99")'),
        (raw(amount=None), "amount: must be a number >= 0 (got null)"),
        (raw(type="page_view", amount=-1), "amount: must be a number >= 0 (got -1)"),
        (raw(currency="eur"), 'currency: must be a 3-letter upper-case code like EUR (got "eur")'),
        (raw(currency="EURO"), "currency: must be a 3-letter"),
        (raw(currency="E1R"), "currency: must be a 3-letter"),
        (raw(currency="ÉUR"), "currency: must be a 3-letter"),
        (raw(currency="EUR\n"), "currency: must be a 3-letter"),
        (raw(currency=978), "currency: must be a 3-letter upper-case code like EUR (got 978)"),
        (raw(props=[1]), "props: must be an object (got an array)"),
        (raw(props="x"), 'props: must be an object (got "x")'),
    ],
)
def test_invalid_messages_say_which_field_and_rule(data: bytes | None, reason: str) -> None:
    got = reason_of(data)
    assert got is not None
    assert got.startswith(reason)
    assert "\n" not in got


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe{}", "str is not valid UTF-8"),
        (raw()[:-1] + b',"amount":NaN}', "unexpected character"),
        (raw()[:-1] + b',"amount":Infinity}', "unexpected character"),
        (raw()[:-1] + b',"amount":1e999}', "number is infinity"),
        (b'{"a":' * 1100 + b"1" + b"}" * 1100, "depth limit exceeded"),
        (b"[" * 5000, "depth limit exceeded"),
        (b'"\\ud800"', "surrogate"),
        (b"\xef\xbb\xbf" + raw(), "byte order mark"),
    ],
)
def test_hostile_bytes_are_reported_not_raised(data: bytes, reason: str) -> None:
    got = reason_of(data)
    assert got is not None
    assert got.startswith("not valid JSON: ")
    assert reason in got


def test_size_limit_is_checked_before_decoding() -> None:
    data = b" " * 2_000_000
    assert reason_of(data) == "message of 2000000 bytes exceeds the 1048576-byte limit"
    assert reason_of(raw()) is None
    assert decode_event(raw(), max_bytes=10)[1] == (
        f"message of {len(raw())} bytes exceeds the 10-byte limit"
    )
    assert reason_of(raw(props={"pad": "x" * (MAX_MESSAGE_BYTES - 200)})) is None


def test_integral_float_ts_is_an_integer_and_becomes_an_int() -> None:
    event, reason = decode_event(raw(ts=5.0))
    assert reason is None
    assert event is not None
    assert event["ts"] == 5
    assert type(event["ts"]) is int
    assert decode_event(b'{"event_id":"e","type":"page_view","user_id":"u","ts":17e11}')[0] == {
        "event_id": "e",
        "type": "page_view",
        "user_id": "u",
        "ts": 1_700_000_000_000,
    }


def test_integers_beyond_64_bits_are_still_integers() -> None:
    # orjson turns them into floats; an integral float is a JSON Schema integer.
    event, reason = decode_event(raw(ts=...)[:-1] + b',"ts":100000000000000000000000}')
    assert reason is None
    assert event is not None
    assert event["ts"] == int(1e23)


def test_duplicate_keys_last_one_wins() -> None:
    assert reason_of(raw()[:-1] + b',"ts":-1}') == "ts: must be an integer >= 0 (got -1)"
    assert reason_of(raw(ts=-1)[:-1] + b',"ts":1}') is None


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_are_rejected_even_though_json_cannot_carry_them(bad: float) -> None:
    assert check_event({**GOOD, "amount": bad}) is not None
    assert check_event({**GOOD, "ts": bad}) is not None


@given(st.binary(max_size=300))
@example(b"\x00")
@example(b"{}")
@example(b"[" * 2000)
def test_any_bytes_decode_without_raising(data: bytes) -> None:
    event, reason = decode_event(data)
    assert (event is None) != (reason is None)


# --- Agreement with the schema ------------------------------------------------------------


def _ecma_pattern(
    checker: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    # JSON Schema patterns are ECMA 262, where "$" matches only at the very end; jsonschema
    # uses Python's re.search, where "$" also matches before a final "\n".
    anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
    if checker.is_type(instance, "string") and not re.search(anchored, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_JSONSCHEMA = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)(load_schema("event", 1))


def _schema_verdicts(data: bytes) -> tuple[bool, bool]:
    """Whether fastjsonschema and jsonschema accept the decoded ``data``."""
    try:
        validator("event", 1)(orjson.loads(data))
        fast = True
    except fastjsonschema.JsonSchemaValueException:
        fast = False
    return fast, _JSONSCHEMA.is_valid(orjson.loads(data))


def _assert_agrees(event: Any) -> bool:
    data = orjson.dumps(event)
    reason = decode_event(data)[1]
    fast, reference = _schema_verdicts(data)
    assert fast == reference, event
    assert (reason is None) == fast, (event, reason)
    return fast


ABSENT = object()
# Per field: boundary values, valid and not, that each side must judge alike.
EDGES: dict[str, list[Any]] = {
    "event_id": ["", "a", " ", "\n", "é" * 64, "é" * 65, "a" * 64, 0, None, True, [], {}],
    "type": [
        *EVENT_TYPES,
        "click",
        "",
        "Purchase",
        "purchase ",
        "page_view\n",
        None,
        1,
        ["refund"],
    ],
    "user_id": ["", "u", "é" * 128, "é" * 129, "\U0001f600" * 128, 12345, None, False],
    "ts": [
        *(0, 1, -1, 5.0, 5.5, -0.0, -1.0, -0.5, 0.1, 1.7e12, 1e300, 2**64 - 1, -(2**63)),
        *(True, False, "1", None, [0]),
    ],
    "amount": [
        *(0, 0.0, -0.0, -0.01, -1e-300, 5e-324, 1e308, -1, 2**64 - 1, -(2**63)),
        *(True, False, "1", None, []),
    ],
    "currency": [
        *("EUR", "eur", "Eur", "EU", "EURO", "EUR\n", "\nEUR", "ÉUR", "ＥＵＲ", "ΑΒΓ", "ǅAB"),
        *("E R", "E1R", "", None, 978, ["EUR"]),
    ],
    "props": [{}, {"a": [1, None]}, [], None, "x", 1, True],
}


@pytest.mark.parametrize("kind", EVENT_TYPES)
@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field, values in EDGES.items() for value in [ABSENT, *values]],
)
def test_hand_coded_validator_agrees_with_the_schema_on_edges(
    kind: str, field: str, value: Any
) -> None:
    event = {**GOOD, "type": kind}
    if value is ABSENT:
        del event[field]
    else:
        event[field] = value
    _assert_agrees(event)


_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(
    st.none() | st.booleans() | _ints | _floats | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
# Per field: values the schema accepts, and wider ranges to swap in (valid or not).
_VALID: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.text(min_size=1, max_size=64),
    "type": st.sampled_from(EVENT_TYPES),
    "user_id": st.text(min_size=1, max_size=128),
    "ts": st.integers(min_value=0, max_value=2**64 - 1),
    "amount": st.integers(min_value=0, max_value=2**64 - 1)
    | st.floats(min_value=0, allow_infinity=False),
    "currency": st.sampled_from(["EUR", "USD", "JPY", "GBP"]),
    "props": st.dictionaries(st.text(max_size=3), _json, max_size=3),
}
_WIDER: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.text(max_size=66),
    "type": st.text(alphabet="_acdeuprhfntwgiov", max_size=11),
    "user_id": st.text(max_size=130),
    "ts": _ints | _floats,
    "amount": _ints | _floats,
    "currency": st.text(alphabet="ABZaz1 \nÉＥ", max_size=4),
    "props": _json,
}


@st.composite
def near_valid_events(draw: st.DrawFn) -> Any:
    """A valid event with up to three fields dropped or changed, or now and then any JSON
    value at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(_json)
    event: dict[str, Any] = {
        name: draw(strategy)
        for name, strategy in _VALID.items()
        if name in ("event_id", "type", "user_id", "ts") or draw(st.booleans())
    }
    if event["type"] in ("purchase", "refund") and "amount" not in event:
        event["amount"] = draw(_VALID["amount"])
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(list(EDGES)))
        change = draw(st.sampled_from(["edge", "edge", "wider", "drop", "any", "extra"]))
        if change == "edge":
            event[name] = draw(st.sampled_from(EDGES[name]))
        elif change == "wider":
            event[name] = draw(_WIDER[name])
        elif change == "drop":
            event.pop(name, None)
        elif change == "any":
            event[name] = draw(_json)
        else:
            event[draw(st.text(max_size=8))] = draw(_json)
    return event


@settings(max_examples=700, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(near_valid_events())
def test_hand_coded_validator_agrees_with_the_schema(event: Any) -> None:
    _assert_agrees(event)


def test_the_agreement_test_sees_both_verdicts() -> None:
    """Guards the strategy above against drifting into all-valid or all-invalid events."""
    verdicts: list[bool] = []

    @settings(max_examples=200, database=None, deadline=None)
    @given(near_valid_events())
    def collect(event: Any) -> None:
        verdicts.append(decode_event(orjson.dumps(event))[1] is None)

    collect()
    assert 0.2 < sum(verdicts) / len(verdicts) < 0.8
