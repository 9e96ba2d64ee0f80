"""What one poll of the cluster observed: plain values, no Kafka client types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class PartitionId(NamedTuple):
    """A topic partition."""

    topic: str
    partition: int


@dataclass(frozen=True)
class Member:
    """A consumer group member and the partitions assigned to it."""

    consumer_id: str
    client_id: str
    host: str
    partitions: tuple[PartitionId, ...] = ()


@dataclass(frozen=True)
class GroupOffsets:
    """A group as its coordinator describes it, with its committed offsets."""

    group: str
    state: str
    members: tuple[Member, ...] = ()
    committed: Mapping[PartitionId, int] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        """False for a group the coordinator does not know (state Dead, nothing committed)."""
        return self.state != "Dead" or bool(self.committed) or bool(self.members)

    def owners(self) -> dict[PartitionId, Member]:
        """Which member holds each assigned partition."""
        return {p: m for m in self.members for p in m.partitions}

    def partitions(self) -> list[PartitionId]:
        """Partitions with a committed offset or an owner, sorted."""
        return sorted(set(self.committed) | {p for m in self.members for p in m.partitions})


@dataclass(frozen=True)
class Snapshot:
    """Groups and the heads (log end offsets) of their partitions at wall time ``taken_at``.

    ``log_end`` is read after the committed offsets, so a lag is never negative by a race
    within one poll.
    """

    taken_at: float
    groups: tuple[GroupOffsets, ...]
    log_end: Mapping[PartitionId, int]
