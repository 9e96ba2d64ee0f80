"""Built-in aggregations over a moving range of a key's events, for sliding windows.

A key's events are kept once, ordered by (event time, arrival), and its windows close in
increasing event time, so the events of the window being closed are a range ``[lo, hi)`` of
that list whose ends only move forward: each aggregation keeps a running state that events
enter and leave once, O(1) amortized each, and reads its value off it. ``Count`` needs no
state (the range's length), ``Sum``/``Mean`` a compensated sum (Neumaier: removing an event
adds its negation, and the rounding of a long stream of adds and removes stays that of the
window's own sum), ``Min``/``Max`` a monotonic deque, ``First``/``Last`` a deque of the events
that have the field, ``CountDistinct`` a counter of values.

As the compiler does for the other windows, the sweep is generated code: :func:`sources`
writes ``_sweep(ks, upto, floor)`` (move ``hi`` past the events at or before ``upto``, then
``lo`` past those at or before ``floor``), ``_close(ks, t, floor)`` (sweep to window ``t``,
read its accumulator, then forget the events at or before ``floor``) and ``_new()`` (a new
key's running states) with each aggregation's statements inlined; each
:class:`Sweep` gives its snippets over the names ``ev`` (the event), ``x`` (its input) and
its running state ``r<i>`` (``run[i]``).
``scratch`` computes the same value from a window's events alone, in their order (update
records, and a sum that overflowed: the interpreter's sum in the interpreter's order).

An event is a tuple ``(t, seq, key, x0, x1, ...)``: its event time, its arrival number, its
key and the layout's inputs (:mod:`streams.core.aggregations`), read at index ``j``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streams.core.aggregations import DISTINCT, NUMBER, RAW, Layout

Event = tuple[Any, ...]
# Where an event's inputs start: after its event time, arrival number and key.
FIRST_INPUT = 3


class Sweep:
    """One built-in aggregation: its slot ``b`` in the accumulator, its input's index ``j``
    in an event, and ``i``, its running state's place in a key's ``run`` (-1: none)."""

    stateful = True

    def __init__(self, b: int, j: int) -> None:
        self.b = b
        self.j = j
        self.i = -1

    def new(self) -> str:
        """An expression of an empty running state."""
        raise NotImplementedError

    def load(self) -> list[str]:
        """Statements binding the running state's locals."""
        return [f"r{self.i} = run[{self.i}]"]

    def add(self) -> list[str]:
        """Statements for ``ev`` entering the range (after every event in it)."""
        raise NotImplementedError

    def remove(self) -> list[str]:
        """Statements for ``ev``, the range's first event, leaving it."""
        raise NotImplementedError

    def save(self) -> list[str]:
        """Statements writing the locals back to the running state."""
        return []

    def value(self) -> list[str]:
        """Statements setting ``a[b]`` from the running state (``run``, ``lo``, ``hi``)."""
        raise NotImplementedError

    def scratch(self, events: Sequence[Event]) -> Any:
        """The aggregation over ``events``, from nothing."""
        raise NotImplementedError


class CountSweep(Sweep):
    """``Count()``: the range's length; no state."""

    stateful = False

    def value(self) -> list[str]:
        return [f"a[{self.b}] = hi - lo"]

    def scratch(self, events: Sequence[Event]) -> Any:
        return len(events)


class SumSweep(Sweep):
    """``Sum(f)``: ``[sum, compensation]`` (Neumaier), in the locals ``s<i>``, ``c<i>``."""

    def new(self) -> str:
        return "[0.0, 0.0]"

    def load(self) -> list[str]:
        i = self.i
        return [f"r{i} = run[{i}]", f"s{i} = r{i}[0]", f"c{i} = r{i}[1]"]

    def _plus(self, negate: bool) -> list[str]:
        i = self.i
        return [
            f"x = ev[{self.j}]",
            "if x is not None:",
            *(["    x = -x"] if negate else []),
            f"    u = s{i} + x",
            f"    if abs(s{i}) >= abs(x):",
            f"        c{i} += (s{i} - u) + x",
            "    else:",
            f"        c{i} += (x - u) + s{i}",
            f"    s{i} = u",
        ]

    def add(self) -> list[str]:
        return self._plus(False)

    def remove(self) -> list[str]:
        return self._plus(True)

    def save(self) -> list[str]:
        return [f"r{self.i}[0] = s{self.i}", f"r{self.i}[1] = c{self.i}"]

    def value(self) -> list[str]:
        i = self.i
        return [
            f"r{i} = run[{i}]",
            f"v = r{i}[0] + r{i}[1]",
            "if v - v != 0.0:",
            # Infinite or NaN: some sum overflowed. The window's own sum, in the window's
            # order (what the interpreter adds), restarts the running one.
            f"    v = _sum_of(ks.events[lo:hi], {self.j})",
            f"    r{i}[0] = v",
            f"    r{i}[1] = 0.0",
            f"a[{self.b}] = v",
        ]

    def scratch(self, events: Sequence[Event]) -> Any:
        return sum_of(events, self.j)


