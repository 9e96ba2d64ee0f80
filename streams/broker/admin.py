"""Admin operations (topics) with errors a person can act on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streams.config import KafkaSettings, Settings
from streams.errors import BrokerError


def unreachable(kafka: KafkaSettings) -> BrokerError:
    """The one-line error for a broker that does not answer."""
    return BrokerError(
        f"cannot reach Kafka at {kafka.bootstrap_servers}: start one with "
        "`streams kafka start` or set KAFKA_BOOTSTRAP_SERVERS to a running cluster"
    )


async def start_client(client: Any, kafka: KafkaSettings, timeout_s: float = 20.0) -> None:
    """Start a producer or consumer; a broker that does not answer raises one BrokerError."""
    try:
        await asyncio.wait_for(client.start(), timeout_s)
    except (TimeoutError, KafkaConnectionError, OSError):
        with contextlib.suppress(Exception):
            await client.stop()
        raise unreachable(kafka) from None


@contextlib.asynccontextmanager
async def admin_client(
    kafka: KafkaSettings, timeout_s: float = 15.0
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client; a broker that does not answer in time raises BrokerError."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (TimeoutError, KafkaConnectionError, OSError):
        with contextlib.suppress(Exception):
            await admin.close()
        raise unreachable(kafka) from None
    try:
        yield admin
    finally:
        await admin.close()


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project creates: name, partitions and topic-level configs."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def pipeline_topics(settings: Settings) -> list[TopicSpec]:
    """The input, output, dead-letter and late topics of the reference pipeline."""
    names = (settings.input_topic, settings.output_topic, settings.dlq_topic, settings.late_topic)
    return [TopicSpec(name, settings.partitions) for name in names]


async def ensure_topics(kafka: KafkaSettings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    specs = list(specs)
    async with admin_client(kafka) as admin:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs) for s in missing]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise BrokerError(
                f"could not create topics {[s.name for s in missing]}: {exc}"
            ) from None
        return [s.name for s in missing]


async def topic_partitions(kafka: KafkaSettings, topic: str) -> list[int]:
    """Partition numbers of ``topic``; a missing topic raises BrokerError."""
    async with admin_client(kafka) as admin:
        described = await admin.describe_topics([topic])
    info = described[0] if described else {}
    if info.get("error_code", 0) != 0 or not info.get("partitions"):
        raise BrokerError(f"topic {topic!r} does not exist at {kafka.bootstrap_servers}")
    return sorted(p["partition"] for p in info["partitions"])


async def committed_offsets(kafka: KafkaSettings, group: str, topic: str) -> dict[int, int]:
    """Offsets ``group`` committed on ``topic``, per partition (empty for a new group)."""
    async with admin_client(kafka) as admin:
        offsets = await admin.list_consumer_group_offsets(group)
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def commit_offsets(
    kafka: KafkaSettings, group: str, topic: str, offsets: dict[int, int]
) -> None:
    """Commit ``offsets`` for ``group`` without joining it (a tool's progress marker)."""
    if not offsets:
        return
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await start_client(consumer, kafka)
    try:
        tps = {TopicPartition(topic, p): o for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()
