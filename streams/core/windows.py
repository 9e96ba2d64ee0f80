"""Open windows of one partition, grouped by start so closing a window pops one dict.

Windows are aligned to the epoch: the windows holding ``ts`` are those whose start is a multiple
of the step with ``start <= ts < start + size``. Every window has the same size, so ordering by
start is ordering by end. A window closes when ``start + size + grace <= stream time``.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streams.core.aggregate import Aggregate

# next_close when nothing is open: later than any stream time.
NEVER = 2**63


class WindowStore:
    """Aggregates of open windows: ``by_start[start][user_id]`` is an :data:`Aggregate`.

    ``next_close`` is the stream time at which the earliest open window closes, so the hot
    path tests one int per stream-time advance instead of scanning windows.
    """

    __slots__ = ("_reach", "_starts", "by_start", "next_close")

    def __init__(self, size_ms: int, grace_ms: int) -> None:
        self._reach = size_ms + grace_ms
        self._starts: list[int] = []
        self.by_start: dict[int, dict[str, Aggregate]] = {}
        self.next_close = NEVER

    def __len__(self) -> int:
        """Number of (user, window) aggregates held."""
        return sum(map(len, self.by_start.values()))

    def open(self, start: int) -> dict[str, Aggregate]:
        """Create the empty window ``start`` and return its per-user aggregates."""
        users: dict[str, Aggregate] = {}
        self.by_start[start] = users
        insort(self._starts, start)
        self.next_close = self._starts[0] + self._reach
        return users

    def load(self, events: Sequence[Mapping[str, Any]], stream_time: int) -> None:
        """Make ``by_start`` hold what ``events`` can touch: it always does in memory."""

    def save(self, touched: Mapping[int, Mapping[str, Aggregate]]) -> None:
        """Keep the aggregates a batch changed: done in place in memory."""

    def close_until(self, stream_time: int) -> Iterable[tuple[int, dict[str, Aggregate]]]:
        """Remove and return, oldest first, the windows closed at ``stream_time``."""
        starts = self._starts
        reach = self._reach
        closed = []
        while starts and starts[0] + reach <= stream_time:
            start = starts.pop(0)
            closed.append((start, self.by_start.pop(start)))
        self.next_close = starts[0] + reach if starts else NEVER
        return closed

    def put(self, start: int, user_id: str, aggregate: Aggregate) -> None:
        """Set one aggregate (restoring from the changelog)."""
        users = self.by_start.get(start)
        if users is None:
            users = self.open(start)
        users[user_id] = aggregate

    def discard(self, start: int, user_id: str) -> None:
        """Drop one aggregate if held (restoring from the changelog)."""
        users = self.by_start.get(start)
        if users is None:
            return
        users.pop(user_id, None)
        if not users:
            del self.by_start[start]
            self._starts.remove(start)
            self.next_close = self._starts[0] + self._reach if self._starts else NEVER
