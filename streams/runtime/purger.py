"""Repartition records deleted once their group has committed past them.

A repartition topic (``.group_by``) is written by one segment and read by the next in the
same app; it keeps its records (``retention.ms=-1``: they carry event times, and time
retention deleted those of a replay before they were read). Records below the group's
committed offset of a partition are never read again (a task resumes at that offset or
further), so the worker deletes them, as Kafka Streams does after its commits
(``Admin.deleteRecords``, at most every ``repartition.purge.interval.ms``): at most every
``STREAMS_REPARTITION_PURGE_INTERVAL_MS``, in the background, never holding up a batch; a
purge that fails is logged and tried again at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from aiokafka import TopicPartition

log = logging.getLogger(__name__)

Delete = Callable[[Mapping[TopicPartition, int]], Awaitable[object]]


class RepartitionPurger:
    """Deletes the records of repartition partitions below the offsets this worker
    committed on them (under exactly_once: the offsets its transactions committed)."""

    def __init__(self, topics: Iterable[str], delete: Delete, interval_s: float | None) -> None:
        """``delete`` deletes the records below each partition's offset; ``interval_s`` is
        the least time between two purges (None: never purge)."""
        self._topics = frozenset(topics)
        self._delete = delete
        self._interval_s = interval_s
        self._committed: dict[TopicPartition, int] = {}
        self._purged: dict[TopicPartition, int] = {}
        self._last = time.monotonic()
        self._task: asyncio.Future[None] | None = None

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Offsets were committed (or the transaction that carried them was)."""
        for tp, offset in offsets.items():
            if tp.topic in self._topics and offset > self._committed.get(tp, 0):
                self._committed[tp] = offset

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """The partitions were revoked: their next owner purges them."""
        for tp in tps:
            self._committed.pop(tp, None)
            self._purged.pop(tp, None)

    def maybe_purge(self) -> None:
        """Start a purge in the background when the interval has passed since the last one
        and something was committed past what is purged; returns at once."""
        if self._interval_s is None or (self._task is not None and not self._task.done()):
            return
        now = time.monotonic()
        if now - self._last < self._interval_s:
            return
        wanted = {
            tp: offset for tp, offset in self._committed.items() if offset > self._purged.get(tp, 0)
        }
        if wanted:
            self._last = now
            self._task = asyncio.ensure_future(self._purge(wanted))

    async def close(self) -> None:
        """Abandon a purge in flight (the worker stops; the next purge covers it)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _purge(self, wanted: dict[TopicPartition, int]) -> None:
        try:
            await self._delete(wanted)
        # Whatever goes wrong here (the broker away, no Delete permission on the topic) must
        # not stop the worker: the records wait for the next purge.
        except Exception as exc:
            log.warning(
                "deleting committed repartition records failed (%r); retrying in %.0fs",
                exc,
                self._interval_s,
            )
            return
        for tp, offset in wanted.items():
            if tp in self._committed:
                self._purged[tp] = max(offset, self._purged.get(tp, 0))
        log.debug("deleted repartition records below %s", wanted)
