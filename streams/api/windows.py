"""``tumbling``, ``hopping``, ``session`` and ``sliding``: the window specs users pass to
``.window``."""

from __future__ import annotations

from streams.topology.windows import Hopping, Session, Sliding


def tumbling(size_ms: int) -> Hopping:
    """Back-to-back windows of ``size_ms``, aligned to the epoch (``start = ts - ts % size``)."""
    return Hopping(size_ms, size_ms)


def hopping(size_ms: int, step_ms: int) -> Hopping:
    """Windows of ``size_ms`` starting every ``step_ms`` (an event is in ``size/step`` of them)."""
    return Hopping(size_ms, step_ms)


def session(gap_ms: int) -> Session:
    """Per key, events less than ``gap_ms`` apart belong to one session."""
    return Session(gap_ms)


def sliding(size_ms: int) -> Sliding:
    """Per key, a window ending at each distinct event time ``t``: the events in
    ``(t - size_ms, t]`` (``window_start = t - size_ms + 1``, ``window_end = t + 1``)."""
    return Sliding(size_ms)
