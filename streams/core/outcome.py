"""What one call of a segment task produced, for the runtime to send and count."""

from __future__ import annotations

from dataclasses import dataclass, field

# (key, value, event time or None): a record for the segment's output topic. The event time
# is set for repartition records, whose downstream reads it as the record timestamp.
Output = tuple[bytes | None, bytes, int | None]
# (key, value, stage, reason, where): a dead letter with no input record of its own, e.g. a
# window whose custom aggregator's ``result`` raised when it closed (decision 0014).
Derived = tuple[bytes | None, bytes, str, str, str]


@dataclass(slots=True)
class Outcome:
    """Results of a batch (or a tick) of one segment on one input partition.

    ``dead`` maps the index of a record in the batch to the stage, reason and declaring line
    (``where``) of its first failure; ``derived`` holds dead letters of no input record;
    ``late`` holds late records' indices in arrival order (a dict as an ordered set);
    ``duplicates`` the index of each event dropped as a duplicate (a record's once per
    ``flat_map`` child dropped).
    """

    outputs: list[Output] = field(default_factory=list)
    dead: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    derived: list[Derived] = field(default_factory=list)
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