class MeanSweep(SumSweep):
    """``Mean(f)``: ``[sum, compensation, count]``."""

    def new(self) -> str:
        return "[0.0, 0.0, 0]"

    def add(self) -> list[str]:
        return [*self._plus(False), f"    r{self.i}[2] += 1"]

    def remove(self) -> list[str]:
        return [*self._plus(True), f"    r{self.i}[2] -= 1"]

    def value(self) -> list[str]:
        i = self.i
        return [
            f"r{i} = run[{i}]",
            f"if r{i}[2]:",
            f"    v = r{i}[0] + r{i}[1]",
            "    if v - v != 0.0:",
            f"        v = _sum_of(ks.events[lo:hi], {self.j})",
            f"        r{i}[0] = v",
            f"        r{i}[1] = 0.0",
            f"    a[{self.b}] = v / r{i}[2]",
            "else:",
            f"    r{i}[0] = r{i}[1] = 0.0",  # nothing left: no rounding to carry on
        ]

    def scratch(self, events: Sequence[Event]) -> Any:
        j = self.j
        n = sum(1 for ev in events if ev[j] is not None)
        return sum_of(events, j) / n if n else None


class ExtremeSweep(Sweep):
    """``Min(f)``/``Max(f)``: a deque of events whose values only worsen front to back."""

    def __init__(self, b: int, j: int, largest: bool) -> None:
        super().__init__(b, j)
        self.largest = largest

    def new(self) -> str:
        return "_deque()"

    def add(self) -> list[str]:
        i, j = self.i, self.j
        worse = "<=" if self.largest else ">="
        return [
            f"x = ev[{j}]",
            "if x is not None:",
            f"    while r{i} and r{i}[-1][{j}] {worse} x:",
            f"        r{i}.pop()",
            f"    r{i}.append(ev)",
        ]

    def remove(self) -> list[str]:
        return [f"if r{self.i} and r{self.i}[0] is ev:", f"    r{self.i}.popleft()"]

    def value(self) -> list[str]:
        i = self.i
        return [f"r{i} = run[{i}]", f"a[{self.b}] = r{i}[0][{self.j}] if r{i} else None"]

    def scratch(self, events: Sequence[Event]) -> Any:
        j = self.j
        present = [ev[j] for ev in events if ev[j] is not None]
        if not present:
            return None
        return max(present) if self.largest else min(present)


class EndSweep(Sweep):
    """``First(f)``/``Last(f)``: the range's events that have the field, in order."""

    def __init__(self, b: int, j: int, last: bool) -> None:
        super().__init__(b, j)
        self.last = last

    def new(self) -> str:
        return "_deque()"

    def add(self) -> list[str]:
        return [f"if ev[{self.j}] is not None:", f"    r{self.i}.append(ev)"]

    def remove(self) -> list[str]:
        return [f"if r{self.i} and r{self.i}[0] is ev:", f"    r{self.i}.popleft()"]

    def value(self) -> list[str]:
        i = self.i
        end = -1 if self.last else 0
        return [f"r{i} = run[{i}]", f"a[{self.b}] = r{i}[{end}][{self.j}] if r{i} else None"]

    def scratch(self, events: Sequence[Event]) -> Any:
        j = self.j
        present = [ev[j] for ev in events if ev[j] is not None]
        if not present:
            return None
        return present[-1 if self.last else 0]


class DistinctSweep(Sweep):
    """``CountDistinct(f)``: how many events of the range hold each value."""

    def new(self) -> str:
        return "{}"

    def add(self) -> list[str]:
        i = self.i
        return [
            f"x = ev[{self.j}]",
            "if x is not None:",
            f"    r{i}[x] = r{i}.get(x, 0) + 1",
        ]

    def remove(self) -> list[str]:
        i = self.i
        return [
            f"x = ev[{self.j}]",
            "if x is not None:",
            f"    m = r{i}[x] - 1",
            "    if m:",
            f"        r{i}[x] = m",
            "    else:",
            f"        del r{i}[x]",
        ]

    def value(self) -> list[str]:
        return [f"a[{self.b}] = len(run[{self.i}])"]

    def scratch(self, events: Sequence[Event]) -> Any:
        j = self.j
        return len({ev[j] for ev in events if ev[j] is not None})


def sum_of(events: Sequence[Event], j: int) -> float:
    """Input ``j`` of ``events`` added in their order (absent ones add nothing)."""
    total = 0.0
    for ev in events:
        x = ev[j]
        if x is not None:
            total += x
    return total


