"""Stream time of one partition and its idle advance by an injected wall clock."""

from __future__ import annotations

# Stands for "no stream time yet" (minus infinity). An int rather than None keeps the per-event
# comparisons branch-free: nothing is closed and no id is expired before the first event.
NO_TIME = -(2**63)


class StreamClock:
    """Stream time plus what the idle advance needs: when the partition last saw a batch.

    ``stream_time`` is the largest ``ts`` accepted so far (``NO_TIME`` before the first),
    ``last_activity`` the wall-clock ms of the last batch or touch (``None`` before any), and
    ``at_last_activity`` the stream time at that moment.
    """

    __slots__ = ("at_last_activity", "last_activity", "stream_time")

    def __init__(self) -> None:
        self.stream_time = NO_TIME
        self.last_activity: int | None = None
        self.at_last_activity = NO_TIME

    def mark_activity(self, now_ms: int) -> None:
        """Record that a batch (or a batch of only invalid records) arrived at ``now_ms``."""
        self.last_activity = now_ms
        self.at_last_activity = self.stream_time

    def idle_target(self, now_ms: int, idle_timeout_ms: int) -> int | None:
        """The stream time an idle partition should move to at ``now_ms``, or None if not idle.

        While idle, stream time follows the wall clock from where it stood at the last
        activity, is at least ``now_ms``, and never goes backwards.
        """
        last = self.last_activity
        if last is None or now_ms - last < idle_timeout_ms:
            return None
        return max(self.stream_time, now_ms, self.at_last_activity + (now_ms - last))
