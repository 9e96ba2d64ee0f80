"""The bounded TTL cache of ``.enrich(...)``: what an external lookup returned, per key."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MISSING = object()


class TtlCache:
    """At most ``max_entries`` keys, each kept ``ttl_ms`` of wall-clock time after it was
    fetched; the least recently used key goes first when full. The clock is passed in."""

    __slots__ = ("_entries", "_max", "_ttl")

    def __init__(self, ttl_ms: int, max_entries: int) -> None:
        self._ttl = ttl_ms
        self._max = max_entries
        self._entries: OrderedDict[Any, tuple[int, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any, now_ms: int) -> Any:
        """The cached value, or :data:`MISSING` when absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        if now_ms - entry[0] >= self._ttl:
            del self._entries[key]
            return MISSING
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: Any, value: Any, now_ms: int) -> None:
        """Remember ``value`` for ``key`` from ``now_ms`` on."""
        entries = self._entries
        entries[key] = (now_ms, value)
        entries.move_to_end(key)
        while len(entries) > self._max:
            entries.popitem(last=False)
