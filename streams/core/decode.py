"""Decoding and validating a topic's messages, a chunk at a time.

A topic without a schema accepts any UTF-8 JSON object. A topic with one validates every
value against it, compiled once (fastjsonschema). The reference pipeline's schema
(``schemas/event/v1.json``) is recognised and checked by the hand-written validator of
:mod:`streams.validation`, several times faster, which also tells the compiled loop which
fields it need not check again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from streams.core.compile import NONE, Guarantees
from streams.core.schema_code import Check, compile_check
from streams.errors import DeclarationError
from streams.validation import TOMBSTONE, decode_batch, describe_value

# Keywords of JSON Schema 2020-12 that the compiled validator does not implement: a schema
# using them is refused rather than half-checked.
UNSUPPORTED_KEYWORDS = frozenset(
    {
        "prefixItems",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedProperties",
        "unevaluatedItems",
        "$dynamicRef",
        "$dynamicAnchor",
        "minContains",
        "maxContains",
    }
)
REFERENCE_GUARANTEES = Guarantees(
    strings=frozenset({"event_id", "type", "user_id"}),
    ints=frozenset({"ts"}),
    numbers=frozenset({"amount"}),
)
Decoded = tuple[Sequence[int], list[Any], list[tuple[int, str]]]


class TopicDecoder:
    """Turns a chunk of message values into ``(indices, values, failures)``: the valid
    values, their indices in the chunk, and ``(index, reason)`` for every invalid one."""

    stage = "validate"  # what the dead letters of its failures carry in error.stage

    def __init__(self, topic: str, schema: Path | None, max_bytes: int) -> None:
        self.topic = topic
        self.max_bytes = max_bytes
        self.guarantees: Guarantees = NONE
        self._validate: Callable[[Any], Any] | None = None
        self._check: Check | None = None
        self._reference = False
        if schema is not None:
            loaded = load_schema(schema)
            if _is_reference(loaded):
                self._reference = True
                self.guarantees = REFERENCE_GUARANTEES
            else:
                self._validate = compile_schema(loaded, schema)
                self._check = compile_check(loaded)

    def decode(self, values: Sequence[bytes | None]) -> Decoded:
        """Decode and validate ``values`` (never raises, whatever the bytes)."""
        if self._reference:
            valid, failures = decode_batch(values, self.max_bytes)
            if not failures:
                return range(len(valid)), valid, []
            rejected = {index for index, _ in failures}
            return [i for i in range(len(values)) if i not in rejected], valid, failures
        return self._decode_each(values)

    def _decode_each(self, values: Sequence[bytes | None]) -> Decoded:
        """Every value decoded, checked and, with a schema, validated: by the compiled check
        (no exception on any path) for the valid majority; fastjsonschema has the final
        word, and the message, on the rest."""
        try:
            if max(map(len, values)) > self.max_bytes:  # type: ignore[arg-type]
                raise ValueError("a message over the size limit")
            decoded = list(map(orjson.loads, values))  # type: ignore[arg-type]
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return self._decode_one_by_one(values)
        check = self._check
        validate = self._validate
        if all(v.__class__ is dict for v in decoded) and (
            validate is None or (check is not None and all(list(map(check, decoded))))
        ):
            return range(len(decoded)), decoded, []
        idxs: list[int] = []
        vals: list[Any] = []
        failures: list[tuple[int, str]] = []
        for index, value in enumerate(decoded):
            reason = self._reason(value, check, validate)
            if reason is None:
                idxs.append(index)
                vals.append(value)
            else:
                failures.append((index, reason))
        return idxs, vals, failures

    @staticmethod
    def _reason(
        value: Any, check: Check | None, validate: Callable[[Any], Any] | None
    ) -> str | None:
        """Why ``value`` is not valid, or None when it is."""
        if value.__class__ is not dict:
            return f"not a JSON object (got {describe_value(value)})"
        if validate is None or (check is not None and check(value)):
            return None
        try:
            validate(value)
        except Exception as exc:
            return _schema_reason(exc)
        return None

    def _decode_one_by_one(self, values: Sequence[bytes | None]) -> Decoded:
        idxs: list[int] = []
        vals: list[Any] = []
        failures: list[tuple[int, str]] = []
        check = self._check
        validate = self._validate
        max_bytes = self.max_bytes
        loads = orjson.loads
        for index, raw in enumerate(values):
            unreadable = unreadable_size(raw, max_bytes)
            if unreadable is not None:
                failures.append((index, unreadable))
                continue
            assert raw is not None
            try:
                value = loads(raw)
            except orjson.JSONDecodeError as exc:
                failures.append((index, f"not valid JSON: {exc}"))
                continue
            reason = self._reason(value, check, validate)
            if reason is None:
                idxs.append(index)
                vals.append(value)
            else:
                failures.append((index, reason))
        return idxs, vals, failures


def unreadable_size(raw: bytes | None, max_bytes: int) -> str | None:
    """Why a message cannot be decoded whatever its format (a tombstone, or over the size
    limit), or None."""
    if raw is None:
        return TOMBSTONE
    if len(raw) > max_bytes:
        return f"message of {len(raw)} bytes exceeds the {max_bytes}-byte limit"
    return None


def _schema_reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())[:1000]


def read_schema_file(path: Path) -> Any:
    """A schema file's JSON; a missing or malformed one raises DeclarationError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DeclarationError(
            f"schema file {path} cannot be read ({exc.strerror}); fix the path"
        ) from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DeclarationError(
            f"schema file {path} is not valid JSON: {exc}; fix the file"
        ) from None


def load_schema(path: Path) -> dict[str, Any]:
    """Read a JSON Schema file; a missing or malformed one raises DeclarationError."""
    schema = read_schema_file(path)
    if not isinstance(schema, dict):
        raise DeclarationError(f"schema file {path} does not hold a JSON object; fix the file")
    return schema


def compile_schema(schema: dict[str, Any], path: Path) -> Callable[[Any], Any]:
    """Compile ``schema``; an invalid or unsupported one raises DeclarationError."""
    import fastjsonschema

    unsupported = sorted(set(_keywords(schema)) & UNSUPPORTED_KEYWORDS)
    if unsupported:
        raise DeclarationError(
            f"schema file {path} uses {', '.join(unsupported)}, which streams' validator "
            "does not implement; express the rule without it"
        )
    try:
        validate: Callable[[Any], Any] = fastjsonschema.compile(schema, use_default=False)
    # A malformed schema surfaces as whatever the code generator trips over.
    except Exception as exc:
        raise DeclarationError(
            f"schema file {path} is not a valid JSON Schema ({exc}); fix it (e.g. an unknown "
            "type: use string, number, integer, boolean, object, array or null)"
        ) from None
    return validate


def _keywords(schema: Any) -> Iterator[str]:
    """Every keyword used anywhere in ``schema`` (not property names, nor literal values)."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            yield key
            if key in _NAMED_SUBSCHEMAS:
                if isinstance(value, dict):
                    for sub in value.values():
                        yield from _keywords(sub)
            elif key not in _LITERALS:
                yield from _keywords(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _keywords(item)


_NAMED_SUBSCHEMAS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_LITERALS = frozenset({"enum", "const", "examples", "default"})


def _is_reference(schema: dict[str, Any]) -> bool:
    from streams.schemas import load_schema as load_packaged

    return schema == load_packaged("event", 1)
