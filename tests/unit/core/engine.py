"""The reference pipeline's compiled engine and interpreter, behind the small per-partition
API the core's older tests were written against.

``PartitionProcessor(config)`` is the reference declaration (``streams.apps.reference``)
for those knobs, compiled, on one partition: ``process(events, now, seq)`` runs a batch of
already validated events whose offsets start at ``seq``. ``recompute_partition`` is the
plain interpreter of the same declaration over a partition's events. Fingerprint records
are left out of the changelog these tests see (they check the state records' bytes).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from streams.apps.reference import build
from streams.config import Settings
from streams.core.changelog import Record
from streams.core.compile import compile_segment
from streams.core.config import CoreConfig
from streams.core.decode import REFERENCE_GUARANTEES
from streams.core.interpreter import Batch, interpret
from streams.core.segment import FINGERPRINT_TAG, SegmentTask, run_sync
from streams.core.spill import KeyValueStore
from streams.topology.plan import Segment, plan

Raw = namedtuple("Raw", "offset key value timestamp headers")
P = TypeVar("P", bound=Hashable)


def reference_segment(config: CoreConfig) -> Segment:
    """The reference pipeline's segment for ``config``'s knobs."""
    settings = Settings(
        window_size_ms=config.window_size_ms,
        window_step_ms=config.window_step_ms,
        grace_ms=config.grace_ms,
        idle_timeout_ms=config.idle_timeout_ms,
        dedupe_horizon_ms=config.dedupe_horizon_ms,
        emit="updates" if config.emit_updates else "final",
    )
    return plan(build(settings).decl).segments[0]


@dataclass
class BatchOutcome:
    """What one batch produced: records (decoded), late and duplicate indices, accepted."""

    emitted: list[dict[str, Any]] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    accepted: int = 0


class PartitionProcessor:
    """One partition of the reference pipeline, compiled (see the module docstring)."""

    def __init__(self, config: CoreConfig, store: KeyValueStore | None = None) -> None:
        self.config = config
        compiled = compile_segment(
            reference_segment(config), REFERENCE_GUARANTEES, spilled=store is not None
        )
        self.task = SegmentTask(compiled, idle_timeout_ms=config.idle_timeout_ms, store=store)
        # Until the first batch, changelog records may be applied (a restore).
        self._restoring = True
        self._applied = False

    @property
    def _windows(self) -> Any:
        return self.task.windows

    @property
    def _dedupe(self) -> Any:
        return self.task.dedupes[0]

    def _ready(self) -> None:
        if self._restoring:
            self.task.finish_restore()
            self._restoring = False

    @property
    def stream_time(self) -> int | None:
        return self.task.stream_time

    @property
    def position(self) -> int | None:
        return self.task.position

    @property
    def open_windows(self) -> int:
        return self.task.open_windows

    @property
    def dedupe_size(self) -> int:
        return self.task.dedupe_size

    def note_position(self, offset: int) -> None:
        self.task.note_position(offset)

    def process(self, events: Sequence[Mapping[str, Any]], now_ms: int, seq: int) -> BatchOutcome:
        self._ready()
        records = [
            Raw(seq + i, str(e.get("user_id")).encode(), b"", 0, []) for i, e in enumerate(events)
        ]
        values = [dict(e) for e in events]
        outcome = run_sync(self.task.process(records, range(len(values)), values, now_ms))
        return BatchOutcome(
            emitted=[orjson.loads(v) for _, v, _ in outcome.outputs],
            late=list(outcome.late),
            duplicates=list(outcome.duplicates),
            accepted=outcome.accepted,
        )

    def touch(self, now_ms: int) -> None:
        self._ready()
        self.task.touch(now_ms)

    def tick(self, now_ms: int, caught_up: bool) -> list[dict[str, Any]]:
        self._ready()
        outcome = run_sync(self.task.tick(now_ms, caught_up))
        return [orjson.loads(v) for _, v, _ in outcome.outputs]

    def drain_changelog(self) -> list[Record]:
        self._ready()
        return [r for r in self.task.drain_changelog() if r[0][:1] != FINGERPRINT_TAG]

    def apply_changelog(self, key: bytes, value: bytes | None) -> None:
        assert self._restoring, "restore before the first batch"
        if not self._applied:
            # A changelog starts with its fingerprints, which drain_changelog leaves out here.
            for spec in self.task.compiled.dedupes:
                self.task.apply_changelog(FINGERPRINT_TAG + spec.tag, spec.fingerprint.encode())
            tag = self.task.compiled.window_tag
            fingerprint = self.task.compiled.window_fingerprint
            if tag is not None and fingerprint is not None:
                self.task.apply_changelog(FINGERPRINT_TAG + tag, fingerprint.encode())
            self._applied = True
        self.task.apply_changelog(key, value)


@dataclass(frozen=True)
class Recomputed:
    """What one partition must produce: finals in emission order, late and duplicates."""

    finals: list[dict[str, Any]]
    late: list[int]
    duplicates: list[int]


def recompute_partition(events: Sequence[Mapping[str, Any]], config: CoreConfig) -> Recomputed:
    """The interpreter of the reference declaration over validated events, in offset order."""
    records = [Raw(i, None, orjson.dumps(e), 0, []) for i, e in enumerate(events)]
    segment = reference_segment(config)
    result = interpret(_unvalidated(segment), [Batch(0, records)])
    return Recomputed([v for _, v, _ in result.outputs], result.late, result.duplicates)


def recompute(
    events_by_partition: Mapping[P, Sequence[Mapping[str, Any]]], config: CoreConfig
) -> dict[P, Recomputed]:
    """:func:`recompute_partition` for each partition."""
    return {p: recompute_partition(events, config) for p, events in events_by_partition.items()}


def _unvalidated(segment: Segment) -> Segment:
    """The segment reading its source without the schema (these events are pre-validated
    shapes, some of them outside the schema on purpose)."""
    from dataclasses import replace

    assert segment.source is not None
    return replace(segment, source=replace(segment.source, schema=None))
