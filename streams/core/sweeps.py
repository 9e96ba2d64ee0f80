"""Built-in aggregations over a moving range of a key's events, for sliding windows.

A key's events are kept once, ordered by (event time, arrival), and its windows close in
increasing event time, so the events of the window being closed are a range ``[lo, hi)`` of
that list whose ends only move forward: each aggregation keeps a running state that events
enter (``add``) and leave (``remove``) once, O(1) amortized each, and reads its value off it
(``value``). ``Count`` needs no state (the range's length), ``Sum``/``Mean`` a compensated sum
(Neumaier: removing an event adds its negation, and the rounding of a long stream of adds and
removes stays that of the window's own sum), ``Min``/``Max`` a monotonic deque, ``First``/
``Last`` a deque of the events that have the field, ``CountDistinct`` a counter of values.

``scratch`` computes the same value from a window's events alone, in their order (update
records, and a sum that overflowed: the interpreter's sum in the interpreter's order).

An event is a tuple ``(t, seq, x0, x1, ...)``: its event time, its arrival number and the
layout's inputs (:mod:`streams.core.aggregations`), read at index ``j``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streams.core.aggregations import DISTINCT, NUMBER, RAW, Layout

Event = tuple[Any, ...]
# Where an event's inputs start: after its event time and arrival number.
FIRST_INPUT = 2


class Sweep:
    """One built-in aggregation: its input's index ``j`` in an event and its slot ``b``."""

    __slots__ = ("b", "j")

    def __init__(self, b: int, j: int) -> None:
        self.b = b
        self.j = j

    def new(self) -> Any:
        """An empty running state."""
        raise NotImplementedError

    def add(self, run: Any, ev: Event) -> None:
        """``ev`` enters the range (after every event in it)."""
        raise NotImplementedError

    def remove(self, run: Any, ev: Event) -> None:
        """``ev``, the range's first event, leaves it."""
        raise NotImplementedError

    def value(self, run: Any, events: Sequence[Event], lo: int, hi: int) -> Any:
        """The aggregation over ``events[lo:hi]``, whose running state is ``run``."""
        raise NotImplementedError

    def scratch(self, events: Sequence[Event]) -> Any:
        """The aggregation over ``events``, from nothing."""
        raise NotImplementedError


class CountSweep(Sweep):
    """``Count()``: the range's length; no state."""

    __slots__ = ()

    def value(self, run: Any, events: Sequence[Event], lo: int, hi: int) -> Any:
        return hi - lo

    def scratch(self, events: Sequence[Event]) -> Any:
        return len(events)


class SumSweep(Sweep):
    """``Sum(f)``: ``[sum, compensation]`` (Neumaier)."""

    __slots__ = ()

    def new(self) -> Any:
        return [0.0, 0.0]

    def add(self, run: Any, ev: Event) -> None:
        x = ev[self.j]
        if x is not None:
            _neumaier(run, x)

    def remove(self, run: Any, ev: Event) -> None:
        x = ev[self.j]
        if x is not None:
            _neumaier(run, -x)

    def value(self, run: Any, events: Sequence[Event], lo: int, hi: int) -> Any:
        total = run[0] + run[1]
        if total - total != 0.0:
            # Infinite or NaN: some sum overflowed. The window's own sum, in the window's
            # order (what the interpreter adds), restarts the running one.
            total = self.scratch(events[lo:hi])
            run[0], run[1] = total, 0.0
        return total

    def scratch(self, events: Sequence[Event]) -> Any:
        j = self.j
        total = 0.0
        for ev in events:
            x = ev[j]
            if x is not None:
                total += x
        return total


