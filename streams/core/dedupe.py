"""Which event ids a partition has accepted recently, kept per batch for a cheap changelog.

An event is a duplicate when an earlier accepted event had the same id and that event's
``ts + horizon > stream time``. Since stream time never goes back, an id whose ``ts + horizon
<= stream time`` is expired for good, so forgetting it is only a memory saving. Ids are
remembered in groups, one per batch, so the changelog gets one record per batch rather than
per event, and a tombstone once every id of the batch is expired.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from streams.core import changelog
from streams.core.changelog import Record


class Deduplicator:
    """Accepted ids: ``seen`` maps each to the largest ``ts`` it was accepted with.

    The hot path reads and writes ``seen`` directly and hands the batch's ids to
    :meth:`remember` at the end of the batch.
    """

    __slots__ = ("_expiries", "_horizon", "_ids", "_newest", "_stale", "seen", "tag")

    def __init__(self, horizon_ms: int, tag: bytes = changelog.DEDUPE_TAG) -> None:
        self._horizon = horizon_ms
        # What this dedupe's changelog keys start with (one per dedupe of a segment).
        self.tag = tag
        # None only in a spilled store's view of a batch: an id known not to be held.
        self.seen: dict[str, int | None] = {}
        # seq -> largest ts, for each batch that still holds a live id.
        self._newest: dict[int, int] = {}
        # seq -> (event ids, their ts) of those batches, as two tuples: a quarter of the memory
        # of a dict per batch, which matters at a million ids (kept elsewhere when spilled).
        self._ids: dict[int, tuple[tuple[str, ...], tuple[int, ...]]] = {}
        # (largest ts + horizon, seq): when each batch expires, soonest first. Entries left
        # behind by a batch that grew (same seq seen again) are skipped when popped.
        self._expiries: list[tuple[int, int]] = []
        self._stale = False

    def __len__(self) -> int:
        """Number of ids held, including expired ones not yet forgotten."""
        self.ensure_index()
        return len(self.seen)

    def remember(self, seq: int, ids: dict[str, int], stream_time: int) -> list[Record]:
        """Keep the ids accepted in batch ``seq`` and forget expired batches.

        Returns the changelog records this causes. A ``seq`` seen before (the shell replaying
        a batch after a restart) merges into the earlier record instead of replacing it.
        """
        records: list[Record] = []
        if ids:
            if seq in self._newest:
                merged = self._batch_ids(seq)  # a fresh dict, ours to change
                for event_id, ts in ids.items():
                    if ts > merged.get(event_id, ts - 1):
                        merged[event_id] = ts
                ids = merged
            newest = max(ids.values())
            if newest + self._horizon > stream_time:
                self._newest[seq] = newest
                self._keep_ids(seq, ids)
                heapq.heappush(self._expiries, (newest + self._horizon, seq))
                records.append((self.tag + b"%d" % seq, changelog.encode_ids(ids)))
            else:
                # Expired on arrival (a horizon shorter than the disorder): nothing to keep. An
                # earlier record under this seq is expired too and goes in the purge below.
                self._forget(ids, stream_time)
        records.extend(self.purge(stream_time))
        return records

    def purge(self, stream_time: int) -> list[Record]:
        """Forget the batches whose ids are all expired; returns their tombstones."""
        expiries = self._expiries
        batches = self._newest
        records: list[Record] = []
        while expiries and expiries[0][0] <= stream_time:
            expiry, seq = heapq.heappop(expiries)
            newest = batches.get(seq)
            if newest is None or newest + self._horizon != expiry:
                continue
            del batches[seq]
            ids = self._batch_keys(seq)
            self._drop_ids(seq)
            self._forget(ids, stream_time)
            records.append((self.tag + b"%d" % seq, None))
        return records

    def _batch_ids(self, seq: int) -> dict[str, int]:
        """The ids of batch ``seq`` with their ts, in a new dict."""
        ids, stamps = self._ids[seq]
        return dict(zip(ids, stamps, strict=True))

    def _batch_keys(self, seq: int) -> Collection[str]:
        return self._ids[seq][0]

    def _keep_ids(self, seq: int, ids: dict[str, int]) -> None:
        self._ids[seq] = (tuple(ids), tuple(ids.values()))

    def _drop_ids(self, seq: int) -> None:
        del self._ids[seq]

    def load(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Make ``seen`` hold every id of ``events``: it always does in memory."""

    def _forget(self, ids: Collection[str], stream_time: int) -> None:
        seen = self.seen
        horizon = self._horizon
        for event_id in ids:
            ts = seen.get(event_id)
            # A later batch may have accepted the id again; only drop it when expired.
            if ts is not None and ts + horizon <= stream_time:
                del seen[event_id]

    def apply(self, seq: int, ids: dict[str, int] | None) -> None:
        """Restore one changelog record of batch ``seq`` (``None``: tombstone)."""
        if ids is None:
            if self._newest.pop(seq, None) is not None:
                self._drop_ids(seq)
        elif ids:
            self._newest[seq] = max(ids.values())
            self._keep_ids(seq, ids)
        self._stale = True

    def ensure_index(self) -> None:
        """Rebuild ``seen`` and the expiry queue after :meth:`apply`; cheap when up to date."""
        if not self._stale:
            return
        seen: dict[str, int] = {}
        for ids, stamps in self._ids.values():
            for event_id, ts in zip(ids, stamps, strict=True):
                if ts > seen.get(event_id, ts - 1):
                    seen[event_id] = ts
        self.seen.clear()
        self.seen.update(seen)
        self._expiries = [(newest + self._horizon, seq) for seq, newest in self._newest.items()]
        heapq.heapify(self._expiries)
        self._stale = False
