"""How each aggregation lives in a window's accumulator list, as code the compiler inlines.

A window's accumulator is one flat list: each aggregation owns consecutive slots (``Count``
one, ``Mean`` two, ``First``/``Last`` three: value, event time, offset). For the reference
pipeline's ``count, sum, min, max`` that is ``[count, sum, min, max]``, the layout (and the
changelog bytes) of the hand-written core it replaced.

Each :class:`Slots` gives source snippets over names the compiler binds: ``a`` (the
accumulator), ``c`` (a second one, for merging sessions), ``v`` (the event value), ``t``
(event time), ``o`` (offset), and the event's inputs (``inputs``: one per field and kind of
conversion, shared by aggregations that read the same field the same way).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.topology.aggregations import Builtin, describe, is_builtin

# How an input is read from the event value.
NUMBER = "number"  # a number, as a float; None when absent or null
RAW = "raw"  # the value as is; None when absent or null
DISTINCT = "distinct"  # hashable: scalars as is, objects and arrays as sorted JSON text


def canonical(value: Any) -> Any:
    """A hashable stand-in for a JSON value: scalars as they are, others as JSON text
    (``TypeError`` for a value JSON cannot hold)."""
    if value.__class__ in _SCALARS:
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        # An integer beyond 64 bits (json handles it), or not JSON at all (json raises too).
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_SCALARS = frozenset({str, int, float, bool, type(None)})


@dataclass
class Slots:
    """One aggregation's slots and code: see the module docstring for the names used."""

    name: str
    size: int
    first: list[str]
    update: list[str]
    result: str
    merge: list[str]
    uses_offset: bool = False
    holds_set: bool = False
    holds_float_sum: list[int] = field(default_factory=list)
    custom: Any = None
    base: int = 0  # the first slot's index in the accumulator list
    custom_index: int = -1  # names its functions in the generated code (``_cadd<index>``)
    custom_slot: int = -1  # its place among the custom aggregations, in declaration order


@dataclass
class Layout:
    """Every aggregation of an ``.aggregate(...)``: slots, inputs and the names they need."""

    aggregations: list[Slots]
    inputs: list[tuple[str, str, str]]  # (variable, field, kind)
    namespace: dict[str, Any]

    @property
    def size(self) -> int:
        """Length of the accumulator list."""
        return sum(slots.size for slots in self.aggregations)

    @property
    def uses_offset(self) -> bool:
        """True when some aggregation orders events by offset (First/Last)."""
        return any(slots.uses_offset for slots in self.aggregations)

    @property
    def has_custom(self) -> bool:
        """True when a custom aggregator's code runs per event (it may raise)."""
        return any(slots.custom is not None for slots in self.aggregations)


def layout(named: Sequence[tuple[str, Any]]) -> Layout:
    """The slots of the named aggregations, in declaration order."""
    inputs: dict[tuple[str, str], str] = {}
    namespace: dict[str, Any] = {}

    def source(field_name: str, kind: str) -> str:
        var = inputs.get((field_name, kind))
        if var is None:
            var = inputs[(field_name, kind)] = f"x{len(inputs)}"
        return var

    aggregations: list[Slots] = []
    base = 0
    customs = 0
    for index, (name, aggregation) in enumerate(named):
        if is_builtin(aggregation):
            slots = _builtin(name, aggregation, base, source)
        else:
            slots = _custom(name, aggregation, base, index, namespace)
            slots.custom_index = index
            slots.custom_slot = customs
            customs += 1
        slots.base = base
        aggregations.append(slots)
        base += slots.size
    variables = [(var, field_name, kind) for (field_name, kind), var in inputs.items()]
    return Layout(aggregations, variables, namespace)


