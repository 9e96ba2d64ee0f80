"""Admin operations (topics) with errors a person can act on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)

from streams.config import KafkaSettings, Settings
from streams.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)


def unreachable(kafka: KafkaSettings) -> BrokerError:
    """The one-line error for a broker that does not answer."""
    return BrokerError(
        f"cannot reach Kafka at {kafka.bootstrap_servers}: start one with "
        "`streams kafka start` or set KAFKA_BOOTSTRAP_SERVERS to a running cluster"
    )


# OpenSSL's verify codes for a certificate that does not name the host (or IP) connected to.
_X509_NAME_MISMATCH = frozenset({62, 64})


def connection_error(kafka: KafkaSettings, exc: BaseException) -> BrokerError | None:
    """The one-line error for a connection refused by authentication or TLS, else None.

    It names the cause and the variables to check; it never quotes the password.
    """
    where = kafka.bootstrap_servers
    if isinstance(exc, SaslAuthenticationFailed | AuthenticationFailedError):
        return BrokerError(
            f"authentication failed at {where} for user {kafka.sasl_username!r} "
            f"({kafka.sasl_mechanism}): check KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return BrokerError(
            f"Kafka at {where} does not accept SASL mechanism {kafka.sasl_mechanism}: "
            "set KAFKA_SASL_MECHANISM to one the cluster enables"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        cause = exc.verify_message or exc.reason or "rejected"
        if exc.verify_code in _X509_NAME_MISMATCH:
            fix = "use a broker address the certificate names in KAFKA_BOOTSTRAP_SERVERS"
        else:
            fix = "set KAFKA_SSL_CAFILE to the CA that signed the brokers' certificates"
        return BrokerError(
            f"TLS certificate verification of Kafka at {where} failed ({cause}): {fix}"
        )
    if isinstance(exc, ssl.SSLError):
        return BrokerError(
            f"TLS handshake with Kafka at {where} failed ({exc.reason or exc}): check that "
            f"the listener there speaks KAFKA_SECURITY_PROTOCOL={kafka.security_protocol}"
        )
    return None


def protocol_mismatch(kafka: KafkaSettings) -> BrokerError:
    """The one-line error for a listener that drops the connection during the handshake."""
    return BrokerError(
        f"Kafka at {kafka.bootstrap_servers} closed the connection during the handshake: "
        f"check that the listener there speaks KAFKA_SECURITY_PROTOCOL={kafka.security_protocol}"
    )


async def diagnose(kafka: KafkaSettings, timeout_s: float = 10.0) -> BrokerError:
    """Why a client could not bootstrap: aiokafka only says it could not, so connect once
    to each bootstrap server (TLS, SASL, a metadata request) to find out."""
    from aiokafka.conn import collect_hosts, create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    kwargs = kafka.client_kwargs()
    del kwargs["bootstrap_servers"]
    mismatch = answered = False
    for host, port, _ in collect_hosts(kafka.bootstrap_servers, randomize=False):
        try:
            conn = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **kwargs),
                timeout_s,
            )
        except (OSError, KafkaError, TimeoutError) as exc:
            known = connection_error(kafka, exc)
            if known is not None:
                return known
            # Refused, unknown host or silence: nobody there. Anything after the TCP connect
            # (reset, closed, a SASL state error) is a listener speaking another protocol.
            mismatch |= isinstance(exc, KafkaError | ConnectionResetError | ConnectionAbortedError)
            continue
        try:
            await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
            answered = True
        except (KafkaError, TimeoutError):
            mismatch = True
        finally:
            conn.close()
    if mismatch:
        return protocol_mismatch(kafka)
    if answered:
        return BrokerError(
            f"Kafka at {kafka.bootstrap_servers} answers but its clients could not start; "
            "retry, and check the broker's log"
        )
    return unreachable(kafka)


async def _close(client: Any) -> None:
    stop = getattr(client, "stop", None) or client.close
    with contextlib.suppress(Exception):
        await stop()


async def start_client(client: Any, kafka: KafkaSettings, timeout_s: float = 20.0) -> None:
    """Start a producer, consumer or admin client. A broker that does not answer, refuses
    the credentials or presents a certificate that does not verify raises one BrokerError."""
    try:
        await asyncio.wait_for(client.start(), timeout_s)
    except TimeoutError:
        await _close(client)
        raise unreachable(kafka) from None
    except (KafkaConnectionError, OSError) as exc:
        await _close(client)
        known = connection_error(kafka, exc)
        raise (known or await diagnose(kafka)) from None


async def stop_within(client: Any, timeout_s: float, *, level: int = logging.WARNING) -> bool:
    """Stop a producer or consumer within ``timeout_s``; True when it stopped cleanly.

    One stuck in a retry loop (or whose sender died) is abandoned at the deadline, with a log
    line at ``level``: its stop is cancelled but not waited for, since a client busy retrying
    against a broker that does not answer may not honour the cancellation promptly. A stop
    that fails is logged the same way and never raises — not even the ``CancelledError``
    aiokafka's ``consumer.stop()`` lets escape when a fetch was in flight (its fetcher cancels
    and awaits its own tasks): raised, it skipped the rest of the worker's shutdown.
    """
    stopping = asyncio.ensure_future(client.stop())
    try:
        await asyncio.wait({stopping}, timeout=timeout_s)
    except asyncio.CancelledError:
        stopping.cancel()
        raise
    if not stopping.done():
        stopping.cancel()
        log.log(level, "a Kafka client did not stop within %.0fs; abandoned", timeout_s)
        return False
    failure = "its stop was cancelled" if stopping.cancelled() else stopping.exception()
    if failure is not None:
        log.log(level, "a Kafka client did not stop cleanly (%s)", failure)
        return False
    return True


@contextlib.asynccontextmanager
async def admin_client(
    kafka: KafkaSettings, timeout_s: float = 15.0
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client; a broker that does not answer in time raises BrokerError."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10_000)
    await start_client(admin, kafka, timeout_s)
    try:
        yield admin
    finally:
        await admin.close()


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project creates: name, partitions and topic-level configs.

    ``copartitioned_with`` names the topic whose partition p this topic's partition p belongs
    to (a changelog holds the state of its input's partition p; a repartition topic feeds it):
    such a topic fits only with exactly ``partitions`` partitions, and an existing one that
    has another count stops its creator with one line. Any other topic fits with any count.
    """

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    copartitioned_with: str | None = None


