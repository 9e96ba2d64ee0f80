"""What one call of a segment task produced, for the runtime to send and count."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# (key, value, event time or None): a record for the segment's output topic. The event time
# is set for repartition records, whose downstream reads it as the record timestamp.
Output = tuple[bytes | None, bytes, int | None]
# (index, value, key, event time): an event between two steps of a segment. ``index`` is the
# record of the chunk it came from; a negative one names an entry of ``Outcome.origins``
# (a window's final record, a timer) for events that no input record made.
Item = tuple[int, Any, str | None, int]


@dataclass(slots=True)
class Outcome:
    """Results of a batch (or a tick) of one segment on one input partition.

    ``dead`` maps the index of a record in the batch to the stage, reason and declaring line
    (``where``) of its first failure; a negative index is ``-1 - n`` for ``origins[n]``, the
    ``(key, JSON value)`` a dead letter of no input record carries (a window whose result
    failed, a final record or a timer whose call failed downstream; decision 0014);
    ``late`` holds late records' indices in arrival order (a dict as an ordered set);
    ``duplicates`` the index of each event dropped as a duplicate (a record's once per
    ``flat_map`` child dropped).
    """

    outputs: list[Output] = field(default_factory=list)
    dead: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    # (key, JSON value, or what makes it only if a dead letter is written: see resolve_origin)
    origins: list[tuple[str | bytes | None, Any]] = field(default_factory=list)
    # A window's final records on their way to the operators after it.
    closed: list[Item] = field(default_factory=list)
    # Events of no input record that came late to a window: (key, value).
    late_derived: list[tuple[str | None, Any]] = field(default_factory=list)
    # Records late for a join: (late topic, side (0 left, 1 right), offset, key, value).
    late_raw: list[tuple[str, int, int, bytes | None, bytes | None]] = field(default_factory=list)
    timers_fired: int = 0
    late: dict[int, None] = field(default_factory=dict)
    accepted: int = 0
    duplicates: list[int] = field(default_factory=list)
    filtered: int = 0
    join_misses: int = 0
    key_mismatches: int = 0
    updates: int = 0
    # window end -> number of finals emitted for it (they share an emit latency)
    finals: dict[int, int] = field(default_factory=dict)
    enrich_hits: int = 0
    enrich_misses: int = 0
    enrich_seconds: list[float] = field(default_factory=list)

    def origin(self, key: str | None, value: bytes) -> int:
        """Register what a dead letter of no input record would carry; its index."""
        self.origins.append((None if key is None else key.encode(), value))
        return -len(self.origins)

    def origin_pair(self, key: str, left: bytes, right: bytes, into: str) -> int:
        """:meth:`origin` of a join's pair: the left value with ``value[into]`` = the right
        one, joined only if a dead letter needs it."""
        self.origins.append((key, (left, right, into)))
        return -len(self.origins)


def resolve_origin(origin: tuple[Any, Any]) -> tuple[bytes | None, bytes]:
    """An entry of :attr:`Outcome.origins` as the key and value its dead letter carries."""
    key, value = origin
    if key.__class__ is str:
        key = key.encode()
    if value.__class__ is tuple:  # a join's pair, joined now
        left, right, into = value
        joined = orjson.loads(left)
        joined[into] = orjson.loads(right)
        value = orjson.dumps(joined)
    return key, value
