"""Open session windows of one partition: per key, sessions of events less than a gap apart.

A session spans its first to its last event time; it ends (``window_end``) one gap after its
last event and closes once stream time reaches ``end + grace``. An event joins every session
it is less than ``gap`` from (``start - gap < ts < last + gap``); joining two merges them.
Closing is driven by a heap of close times whose stale entries (a session that grew or
merged since) are skipped when popped.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from streams.core.windows import NEVER

Session = list[Any]  # [start, last event time, accumulator]


class SessionStore:
    """``by_key[key]``: that key's open sessions, by start ascending."""

    __slots__ = ("_gap", "_grace", "_heap", "by_key", "changed", "next_close", "touched")

    def __init__(self, gap_ms: int, grace_ms: int) -> None:
        self._gap = gap_ms
        self._grace = grace_ms
        self.by_key: dict[str, list[Session]] = {}
        self._heap: list[tuple[int, str, int]] = []
        self.next_close = NEVER
        # Keys whose sessions changed since the last changelog drain.
        self.changed: dict[str, None] = {}
        # Sessions changed in the current batch (for update records), by identity.
        self.touched: dict[int, tuple[str, Session]] = {}

    def __len__(self) -> int:
        """Number of open sessions."""
        return sum(map(len, self.by_key.values()))

    def add(
        self,
        key: str,
        ts: int,
        first: Callable[[], list[Any]],
        update: Callable[[list[Any]], Any],
        merge: Callable[[list[Any], list[Any]], Any],
        copy: Callable[[list[Any]], list[Any]] | None = None,
    ) -> None:
        """Put an accepted event in its session: new, extended, or merging several.

        With ``copy`` (custom aggregators, whose calls may raise or change an accumulator in
        place before raising) the event is added to, and the sessions merged into, copies
        that replace the originals only when every call returned: an event that fails
        changes no session.
        """
        gap = self._gap
        sessions = self.by_key.get(key)
        if sessions is None:
            session: Session = [ts, ts, first()]
            self.by_key[key] = [session]
        else:
            hits = [s for s in sessions if s[0] - gap < ts < s[1] + gap]
            if not hits:
                session = [ts, ts, first()]
                sessions.append(session)
                sessions.sort(key=_start)
            else:
                session = hits[0]
                if copy is None:
                    update(session[2])
                    for other in hits[1:]:
                        merge(session[2], other[2])
                else:
                    acc = update(copy(session[2]))
                    for other in hits[1:]:
                        acc = merge(acc, copy(other[2]))
                    session[2] = acc
                for other in hits[1:]:
                    session[0] = min(session[0], other[0])
                    session[1] = max(session[1], other[1])
                    sessions.remove(other)
                    self.touched.pop(id(other), None)
                if ts < session[0]:
                    session[0] = ts
                if ts > session[1]:
                    session[1] = ts
        close = session[1] + gap + self._grace
        heapq.heappush(self._heap, (close, key, session[0]))
        if close < self.next_close:
            self.next_close = close
        self.changed[key] = None
        self.touched[id(session)] = (key, session)

    def close_until(self, stream_time: int) -> list[tuple[str, Session]]:
        """Remove and return the sessions closed at ``stream_time``, by end, then key."""
        heap = self._heap
        reach = self._gap + self._grace
        closed: list[tuple[str, Session]] = []
        while heap and heap[0][0] <= stream_time:
            close, key, start = heapq.heappop(heap)
            sessions = self.by_key.get(key)
            if not sessions:
                continue
            for session in sessions:
                if session[0] == start and session[1] + reach == close:
                    sessions.remove(session)
                    self.touched.pop(id(session), None)
                    closed.append((key, session))
                    self.changed[key] = None
                    break
            if not sessions:
                del self.by_key[key]
        self.next_close = heap[0][0] if heap else NEVER
        closed.sort(key=lambda item: (item[1][1], item[0]))
        return closed

    def put(self, key: str, sessions: list[Session]) -> None:
        """Set a key's sessions (restoring from the changelog)."""
        self.by_key[key] = sessions
        reach = self._gap + self._grace
        for session in sessions:
            heapq.heappush(self._heap, (session[1] + reach, key, session[0]))
        self.next_close = self._heap[0][0] if self._heap else NEVER

    def discard(self, key: str) -> None:
        """Drop a key's sessions (restoring a tombstone); its heap entries go stale."""
        self.by_key.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self.by_key.clear()
        self._heap.clear()
        self.next_close = NEVER
        self.changed.clear()
        self.touched.clear()


def _start(session: Session) -> int:
    start: int = session[0]
    return start
