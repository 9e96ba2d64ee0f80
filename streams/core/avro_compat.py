"""Can a reader with one Avro schema read data written with another? Avro's schema
resolution rules (the specification's "Schema Resolution"), as a list of reasons it cannot:
what ``streams schemas check OLD.avsc NEW.avsc`` prints, and what a registry's BACKWARD
rule checks for one earlier version.
"""

from __future__ import annotations

from typing import Any

# Writer type -> the reader types that may read it (the specification's promotions).
PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "double": {"double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
    "boolean": {"boolean"},
    "null": {"null"},
}


def reader_problems(writer: Any, reader: Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can)."""
    problems: list[str] = []
    _check(writer, reader, {}, {}, "", problems, set())
    return problems


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    kind = schema.get("type")
    return _kind(kind) if isinstance(kind, dict | list) else str(kind)


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    """A name's definition; definitions met on the way are recorded in ``named``."""
    if isinstance(schema, str):
        return named.get(schema, schema)
    if isinstance(schema, dict):
        inner = schema.get("type")
        if isinstance(inner, dict | list):
            return _resolve(inner, named)
        if inner in ("record", "error", "enum", "fixed") and "name" in schema:
            named[schema["name"]] = schema
            if "namespace" in schema:
                named[f"{schema['namespace']}.{schema['name']}"] = schema
    return schema


def _name(schema: dict[str, Any]) -> str:
    return str(schema.get("name", "")).rsplit(".", 1)[-1]


def _full_name(schema: dict[str, Any]) -> str:
    name = str(schema.get("name", ""))
    if "." in name:
        return name
    space = schema.get("namespace") or ""
    return f"{space}.{name}" if space else name


def _reads_name(writer: dict[str, Any], reader: dict[str, Any]) -> bool:
    """As Avro's Java checker (which registries use): the same unqualified name, or the
    writer's full name among the reader's aliases (full names: an alias without a dot takes
    the reader's namespace)."""
    if _name(writer) == _name(reader):
        return True
    full = _full_name(reader)
    space = full.rsplit(".", 1)[0] if "." in full else ""
    aliases = {
        str(a) if "." in str(a) or not space else f"{space}.{a}" for a in reader.get("aliases", ())
    }
    return _full_name(writer) in aliases


def _check(
    writer: Any,
    reader: Any,
    wnamed: dict[str, Any],
    rnamed: dict[str, Any],
    path: str,
    problems: list[str],
    visiting: set[tuple[str, str]],
) -> None:
    writer = _resolve(writer, wnamed)
    reader = _resolve(reader, rnamed)
    wkind, rkind = _kind(writer), _kind(reader)
    where = path or "the value"
    if wkind == "union":
        for branch in writer:
            sub: list[str] = []
            _check(branch, reader, wnamed, rnamed, path, sub, visiting)
            problems.extend(sub)
        return
    if rkind == "union":
        for branch in reader:
            sub = []
            _check(writer, branch, wnamed, rnamed, path, sub, set(visiting))
            if not sub:
                return
        problems.append(f"{where}: the reader's union has no branch for the writer's {wkind}")
        return
    if wkind in PROMOTIONS:
        if rkind not in PROMOTIONS[wkind]:
            problems.append(f"{where}: written as {wkind}, cannot be read as {rkind}")
        return
    if wkind != rkind:
        problems.append(f"{where}: written as {wkind}, cannot be read as {rkind}")
        return
    if wkind in ("record", "error", "enum", "fixed") and not _reads_name(writer, reader):
        problems.append(
            f"{where}: the writer's {wkind} {_name(writer)!r} is not the reader's "
            f"{_name(reader)!r} (nor one of its aliases)"
        )
        return
    if wkind in ("record", "error"):
        key = (_name(writer), _name(reader))
        if key in visiting:
            return  # a recursive type: already being compared
        visiting.add(key)
        written = {f["name"]: f for f in writer.get("fields", [])}
        for field in reader.get("fields", []):
            name = field["name"]
            source = written.get(name) or next(
                (written[a] for a in field.get("aliases", ()) if a in written), None
            )
            inner = f"{path}.{name}" if path else name
            if source is None:
                if "default" not in field:
                    problems.append(
                        f"{inner}: the reader's field is not in the writer's data and has no "
                        "default"
                    )
                continue
            _check(source["type"], field["type"], wnamed, rnamed, inner, problems, visiting)
        visiting.discard(key)
    elif wkind == "enum":
        missing = [s for s in writer.get("symbols", ()) if s not in reader.get("symbols", ())]
        if missing and "default" not in reader:
            problems.append(
                f"{where}: the reader's enum lacks the symbols {missing} and has no default"
            )
    elif wkind == "fixed":
        if writer.get("size") != reader.get("size"):
            problems.append(
                f"{where}: fixed of {writer.get('size')} bytes cannot be read as "
                f"{reader.get('size')} bytes"
            )
    elif wkind == "array":
        _check(writer["items"], reader["items"], wnamed, rnamed, f"{where}[]", problems, visiting)
    elif wkind == "map":
        _check(
            writer["values"], reader["values"], wnamed, rnamed, f"{where}{{}}", problems, visiting
        )
