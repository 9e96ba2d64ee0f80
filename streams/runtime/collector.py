"""From outcomes to records: outputs, dead letters, late events, changelogs, poison.

Everything a batch produces is appended to a :class:`~streams.broker.batches.BatchSender`
here, with its partition and headers: outputs by the murmur2 of their key (keyless ones stay
on the input's partition number), dead letters and late events on the input's partition of
their topic, changelog records on the input's partition of the segment's changelog. An output
the broker could never accept (larger than the topic's ``max.message.bytes``: known before
sending; or refused for good after sending) goes to its pipeline's dead-letter topic with
stage ``produce``, and processing goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition

from streams.broker.batches import Headers, Poison, partition_for
from streams.compat import observe_many
from streams.core.formats import EncodeError, FormatEncoder
from streams.core.jsonbytes import dumps
from streams.core.outcome import Outcome, resolve_origin
from streams.core.segment import SegmentTask
from streams.dlq import (
    HEADER_MESSAGE,
    HEADER_OFFSET,
    HEADER_OPERATOR,
    HEADER_PARTITION,
    HEADER_STAGE,
    HEADER_TOPIC,
    HEADER_TS,
    dead_letter_headers,
)
from streams.errors import StreamsError
from streams.runtime.health import RunStats
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.poison import KnownPoison
from streams.runtime.topics import TopicLayout
from streams.topology.plan import CHANGELOG_BATCH_BYTES, Plan

HEADER_PIPELINE = "error.pipeline"


class Sink(Protocol):
    """Where records go: a :class:`~streams.broker.batches.BatchSender`, or the test
    driver's in-memory topics."""

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        *,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Add one record."""

    def extend(
        self,
        topic: str,
        partition: int,
        records: Sequence[tuple[Any, ...]],
        *,
        timestamps: bool = False,
    ) -> None:
        """Add ``(key, value)`` records (``(key, value, timestamp_ms)`` with
        ``timestamps``), no headers, to one partition."""

    def extend_whole(
        self, topic: str, partition: int, records: Sequence[tuple[Any, ...]], *, cap: int
    ) -> bool:
        """:meth:`extend`, in one record batch when they fit (True)."""

    def fits(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None
    ) -> bool:
        """Whether the record fits the topic's size limit."""

    def room(self, topic: str) -> int:
        """How many bytes of key and value (no headers) fit the topic's size limit."""


HEADER_OUTPUT_TOPIC = "output.topic"
HEADER_OUTPUT_PARTITION = "output.partition"


Drained = Callable[[SegmentTask, int, Sink, list[tuple[bytes, bytes | None]]], None]


def _ignore(
    task: SegmentTask, partition: int, sender: Sink, records: list[tuple[bytes, bytes | None]]
) -> None:
    """No one listens to what is drained."""


