"""Where the worker's consumer stands against its partitions' log ends.

:class:`Positions` answers the questions the poll loop and the ticker ask of the consumer's
fetch responses: a partition's log end (its last stable offset under exactly_once) and
whether it is fresh, the consumer's position, whether a fetch left the input behind, whether
a join's side has records not taken yet; and keeps the lag gauges
(``streams_consumer_lag_records``, ``streams_consumer_lag_seconds``) from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.errors import StreamsError
from streams.lag.timelag import HeadHistory, estimate_time_lag
from streams.runtime.collector import now_ms
from streams.runtime.metrics import WorkerMetrics

# A partition counts as caught up (for idle advance and --exit-when-idle) only while a fetch
# response reported its log end within this long (see Positions.fresh_end).
FRESH_END_S = 1.0
POSITION_WAIT_S = 0.2
# Points of log-end history kept per partition for the time lag.
LAG_HISTORY_POINTS = 120


class Positions:
    """The consumer's positions and its partitions' log ends, as fetch responses report
    them; the lag gauges."""

    def __init__(self, consumer: AIOKafkaConsumer, *, eos: bool, metrics: WorkerMetrics) -> None:
        self._consumer = consumer
        self._end_of = consumer.last_stable_offset if eos else consumer.highwater
        self._metrics = metrics
        self._heads: dict[TopicPartition, HeadHistory] = {}

    def end(self, tp: TopicPartition) -> int | None:
        """The log end the last fetch response of ``tp`` reported (None: none yet, or not
        assigned any more)."""
        try:
            return self._end_of(tp)
        except (AssertionError, KeyError):  # not assigned any more (a rebalance)
            return None

    def fresh_end(self, tp: TopicPartition) -> int | None:
        """The partition's log end, if a fetch response reported it within FRESH_END_S;
        else None.

        Without a broker no response comes, and the last end known stays put: every partition
        looked caught up and idle, so the idle advance closed every open window early (later
        events then late) and --exit-when-idle exited with the input unread (seen in CI, a
        broker SIGKILLed under an at_least_once worker).
        """
        try:
            polled = self._consumer.last_poll_timestamp(tp)
        except AssertionError:  # not assigned (a rebalance)
            return None
        if polled is None or now_ms() - polled > FRESH_END_S * 1000:
            return None
        return self._end_of(tp)

    async def position(self, tp: TopicPartition) -> int | None:
        """The consumer's position, or None if it is not known right now.

        ``AIOKafkaConsumer.position`` waits until a position is valid, which during a rebalance
        only happens after ``on_partitions_assigned`` returns; waiting here, with the worker's
        lock held, would deadlock with that callback. So the wait is short, and a miss is
        skipped.
        """
        try:
            return await asyncio.wait_for(self._consumer.position(tp), POSITION_WAIT_S)
        except (TimeoutError, AssertionError, KafkaError, StreamsError):
            return None

    def waiting_past(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> int:
        """How many records wait past this fetch in its partitions (their log ends, as the
        fetch responses reported them, against the last records fetched)."""
        waiting = 0
        for tp, records in batches.items():
            if records:
                end = self.end(tp)
                if end is not None:
                    waiting += max(0, end - records[-1].offset - 1)
        return waiting

    async def not_taken(self, topics: Sequence[str], partition: int) -> tuple[bool, bool]:
        """For each of a join's two input topics: True when records of its partition
        ``partition`` exist that the worker has not taken yet (prefetched, or on the broker):
        its log end, as the last fetch response reported it, past the consumer's position."""
        flags = []
        for topic in topics:
            tp = TopicPartition(topic, partition)
            end = self.end(tp)
            position = None if end is None else await self.position(tp)
            flags.append(end is not None and position is not None and end > position)
        return flags[0], flags[1]

    def record_lag(self, tp: TopicPartition, position: int, end: int) -> None:
        """Set ``tp``'s lag gauges: records, and seconds from its log end's history."""
        history = self._heads.get(tp)
        if history is None:
            history = self._heads[tp] = HeadHistory(max_points=LAG_HISTORY_POINTS)
        wall = time.time()
        history.add(end, wall)
        labels = (tp.topic, str(tp.partition))
        self._metrics.lag.labels(*labels).set(max(0, end - position))
        seconds = estimate_time_lag(history, position, end, wall).seconds
        if seconds is not None:
            self._metrics.lag_seconds.labels(*labels).set(seconds)

    def forget_lag(self, tp: TopicPartition) -> None:
        """A partition gone: its lag gauges and history."""
        self._heads.pop(tp, None)
        labels = (tp.topic, str(tp.partition))
        for gauge in (self._metrics.lag, self._metrics.lag_seconds):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