def _builtin(name: str, agg: Builtin, b: int, source: Callable[[str, str], str]) -> Slots:
    kind = agg.kind
    if kind == "count":
        return Slots(name, 1, ["1"], [f"a[{b}] += 1"], f"a[{b}]", [f"a[{b}] += c[{b}]"])
    assert agg.field is not None
    if kind == "sum":
        x = source(agg.field, NUMBER)
        return Slots(
            name,
            1,
            [f"0.0 if {x} is None else {x}"],
            [f"if {x} is not None:", f"    a[{b}] += {x}"],
            f"a[{b}]",
            [f"a[{b}] += c[{b}]"],
            holds_float_sum=[b],
        )
    if kind == "mean":
        x = source(agg.field, NUMBER)
        return Slots(
            name,
            2,
            [f"0.0 if {x} is None else {x}", f"0 if {x} is None else 1"],
            [f"if {x} is not None:", f"    a[{b}] += {x}", f"    a[{b + 1}] += 1"],
            f"a[{b}] / a[{b + 1}] if a[{b + 1}] else None",
            [f"a[{b}] += c[{b}]", f"a[{b + 1}] += c[{b + 1}]"],
            holds_float_sum=[b],
        )
    if kind in ("min", "max"):
        x = source(agg.field, NUMBER)
        better = "<" if kind == "min" else ">"
        return Slots(
            name,
            1,
            [x],
            [
                f"if {x} is not None:",
                f"    m = a[{b}]",
                f"    if m is None or {x} {better} m:",
                f"        a[{b}] = {x}",
            ],
            f"a[{b}]",
            [
                f"if c[{b}] is not None and (a[{b}] is None or c[{b}] {better} a[{b}]):",
                f"    a[{b}] = c[{b}]",
            ],
        )
    if kind in ("first", "last"):
        x = source(agg.field, RAW)
        # First keeps the earliest (event time, offset); Last the latest. Within a partition
        # events come in offset order, so a tie in event time goes to the earlier arrival
        # for First and to the later one for Last.
        wins = "t < a[{t}]" if kind == "first" else "t >= a[{t}]"
        merge_wins = (
            "(c[{t}], c[{o}]) < (a[{t}], a[{o}])"
            if kind == "first"
            else "(c[{t}], c[{o}]) > (a[{t}], a[{o}])"
        )
        fmt = {"t": b + 1, "o": b + 2}
        return Slots(
            name,
            3,
            [x, f"None if {x} is None else t", f"None if {x} is None else o"],
            [
                f"if {x} is not None and (a[{b + 1}] is None or {wins.format(**fmt)}):",
                f"    a[{b}] = {x}",
                f"    a[{b + 1}] = t",
                f"    a[{b + 2}] = o",
            ],
            f"a[{b}]",
            [
                f"if c[{b + 1}] is not None and (a[{b + 1}] is None or "
                f"{merge_wins.format(**fmt)}):",
                f"    a[{b}] = c[{b}]",
                f"    a[{b + 1}] = c[{b + 1}]",
                f"    a[{b + 2}] = c[{b + 2}]",
            ],
            uses_offset=True,
        )
    if kind == "count_distinct":
        x = source(agg.field, DISTINCT)
        return Slots(
            name,
            1,
            [f"set() if {x} is None else {{{x}}}"],
            [f"if {x} is not None:", f"    a[{b}].add({x})"],
            f"len(a[{b}])",
            [f"a[{b}] |= c[{b}]"],
            holds_set=True,
        )
    raise AssertionError(f"unknown built-in {describe(agg)}")


def _custom(name: str, aggregator: Any, b: int, index: int, ns: dict[str, Any]) -> Slots:
    add = aggregator.add
    merge = getattr(aggregator, "merge", None)

    def added(acc: Any, value: Any) -> Any:
        new = add(acc, value)
        return acc if new is None else new

    def merged(acc: Any, other: Any) -> Any:
        assert merge is not None
        new = merge(acc, other)
        return acc if new is None else new

    ns[f"_cinit{index}"] = aggregator.initial
    ns[f"_cadd{index}"] = added
    ns[f"_cmerge{index}"] = merged
    ns[f"_cresult{index}"] = aggregator.result
    return Slots(
        name,
        1,
        [f"_cadd{index}(_cinit{index}(), v)"],
        [f"a[{b}] = _cadd{index}(a[{b}], v)"],
        f"_cresult{index}(a[{b}])",
        [f"a[{b}] = _cmerge{index}(a[{b}], c[{b}])"],
        custom=aggregator,
    )


