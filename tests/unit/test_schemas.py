"""Schema files, their loading and compilation, and the backward-compatibility check."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import orjson
import pytest
from click.testing import CliRunner

from streams import schemas
from streams.cli import main
from streams.errors import StreamsError
from streams.schemas import check_backward_compatible, load_schema, validator

REPO = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    schemas._parsed.cache_clear()
    schemas._compiled.cache_clear()
    yield
    schemas._parsed.cache_clear()
    schemas._compiled.cache_clear()


def test_event_v1_is_a_valid_draft_2020_12_schema_with_docs() -> None:
    schema = load_schema("event", 1)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    assert schema["title"]
    assert schema["description"]
    assert all(prop["description"] for prop in schema["properties"].values())
    assert schema["required"] == ["event_id", "type", "user_id", "ts"]


def test_load_schema_returns_a_copy_and_validator_compiles_once() -> None:
    load_schema()["required"].clear()
    assert load_schema()["required"] == ["event_id", "type", "user_id", "ts"]
    assert validator() is validator("event", 1) is validator(name="event", version=1)


EVENT = {"event_id": "e", "type": "page_view", "user_id": "u", "ts": 0}


@pytest.mark.parametrize(
    ("changes", "valid"),
    [
        ({}, True),
        ({"extra": [1], "props": {"a": {}}, "currency": "EUR", "amount": 0}, True),
        ({"type": "purchase"}, False),
        ({"type": "refund", "amount": 0.5}, True),
        ({"type": "add_to_cart"}, True),
        ({"ts": 5.0}, True),
        ({"ts": True}, False),
        ({"amount": -1}, False),
        ({"currency": "EUR\n"}, False),
        ({"event_id": "x" * 65}, False),
        ({"user_id": "x" * 128}, True),
        ({"props": []}, False),
    ],
)
def test_compiled_validator_applies_the_rules(changes: dict[str, Any], valid: bool) -> None:
    check = validator("event", 1)
    try:
        check({**EVENT, **changes})
    except fastjsonschema.JsonSchemaValueException:
        assert not valid
    else:
        assert valid


def test_unknown_schema_version_names_the_known_ones() -> None:
    with pytest.raises(
        StreamsError, match=r"no schema 'event' version 9 at .*; known versions: v1"
    ):
        load_schema("event", 9)


def test_installed_copy_is_preferred_to_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert schemas.schemas_dir() == REPO / "schemas"
    package = tmp_path / "streams"
    (package / "_schemas" / "event").mkdir(parents=True)
    (package / "_schemas" / "event" / "v1.json").write_text('{"title": "installed"}')
    monkeypatch.setattr(schemas, "__file__", str(package / "schemas.py"))
    assert schemas.schemas_dir() == package / "_schemas"
    assert load_schema("event", 1) == {"title": "installed"}


def test_wheel_ships_the_schema_directory_where_it_is_looked_up() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    includes = project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert includes["schemas"] == "streams/_schemas"


def test_broken_schema_file_is_a_streams_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "event").mkdir()
    (tmp_path / "event" / "v1.json").write_text("{nope")
    (tmp_path / "event" / "v2.json").write_text("[]")
    (tmp_path / "event" / "v3.json").write_text('{"type": "strin"}')
    monkeypatch.setattr(schemas, "schemas_dir", lambda: tmp_path)
    with pytest.raises(StreamsError, match="is not valid JSON"):
        load_schema("event", 1)
    with pytest.raises(StreamsError, match="does not hold a JSON object"):
        load_schema("event", 2)
    with pytest.raises(StreamsError, match="is not a valid JSON Schema: Unknown type"):
        validator("event", 3)


# --- Backward compatibility ---------------------------------------------------------------


def with_changes(base: dict[str, Any], path: str, **changes: Any) -> dict[str, Any]:
    """A copy of ``base`` with the subschema at dotted ``path`` updated (None deletes)."""
    new = orjson.loads(orjson.dumps(base))
    node = new
    for part in filter(None, path.split(".")):
        node = node[part]
    for key, value in changes.items():
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return new


V1 = load_schema("event", 1)
PROPS = "properties"


@pytest.mark.parametrize(
    "new",
    [
        V1,
        with_changes(V1, "", title="Event v2", description="New words", **{"$id": "urn:x:v2"}),
        with_changes(V1, PROPS, coupon={"type": "string"}),
        with_changes(V1, PROPS, coupon={"type": "string", "default": ""})
        | {"required": [*V1["required"], "coupon"]},
        with_changes(V1, f"{PROPS}.props", type=None),
        with_changes(V1, PROPS, props=True),
        with_changes(V1, f"{PROPS}.ts", type="number"),
        with_changes(V1, f"{PROPS}.ts", type=["integer", "string"]),
        with_changes(V1, f"{PROPS}.ts", minimum=None),
        with_changes(V1, f"{PROPS}.event_id", maxLength=128, minLength=0),
        with_changes(V1, f"{PROPS}.type", enum=[*V1[PROPS]["type"]["enum"], "signup"]),
        with_changes(V1, f"{PROPS}.currency", pattern=None),
        with_changes(V1, "", additionalProperties=None),
        with_changes(V1, "", required=["event_id", "user_id", "ts"]),
        with_changes(V1, "", **{"if": None, "then": None}),
        with_changes(V1, f"{PROPS}.amount", description="Money, in units of currency."),
    ],
)
def test_compatible_changes(new: dict[str, Any]) -> None:
    assert check_backward_compatible(V1, new) == []


@pytest.mark.parametrize(
    ("new", "reason"),
    [
        (
            with_changes(V1, PROPS, coupon={"type": "string"})
            | {"required": [*V1["required"], "coupon"]},
            "coupon: newly required with no default",
        ),
        (
            with_changes(V1, f"{PROPS}.amount", type="integer"),
            "amount: type changed from number to integer; number no longer accepted",
        ),
        (
            with_changes(V1, f"{PROPS}.ts", type="string"),
            "ts: type changed from integer to string; integer no longer accepted",
        ),
        (
            with_changes(V1, f"{PROPS}.type", enum=["page_view", "purchase", "refund"]),
            'type: enum narrowed; no longer accepts "add_to_cart"',
        ),
        (
            with_changes(V1, f"{PROPS}.user_id", maxLength=64),
            "user_id: maxLength tightened from 128 to 64",
        ),
        (
            with_changes(V1, f"{PROPS}.user_id", minLength=2),
            "user_id: minLength tightened from 1 to 2",
        ),
        (
            with_changes(V1, f"{PROPS}.ts", minimum=1_000_000_000_000),
            "ts: minimum tightened from 0 to 1000000000000",
        ),
        (
            with_changes(V1, f"{PROPS}.amount", maximum=1e6),
            "amount: maximum 1000000.0 added",
        ),
        (
            with_changes(V1, f"{PROPS}.amount", exclusiveMinimum=0),
            "amount: exclusiveMinimum 0 added",
        ),
        (
            with_changes(V1, f"{PROPS}.currency", pattern="^(EUR|USD)$"),
            'currency: pattern changed from "^[A-Z]{3}$" to "^(EUR|USD)$"',
        ),
        (
            with_changes(V1, f"{PROPS}.event_id", pattern="^[a-z0-9-]+$"),
            'event_id: pattern "^[a-z0-9-]+$" added',
        ),
        (
            with_changes(V1, f"{PROPS}.event_id", format="uuid"),
            'event_id: format "uuid" added',
        ),
        (
            with_changes(V1, "", additionalProperties=False),
            "(root): additionalProperties turned false",
        ),
        (
            with_changes(V1, f"{PROPS}.props", additionalProperties={"type": "string"}),
            "props.*: type restricted to string",
        ),
        (
            with_changes(V1, f"{PROPS}.type", const="page_view", enum=None),
            'type: enum narrowed; no longer accepts "add_to_cart", "purchase", "refund"',
        ),
        (
            with_changes(V1, f"{PROPS}.currency", enum=["EUR", "USD"]),
            'currency: values restricted to "EUR", "USD"',
        ),
        (
            with_changes(V1, "then", required=["amount", "currency"]),
            "(root): 'then' changed and this check cannot analyse it; review by hand",
        ),
        (
            with_changes(V1, "", allOf=[{"required": ["props"]}]),
            "(root): 'allOf' changed and this check cannot analyse it; review by hand",
        ),
        (
            with_changes(V1, PROPS, props=False),
            "props: no longer accepts any value",
        ),
    ],
)
def test_incompatible_changes_name_the_field_and_rule(new: dict[str, Any], reason: str) -> None:
    assert check_backward_compatible(V1, new) == [reason]


def test_removed_property_with_closed_objects() -> None:
    old = with_changes(V1, "", additionalProperties=False)
    new = with_changes(old, PROPS, currency=None)
    assert check_backward_compatible(old, new) == [
        "currency: property removed while additionalProperties is false"
    ]
    open_again = with_changes(new, "", additionalProperties={"type": "string"})
    assert check_backward_compatible(old, open_again) == []
    assert check_backward_compatible(V1, with_changes(V1, PROPS, currency=None)) == []


def test_nested_objects_and_arrays_are_checked_with_their_path() -> None:
    old = with_changes(
        V1,
        f"{PROPS}.props",
        properties={
            "cart": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "tags": {"items": {"type": "string"}}},
            }
        },
    )
    new = with_changes(old, f"{PROPS}.props.properties.cart.properties.sku", type="integer")
    new = with_changes(new, f"{PROPS}.props.properties.cart.properties.tags.items", maxLength=8)
    new = with_changes(new, f"{PROPS}.props.properties.cart", required=["sku"])
    assert check_backward_compatible(old, new) == [
        "props.cart.sku: newly required with no default",
        "props.cart.sku: type changed from string to integer; string no longer accepted",
        "props.cart.tags[]: maxLength 8 added",
    ]


def test_boolean_schemas() -> None:
    assert check_backward_compatible({"items": False}, {"items": {"type": "string"}}) == []
    assert check_backward_compatible({"items": True}, {"items": {"type": "string"}}) == [
        "[]: type restricted to string"
    ]
    assert check_backward_compatible({"type": "string"}, {"not": {"type": "string"}}) == [
        "(root): 'not' changed and this check cannot analyse it; review by hand"
    ]


# --- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def schema_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    old = tmp_path / "v1.json"
    same = tmp_path / "same.json"
    narrower = tmp_path / "v2.json"
    old.write_bytes(orjson.dumps(V1))
    same.write_bytes(orjson.dumps(with_changes(V1, "", title="Event v1 again")))
    closed = with_changes(V1, "", additionalProperties=False)
    narrower.write_bytes(orjson.dumps(with_changes(closed, f"{PROPS}.user_id", maxLength=64)))
    return old, same, narrower


def test_cli_check_compatible(schema_files: tuple[Path, Path, Path]) -> None:
    old, same, _ = schema_files
    result = CliRunner().invoke(main, ["schemas", "check", str(old), str(same)])
    assert (result.exit_code, result.output) == (0, "compatible\n")
    result = CliRunner().invoke(main, ["schemas", "check", "--json", str(old), str(same)])
    assert result.exit_code == 0
    assert orjson.loads(result.output) == {"compatible": True, "reasons": []}


def test_cli_check_incompatible(schema_files: tuple[Path, Path, Path]) -> None:
    old, _, narrower = schema_files
    result = CliRunner().invoke(main, ["schemas", "check", str(old), str(narrower)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "user_id: maxLength tightened from 128 to 64",
        "(root): additionalProperties turned false",
    ]
    result = CliRunner().invoke(main, ["schemas", "check", str(old), str(narrower), "--json"])
    assert result.exit_code == 1
    assert orjson.loads(result.output) == {
        "compatible": False,
        "reasons": [
            "user_id: maxLength tightened from 128 to 64",
            "(root): additionalProperties turned false",
        ],
    }


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{oops", "is not valid JSON"),
        (b"[]", "holds no JSON object"),
        (b'{"properties": {"a": {"minLength": "x"}}}', "is not a valid JSON Schema"),
    ],
)
def test_cli_check_rejects_files_that_are_not_schemas(
    tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    result = CliRunner().invoke(main, ["schemas", "check", str(bad), str(bad)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ")
    assert message in result.output
    assert len(result.output.splitlines()) == 1


def test_cli_check_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schemas", "check", str(tmp_path / "nope.json"), "x"])
    assert result.exit_code == 2
    assert "does not exist" in result.output
