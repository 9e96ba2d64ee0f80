"""Versioned JSON Schemas for messages, and a backward-compatibility check between versions.

Schema files live at ``<name>/v<version>.json`` under the schema directory: the repository's
top-level ``schemas/`` when running from a checkout, or ``streams/_schemas/`` inside an
installed wheel (see ``[tool.hatch.build.targets.wheel.force-include]`` in ``pyproject.toml``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from streams.errors import StreamsError

Validator = Callable[[Any], Any]


def schemas_dir() -> Path:
    """The directory holding the schema files: the packaged copy if present, else the checkout's."""
    # This module's own directory, not ``streams.__file__``: importing the package would
    # import the public API into every module that reads a schema (the core among them).
    packaged = Path(__file__).parent / "_schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).parents[1] / "schemas"


def schema_path(name: str = "event", version: int = 1) -> Path:
    """Where schema ``name`` version ``version`` is stored (whether or not it exists)."""
    return schemas_dir() / name / f"v{version}.json"


@functools.cache
def _parsed(name: str, version: int) -> dict[str, Any]:
    path = schema_path(name, version)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        known = sorted(p.stem for p in path.parent.glob("v*.json")) if path.parent.is_dir() else []
        raise StreamsError(
            f"no schema {name!r} version {version} at {path}; known versions: "
            f"{', '.join(known) or 'none'}"
        ) from None
    try:
        schema = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StreamsError(f"schema file {path} is not valid JSON: {exc}; fix the file") from None
    if not isinstance(schema, dict):
        raise StreamsError(f"schema file {path} does not hold a JSON object; fix the file")
    return schema


def load_schema(name: str = "event", version: int = 1) -> dict[str, Any]:
    """Schema ``name`` version ``version`` as a dict (a fresh copy: callers may mutate it)."""
    return copy.deepcopy(_parsed(name, version))


def validator(name: str = "event", version: int = 1) -> Validator:
    """The compiled validator for a schema: returns its argument if valid, else raises
    ``fastjsonschema.JsonSchemaValueException``. Compiled on first use, then cached.

    fastjsonschema implements draft-07; every keyword our schemas use means the same in
    draft 2020-12, which is what the files declare.
    """
    return _compiled(name, version)


@functools.cache
def _compiled(name: str, version: int) -> Validator:
    return compile_schema(load_schema(name, version), source=str(schema_path(name, version)))


def compile_schema(schema: dict[str, Any], *, source: str = "schema") -> Validator:
    """Compile ``schema``; a malformed schema raises :class:`StreamsError` naming ``source``."""
    try:
        return fastjsonschema.compile(schema)
    # Besides JsonSchemaDefinitionException, malformed schemas surface as whatever the code
    # generator trips over (AttributeError, re.error, ...); all mean the same to the user.
    except Exception as exc:
        raise StreamsError(f"{source} is not a valid JSON Schema: {exc}; fix it") from None


# Keywords that never change which instances validate.
ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "$anchor",
        "title",
        "description",
        "examples",
        "default",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)
# A larger value accepts less.
_LOWER_BOUNDS = ("minLength", "minimum", "exclusiveMinimum", "minItems", "minProperties")
# A smaller value accepts less.
_UPPER_BOUNDS = ("maxLength", "maximum", "exclusiveMaximum", "maxItems", "maxProperties")
# Any addition or change may reject old values.
_EXACT = ("pattern", "format")
_ANALYSED = frozenset(
    {
        "type",
        "enum",
        "const",
        "required",
        "properties",
        "additionalProperties",
        "items",
        "multipleOf",
        *_LOWER_BOUNDS,
        *_UPPER_BOUNDS,
        *_EXACT,
    }
)
# Keywords outside the analysed set are treated as opaque; dropping one only removes a
# constraint, except these, which also shield values from a neighbouring keyword
# (additionalProperties, items) or hold what a $ref points at.
_REMOVAL_MAY_NARROW = frozenset({"patternProperties", "prefixItems", "$defs", "definitions"})


