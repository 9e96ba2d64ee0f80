"""A JSON Schema compiled into one boolean Python function: the fast path of validation.

fastjsonschema validates by raising, builds its error messages eagerly, copies every
object's keys into a set, and evaluates ``if`` by raising and catching: about 4.5 µs per
event for the reference event schema, against 0.5 µs for a hand-written check. This compiles
the keywords event schemas use into straight-line checks that only answer "valid or not",
with no exception on any path; the decoder accepts what it accepts, and asks fastjsonschema
for the message (and the final word) only for the rare value it rejects. A schema using a
keyword outside this set compiles to ``None``: fastjsonschema alone then.

Semantics are fastjsonschema's (draft-07 keywords, which mean the same in 2020-12): an
``integer`` may be a float with an integral value, booleans are not numbers, ``pattern``
searches with every unescaped ``$`` read as end of string, and ``format`` is not supported
here (fastjsonschema checks it).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

from streams.schemas import ANNOTATIONS

Check = Callable[[Any], bool]

SUPPORTED = ANNOTATIONS | frozenset(
    {
        "type",
        "enum",
        "const",
        "required",
        "properties",
        "additionalProperties",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "items",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "if",
        "then",
        "else",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
    }
)
_TYPES = {
    "string": "{v}.__class__ is str",
    "object": "{v}.__class__ is dict",
    "array": "{v}.__class__ is list",
    "null": "{v} is None",
    "boolean": "({v} is True or {v} is False)",
    "number": "({v}.__class__ is int or {v}.__class__ is float)",
    "integer": "({v}.__class__ is int or ({v}.__class__ is float and {v}.is_integer()))",
}
_NUMBER = _TYPES["number"]
_DOLLAR = re.compile(r"(?<!\\)\$")


class Unsupported(Exception):
    """The schema uses something this compiler does not implement."""


def compile_check(schema: Any) -> Check | None:
    """A function returning whether a decoded JSON value is valid, or None when the schema
    is outside what this compiler implements."""
    try:
        return _Compiler().build(schema)
    except Unsupported:
        return None


class _Compiler:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {}
        self.names: Iterator[int] = itertools.count()

    def build(self, schema: Any) -> Check:
        self.lines = ["def check(v0):"]
        self._schema(schema, "v0", 1)
        self.lines.append("    return True")
        exec(compile("\n".join(self.lines), "<streams schema check>", "exec"), self.ns)
        check: Check = self.ns["check"]
        return check

    def _add(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def _fail_unless(self, depth: int, condition: str) -> None:
        self._add(depth, f"if not ({condition}):")
        self._add(depth + 1, "return False")

    def _sub(self, schema: Any) -> str:
        """A nested schema as a function of its own (for composition); returns its name."""
        name = f"sub{next(self.names)}"
        saved = self.lines
        self.lines = [f"def {name}(v0):"]
        self._schema(schema, "v0", 1)
        self.lines.append("    return True")
        exec(compile("\n".join(self.lines), f"<streams schema check {name}>", "exec"), self.ns)
        self.lines = saved
        return name

    def _schema(self, schema: Any, v: str, depth: int) -> None:
        if schema is True or schema == {}:
            return
        if schema is False:
            self._add(depth, "return False")
            return
        if not isinstance(schema, dict):
            raise Unsupported(f"schema {schema!r}")
        unknown = set(schema) - SUPPORTED
        if unknown:
            raise Unsupported(", ".join(sorted(unknown)))
        if "type" in schema:
            kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not kinds or any(k not in _TYPES for k in kinds):
                raise Unsupported(f"type {schema['type']!r}")
            self._fail_unless(depth, " or ".join(_TYPES[k].format(v=v) for k in kinds))
        if "enum" in schema:
            self._enum(schema["enum"], v, depth)
        if "const" in schema:
            self._enum([schema["const"]], v, depth)
        self._strings(schema, v, depth)
        self._numbers(schema, v, depth)
        self._objects(schema, v, depth)
        self._arrays(schema, v, depth)
        self._composition(schema, v, depth)

    def _enum(self, values: Any, v: str, depth: int) -> None:
        # Only strings and null: Python's equality mixes 1, 1.0 and True, JSON's does not.
        if not isinstance(values, list) or not all(x is None or isinstance(x, str) for x in values):
            raise Unsupported("enum of other values than strings and null")
        name = f"enum{next(self.names)}"
        self.ns[name] = frozenset(x for x in values if x is not None)
        allowed = f"({v}.__class__ is str and {v} in {name})"
        if None in values:
            allowed = f"({v} is None or {allowed})"
        self._fail_unless(depth, allowed)

    def _sizes(self, schema: dict[str, Any], least: str, most: str, v: str, depth: int) -> None:
        """``len(v)`` within ``schema[least]`` and ``schema[most]`` (where given)."""
        if least in schema:
            self._fail_unless(depth, f"len({v}) >= {_int(schema[least])}")
        if most in schema:
            self._fail_unless(depth, f"len({v}) <= {_int(schema[most])}")

    def _strings(self, schema: dict[str, Any], v: str, depth: int) -> None:
        keys = [k for k in ("minLength", "maxLength", "pattern") if k in schema]
        if not keys:
            return
        self._add(depth, f"if {v}.__class__ is str:")
        self._add(depth + 1, "pass")
        inner = depth + 1
        self._sizes(schema, "minLength", "maxLength", v, inner)
        if "pattern" in schema:
            name = f"re{next(self.names)}"
            try:
                self.ns[name] = re.compile(_DOLLAR.sub(r"\\Z", schema["pattern"]))
            except (re.error, TypeError) as exc:
                raise Unsupported(f"pattern {schema['pattern']!r}") from exc
            self._fail_unless(inner, f"{name}.search({v})")

    def _numbers(self, schema: dict[str, Any], v: str, depth: int) -> None:
        bounds = {
            "minimum": ">=",
            "maximum": "<=",
            "exclusiveMinimum": ">",
            "exclusiveMaximum": "<",
        }
        keys = [k for k in bounds if k in schema]
        if not keys:
            return
        self._add(depth, f"if {_NUMBER.format(v=v)}:")
        self._add(depth + 1, "pass")
        for key in keys:
            limit = schema[key]
            if type(limit) not in (int, float):
                raise Unsupported(f"{key} {limit!r}")
            self._fail_unless(depth + 1, f"{v} {bounds[key]} {limit!r}")

    def _objects(self, schema: dict[str, Any], v: str, depth: int) -> None:
        keys = [
            k
            for k in (
                "required",
                "properties",
                "additionalProperties",
                "minProperties",
                "maxProperties",
            )
            if k in schema
        ]
        if not keys:
            return
        self._add(depth, f"if {v}.__class__ is dict:")
        self._add(depth + 1, "pass")
        inner = depth + 1
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise Unsupported("required")
        for name in required:
            self._fail_unless(inner, f"{name!r} in {v}")
        self._sizes(schema, "minProperties", "maxProperties", v, inner)
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise Unsupported("properties")
        for name, sub in properties.items():
            if sub is True or sub == {} or (isinstance(sub, dict) and set(sub) <= ANNOTATIONS):
                continue
            var = f"v{next(self.names) + 1}"
            self._add(inner, f"if {name!r} in {v}:")
            self._add(inner + 1, f"{var} = {v}[{name!r}]")
            self._schema(sub, var, inner + 1)
        extra = schema.get("additionalProperties", True)
        if extra is True or extra == {}:
            return
        known = f"known{next(self.names)}"
        self.ns[known] = frozenset(properties)
        if extra is False:
            self._fail_unless(inner, f"{known}.issuperset({v})")
            return
        sub = self._sub(extra)
        self._add(inner, f"for k_, x_ in {v}.items():")
        self._add(inner + 1, f"if k_ not in {known} and not {sub}(x_):")
        self._add(inner + 2, "return False")

    def _arrays(self, schema: dict[str, Any], v: str, depth: int) -> None:
        keys = [k for k in ("items", "minItems", "maxItems") if k in schema]
        if not keys:
            return
        self._add(depth, f"if {v}.__class__ is list:")
        self._add(depth + 1, "pass")
        inner = depth + 1
        self._sizes(schema, "minItems", "maxItems", v, inner)
        if "items" in schema:
            items = schema["items"]
            if isinstance(items, list):
                raise Unsupported("items as a list")
            sub = self._sub(items)
            self._add(inner, f"for x_ in {v}:")
            self._add(inner + 1, f"if not {sub}(x_):")
            self._add(inner + 2, "return False")

    def _composition(self, schema: dict[str, Any], v: str, depth: int) -> None:
        for key in ("allOf", "anyOf", "oneOf"):
            if key not in schema:
                continue
            parts = schema[key]
            if not isinstance(parts, list) or not parts:
                raise Unsupported(key)
            subs = [self._sub(part) for part in parts]
            calls = ", ".join(f"{sub}({v})" for sub in subs)
            if key == "allOf":
                self._fail_unless(depth, " and ".join(f"{sub}({v})" for sub in subs))
            elif key == "anyOf":
                self._fail_unless(depth, " or ".join(f"{sub}({v})" for sub in subs))
            else:
                self._fail_unless(depth, f"[{calls}].count(True) == 1")
        if "not" in schema:
            self._fail_unless(depth, f"not {self._sub(schema['not'])}({v})")
        if "if" in schema:
            test = self._sub(schema["if"])
            then = self._sub(schema["then"]) if "then" in schema else None
            otherwise = self._sub(schema["else"]) if "else" in schema else None
            if then is not None:
                self._add(depth, f"if {test}({v}):")
                self._fail_unless(depth + 1, f"{then}({v})")
                if otherwise is not None:
                    self._add(depth, "else:")
                    self._fail_unless(depth + 1, f"{otherwise}({v})")
            elif otherwise is not None:
                self._add(depth, f"if not {test}({v}):")
                self._fail_unless(depth + 1, f"{otherwise}({v})")


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise Unsupported(f"{value!r} is not a count")
    return value
