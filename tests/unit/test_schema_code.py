"""The compiled schema check answers exactly as fastjsonschema does, on random schemas and
values (both ways: it neither accepts what fastjsonschema rejects, nor the reverse)."""

from __future__ import annotations

from typing import Any

import fastjsonschema
import orjson
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from streams.core.schema_code import compile_check
from streams.schemas import load_schema

names = st.sampled_from(["a", "b", "c", "n", "type"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False),
    st.just(2.0),
    st.text("ab$ ", max_size=4),
    st.sampled_from(["x", "y", "page_view"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=4),
    max_leaves=10,
)
types = st.sampled_from(["string", "integer", "number", "boolean", "object", "array", "null"])


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda t: {"type": t}, types | st.lists(types, min_size=1, max_size=3)),
        st.builds(lambda e: {"enum": e}, st.lists(st.sampled_from(["x", "y", None]), min_size=1)),
        st.builds(lambda c: {"const": c}, st.sampled_from(["x", None])),
        st.builds(
            lambda lo, hi: {"minLength": lo, "maxLength": hi}, st.integers(0, 3), st.integers(0, 4)
        ),
        st.builds(lambda p: {"pattern": p}, st.sampled_from(["^a", "b$", "^[ab]+$", "\\$"])),
        st.builds(
            lambda k, x: {k: x},
            st.sampled_from(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]),
            st.integers(-3, 3) | st.floats(-3, 3, allow_nan=False),
        ),
        st.just({}),
        st.booleans(),
    )


schemas = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.builds(
            lambda props, req, extra: {
                "type": "object",
                "properties": props,
                "required": req,
                "additionalProperties": extra,
            },
            st.dictionaries(names, inner, max_size=3),
            st.lists(names, max_size=2, unique=True),
            st.booleans() | inner,
        ),
        st.builds(lambda i, lo: {"items": i, "minItems": lo}, inner, st.integers(0, 2)),
        st.builds(lambda a, b, c: {"if": a, "then": b, "else": c}, inner, inner, inner),
        st.builds(lambda a, b: {"if": a, "then": b}, inner, inner),
        st.builds(
            lambda k, parts: {k: parts},
            st.sampled_from(["allOf", "anyOf", "oneOf"]),
            st.lists(inner, min_size=1, max_size=3),
        ),
        st.builds(lambda x: {"not": x}, inner),
        st.builds(
            lambda lo, hi: {"minProperties": lo, "maxProperties": hi},
            st.integers(0, 2),
            st.integers(0, 3),
        ),
    ),
    max_leaves=8,
)


def _accepts(validate: Any, value: Any) -> bool:
    try:
        validate(value)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


@settings(max_examples=600, deadline=None)
@given(schemas, st.lists(values, min_size=1, max_size=8))
def test_the_compiled_check_agrees_with_fastjsonschema(schema: Any, docs: list[Any]) -> None:
    check = compile_check(schema)
    assert check is not None, schema
    try:
        validate = fastjsonschema.compile(schema, use_default=False)
    except fastjsonschema.JsonSchemaDefinitionException:
        assume(False)  # fastjsonschema refuses some unsatisfiable schemas; so does streams
    for doc in docs:
        assert check(doc) == _accepts(validate, doc), (schema, doc)


def test_the_event_schema_compiles_and_agrees_on_generated_events() -> None:
    from streams.generator import generate_messages

    schema = load_schema("event", 1)
    check = compile_check(schema)
    assert check is not None
    validate = fastjsonschema.compile(schema, use_default=False)
    for message in generate_messages(5_000, seed=4, bad_ratio=0.3):
        try:
            value = orjson.loads(message.value)
        except orjson.JSONDecodeError:
            continue
        assert check(value) == _accepts(validate, value), value


def test_keywords_it_does_not_implement_leave_it_to_fastjsonschema() -> None:
    assert compile_check({"type": "string", "format": "email"}) is None
    assert compile_check({"$ref": "#/definitions/x"}) is None
    assert compile_check({"enum": [1, True]}) is None
    assert compile_check({"patternProperties": {"^a": {}}}) is None
