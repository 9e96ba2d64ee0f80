"""The lag monitor: snapshots in, per-group reports out. Pure: no I/O, no clock of its own.

Both ``streams lag`` and ``streams lag-exporter`` feed it the snapshots they poll; it keeps a
head history per partition (for time lag) and a sliding window of samples per group (for
status). Groups and partitions absent from a snapshot are forgotten.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.lag.snapshot import GroupOffsets, PartitionId, Snapshot
from streams.lag.status import OffsetSample, Status, group_status, trim_window
from streams.lag.timelag import HeadHistory, Source, TimeLag, estimate_time_lag


@dataclass(frozen=True)
class PartitionReport:
    """One partition of one group: the figures ``kafka-consumer-groups --describe`` prints."""

    topic: str
    partition: int
    committed: int | None
    log_end: int | None
    lag: int | None
    time_lag: TimeLag
    consumer_id: str | None = None
    client_id: str | None = None
    host: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed_offset": self.committed,
            "log_end_offset": self.log_end,
            "lag": self.lag,
            "time_lag_seconds": self.time_lag.seconds,
            "time_lag_source": self.time_lag.source.value,
            "consumer_id": self.consumer_id,
            "client_id": self.client_id,
            "host": self.host,
        }


@dataclass(frozen=True)
class GroupReport:
    """A group at the latest poll, with its status over the window."""

    group: str
    state: str
    members: int
    status: Status
    partitions: tuple[PartitionReport, ...]
    samples: int = 1

    @property
    def sum_lag(self) -> int:
        """Total lag over partitions with a committed offset."""
        return sum(p.lag for p in self.partitions if p.lag is not None)

    @property
    def max_lag(self) -> int:
        """Largest partition lag (0 for none)."""
        return max((p.lag for p in self.partitions if p.lag is not None), default=0)

    @property
    def max_time_lag(self) -> float | None:
        """Largest known time lag in seconds; None when no partition has an estimate."""
        known = [p.time_lag.seconds for p in self.partitions if p.time_lag.seconds is not None]
        return max(known, default=None)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "group": self.group,
            "state": self.state,
            "members": self.members,
            "status": self.status.value,
            "samples": self.samples,
            "sum_lag": self.sum_lag,
            "max_lag": self.max_lag,
            "max_time_lag_seconds": self.max_time_lag,
            "partitions": [p.as_dict() for p in self.partitions],
        }


@dataclass(frozen=True)
class _GroupSample:
    """A group at one poll: whether it had members, and (committed, lag) per partition."""

    at: float
    has_members: bool
    offsets: Mapping[PartitionId, OffsetSample]


@dataclass
class LagMonitor:
    """Keeps the window and head histories; see the module docstring."""

    window_s: float = 60.0
    history_points: int = 360
    _heads: dict[PartitionId, HeadHistory] = field(default_factory=dict)
    _samples: dict[str, deque[_GroupSample]] = field(default_factory=dict)
    _record_times: dict[tuple[PartitionId, int], float] = field(default_factory=dict)
    _latest: Snapshot | None = None

    def observe(self, snapshot: Snapshot) -> None:
        """Add a poll's heads to the histories and its offsets to each group's window."""
        self._latest = snapshot
        at = snapshot.taken_at
        for p, end in snapshot.log_end.items():
            history = self._heads.get(p)
            if history is None:
                history = self._heads[p] = HeadHistory(self.history_points)
            history.add(end, at)
        for gone in set(self._heads) - set(snapshot.log_end):
            del self._heads[gone]

        seen = set()
        for group in snapshot.groups:
            seen.add(group.group)
            offsets = {
                p: OffsetSample(at, committed, lag)
                for p, committed, lag in _lags(group, snapshot.log_end)
            }
            window = self._samples.setdefault(group.group, deque())
            window.append(_GroupSample(at, bool(group.members), offsets))
            kept = trim_window(window, self.window_s)
            while len(window) > len(kept):
                window.popleft()
        for name in set(self._samples) - seen:
            del self._samples[name]
        # A record time is only worth keeping while some group still sits at that offset.
        committed_now = {(p, c) for g in snapshot.groups for p, c, _ in _lags(g, snapshot.log_end)}
        self._record_times = {
            key: t for key, t in self._record_times.items() if key in committed_now
        }

    def record_times_wanted(self) -> dict[PartitionId, list[int]]:
        """Committed offsets, per partition and ascending, that predate their head history
        and have no record time yet."""
        snapshot = self._latest
        if snapshot is None:
            return {}
        wanted: dict[PartitionId, set[int]] = {}
        for group in snapshot.groups:
            for p, committed, lag in _lags(group, snapshot.log_end):
                history = self._heads.get(p)
                if lag == 0 or history is None or not len(history):
                    continue
                if committed < history.offsets[0] and (p, committed) not in self._record_times:
                    wanted.setdefault(p, set()).add(committed)
        return {p: sorted(offsets) for p, offsets in wanted.items()}

    def add_record_times(self, times: Mapping[tuple[PartitionId, int], float]) -> None:
        """Timestamps (wall seconds) of the records at (partition, offset)."""
        self._record_times.update(times)

    def report(self) -> list[GroupReport]:
        """Every group of the latest snapshot, sorted by name."""
        snapshot = self._latest
        if snapshot is None:
            return []
        return [self._report(g, snapshot) for g in sorted(snapshot.groups, key=lambda g: g.group)]

    def _report(self, group: GroupOffsets, snapshot: Snapshot) -> GroupReport:
        owners = group.owners()
        rows = []
        for p in group.partitions():
            committed = group.committed.get(p)
            end = snapshot.log_end.get(p)
            lag = None if committed is None or end is None else max(0, end - committed)
            rows.append(
                PartitionReport(
                    topic=p.topic,
                    partition=p.partition,
                    committed=committed,
                    log_end=end,
                    lag=lag,
                    time_lag=self._time_lag(p, committed, end, snapshot.taken_at),
                    consumer_id=owners[p].consumer_id if p in owners else None,
                    client_id=owners[p].client_id if p in owners else None,
                    host=owners[p].host if p in owners else None,
                )
            )
        window = list(self._samples.get(group.group, ()))
        partition_windows = (
            [s.offsets[p] for s in window if p in s.offsets] for p in group.committed
        )
        return GroupReport(
            group=group.group,
            state=group.state,
            members=len(group.members),
            status=group_status(partition_windows, has_members=bool(group.members)),
            partitions=tuple(rows),
            samples=len(window),
        )

    def _time_lag(
        self, p: PartitionId, committed: int | None, end: int | None, now: float
    ) -> TimeLag:
        history = self._heads.get(p)
        if committed is None or end is None or history is None:
            return TimeLag(None, Source.UNKNOWN)
        record_time = self._record_times.get((p, committed))
        return estimate_time_lag(history, committed, end, now, record_time)


def _lags(
    group: GroupOffsets, log_end: Mapping[PartitionId, int]
) -> Iterator[tuple[PartitionId, int, int]]:
    """(partition, committed, lag) for each committed partition whose head is known."""
    for p, committed in group.committed.items():
        end = log_end.get(p)
        if end is not None:
            yield p, committed, max(0, end - committed)