@dataclass(frozen=True)
class Replicas:
    """Where a partition lives: its leader, its replicas and those in sync."""

    leader: int
    replicas: tuple[int, ...]
    in_sync: tuple[int, ...]


# Kafka's own topics cannot be replicated more than the cluster has brokers; three copies
# survive the loss of one with min.insync.replicas = 2 still met.
DEFAULT_MAX_REPLICATION = 3


def pipeline_topics(settings: Settings) -> list[TopicSpec]:
    """The input, output, dead-letter and late topics of the reference pipeline."""
    names = (settings.input_topic, settings.output_topic, settings.dlq_topic, settings.late_topic)
    return [TopicSpec(name, settings.partitions) for name in names]


async def ensure_topics(kafka: KafkaSettings, specs: Iterable[TopicSpec]) -> dict[str, int]:
    """Create the topics that do not exist yet; returns those created, with their replication.

    Every topic the project creates is created here. Its replication factor is
    ``STREAMS_REPLICATION_FACTOR`` (:attr:`KafkaSettings.replication_factor`), by default
    min(3, the brokers the cluster reports), and with two or more replicas its
    ``min.insync.replicas`` is one less: acks=all writes survive the loss of one broker. An
    existing co-partitioned topic with the wrong partition count raises a BrokerError.
    """
    specs = list(specs)
    async with admin_client(kafka) as admin:
        existing = set(await admin.list_topics())
        _check_copartitioned(
            await _partition_counts(admin, [s.name for s in specs if s.name in existing]), specs
        )
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return {}
        replicas = await _replication_factor(admin, kafka)
        isr = {"min.insync.replicas": str(replicas - 1)} if replicas >= 2 else {}
        new = [
            NewTopic(s.name, s.partitions, replicas, topic_configs={**isr, **s.configs})
            for s in missing
        ]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise BrokerError(
                f"could not create topics {[s.name for s in missing]}: {exc}"
            ) from None
        return {s.name: replicas for s in missing}


async def _replication_factor(admin: AIOKafkaAdminClient, kafka: KafkaSettings) -> int:
    brokers = len((await admin.describe_cluster())["brokers"])
    wanted = kafka.replication_factor
    if wanted is None:
        return max(1, min(DEFAULT_MAX_REPLICATION, brokers))
    if wanted > brokers:
        raise ConfigError(
            f"STREAMS_REPLICATION_FACTOR={wanted} needs {wanted} brokers, but the cluster at "
            f"{kafka.bootstrap_servers} has {brokers}; lower it, or unset it for "
            f"min({DEFAULT_MAX_REPLICATION}, brokers)"
        )
    return wanted


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    if not topics:
        return {}
    described = await admin.describe_topics(topics)
    return {
        t["topic"]: len(t["partitions"])
        for t in described
        if t.get("error_code", 0) == 0 and t.get("partitions")
    }


