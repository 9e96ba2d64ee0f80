"""The plan's topics on the cluster: created when missing, checked, and measured.

Inputs, outputs, dead-letter, late and table topics get ``STREAMS_PARTITIONS`` partitions
when streams creates them. A changelog or repartition topic has as many partitions as the
topic it follows (its segment's input), in plan order, so a repartition topic that feeds a
second ``group_by`` is sized before the topics that follow it; it must keep that count
(partitions added to the input while a worker runs are followed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streams.broker.admin import (
    TopicSpec,
    ensure_topics,
    grow_partitions,
    partition_counts,
    topic_limits,
)
from streams.config import KafkaSettings
from streams.errors import StreamsError
from streams.topology.plan import Plan, PlannedTopic

log = logging.getLogger(__name__)


@dataclass
class TopicLayout:
    """Partition counts of every planned topic, and the size limit of those written to."""

    partitions: dict[str, int]
    limits: dict[str, int]


def specs(plan: Plan, partitions: int, counts: dict[str, int]) -> list[TopicSpec]:
    """The planned topics as specs; a derived topic takes its source's count from
    ``counts`` (a source not known yet leaves it out: call again once it exists) and must
    keep it (``copartitioned_with``)."""
    out = []
    for topic in plan.topics:
        like = topic.partitions_like
        if like is None:
            out.append(TopicSpec(topic.name, partitions, dict(topic.configs)))
        elif like in counts:
            out.append(TopicSpec(topic.name, counts[like], dict(topic.configs), like))
    return out


async def prepare(kafka: KafkaSettings, plan: Plan, partitions: int) -> TopicLayout:
    """Create what is missing; an existing changelog or repartition topic whose partition
    count is not its input's stops the worker with one line (ensure_topics)."""
    names = [topic.name for topic in plan.topics]
    await ensure_topics(kafka, specs(plan, partitions, {}))
    counts = await partition_counts(kafka, names)
    # Derived topics in plan order: a repartition topic may be the source of the next one.
    for topic in plan.topics:
        if topic.partitions_like is not None:
            await ensure_topics(kafka, specs(_only(plan, topic), partitions, counts))
            counts[topic.name] = counts[topic.partitions_like]
    limits = await topic_limits(
        kafka,
        [
            t.name
            for t in plan.topics
            if t.role in ("output", "dlq", "late", "repartition", "changelog")
        ],
    )
    return TopicLayout(counts, limits)


async def follow_growth(kafka: KafkaSettings, plan: Plan, counts: dict[str, int]) -> None:
    """Partitions were added to an input while the worker runs: grow the topics that must
    have as many (updates ``counts``)."""
    counts.update(await partition_counts(kafka, plan.inputs))
    for topic in plan.topics:
        like = topic.partitions_like
        if like is None or counts.get(like, 0) <= counts.get(topic.name, 0):
            continue
        log.warning(
            "%s now has %d partitions (was %d); growing %s to match. Keys hash to new "
            "partitions from here on, so a window open across the change can be emitted once "
            "per partition that saw the key",
            like,
            counts[like],
            counts[topic.name],
            topic.name,
        )
        await grow_partitions(kafka, topic.name, counts[like])
        counts[topic.name] = counts[like]


def check_copartitioned(plan: Plan, counts: dict[str, int]) -> None:
    """A join reads partition ``p`` of its two inputs as one task: they must have as many
    partitions (and be keyed alike, which no broker can tell). One line otherwise."""
    for segment in plan.segments:
        right = segment.right
        join = segment.join
        if right is None or join is None:
            continue
        left_count, right_count = counts.get(segment.input), counts.get(right.input)
        if left_count != right_count:
            raise StreamsError(
                f"{join.where}: .join_stream() reads {segment.input!r} ({left_count} "
                f"partitions) with {right.input!r} ({right_count}): they are not "
                "co-partitioned; re-key one side with .group_by(...) first (its repartition "
                "topic takes the other's partition count), or give both topics as many "
                "partitions"
            )


def _only(plan: Plan, topic: PlannedTopic) -> Plan:
    return Plan(plan.app_id, plan.segments, (topic,), plan.tables)