def check_backward_compatible(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why a consumer using schema ``new`` may fail to read data written under ``old``.

    An empty list means compatible. The check is conservative: a change to a keyword it does
    not analyse (``if``/``then``, ``allOf``, ``$ref``, ...) is reported for review rather than
    assumed safe. One deliberate exception: adding a new optional property is accepted as
    compatible even when ``old`` allowed extra fields, on the convention that producers do not
    send undeclared fields whose name a later version gives a different meaning.
    """
    return list(_compare(old, new, ""))


def _show(path: str) -> str:
    return path or "(root)"


def _unanalysed(path: str, keyword: str) -> str:
    return f"{_show(path)}: {keyword!r} changed and this check cannot analyse it; review by hand"


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare(old: Any, new: Any, path: str) -> Iterator[str]:
    if old is False or new is True:
        return
    if new is False:
        yield f"{_show(path)}: no longer accepts any value"
        return
    old = {} if old is True else old
    if not isinstance(old, dict) or not isinstance(new, dict):
        yield f"{_show(path)}: not a schema object in both versions"
        return
    yield from _compare_type(old, new, path)
    yield from _compare_enum(old, new, path)
    yield from _compare_bounds(old, new, path)
    yield from _compare_object(old, new, path)
    if "items" in new:
        before, after = old.get("items", True), new["items"]
        if isinstance(before, list) or isinstance(after, list):
            # Draft-04 tuple form: positional schemas are not analysed.
            if _json(before) != _json(after):
                yield _unanalysed(path, "items")
        else:
            yield from _compare(before, after, f"{path}[]")
    for keyword in sorted((old.keys() | new.keys()) - _ANALYSED - ANNOTATIONS):
        if _json(old.get(keyword)) == _json(new.get(keyword)):
            continue
        if keyword not in new and keyword not in _REMOVAL_MAY_NARROW:
            continue
        yield _unanalysed(path, keyword)


def _types(schema: dict[str, Any]) -> set[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    return {declared} if isinstance(declared, str) else set(declared)


def _compare_type(old: dict[str, Any], new: dict[str, Any], path: str) -> Iterator[str]:
    new_types = _types(new)
    if new_types is None:
        return
    old_types = _types(old)
    if old_types is None:
        yield f"{_show(path)}: type restricted to {', '.join(sorted(new_types))}"
        return
    # An integer is a number, so widening integer to number drops nothing.
    accepted = new_types | ({"integer"} if "number" in new_types else set())
    dropped = old_types - accepted
    if dropped:
        yield (
            f"{_show(path)}: type changed from {', '.join(sorted(old_types))} to "
            f"{', '.join(sorted(new_types))}; {', '.join(sorted(dropped))} no longer accepted"
        )


def _allowed_values(schema: dict[str, Any]) -> dict[str, Any] | None:
    if "const" in schema:
        values: Iterable[Any] = [schema["const"]]
    elif "enum" in schema:
        values = schema["enum"]
    else:
        return None
    return {_json(value): value for value in values}


def _compare_enum(old: dict[str, Any], new: dict[str, Any], path: str) -> Iterator[str]:
    new_values = _allowed_values(new)
    if new_values is None:
        return
    old_values = _allowed_values(old)
    if old_values is None:
        yield f"{_show(path)}: values restricted to {', '.join(new_values)}"
        return
    dropped = [text for text in old_values if text not in new_values]
    if dropped:
        yield f"{_show(path)}: enum narrowed; no longer accepts {', '.join(dropped)}"


def _compare_bounds(old: dict[str, Any], new: dict[str, Any], path: str) -> Iterator[str]:
    for keyword in (*_LOWER_BOUNDS, *_UPPER_BOUNDS, *_EXACT, "multipleOf"):
        if keyword not in new:
            continue
        after = new[keyword]
        if keyword not in old:
            yield f"{_show(path)}: {keyword} {_json(after)} added"
            continue
        before = old[keyword]
        if _json(before) == _json(after):
            continue
        if _is_number(before) and _is_number(after):
            if keyword in _LOWER_BOUNDS and after <= before:
                continue
            if keyword in _UPPER_BOUNDS and after >= before:
                continue
            if keyword == "multipleOf" and after != 0 and (before / after).is_integer():
                continue
        verb = "changed" if keyword in _EXACT else "tightened"
        yield f"{_show(path)}: {keyword} {verb} from {_json(before)} to {_json(after)}"


def _compare_object(old: dict[str, Any], new: dict[str, Any], path: str) -> Iterator[str]:
    prefix = f"{path}." if path else ""
    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    old_extra = old.get("additionalProperties", True)
    new_extra = new.get("additionalProperties", True)

    newly_required = [n for n in new.get("required", []) if n not in old.get("required", [])]
    for name in newly_required:
        prop = new_props.get(name)
        if not (isinstance(prop, dict) and "default" in prop):
            yield f"{prefix}{name}: newly required with no default"

    for name, new_prop in new_props.items():
        if name in old_props:
            yield from _compare(old_props[name], new_prop, prefix + name)
    for name, old_prop in old_props.items():
        if name not in new_props and new_extra is not True:
            if new_extra is False:
                yield f"{prefix}{name}: property removed while additionalProperties is false"
            else:
                yield from _compare(old_prop, new_extra, prefix + name)

    if new_extra is False and old_extra is not False:
        yield f"{_show(path)}: additionalProperties turned false"
    elif new_extra is not False:
        yield from _compare(old_extra, new_extra, f"{prefix}*")
