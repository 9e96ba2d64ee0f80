"""Group status over a sliding window of samples, after Burrow's consumer evaluation rules.

A sample of a partition is its committed offset and lag at one poll. Over the window
(oldest sample first), a partition is:

- ``OK`` when its lag was zero in any sample (it caught up within the window), when the
  window has a single sample, or when none of the rules below holds;
- ``STALLED`` when its lag is above zero and its committed offset did not move across the
  window (a member holds it but does not commit);
- ``WARNING`` when its committed offset moves but its lag never shrank from one sample to the
  next and grew overall (the group falls behind).

A group is ``STOPPED`` when it has no members and any partition has lag (nobody will catch
up); otherwise it takes the worst status of its partitions (``STALLED`` > ``WARNING`` > ``OK``).
Partitions without a committed offset have no lag and so do not vote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice, pairwise
from typing import Protocol, TypeVar


class Status(StrEnum):
    """A group's (or partition's) health, ordered by severity."""

    OK = "OK"
    WARNING = "WARNING"
    STALLED = "STALLED"
    STOPPED = "STOPPED"

    @property
    def severity(self) -> int:
        """0 for OK up to 3 for STOPPED."""
        return _SEVERITY[self]


_SEVERITY = {Status.OK: 0, Status.WARNING: 1, Status.STALLED: 2, Status.STOPPED: 3}
STATUSES: tuple[Status, ...] = tuple(Status)


@dataclass(frozen=True)
class OffsetSample:
    """One partition at one poll: when, its committed offset, its lag."""

    at: float
    committed: int
    lag: int


def partition_status(samples: Sequence[OffsetSample]) -> Status:
    """Burrow's rules over one partition's window (oldest first)."""
    if len(samples) < 2 or any(s.lag == 0 for s in samples):
        return Status.OK
    first, last = samples[0], samples[-1]
    if all(s.committed == first.committed for s in samples):
        return Status.STALLED
    if last.lag > first.lag and all(b.lag >= a.lag for a, b in pairwise(samples)):
        return Status.WARNING
    return Status.OK


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status, OK for none."""
    return max(statuses, key=lambda s: s.severity, default=Status.OK)


def group_status(windows: Iterable[Sequence[OffsetSample]], has_members: bool) -> Status:
    """A group's status from the windows of its partitions and whether it has members now."""
    windows = [w for w in windows if w]
    if not has_members and any(w[-1].lag > 0 for w in windows):
        return Status.STOPPED
    return worst(partition_status(w) for w in windows)


class _Timed(Protocol):
    @property
    def at(self) -> float: ...


T = TypeVar("T", bound=_Timed)


def trim_window(samples: Sequence[T], window_s: float) -> list[T]:
    """The samples of the last ``window_s`` seconds, oldest first.

    The newest sample at or before the window's start is kept too, so the window spans at
    least ``window_s`` once that much history exists: three polls one second apart make a
    two-second window even when each poll took a few milliseconds longer than planned.
    """
    if not samples:
        return []
    start = samples[-1].at - window_s
    first = 0
    for i, sample in enumerate(samples):
        if sample.at <= start:
            first = i
    return list(islice(samples, first, None))
