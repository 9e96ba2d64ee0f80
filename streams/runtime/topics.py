"""The plan's topics on the cluster: created when missing, checked, and measured.

Inputs, outputs, dead-letter, late and table topics get ``STREAMS_PARTITIONS`` partitions
when streams creates them. A changelog or repartition topic has as many partitions as the
topic it follows (its segment's input), in plan order, so a repartition topic that feeds a
second ``group_by`` is sized before the topics that follow it.
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
from streams.errors import BrokerError
from streams.topology.plan import Plan, PlannedTopic

log = logging.getLogger(__name__)


@dataclass
class TopicLayout:
    """Partition counts of every planned topic, and the size limit of those written to."""

    partitions: dict[str, int]
    limits: dict[str, int]


def specs(plan: Plan, partitions: int, counts: dict[str, int]) -> list[TopicSpec]:
    """The planned topics as specs; a derived topic takes its source's count from
    ``counts`` (a source not known yet leaves it out: call again once it exists)."""
    out = []
    for topic in plan.topics:
        if topic.partitions_like is None:
            out.append(TopicSpec(topic.name, partitions, dict(topic.configs)))
        elif topic.partitions_like in counts:
            out.append(TopicSpec(topic.name, counts[topic.partitions_like], dict(topic.configs)))
    return out


async def prepare(kafka: KafkaSettings, plan: Plan, partitions: int) -> TopicLayout:
    """Create what is missing and check what exists: a changelog or repartition topic with
    fewer partitions than its input (the input grew) is grown to match; one with more
    cannot hold the state of the input's partitions and stops the worker."""
    names = [topic.name for topic in plan.topics]
    derived = [topic for topic in plan.topics if topic.partitions_like is not None]
    await ensure_topics(kafka, [s for s in specs(plan, partitions, {}) if s.name])
    counts = await partition_counts(kafka, names)
    # Derived topics in plan order: a repartition topic may be the source of the next one.
    for topic in derived:
        await _derive(kafka, topic, counts)
    limits = await topic_limits(
        kafka, [t.name for t in plan.topics if t.role in ("output", "dlq", "late", "repartition")]
    )
    return TopicLayout(counts, limits)


async def _derive(kafka: KafkaSettings, topic: PlannedTopic, counts: dict[str, int]) -> None:
    assert topic.partitions_like is not None
    want = counts[topic.partitions_like]
    have = counts.get(topic.name)
    if have is None:
        await ensure_topics(kafka, [TopicSpec(topic.name, want, dict(topic.configs))])
        counts[topic.name] = want
        return
    if have == want:
        return
    if have > want:
        raise BrokerError(
            f"topic {topic.name!r} ({topic.role}) has {have} partitions but its input "
            f"{topic.partitions_like!r} has {want}: it holds state for partitions the input "
            f"does not have; delete {topic.name!r} (its state is rebuilt from the input only "
            "if you also reset the group's offsets) or recreate the input with "
            f"{have} partitions"
        )
    log.warning(
        "%s has %d partitions, its input %s has %d (it grew); growing %s to match. Keys hash "
        "to new partitions from here on, so a window open across the change can be emitted "
        "once per partition that saw the key",
        topic.name,
        have,
        topic.partitions_like,
        want,
        topic.name,
    )
    await grow_partitions(kafka, topic.name, want)
    counts[topic.name] = want