def _check_copartitioned(counts: dict[str, int], specs: list[TopicSpec]) -> None:
    for spec in specs:
        has = counts.get(spec.name)
        source = spec.copartitioned_with
        if source is None or has is None or has == spec.partitions:
            continue
        if has < spec.partitions:
            fix = (
                f"if partitions were added to {source} while no worker ran, add them to "
                f"{spec.name} too (kafka-topics.sh --alter --partitions {spec.partitions}); "
                f"if {source} was recreated, delete {spec.name}"
            )
        else:
            fix = f"{source} was recreated with fewer partitions? delete {spec.name}"
        raise BrokerError(
            f"topic {spec.name} has {has} partitions but must have {spec.partitions}, as many "
            f"as {source} (its partition p belongs to partition p of {source}): {fix} (what "
            "it holds belongs to the old topic), or use a new STREAMS_APP_ID"
        )


async def describe_partitions(
    kafka: KafkaSettings, topics: Iterable[str] | None = None
) -> dict[tuple[str, int], Replicas]:
    """Leader, replicas and in-sync replicas of each partition of ``topics`` (of every topic,
    Kafka's own included, when None); a partition without a leader has leader -1."""
    async with admin_client(kafka) as admin:
        names = list(topics) if topics is not None else await admin.list_topics()
        described = await admin.describe_topics(names) if names else []
    return {
        (t["topic"], p["partition"]): Replicas(p["leader"], tuple(p["replicas"]), tuple(p["isr"]))
        for t in described
        if t.get("error_code", 0) == 0
        for p in t["partitions"]
    }


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
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await start_client(consumer, kafka)
    try:
        tps = {TopicPartition(topic, p): o for p, o in offsets.items()}
        consumer.assign(list(tps))
        await consumer.commit(tps)
    finally:
        await consumer.stop()


async def delete_records(
    kafka: KafkaSettings, before: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Delete every record below ``before[tp]`` in each partition (Kafka's DeleteRecords, as
    ``kafka-delete-records.sh`` does); returns each partition's new log start offset. Refused
    on a topic that is only compacted; the first partition's error raises."""
    from aiokafka.admin import RecordsToDelete

    if not before:
        return {}
    async with admin_client(kafka) as admin:
        return await admin.delete_records(
            {tp: RecordsToDelete(offset) for tp, offset in before.items()}
        )


async def grow_partitions(kafka: KafkaSettings, topic: str, count: int) -> bool:
    """Give ``topic`` at least ``count`` partitions; True if it had fewer."""
    from aiokafka.admin import NewPartitions

    if len(await topic_partitions(kafka, topic)) >= count:
        return False
    async with admin_client(kafka) as admin:
        try:
            await admin.create_partitions({topic: NewPartitions(total_count=count)})
        except KafkaError as exc:
            raise BrokerError(f"could not grow {topic!r} to {count} partitions: {exc}") from None
    return True


async def topic_limits(kafka: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    """Each existing topic's ``max.message.bytes``: the largest record batch it accepts."""
    found = await topic_config(kafka, topics, "max.message.bytes")
    return {name: int(value) for name, value in found.items() if value}


async def topic_config(kafka: KafkaSettings, topics: Iterable[str], key: str) -> dict[str, str]:
    """Each existing topic's value of the topic-level config ``key``."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    names = list(dict.fromkeys(topics))
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, {key: None}) for name in names]
    async with admin_client(kafka) as admin:
        responses = await admin.describe_configs(resources)
    found: dict[str, str] = {}
    for response in responses:
        for error_code, _, _, name, entries in response.resources:
            if error_code:
                continue
            for entry in entries:
                if entry[0] == key and entry[1] is not None:
                    found[name] = entry[1]
    return found


async def partition_counts(
    kafka: KafkaSettings, topics: Iterable[str], timeout_s: float = 15.0
) -> dict[str, int]:
    """Partition count of each existing topic among ``topics`` (missing ones are left out);
    a broker that does not answer within ``timeout_s`` raises BrokerError."""
    async with admin_client(kafka, timeout_s) as admin:
        # Only topics that exist are described: a metadata request naming a missing topic
        # creates it on a broker with auto.create.topics.enable (Kafka's default).
        existing = set(await admin.list_topics())
        return await _partition_counts(admin, [t for t in dict.fromkeys(topics) if t in existing])
