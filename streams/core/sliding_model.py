"""The interpreter's sliding windows: every accepted event kept, every window from scratch.

The plain model :mod:`streams.core.sliding` is held to (decision 0018). A key's accepted
events are kept in arrival order; a window ``t`` is pending from its first event until stream
time reaches ``t + 1 + grace``. Its built-ins are computed at close from its events in
(event time, arrival) order; a custom aggregator's accumulator is ``initial()`` folded with
``add`` over the window's events in the order the engine adds them: those that arrived
before the window's first event, by (event time, arrival), then the rest in arrival order.
That fold is redone from nothing for every window an event reaches, so an event whose
``add`` fails anywhere changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (end, key, start, events by (event time, arrival), custom accumulators by name)
Closing = tuple[int, str, int, list[Any], dict[str, Any]]


class SlidingModel:
    """Sliding windows of ``size_ms`` with ``grace_ms``; events are anything with ``ts``."""

    def __init__(self, size_ms: int, grace_ms: int, customs: bool) -> None:
        self.size = size_ms
        self.grace = grace_ms
        self.customs = customs
        self.events: dict[str, list[tuple[int, int, Any]]] = {}  # (ts, arrival, event)
        self.windows: dict[str, dict[int, int]] = {}  # key -> t -> arrival of its first event
        self.accs: dict[tuple[str, int], dict[str, Any]] = {}
        self.touched: set[tuple[int, str]] = set()
        self.arrivals = 0
        self.due: int | None = None  # the earliest close of a pending window

    def late(self, ts: int, stream_time: int | None) -> bool:
        """True when the event's own window is closed."""
        return stream_time is not None and ts + 1 + self.grace <= stream_time

    def accept(self, key: str, event: Any, fold: Callable[[list[Any]], dict[str, Any]]) -> None:
        """Add an event that is not late; ``fold`` (custom aggregators) raises to refuse it,
        before anything changes."""
        ts = event.ts
        arrival = self.arrivals
        windows = self.windows.get(key, {})
        reached = sorted({ts, *(u for u in windows if ts < u < ts + self.size)})
        if self.customs:
            folded = {
                u: fold([*self._order(key, u, windows.get(u, arrival)), event]) for u in reached
            }
            for u, accs in folded.items():
                self.accs[(key, u)] = accs
        self.arrivals += 1
        self.events.setdefault(key, []).append((ts, arrival, event))
        self.windows.setdefault(key, {}).setdefault(ts, arrival)
        self.touched.update((u, key) for u in reached)
        close = ts + 1 + self.grace
        if self.due is None or close < self.due:
            self.due = close

    def _order(self, key: str, t: int, first: int) -> list[Any]:
        """Window ``t``'s events as a custom aggregator sees them."""
        held = [e for e in self.events.get(key, []) if t - self.size < e[0] <= t]
        before = sorted(e for e in held if e[1] < first)
        return [e[2] for e in before] + [e[2] for e in held if e[1] >= first]

    def window(self, key: str, t: int) -> tuple[list[Any], dict[str, Any]]:
        """Window ``t``'s events by (event time, arrival), and its custom accumulators."""
        held = sorted(e for e in self.events.get(key, []) if t - self.size < e[0] <= t)
        return [e[2] for e in held], self.accs.get((key, t), {})

    def close(self, stream_time: int | None) -> list[Closing]:
        """Remove the windows closed at ``stream_time`` (all for None), by end then key, and
        forget the events no window can hold any more."""
        if stream_time is not None and (self.due is None or stream_time < self.due):
            return []
        closing: list[Closing] = []
        for key, windows in list(self.windows.items()):
            for t in sorted(windows):
                if stream_time is not None and t + 1 + self.grace > stream_time:
                    break
                del windows[t]
                events, accs = self.window(key, t)
                self.accs.pop((key, t), None)
                closing.append((t + 1, key, t - self.size + 1, events, accs))
            if not windows:
                del self.windows[key]
        for key, events in list(self.events.items()):
            kept = (
                []
                if stream_time is None
                else [e for e in events if e[0] > stream_time - self.size - self.grace]
            )
            if kept:
                self.events[key] = kept
            else:
                del self.events[key]
        self.due = min(
            (t + 1 + self.grace for windows in self.windows.values() for t in windows),
            default=None,
        )
        closing.sort(key=lambda item: (item[0], item[1]))
        return closing

    def changed(self) -> list[tuple[str, int]]:
        """The pending windows changed since the last call, by end then key."""
        out = [(key, t) for t, key in sorted(self.touched) if t in self.windows.get(key, {})]
        self.touched.clear()
        return out
