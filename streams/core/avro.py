"""One Avro schema's codec: payload bytes to the JSON values the compiled loop sees, and back.

fastavro (C-backed) reads and writes; this module decides what Avro values look like as JSON
(docs/decisions/0021-schema-registry.md):

=========================  =============================================================
Avro                       JSON value
=========================  =============================================================
record, map                object
array                      array
union                      the branch's value (no type wrapper)
enum                       string
bytes, fixed               standard base64 string, with padding
timestamp-millis/-micros   integer: ms / µs since the epoch, as on the wire
local-timestamp-*          integer, as on the wire
time-millis/-micros        integer: ms / µs after midnight
date                       string ``YYYY-MM-DD``
decimal                    number (a float: digits beyond float precision are lost)
uuid                       string
=========================  =============================================================

Writing takes the same values (and for ``date`` an integer day count, for ``decimal`` a string
too): fields the schema does not name are left out, a missing field takes its default, and a
value of the wrong type does not fit (:class:`AvroMismatch`). fastavro's writer quietly
coerces some wrong types (``1.5`` written as a long 1, ``3`` as a boolean ``true``), so every
value is first checked by a strict checker compiled from the schema.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import decimal
import io
from collections.abc import Callable
from typing import Any

import fastavro

# Logical types whose values are already the JSON we want once the annotation is dropped.
_AS_WIRE = frozenset(
    {
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
        "time-millis",
        "time-micros",
        "uuid",
    }
)
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}

Check = Callable[[Any], "str | None"]
Prepare = Callable[[Any], Any]


class AvroMismatch(ValueError):
    """A value that does not fit the schema; its message says where and why."""


class AvroCodec:
    """Reads payloads written with ``schema`` (optionally resolved to ``reader``) and writes
    values with it. ``schema`` is the schema as JSON data (a dict, list or string)."""

    def __init__(self, schema: Any, reader: Any = None) -> None:
        self.schema = schema
        self._writer = fastavro.parse_schema(schema)
        self._read_as = fastavro.parse_schema(_plain(schema, {}))
        self._reader = None if reader is None else fastavro.parse_schema(_plain(reader, {}))
        self._jsonable = _needs_conversion(schema if reader is None else reader, {})
        named = _names_of(schema)
        self._check = _checker(schema, named, {})
        self._prepare = _preparer(schema, named, {})
        # Reader fields the writer lacks take their defaults, which fastavro hands over as
        # the schema gives them: those of bytes and dates made JSON as decoded ones are.
        self._defaults = {} if reader is None else _reader_defaults(schema, reader)

    def read(self, payload: bytes) -> Any:
        """The value ``payload`` holds (raises on bytes that do not decode)."""
        fo = io.BytesIO(payload)
        value = fastavro.schemaless_reader(fo, self._read_as, self._reader)
        if fo.tell() != len(payload):
            raise ValueError(f"{len(payload) - fo.tell()} bytes left after the value")
        if self._jsonable:
            value = _to_json(value)
        if self._defaults and value.__class__ is dict:
            value.update(self._defaults)
        return value

    def write(self, value: Any) -> bytes:
        """``value`` as Avro binary; raises :class:`AvroMismatch` when it does not fit."""
        if self._prepare is not None:
            value = self._prepare(value)
        reason = self._check(value)
        if reason is not None:
            raise AvroMismatch(reason)
        fo = io.BytesIO()
        try:
            fastavro.schemaless_writer(fo, self._writer, value)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise AvroMismatch(str(exc)) from None
        return fo.getvalue()


# -- reading -------------------------------------------------------------------------------


def _plain(schema: Any, seen: dict[str, Any]) -> Any:
    """``schema`` with the annotations of :data:`_AS_WIRE` dropped, so fastavro hands back
    the wire value (an int, a string) instead of a datetime or a UUID."""
    if isinstance(schema, list):
        return [_plain(branch, seen) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if out.get("logicalType") in _AS_WIRE:
        del out["logicalType"]
    kind = out.get("type")
    if kind == "record" or kind == "error":
        out["fields"] = [{**f, "type": _plain(f["type"], seen)} for f in out.get("fields", [])]
    elif kind == "array":
        out["items"] = _plain(out["items"], seen)
    elif kind == "map":
        out["values"] = _plain(out["values"], seen)
    elif isinstance(kind, dict | list):
        out["type"] = _plain(kind, seen)
    return out


def _needs_conversion(schema: Any, seen: dict[str, bool]) -> bool:
    """Whether values of ``schema`` can hold bytes, a date or a decimal (which JSON cannot)."""
    if isinstance(schema, list):
        return any(_needs_conversion(branch, seen) for branch in schema)
    if isinstance(schema, str):
        return schema in ("bytes", "fixed") or seen.get(schema, False)
    if not isinstance(schema, dict):
        return False
    logical = schema.get("logicalType")
    kind = schema.get("type")
    if logical in ("date", "decimal") or kind in ("bytes", "fixed"):
        if kind == "fixed" and "name" in schema:
            seen[schema["name"]] = True
            if "namespace" in schema:
                seen[f"{schema['namespace']}.{schema['name']}"] = True
        return True
    if kind in ("record", "error"):
        name = schema.get("name", "")
        seen[name] = False  # a recursive reference is answered by the other fields
        found = any(_needs_conversion(f["type"], seen) for f in schema.get("fields", []))
        seen[name] = found
        if "namespace" in schema:
            seen[f"{schema['namespace']}.{name}"] = found
        return found
    if kind == "array":
        return _needs_conversion(schema["items"], seen)
    if kind == "map":
        return _needs_conversion(schema["values"], seen)
    if isinstance(kind, dict | list):
        return _needs_conversion(kind, seen)
    return False


def _reader_defaults(writer: Any, reader: Any) -> dict[str, Any]:
    """The top-level reader fields the writer's records lack whose defaults need the JSON
    mapping (bytes and fixed: base64; date: ISO), as decoded values."""
    named_w, named_r = _names_of(writer), _names_of(reader)
    writer, reader = _resolve(writer, named_w), _resolve(reader, named_r)
    if _kind_of(writer) not in ("record", "error") or _kind_of(reader) not in ("record", "error"):
        return {}
    written = {f["name"] for f in writer.get("fields", [])}
    out: dict[str, Any] = {}
    for field in reader.get("fields", []):
        if field["name"] in written or set(field.get("aliases", ())) & written:
            continue
        if "default" not in field:
            continue
        default = field["default"]
        target = _resolve(field["type"], named_r)
        logical = target.get("logicalType") if isinstance(target, dict) else None
        if logical == "date" and isinstance(default, int):
            out[field["name"]] = _to_json(_date(default))
        elif (
            logical is None and _kind_of(target) in ("bytes", "fixed") and isinstance(default, str)
        ):
            encoded = base64.b64encode(default.encode("latin-1"))
            out[field["name"]] = encoded.decode("ascii")
    return out


def _to_json(value: Any) -> Any:
    """A decoded value with bytes, dates and decimals made JSON (see the module's table)."""
    cls = value.__class__
    if cls is dict:
        return {k: _to_json(v) for k, v in value.items()}
    if cls is list:
        return [_to_json(v) for v in value]
    if cls is bytes:
        return base64.b64encode(value).decode("ascii")
    if cls is decimal.Decimal:
        return float(value)
    if cls is datetime.date:
        return value.isoformat()
    return value


# -- writing -------------------------------------------------------------------------------


def _collect(schema: Any, namespace: str, named: dict[str, Any]) -> None:
    """Every named type in ``schema`` (records, enums, fixed; in fields, unions, arrays and
    maps), under its full name and its short name."""
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, namespace, named)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if isinstance(kind, dict | list):
        _collect(kind, namespace, named)
        return
    if kind in ("record", "error", "enum", "fixed") and "name" in schema:
        name = str(schema["name"])
        if "." in name:
            full, space = name, name.rsplit(".", 1)[0]
        else:
            space = str(schema.get("namespace", namespace) or "")
            full = f"{space}.{name}" if space else name
        named.setdefault(full, schema)
        named.setdefault(full.rsplit(".", 1)[-1], schema)
        for field in schema.get("fields", ()) if kind in ("record", "error") else ():
            _collect(field.get("type"), space, named)
    elif kind == "array":
        _collect(schema.get("items"), namespace, named)
    elif kind == "map":
        _collect(schema.get("values"), namespace, named)