class MeanSweep(SumSweep):
    """``Mean(f)``: ``[sum, compensation, count]``."""

    __slots__ = ()

    def new(self) -> Any:
        return [0.0, 0.0, 0]

    def add(self, run: Any, ev: Event) -> None:
        x = ev[self.j]
        if x is not None:
            _neumaier(run, x)
            run[2] += 1

    def remove(self, run: Any, ev: Event) -> None:
        x = ev[self.j]
        if x is not None:
            _neumaier(run, -x)
            run[2] -= 1

    def value(self, run: Any, events: Sequence[Event], lo: int, hi: int) -> Any:
        n = run[2]
        if not n:
            run[0], run[1] = 0.0, 0.0  # nothing left: no rounding to carry on
            return None
        return SumSweep.value(self, run, events, lo, hi) / n

    def scratch(self, events: Sequence[Event]) -> Any:
        j = self.j
        n = sum(1 for ev in events if ev[j] is not None)
        return SumSweep.scratch(self, events) / n if n else None


class ExtremeSweep(Sweep):
    """``Min(f)``/``Max(f)``: a deque of events whose values only worsen front to back."""

    __slots__ = ("largest",)

    def __init__(self, b: int, j: int, largest: bool) -> None:
        super().__init__(b, j)
        self.largest = largest

    def new(self) -> Any:
        return deque()

    def add(self, run: Any, ev: Event) -> None:
        j = self.j
        x = ev[j]
        if x is None:
            return
        if self.largest:
            while run and run[-1][j] <= x:
                run.pop()
        else:
            while run and run[-1][j] >= x:
                run.pop()
        run.append(ev)

    def remove(self, run: Any, ev: Event) -> None:
        if run and run[0] is ev:
            run.popleft()

    def value(self, run: Any, events: Sequence[Event], lo: int, hi: int) -> Any:
        return run[0][self.j] if run else None

    def scratch(self, events: Sequence[Event]) -> Any:
        j = self.j
        present = [ev[j] for ev in events if ev[j] is not None]
        if not present:
            return None
        return max(present) if self.largest else min(present)


class EndSweep(Sweep):
    """``First(f)``/``Last(f)``: the range's events that have the field, in order."""

    __slots__ = ("last",)

    def __init__(self, b: int, j: int, last: bool) -> None:
        super().__init__(b, j)
        self.last = last

    def new(self) -> Any:
        return deque()

    def add(self, run: Any, ev: Event) -> None:
        if ev[self.j] is not None:
            run.append(ev)

    def remove(self, run: Any, ev: Event) -> None:
        if run and run[0] is ev:
            run.popleft()

    def value(self, run: Any, events: Sequence[Event], lo: int, hi: int) -> Any:
        if not run:
            return None
        return run[-1 if self.last else 0][self.j]

    def scratch(self, events: Sequence[Event]) -> Any:
        j = self.j
        present = [ev[j] for ev in events if ev[j] is not None]
        if not present:
            return None
        return present[-1 if self.last else 0]


class DistinctSweep(Sweep):
    """``CountDistinct(f)``: how many events of the range hold each value."""

    __slots__ = ()

    def new(self) -> Any:
        return {}

    def add(self, run: Any, ev: Event) -> None:
        x = ev[self.j]
        if x is not None:
            run[x] = run.get(x, 0) + 1

    def remove(self, run: Any, ev: Event) -> None:
        x = ev[self.j]
        if x is not None:
            left = run[x] - 1
            if left:
                run[x] = left
            else:
                del run[x]

    def value(self, run: Any, events: Sequence[Event], lo: int, hi: int) -> Any:
        return len(run)

    def scratch(self, events: Sequence[Event]) -> Any:
        j = self.j
        return len({ev[j] for ev in events if ev[j] is not None})


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


def _neumaier(run: list[Any], x: float) -> None:
    s = run[0]
    t = s + x
    if abs(s) >= abs(x):
        run[1] += (s - t) + x
    else:
        run[1] += (x - t) + s
    run[0] = t


@dataclass(frozen=True)
class Custom:
    """A custom aggregation: its name, slot, and the functions the compiler bound."""

    name: str
    b: int
    initial: Callable[[], Any]
    add: Callable[[Any, Any], Any]  # returns the new accumulator (None from the user: same)


@dataclass(frozen=True)
class Aggregates:
    """Every aggregation of a sliding window: built-ins as sweeps, customs as functions,
    and the length of the accumulator list the window's record reads (its layout)."""

    sweeps: list[Sweep]
    customs: list[Custom]
    width: int


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
    return Aggregates(sweeps, customs, lay.size)