class Collector:
    """Appends a worker's results to senders; counts them in metrics and run totals.
    ``drained`` hears of every segment task's changelog records, and the sender they went
    to (a task's local store, decision 0017)."""

    def __init__(
        self,
        plan: Plan,
        layout: TopicLayout,
        metrics: WorkerMetrics,
        stats: RunStats,
        drained: Drained = _ignore,
        encoders: Mapping[str, FormatEncoder] | None = None,
    ) -> None:
        self.drained = drained
        # Output topics in a schema registry's format: values re-encoded on their way out.
        self.encoders = dict(encoders or {})
        self.partitions = layout.partitions
        self.metrics = metrics
        self.stats = stats
        self.dlq_of_output = {segment.output: segment.dlq for segment in plan.segments}
        self.pipeline_of_output = {segment.output: segment.name for segment in plan.segments}
        self.dlqs = {segment.dlq for segment in plan.segments}
        # Outputs the broker refused for good (the batch was then replayed), with the
        # broker's reason: diverted to the dead-letter topic when the replay produces them.
        self.known_poison = KnownPoison()

    def dead_letters(
        self,
        sender: Sink,
        dlq: str,
        tp: TopicPartition,
        records: Sequence[Any],
        failures: list[tuple[int, str, str, str | None]],
        wall: int,
        pipeline: str | None = None,
    ) -> None:
        """Original key and bytes of each failed record, with headers saying why (and, for a
        failure in user code, where the failing operator was declared)."""
        if not failures:
            return
        parts = self.partitions[dlq]
        append = sender.append
        for index, stage, reason, where in failures:
            record = records[index]
            headers = dead_letter_headers(
                stage, reason, tp.topic, tp.partition, record.offset, wall, record.headers
            )
            if where:
                headers.append((HEADER_OPERATOR, where.encode()))
            if pipeline is not None:
                headers.append((HEADER_PIPELINE, pipeline.encode()))
            append(dlq, tp.partition % parts, record.key, record.value, headers=headers)
        self.metrics.dlq_writes.labels(dlq).inc(len(failures))
        self.metrics.produced.labels(dlq).inc(len(failures))

    def derived(
        self,
        sender: Sink,
        dlq: str,
        tp: TopicPartition,
        letters: list[tuple[bytes | None, bytes, str, str, str]],
        wall: int,
        pipeline: str,
    ) -> None:
        """Dead letters with no input record of their own (a window whose final could not
        be made, a timer, a final record that failed further on): their key and JSON value,
        with the source partition but no offset."""
        parts = self.partitions[dlq]
        for key, value, stage, reason, where in letters:
            headers = [
                (HEADER_STAGE, stage.encode()),
                (HEADER_MESSAGE, reason.encode("utf-8", "replace")),
                (HEADER_TOPIC, tp.topic.encode()),
                (HEADER_PARTITION, str(tp.partition).encode()),
                (HEADER_TS, str(wall).encode()),
                (HEADER_OPERATOR, where.encode()),
                (HEADER_PIPELINE, pipeline.encode()),
            ]
            sender.append(dlq, tp.partition % parts, key, value, headers=headers)
        self.metrics.dlq_writes.labels(dlq).inc(len(letters))
        self.metrics.produced.labels(dlq).inc(len(letters))

    def outcome(
        self,
        sender: Sink,
        task: SegmentTask,
        tp: TopicPartition,
        records: Sequence[Any],
        outcome: Outcome,
        wall: int,
    ) -> None:
        """A chunk's (or a tick's) results of one segment task."""
        segment = task.segment
        name = segment.name
        metrics = self.metrics
        dlq = segment.dlq
        right = segment.right
        if right is not None and tp.topic == right.input:  # a join's second input's records
            dlq = right.dlq
        if outcome.outputs:
            self._outputs(sender, segment.output, tp.partition, outcome.outputs, wall)
            metrics.emitted.labels(name).inc(len(outcome.outputs))
            self.stats.emitted += len(outcome.outputs)
        if outcome.finals:
            observe_many(
                metrics.emit_latency.labels("event_time"),
                [(max(0.0, (wall - end) / 1000), count) for end, count in outcome.finals.items()],
            )
        if outcome.dead:
            failures: list[tuple[int, str, str, str | None]] = [
                (index, stage, reason, where)
                for index, (stage, reason, where) in sorted(outcome.dead.items())
                if index >= 0
            ]
            self.dead_letters(sender, dlq, tp, records, failures, wall, name)
            derived = [
                (*resolve_origin(outcome.origins[-1 - index]), stage, reason, where)
                for index, (stage, reason, where) in sorted(outcome.dead.items(), reverse=True)
                if index < 0
            ]
            if derived:
                self.derived(sender, segment.dlq, tp, derived, wall, name)
            for stage, _, _ in outcome.dead.values():
                metrics.failed.labels(name, stage).inc()
            self.stats.failed += len(outcome.dead)
        if outcome.late:
            late = segment.late
            assert late is not None
            parts = self.partitions[late]
            for index in outcome.late:
                record = records[index]
                headers = [
                    (HEADER_TOPIC, tp.topic.encode()),
                    (HEADER_PARTITION, str(tp.partition).encode()),
                    (HEADER_OFFSET, str(record.offset).encode()),
                ]
                sender.append(late, tp.partition % parts, record.key, record.value, headers=headers)
            metrics.late.labels(name).inc(len(outcome.late))
            metrics.produced.labels(late).inc(len(outcome.late))
            self.stats.late += len(outcome.late)
        if outcome.late_derived:
            self._late_derived(sender, segment, tp, outcome.late_derived)
        if outcome.late_raw:
            self._late_joined(sender, segment, tp, outcome.late_raw)
        if outcome.timers_fired:
            metrics.timers_fired.labels(name).inc(outcome.timers_fired)
        if outcome.duplicates:
            metrics.duplicates.labels(name).inc(len(outcome.duplicates))
            self.stats.duplicates += len(outcome.duplicates)
        if outcome.filtered:
            metrics.filtered.labels(name).inc(outcome.filtered)
        if outcome.join_misses:
            metrics.join_misses.labels(name).inc(outcome.join_misses)
        if outcome.key_mismatches:
            metrics.key_mismatches.labels(name).inc(outcome.key_mismatches)
        if outcome.enrich_hits or outcome.enrich_misses:
            metrics.enrich_hits.labels(name).inc(outcome.enrich_hits)
            metrics.enrich_misses.labels(name).inc(outcome.enrich_misses)
            for seconds in outcome.enrich_seconds:
                metrics.enrich_seconds.labels(name).observe(seconds)

    def _late_joined(
        self,
        sender: Sink,
        segment: Any,
        tp: TopicPartition,
        late: list[tuple[str, int, int, bytes | None, bytes | None]],
    ) -> None:
        """Records late for a join, unchanged, to their input's late topic (once each, even
        when a flat_map of their side made several events of one)."""
        inputs = segment.inputs
        done: set[tuple[int, int]] = set()
        for topic, side, offset, key, value in late:
            if (side, offset) in done:
                continue
            done.add((side, offset))
            headers = [
                (HEADER_TOPIC, inputs[side].encode()),
                (HEADER_PARTITION, str(tp.partition).encode()),
                (HEADER_OFFSET, str(offset).encode()),
            ]
            sender.append(topic, tp.partition % self.partitions[topic], key, value, headers=headers)
            self.metrics.produced.labels(topic).inc()
        self.metrics.late.labels(segment.name).inc(len(done))
        self.stats.late += len(done)

    def _late_derived(
        self, sender: Sink, segment: Any, tp: TopicPartition, late: list[tuple[str | None, Any]]
    ) -> None:
        """Late events no input record made (a timer's values): key and JSON value, with the
        source partition but no offset."""
        topic = segment.late
        assert topic is not None
        parts = self.partitions[topic]
        headers = [
            (HEADER_TOPIC, tp.topic.encode()),
            (HEADER_PARTITION, str(tp.partition).encode()),
        ]
        for key, value in late:
            try:
                encoded = dumps(value)
            except Exception:  # a value JSON cannot hold: its repr, rather than nothing
                encoded = dumps(repr(value))
            raw_key = None if key is None else key.encode()
            sender.append(topic, tp.partition % parts, raw_key, encoded, headers=list(headers))
        self.metrics.late.labels(segment.name).inc(len(late))
        self.metrics.produced.labels(topic).inc(len(late))
        self.stats.late += len(late)

    def _outputs(
        self,
        sender: Sink,
        topic: str,
        partition: int,
        outputs: list[tuple[bytes | None, bytes, int | None]],
        wall: int,
    ) -> None:
        parts = self.partitions[topic]
        poison = self.known_poison
        # What a key and value may take of the topic's limit in a batch of their own.
        room = sender.room(topic)
        refused: list[Poison] = []
        # Grouped by partition (in order within each), then appended in bulk.
        by_partition: dict[int, list[tuple[bytes | None, bytes, int | None]]] = {}
        keyless = partition % parts
        encoder = self.encoders.get(topic)
        for output in outputs:
            key, value, _ = output
            target = keyless if key is None else partition_for(key, parts)
            if encoder is not None:
                try:
                    output = (key, encoder.encode(value), output[2])
                except EncodeError as exc:  # the JSON value goes to the dead-letter topic
                    refused.append(Poison(topic, target, key, value, [], str(exc)))
                    continue
                value = output[1]
            if len(value) + (0 if key is None else len(key)) > room:
                reason = f"a record of {len(value)} bytes exceeds {topic}'s max.message.bytes"
                refused.append(Poison(topic, target, key, value, [], reason))
                continue
            if poison:
                known = poison.divert(topic, key, value)
                if known is not None:
                    refused.append(Poison(topic, target, key, value, [], known))
                    continue
            group = by_partition.get(target)
            if group is None:
                by_partition[target] = [output]
            else:
                group.append(output)
        for target, group in by_partition.items():
            sender.extend(topic, target, group, timestamps=True)
        self.metrics.produced.labels(topic).inc(len(outputs) - len(refused))
        if refused:
            self.poison(sender, refused, wall)

    def poison(self, sender: Sink, refused: list[Poison], wall: int) -> None:
        """Send outputs the broker will never accept to their pipeline's dead-letter topic;
        a dead letter refused itself stops the worker (nowhere left to put it)."""
        for record in refused:
            dlq = self.dlq_of_output.get(record.topic)
            if dlq is None or record.topic in self.dlqs:
                raise StreamsError(
                    f"the dead-letter topic {record.topic!r} refused a record for good "
                    f"({record.reason}); raise its max.message.bytes or fix its ACLs, then "
                    "restart (the batch is replayed)"
                )
            headers = [
                (HEADER_STAGE, b"produce"),
                (HEADER_MESSAGE, record.reason.encode("utf-8", "replace")),
                (HEADER_OUTPUT_TOPIC, record.topic.encode()),
                (HEADER_OUTPUT_PARTITION, str(record.partition).encode()),
                (HEADER_TS, str(wall).encode()),
                (HEADER_PIPELINE, self.pipeline_of_output[record.topic].encode()),
            ]
            parts = self.partitions[dlq]
            if not sender.fits(dlq, record.key, record.value, headers):
                raise StreamsError(
                    f"an output of {len(record.value or b'')} bytes is too large for "
                    f"{record.topic!r} and for its dead-letter topic {dlq!r}; raise "
                    f"max.message.bytes of {dlq!r}, then restart"
                )
            sender.append(dlq, record.partition % parts, record.key, record.value, headers=headers)
            self.metrics.poison.labels(record.topic).inc()
            self.metrics.dlq_writes.labels(dlq).inc()
            pipeline = self.pipeline_of_output[record.topic]
            self.metrics.failed.labels(pipeline, "produce").inc()
            self.stats.failed += 1

    def changelog(self, sender: Sink, task: SegmentTask, partition: int) -> int:
        """The task's changelog records since the last drain; returns how many."""
        records = task.drain_changelog()
        topic = task.segment.changelog
        if records and topic is not None:
            # One batch: a drain is written whole or not at all (decision 0010, addendum).
            sender.extend_whole(topic, partition, records, cap=CHANGELOG_BATCH_BYTES)
            self.metrics.produced.labels(topic).inc(len(records))
            self.drained(task, partition, sender, records)
        return len(records)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000