def _names_of(schema: Any) -> dict[str, Any]:
    named: dict[str, Any] = {}
    _collect(schema, "", named)
    return named


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    """A named type's definition; ``{"type": <schema>}`` unwrapped."""
    while True:
        if isinstance(schema, str) and schema in named:
            return named[schema]
        if isinstance(schema, dict) and len(schema) == 1 and isinstance(schema.get("type"), dict):
            schema = schema["type"]
            continue
        return schema


def _kind_of(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        kind = schema.get("type")
        return _kind_of(kind) if isinstance(kind, dict | list) else str(kind)
    return ""


def _memo(
    schema: dict[str, Any], memo: dict[int, Any], build: Callable[[], Any], fallback: Any
) -> Any:
    """``build()`` for a named type, once; a recursive reference met while it is being built
    gets a function that calls the built one (``fallback`` when that is None)."""
    key = id(schema)
    if key in memo:
        return memo[key]
    cell: list[Any] = []

    def later(value: Any) -> Any:
        return (cell[0] or fallback)(value)

    memo[key] = later
    built = build()
    cell.append(built)
    memo[key] = built
    return built


def _checker(schema: Any, named: dict[str, Any], memo: dict[int, Any]) -> Check:
    """A function telling why a (prepared) value does not fit ``schema``, or None when it
    does: exact types, where fastavro's writer would coerce."""
    schema = _resolve(schema, named)
    if isinstance(schema, list):
        return _accept  # fastavro picks a union's branch by validating: it is strict
    if isinstance(schema, str):
        return _primitive(schema)
    if not isinstance(schema, dict):
        return _accept
    kind = schema.get("type")
    if isinstance(kind, dict | list):
        return _checker(kind, named, memo)
    if kind in ("record", "error"):
        checker: Check = _memo(schema, memo, lambda: _record_checker(schema, named, memo), _accept)
        return checker
    if kind == "array":
        items = _checker(schema["items"], named, memo)

        def array(value: Any) -> str | None:
            if value.__class__ is not list:
                return f"expected an array, got {_type_name(value)}"
            for n, item in enumerate(value):
                reason = items(item)
                if reason is not None:
                    return f"[{n}]: {reason}"
            return None

        return array
    if kind == "map":
        values = _checker(schema["values"], named, memo)

        def mapping(value: Any) -> str | None:
            if value.__class__ is not dict:
                return f"expected an object (a map), got {_type_name(value)}"
            for key, item in value.items():
                reason = values(item)
                if reason is not None:
                    return f"[{key!r}]: {reason}"
            return None

        return mapping
    if kind == "enum":
        symbols = frozenset(schema.get("symbols", ()))

        def enum(value: Any) -> str | None:
            if value.__class__ is str and value in symbols:
                return None
            return f"{value!r} is not one of the enum's symbols {sorted(symbols)}"

        return enum
    if kind == "fixed":
        return _accept
    if isinstance(kind, str):
        if schema.get("logicalType") in ("date", "decimal"):
            return _accept  # prepared to date/Decimal, checked by fastavro
        return _primitive(kind)
    return _accept


def _record_checker(schema: dict[str, Any], named: dict[str, Any], memo: dict[int, Any]) -> Check:
    label = schema.get("name", "record")
    fields = [
        (f["name"], "default" in f, _checker(f["type"], named, memo))
        for f in schema.get("fields", [])
    ]

    def record(value: Any) -> str | None:
        if value.__class__ is not dict:
            return f"{label}: expected an object, got {_type_name(value)}"
        for name, has_default, check in fields:
            if name not in value:
                if has_default:
                    continue
                return f"{label}.{name}: missing, and the schema gives no default"
            reason = check(value[name])
            if reason is not None:
                return f"{label}.{name}: {reason}"
        return None

    return record


def _accept(value: Any) -> None:
    return None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if value.__class__ is bool:
        return "a boolean"
    if value.__class__ in (int, float):
        return f"the number {value!r}"
    if value.__class__ is str:
        return "a string"
    if value.__class__ is list:
        return "an array"
    if value.__class__ is dict:
        return "an object"
    return type(value).__name__


def _primitive(kind: str) -> Check:
    if kind in ("int", "long"):
        low, high = _INT_RANGE[kind]

        def integer(value: Any) -> str | None:
            if value.__class__ is int and low <= value <= high:
                return None
            if value.__class__ is int:
                return f"{value} is out of range for an Avro {kind}"
            return f"expected an integer ({kind}), got {_type_name(value)}"

        return integer
    if kind in ("float", "double"):

        def number(value: Any) -> str | None:
            if value.__class__ is float or value.__class__ is int:
                return None
            return f"expected a number ({kind}), got {_type_name(value)}"

        return number
    if kind == "boolean":

        def boolean(value: Any) -> str | None:
            return (
                None if value.__class__ is bool else f"expected a boolean, got {_type_name(value)}"
            )

        return boolean
    if kind == "string":

        def string(value: Any) -> str | None:
            return None if value.__class__ is str else f"expected a string, got {_type_name(value)}"

        return string
    if kind == "null":

        def null(value: Any) -> str | None:
            return None if value is None else f"expected null, got {_type_name(value)}"

        return null
    return _accept


def _identity(value: Any) -> Any:
    return value


def _preparer(schema: Any, named: dict[str, Any], memo: dict[int, Any]) -> Prepare | None:
    """A function turning JSON values into what fastavro writes for ``schema`` (base64 to
    bytes, ISO dates to dates, numbers to decimals, bytes defaults to bytes), or None when
    nothing needs it."""
    schema = _resolve(schema, named)
    if isinstance(schema, list):
        live = [b for b in (_preparer(branch, named, memo) for branch in schema) if b is not None]
        if not live:
            return None
        if "string" in schema:
            # A string is the string branch's: only other values may need converting.
            def union_with_string(value: Any) -> Any:
                return value if value.__class__ is str else _first_fit(live, value)

            return union_with_string
        return lambda value: _first_fit(live, value)
    if isinstance(schema, str):
        return _bytes_from_base64 if schema == "bytes" else None
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    logical = schema.get("logicalType")
    if logical == "date":
        return _date
    if logical == "decimal":
        scale = int(schema.get("scale", 0))
        quantum = decimal.Decimal(1).scaleb(-scale)
        return lambda value: _decimal(value, quantum)
    if isinstance(kind, dict | list):
        return _preparer(kind, named, memo)
    if kind in ("bytes", "fixed"):
        return _bytes_from_base64
    if kind in ("record", "error"):
        prepare: Prepare | None = _memo(
            schema, memo, lambda: _record_preparer(schema, named, memo), _identity
        )
        return prepare
    if kind == "array":
        items = _preparer(schema["items"], named, memo)
        if items is None:
            return None
        return lambda value: [items(v) for v in value] if value.__class__ is list else value
    if kind == "map":
        values = _preparer(schema["values"], named, memo)
        if values is None:
            return None
        return lambda value: (
            {k: values(v) for k, v in value.items()} if value.__class__ is dict else value
        )
    return None


def _record_preparer(
    schema: dict[str, Any], named: dict[str, Any], memo: dict[int, Any]
) -> Prepare | None:
    # (field, its preparer, the bytes of its default when it is bytes or fixed: Avro gives
    # those defaults as strings of code points 0-255, which fastavro's writer cannot take)
    fields: list[tuple[str, Prepare | None, bytes | None]] = []
    for f in schema.get("fields", []):
        prep = _preparer(f["type"], named, memo)
        default = None
        target = _resolve(f["type"], named)
        if (
            isinstance(f.get("default"), str)
            and _kind_of(target) in ("bytes", "fixed")
            and not (isinstance(target, dict) and target.get("logicalType") == "decimal")
        ):
            default = f["default"].encode("latin-1")
        if prep is not None or default is not None:
            fields.append((f["name"], prep, default))
    if not fields:
        return None

    def record(value: Any) -> Any:
        if value.__class__ is not dict:
            return value
        out = dict(value)
        for name, prep, default in fields:
            if name in out:
                if prep is not None:
                    out[name] = prep(out[name])
            elif default is not None:
                out[name] = default
        return out

    return record


def _first_fit(preparers: list[Prepare], value: Any) -> Any:
    for prepare in preparers:
        try:
            prepared = prepare(value)
        except AvroMismatch:
            continue
        if prepared is not value:
            return prepared
    return value


def _bytes_from_base64(value: Any) -> Any:
    if value.__class__ is not str:
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AvroMismatch(f"{value[:40]!r} is not a base64 string (bytes)") from None


def _date(value: Any) -> Any:
    if value.__class__ is str:
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            raise AvroMismatch(f"{value[:40]!r} is not a date (YYYY-MM-DD)") from None
    if value.__class__ is int:
        return datetime.date(1970, 1, 1) + datetime.timedelta(days=value)
    return value


def _decimal(value: Any, quantum: decimal.Decimal) -> Any:
    if value.__class__ in (int, float, str):
        try:
            return decimal.Decimal(str(value)).quantize(quantum, rounding=decimal.ROUND_HALF_EVEN)
        except (decimal.InvalidOperation, ValueError):
            raise AvroMismatch(f"{value!r} is not a decimal number") from None
    return value
