"""Time lag: how long ago the next record a group will read became the partition's head.

The method is kafka-lag-exporter's. Each poll records the partition head (log end offset)
and the wall time it was seen: a monotone curve of (offset, time) points. The time lag of a
committed offset ``c`` is ``now - t(c)``, where ``t(c)`` is the time at which ``c`` was the
head, interpolated linearly between the two points around it.

A run of polls that sees the same head keeps only its first and last sighting: the head
reached that offset at the first one (the time that matters for a consumer parked there) and
the next offset arrived after the last one (the start of the next segment to interpolate on).

When ``c`` predates the oldest point (a consumer far behind, or a monitor that just started),
the estimate comes from, in this order:

1. the timestamp of the record at ``c``, when the caller could read it cheaply (one fetch per
   partition): capped at the oldest point's time, since that record already existed then;
2. extrapolation backwards along the average rate of the whole history;
3. nothing (``seconds is None``): the history saw no movement to extrapolate from.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Source(StrEnum):
    """Where a time lag estimate comes from."""

    CAUGHT_UP = "caught_up"
    INTERPOLATED = "interpolated"
    RECORD = "record"
    EXTRAPOLATED = "extrapolated"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class TimeLag:
    """Seconds behind the head (None when unknown) and how that was estimated."""

    seconds: float | None
    source: Source


def interpolate(offsets: Sequence[int], times: Sequence[float], offset: int) -> float | None:
    """The time at which ``offset`` was the head, or None outside the sampled range.

    ``offsets`` is non-decreasing and ``times`` increasing, index by index. An offset seen in
    several points maps to its first sighting.
    """
    if not offsets or offset < offsets[0] or offset > offsets[-1]:
        return None
    i = bisect_left(offsets, offset)
    if offsets[i] == offset:
        return times[i]
    o0, t0, o1, t1 = offsets[i - 1], times[i - 1], offsets[i], times[i]
    return t0 + (offset - o0) * (t1 - t0) / (o1 - o0)


class HeadHistory:
    """Bounded history of one partition's head as (offset, wall time) points, oldest first.

    Stored in two flat arrays (16 bytes a point) because an exporter keeps one per partition
    of every watched group.
    """

    def __init__(self, max_points: int = 360) -> None:
        if max_points < 2:
            raise ValueError("a head history needs at least 2 points")
        self.max_points = max_points
        self.offsets: array[int] = array("q")
        self.times: array[float] = array("d")

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, offset: int, at: float) -> None:
        """Record that the head was ``offset`` at wall time ``at``."""
        offsets, times = self.offsets, self.times
        if offsets and at <= times[-1]:
            return  # the same poll again, or a wall clock that stepped back: no new knowledge
        if offsets and offset < offsets[-1]:
            # The log was truncated or the topic recreated: the old curve describes other records.
            del offsets[:]
            del times[:]
        if len(offsets) >= 2 and offsets[-1] == offset == offsets[-2]:
            times[-1] = at  # extend a flat run: keep its first and last sighting only
            return
        offsets.append(offset)
        times.append(at)
        if len(offsets) > self.max_points:
            del offsets[0]
            del times[0]

    def time_at(self, offset: int) -> float | None:
        """When ``offset`` was the head (interpolated), or None outside the history."""
        return interpolate(self.offsets, self.times, offset)

    def rate(self) -> float | None:
        """Average records per second over the whole history, None when it never moved."""
        if len(self.offsets) < 2:
            return None
        moved = self.offsets[-1] - self.offsets[0]
        elapsed = self.times[-1] - self.times[0]
        return moved / elapsed if moved > 0 and elapsed > 0 else None


def estimate_time_lag(
    history: HeadHistory,
    committed: int,
    log_end: int,
    now: float,
    record_time: float | None = None,
) -> TimeLag:
    """Seconds since ``committed`` was the head of a partition whose head is ``log_end`` now.

    ``history`` should already hold the current head. ``record_time`` is the timestamp (wall
    seconds) of the record at ``committed``, used only when ``committed`` predates the history.
    """
    if committed >= log_end:
        return TimeLag(0.0, Source.CAUGHT_UP)
    at = history.time_at(committed)
    if at is not None:
        return TimeLag(max(0.0, now - at), Source.INTERPOLATED)
    if not len(history) or committed > history.offsets[-1]:
        return TimeLag(None, Source.UNKNOWN)
    first_offset, first_time = history.offsets[0], history.times[0]
    if record_time is not None:
        return TimeLag(max(0.0, now - min(record_time, first_time)), Source.RECORD)
    rate = history.rate()
    if rate is not None:
        at = first_time - (first_offset - committed) / rate
        return TimeLag(max(0.0, now - at), Source.EXTRAPOLATED)
    return TimeLag(None, Source.UNKNOWN)