def sweep(kind: str, b: int, j: int) -> Sweep:
    """The sweep of a built-in ``kind`` in slot ``b``, reading input ``j`` of an event."""
    if kind == "count":
        return CountSweep(b, j)
    if kind == "sum":
        return SumSweep(b, j)
    if kind == "mean":
        return MeanSweep(b, j)
    if kind in ("min", "max"):
        return ExtremeSweep(b, j, kind == "max")
    if kind in ("first", "last"):
        return EndSweep(b, j, kind == "last")
    if kind == "count_distinct":
        return DistinctSweep(b, j)
    raise AssertionError(f"unknown built-in {kind}")


@dataclass(frozen=True)
class Custom:
    """A custom aggregation: its name, slot, and the functions the compiler bound."""

    name: str
    b: int
    initial: Callable[[], Any]
    add: Callable[[Any, Any], Any]  # returns the new accumulator (None from the user: same)


@dataclass
class Aggregates:
    """Every aggregation of a sliding window: built-ins as sweeps (their generated
    ``new``/``sweep``/``close`` set by the compiler), customs as functions, and the length of the
    accumulator list the window's record reads (its layout)."""

    sweeps: list[Sweep]
    customs: list[Custom]
    width: int
    new: Callable[[], list[Any]] | None = None
    sweep: Callable[[Any, int, int], None] | None = None
    close: Callable[[Any, int, int], list[Any]] | None = None


_INPUT_KINDS = {"sum": NUMBER, "mean": NUMBER, "min": NUMBER, "max": NUMBER}


def aggregates(named: Sequence[tuple[str, Any]], lay: Layout) -> Aggregates:
    """The sweeps and customs of ``named``, laid out as ``lay`` lays them out."""
    inputs = {(field, kind): n for n, (_, field, kind) in enumerate(lay.inputs)}
    sweeps: list[Sweep] = []
    customs: list[Custom] = []
    for (name, aggregation), slots in zip(named, lay.aggregations, strict=True):
        if slots.custom is not None:
            ns = lay.namespace
            index = slots.custom_index
            customs.append(Custom(name, slots.base, ns[f"_cinit{index}"], ns[f"_cadd{index}"]))
            continue
        kind = aggregation.kind
        j = 0
        if kind != "count":
            source = _INPUT_KINDS.get(kind, DISTINCT if kind == "count_distinct" else RAW)
            j = FIRST_INPUT + inputs[(aggregation.field, source)]
        sweeps.append(sweep(kind, slots.base, j))
    for i, s in enumerate([s for s in sweeps if s.stateful]):
        s.i = i
    return Aggregates(sweeps, customs, lay.size)


def sources(agg: Aggregates, size_ms: int) -> tuple[list[str], list[str], list[str]]:
    """The lines of ``_new()``, ``_sweep(ks, upto, floor)`` and ``_close(ks, t, floor)`` (see
    the module docstring); the names they need are :data:`NAMESPACE`'s."""
    stateful = [s for s in agg.sweeps if s.stateful]
    new = ["def _new():", f"    return [{', '.join(s.new() for s in stateful)}]"]
    load = [line for s in stateful for line in s.load()]
    save = [line for s in stateful for line in s.save()]

    def move(bound: str, upto: str | None) -> list[str]:
        """Move ``hi`` past the events at or before ``upto``, ``lo`` past ``bound``."""
        lines = []
        if upto is not None:
            lines += [
                "while hi < n:",
                "    ev = events[hi]",
                f"    if ev[0] > {upto}:",
                "        break",
                *("    " + line for s in stateful for line in s.add()),
                "    hi += 1",
            ]
        return [
            *lines,
            "while lo < hi:",
            "    ev = events[lo]",
            f"    if ev[0] > {bound}:",
            "        break",
            *("    " + line for s in stateful for line in s.remove()),
            "    lo += 1",
        ]

    head = ["events = ks.events", "n = len(events)", "hi = ks.hi", "lo = ks.lo", "run = ks.run"]
    sweep = [
        "def _sweep(ks, upto, floor):",
        *("    " + line for line in [*head, *load, *move("floor", "upto"), *save]),
        "    ks.hi = hi",
        "    ks.lo = lo",
    ]
    close = [
        *head,
        f"low = t - {size_ms}",
        *load,
        *move("low", "t"),
        *save,
        f"a = [None] * {agg.width}",
        *(line for s in agg.sweeps for line in s.value()),
        # What no pending window holds, up to the horizon, is forgotten: out of the range
        # (a value above may have reset a running state: load it again), then out of the list.
        *load,
        *move("floor", None),
        *save,
        "base = ks.base",
        "while base < lo and events[base][0] <= floor:",
        "    base += 1",
        "if base > 64 and 2 * base > n:",
        "    del events[:base]",  # cut off in bulk, not one by one
        "    lo -= base",
        "    hi -= base",
        "    base = 0",
        "ks.base = base",
        "ks.hi = hi",
        "ks.lo = lo",
        "return a",
    ]
    return new, sweep, ["def _close(ks, t, floor):", *("    " + line for line in close)]


NAMESPACE = {"_sum_of": sum_of, "_deque": deque}