def input_code(var: str, field_name: str, kind: str, checked: bool, site: str) -> list[str]:
    """Statements that read an input into ``var`` (or dead-letter the event through the
    aggregation's ``site`` and continue).

    ``checked`` means the topic's schema already guarantees a number (the reference schema):
    only the float conversion is left. Values kept as they are (``First``, ``Last``,
    ``CountDistinct``) must be JSON, since they live in the changelog: one that is not (a map
    put it there) dead-letters the event.
    """
    get = f"{var} = v.get({field_name!r})"
    if kind == NUMBER:
        if checked:
            return [get, f"if {var} is not None:", f"    {var} = float({var})"]
        return [
            get,
            f"if {var} is not None and {var}.__class__ is not float:",
            f"    if {var}.__class__ is int and -_BIG < {var} < _BIG:",
            f"        {var} = float({var})",
            "    else:",
            f"        {site}.bad(dead, i, _not_number({field_name!r}, {var}))",
            "        continue",
        ]
    if kind == DISTINCT:
        return [
            get,
            f"if {var} is not None and {var}.__class__ not in _SCALARS:",
            "    try:",
            f"        {var} = _canonical({var})",
            "    except _USER_ERRORS as exc:",
            f"        {site}.bad(dead, i, _not_json_input({field_name!r}, exc))",
            "        continue",
        ]
    return [
        get,
        f"if {var} is not None and {var}.__class__ not in _SCALARS:",
        "    try:",
        f"        _check_json({var})",
        "    except _USER_ERRORS as exc:",
        f"        {site}.bad(dead, i, _not_json_input({field_name!r}, exc))",
        "        continue",
    ]


def _not_json_input(field_name: str, exc: BaseException) -> str:
    from streams.core.failures import reason

    return f"{field_name}: not a JSON value ({reason(exc)}); it cannot be aggregated"


def _not_number(field_name: str, value: Any) -> str:
    from streams.validation import describe_value as _describe

    return f"{field_name}: must be a number to aggregate (got {_describe(value)})"


# Integers beyond this overflow a float; JSON allows them.
BIG = 2**1023


def encoder(lay: Layout) -> Callable[[list[Any]], Any] | None:
    """Turns an accumulator into something JSON can hold (sets to lists), or None if it is."""
    sets = [b for b, slots in _bases(lay) if slots.holds_set]
    if not sets:
        return None

    def encode(acc: list[Any]) -> list[Any]:
        out = list(acc)
        for b in sets:
            out[b] = list(out[b])
        return out

    return encode


def decoder(lay: Layout) -> Callable[[Any], list[Any]]:
    """Inverse of :func:`encoder` after JSON: sets back, overflowed sums (null) back to inf."""
    sets = [b for b, slots in _bases(lay) if slots.holds_set]
    sums = [b for slots in lay.aggregations for b in slots.holds_float_sum]

    def decode(acc: list[Any]) -> list[Any]:
        for b in sets:
            acc[b] = set(acc[b])
        for b in sums:
            if acc[b] is None:
                acc[b] = math.inf
        return acc

    return decode


def _bases(lay: Layout) -> list[tuple[int, Slots]]:
    bases = []
    b = 0
    for slots in lay.aggregations:
        bases.append((b, slots))
        b += slots.size
    return bases


NAMESPACE = {
    "_BIG": BIG,
    "_SCALARS": _SCALARS,
    "_canonical": canonical,
    "_not_number": _not_number,
    "_not_json_input": _not_json_input,
}
