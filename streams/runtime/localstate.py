"""A segment task's RocksDB store across restarts: its checkpoint, and whether to trust it.

Kafka Streams' ``ProcessorStateManager`` with its ``.checkpoint`` file (decision 0017). With
``STREAMS_STORE=rocksdb`` a task's store stays on disk under a stable path
(:mod:`streams.state.rocks`), and a :class:`LocalState` goes with it.

**Reused or wiped.** When a task is adopted, its store is reused (the task then replays only
the changelog records after the checkpoint) when every one of these holds, and otherwise
wiped (the task replays its whole changelog into an empty store, as a new one would):

- a checkpoint file that reads, written for this changelog partition;
- the store on disk carries the checkpoint's stamp: nothing written after the checkpoint
  survived (:class:`~streams.state.rocks.RocksStore`), so it holds no state of a batch that
  was not committed, whatever the guarantee and however the process ended;
- the operators whose state the store holds have the fingerprints the checkpoint names;
- the checkpoint is younger than the changelog's ``delete.retention.ms``: compaction removes
  a tombstone that long after, and a tombstone written after the checkpoint but gone from the
  changelog would leave its key alive in the store;
- the changelog still holds, at the offset before the checkpoint's, the record the store last
  reflects (so ``log start <= offset - 1 < end``): it was neither truncated (retention,
  deleted records) nor deleted and created again since. That record is the first one the
  restore reads; the store is taken up (:meth:`reopen`) only once it matched.

**What is not in the store.** A spilled segment keeps its window accumulators and dedupe
batches in the store under their changelog keys; the rest of its state (stream time, stage
times, input position, sessions, the fingerprints of operators kept in memory, any state kind
to come) lives in memory and is rebuilt from the records that describe it. Those records are
kept in the store as well, each under ``\\x00m<changelog key>`` with the order it came in:
a compacted copy of that part of the changelog, replayed into the task, in order, when the
store is reopened, before the changelog's tail.

**When a checkpoint is written.** Only where the store is exactly the state the changelog
holds: every record drained from the task is written for good (acknowledged; under
exactly_once, committed), and the task processed nothing since. The worker calls
:meth:`checkpoint` at such points (it waits for its commit once in a while for one); a
restore's end is another. The store is marked with a new stamp and flushed, then the file is
replaced.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from streams.broker.batches import Acked, fields
from streams.core.segment import FINGERPRINT_TAG, SegmentTask
from streams.core.spill import held
from streams.runtime.metrics import WorkerMetrics
from streams.state import checkpoint as checkpoints
from streams.state.checkpoint import Checkpoint

if TYPE_CHECKING:  # rocksdict is an extra: a worker without it never makes a LocalState
    from streams.state.rocks import RocksStore

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"
MIRROR = b"\x00m"
MIRROR_END = b"\x00n"
# Mirrored records buffered before they go to the store (a restore of many sessions).
MIRROR_FLUSH_AT = 50_000
# Under load, a checkpoint (and the commit the worker waits for) at most this often, and
# only once this many changelog records were drained since the last: what a crash then
# replays. Kafka Streams checkpoints at its commit interval past 10,000 records.
CHECKPOINT_INTERVAL_S = 5.0
CHECKPOINT_RECORDS = 10_000
# Idle (nothing fetched), whatever was drained since, at most this often.
IDLE_CHECKPOINT_S = 1.0


class LocalState:
    """The kept store of one segment task and its checkpoint (see the module doc)."""

    def __init__(
        self,
        store: RocksStore,
        changelog: TopicPartition,
        fingerprints: dict[bytes, str],
        metrics: WorkerMetrics,
    ) -> None:
        self.store = store
        self.changelog = changelog
        self._stored_tags = set(fingerprints)
        self._fingerprints = {tag.decode(): fp for tag, fp in fingerprints.items()}
        self._metrics = metrics
        self._path = store.directory / CHECKPOINT_FILE
        # The checkpoint the store may be reused at, until the restore took it up or wiped.
        self.checkpoint: Checkpoint | None = None
        self._mirror: dict[bytes, bytes | None] = {}
        self._ordinal = 0
        # (end offset, digest of the record before it) of what is written for good.
        self._written: tuple[int, str] | None = None
        # The sender the last records drained went to, until they are written for good.
        self._unwritten: object | None = None
        self.unmarked = 0
        self._marked_at = time.monotonic()

    # -- adoption ------------------------------------------------------------------------

    def open(self) -> None:
        """Read the checkpoint and keep it as a candidate if the store and the declaration
        fit it; wipe the store otherwise."""
        found = checkpoints.read(self._path)
        if found is None:
            self.wipe("no_checkpoint", "it has no checkpoint")
        elif (found.topic, found.partition) != (self.changelog.topic, self.changelog.partition):
            self.wipe(
                "changelog_replaced", f"its checkpoint is of {found.topic}[{found.partition}]"
            )
        elif self.store.stamp != found.token:
            self.wipe("unclean", "it was written after its last checkpoint")
        elif found.fingerprints != self._fingerprints:
            self.wipe("declaration", "it was built by another declaration")
        else:
            self.checkpoint = found

    def expire(self, retention_ms: int, now_ms: int) -> None:
        """Wipe the store if its checkpoint is older than the changelog's
        ``delete.retention.ms``: a tombstone the restore would need may be compacted away."""
        found = self.checkpoint
        if found is not None and now_ms - found.written_ms >= retention_ms:
            self.wipe(
                "expired",
                f"its checkpoint is older than the changelog's delete.retention.ms "
                f"({retention_ms} ms)",
            )

    def resume_at(self, begin: int, end: int) -> int | None:
        """Where the restore reads from: the record before the checkpoint's offset, when the
        changelog (from ``begin`` to ``end``) can still hold it; None (the store wiped: from
        the beginning) otherwise."""
        found = self.checkpoint
        if found is None:
            return None
        if found.offset > end:
            self.wipe(
                "changelog_behind",
                f"the changelog ends at {end}, before its checkpoint at {found.offset}",
            )
            return None
        if found.offset - 1 < begin:
            self.wipe(
                "changelog_truncated",
                f"the changelog starts at {begin}, past its checkpoint at {found.offset}",
            )
            return None
        return found.offset - 1

    def verify(self, record: Any) -> bool:
        """True when ``record``, the first the restore read, is the one the checkpoint
        follows; the store is wiped otherwise (the restore then starts over from the
        beginning)."""
        found = self.checkpoint
        assert found is not None
        if record.offset == found.offset - 1 and found.last == checkpoints.digest(
            record.key, record.value
        ):
            return True
        self.wipe(
            "changelog_replaced",
            f"the changelog no longer holds the record its checkpoint follows, at offset "
            f"{found.offset - 1} (deleted and created again, or compacted)",
        )
        return False

    def reopen(self, task: SegmentTask) -> None:
        """Take the store up into ``task`` (built on it, nothing applied yet): the state the
        store holds, then the records kept beside it, in their order."""
        task.reopen()
        kept = sorted(
            (value[:8], key[len(MIRROR) :], value[8:])
            for key, value in self.store.scan(MIRROR, MIRROR_END)
        )
        for _, key, value in kept:
            task.apply_changelog(key, value)
        if kept:
            self._ordinal = int.from_bytes(kept[-1][0], "big")
        self.checkpoint = None
        self._metrics.local_stores.labels("reused").inc()

    def wipe(self, outcome: str, why: str) -> None:
        """Empty the store and forget its checkpoint: the task restores from the whole
        changelog. ``outcome`` labels the metric, ``why`` the log line."""
        log.info("%s: restoring from the whole changelog, as %s", self._name, why)
        self.store.wipe()
        checkpoints.remove(self._path)
        self.checkpoint = None
        self._mirror = {}
        self._ordinal = 0
        self._metrics.local_stores.labels(outcome).inc()

    @property
    def _name(self) -> str:
        return f"{self.changelog.topic}[{self.changelog.partition}]"

    # -- records -------------------------------------------------------------------------

    def replayed(self, records: Sequence[Any]) -> None:
        """Changelog records the restore applied to the task, in order."""
        self._keep([(record.key, record.value) for record in records])
        last = records[-1]
        self._written = (last.offset + 1, checkpoints.digest(last.key, last.value))
        self._unwritten = None

    def drained(self, records: Sequence[tuple[Any, ...]], sender: object) -> None:
        """Changelog records drained from the task into ``sender`` (a batch's), to be
        written."""
        if not records:
            return
        self._keep(records)
        self.unmarked += len(records)
        self._unwritten = sender

    def written(self, acked: Acked, sender: object) -> None:
        """The task's changelog records up to ``acked.end`` are written for good, all that
        ``sender`` held."""
        key, value, _, _ = fields(acked.last)
        self._written = (acked.end, checkpoints.digest(key, value))
        if self._unwritten is sender:
            self._unwritten = None

    def _keep(self, records: Sequence[tuple[Any, ...]]) -> None:
        """Keep the records the store does not hold by itself, numbered in order."""
        mirror = self._mirror
        stored = self._stored_tags
        for record in records:
            key, value = record[0], record[1]
            if held(key) or (key[:1] == FINGERPRINT_TAG and key[1:] in stored):
                continue
            if value is None:
                # A key gone is the same as a key never seen (compaction's rule too).
                mirror[MIRROR + key] = None
            else:
                self._ordinal += 1
                mirror[MIRROR + key] = self._ordinal.to_bytes(8, "big") + value
        if len(mirror) >= MIRROR_FLUSH_AT:
            self.store.write((), mirror)
            self._mirror = {}

    # -- checkpoints ---------------------------------------------------------------------

    def due(self, now: float, *, idle: bool) -> bool:
        """Whether a checkpoint is worth writing now (see the module's constants)."""
        if not self.unmarked:
            return False
        age = now - self._marked_at
        if idle:
            return age >= IDLE_CHECKPOINT_S
        return self.unmarked >= CHECKPOINT_RECORDS and age >= CHECKPOINT_INTERVAL_S

    def write_checkpoint(self) -> bool:
        """Mark and flush the store, then write its checkpoint; only when everything drained
        is written for good (else False: nothing done)."""
        if self._written is None or self._unwritten is not None:
            return False
        offset, last = self._written
        token = secrets.token_hex(8)
        self.store.mark(token, self._mirror)
        self._mirror = {}
        self.store.flush()
        checkpoints.write(
            self._path,
            Checkpoint(
                token=token,
                topic=self.changelog.topic,
                partition=self.changelog.partition,
                offset=offset,
                last=last,
                fingerprints=self._fingerprints,
                written_ms=time.time_ns() // 1_000_000,
            ),
        )
        self.unmarked = 0
        self._marked_at = time.monotonic()
        self._metrics.checkpoints.inc()
        return True

    def close(self, *, clean: bool) -> None:
        """Close the store; ``clean`` (everything drained is committed, nothing processed
        since): with a checkpoint of what is not in one yet."""
        if clean and self.unmarked:
            self.write_checkpoint()
        self.store.close()
