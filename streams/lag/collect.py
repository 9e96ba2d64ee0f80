"""Reading group offsets, members and partition heads from the cluster, batched.

One poll of ``n`` groups costs: ListGroups (one per broker, only when no groups are named),
FindCoordinator (one per group, cached across polls), DescribeGroups (one per coordinator),
OffsetFetch (one per group, all in flight at once), Metadata (one), ListOffsets (one per
partition leader). Nothing joins a group: the monitor never disturbs what it watches.

aiokafka's admin client has no ListOffsets, decodes DescribeGroups v3 with the v2 schema
(garbage against Kafka >= 2.3, which answers v3) and asks for metadata with topic
auto-creation on, so those three requests are built here and sent through the admin client's
connection.

Record timestamps for time lag (see :mod:`streams.lag.timelag`) come from a consumer without
a group that is assigned, seeked and paused on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    RequestTimedOutError,
    for_code,
)
from aiokafka.protocol.admin import (
    DescribeGroupsRequest_v0,
    DescribeGroupsRequest_v1,
    DescribeGroupsRequest_v2,
)
from aiokafka.protocol.api import Request
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.offset import OffsetRequest

from streams import compat
from streams.broker.admin import admin_client, start_client, stop_within, unreachable
from streams.config import KafkaSettings
from streams.errors import BrokerError
from streams.lag.snapshot import GroupOffsets, Member, PartitionId, Snapshot

_LATEST = -1  # ListOffsets timestamp meaning "the log end offset"
_READ_UNCOMMITTED = 0  # the high watermark, as kafka-consumer-groups reports it
_GROUP_ID_NOT_FOUND = 69  # newer brokers' answer for an unknown group (older ones say Dead)
# Coordinator moved or is loading: forget the cached coordinators and poll again once.
_RETRY_CODES = frozenset({14, 15, 16})


class _DescribeGroups(
    Request[DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2]
):
    """DescribeGroups capped at v2, whose response aiokafka decodes correctly."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(self, request_struct_class: type[Any]) -> Any:
        return request_struct_class(self._groups)


class _Retry(Exception):
    """A coordinator answered that it no longer (or not yet) serves a group."""


def _members(raw: Iterable[Any]) -> tuple[Member, ...]:
    members = []
    for member_id, client_id, host, _metadata, assignment in raw:
        partitions: tuple[PartitionId, ...] = ()
        if assignment:
            # Only groups of the consumer protocol carry this encoding; others show no partitions.
            with contextlib.suppress(Exception):
                decoded = ConsumerProtocolMemberAssignment.decode(assignment)
                partitions = tuple(
                    PartitionId(topic, p) for topic, ps in decoded.assignment for p in sorted(ps)
                )
        members.append(Member(member_id, client_id, host.lstrip("/"), partitions))
    return tuple(sorted(members, key=lambda m: m.consumer_id))


class LagCollector:
    """Polls snapshots of consumer groups; use as ``async with LagCollector(kafka) as c``."""

    def __init__(self, kafka: KafkaSettings, *, timeout_s: float = 15.0) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s
        self._stack = contextlib.AsyncExitStack()
        self._admin: AIOKafkaAdminClient | None = None
        self._probe: AIOKafkaConsumer | None = None
        self._coordinators: dict[str, int] = {}

    async def __aenter__(self) -> LagCollector:
        self._admin = await self._stack.enter_async_context(
            admin_client(self.kafka, self.timeout_s)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._probe is not None:
            # Not a bare stop(): after a failed fetch, aiokafka's consumer.stop() can raise a
            # CancelledError, which no `except Exception` stops: it would end the exporter
            # on the way out of a failed poll (streams.broker.admin.stop_within).
            await stop_within(self._probe, self.timeout_s, level=logging.DEBUG)
        await self._stack.aclose()

    @property
    def admin(self) -> AIOKafkaAdminClient:
        """The started admin client."""
        if self._admin is None:
            raise RuntimeError("LagCollector used outside `async with`")
        return self._admin

    async def _call(self, what: str, coro: Any) -> Any:
        """Await a client call with a deadline; connection trouble becomes one BrokerError."""
        try:
            return await asyncio.wait_for(coro, self.timeout_s)
        except (
            TimeoutError,
            OSError,
            KafkaConnectionError,
            NodeNotReadyError,
            RequestTimedOutError,
        ):
            raise unreachable(self.kafka) from None
        except KafkaError as exc:
            if getattr(exc, "errno", None) in _RETRY_CODES:
                raise _Retry from None
            raise BrokerError(f"{what} failed at {self.kafka.bootstrap_servers}: {exc}") from None

    async def list_groups(self, pattern: re.Pattern[str] | None = None) -> list[str]:
        """Consumer-protocol groups known to the cluster whose name matches ``pattern``."""
        listed = await self._call("listing consumer groups", self.admin.list_consumer_groups())
        names = {name for name, protocol, *_ in listed if protocol in ("consumer", "")}
        return sorted(n for n in names if pattern is None or pattern.fullmatch(n))

    async def snapshot(
        self, groups: Sequence[str], topics: Collection[str] | None = None
    ) -> Snapshot:
        """Members, committed offsets and partition heads of ``groups``.

        With ``topics``, only partitions of those topics are read.
        """
        for attempt in (1, 2):
            try:
                return await self._snapshot(list(groups), topics)
            except _Retry:
                self._coordinators.clear()
                if attempt == 2:
                    raise BrokerError(
                        f"group coordinators at {self.kafka.bootstrap_servers} keep moving; "
                        "retry in a moment"
                    ) from None
        raise AssertionError("unreachable")

    async def _snapshot(self, groups: list[str], topics: Collection[str] | None) -> Snapshot:
        if not groups:
            return Snapshot(time.time(), (), {})
        coordinators = await self._find_coordinators(groups)
        described, committed = await asyncio.gather(
            self._describe(coordinators), self._committed(coordinators)
        )
        result = []
        for group in groups:
            state, members = described[group]
            offsets = committed[group]
            if topics is not None:
                offsets = {p: o for p, o in offsets.items() if p.topic in topics}
                members = tuple(
                    Member(
                        m.consumer_id,
                        m.client_id,
                        m.host,
                        tuple(p for p in m.partitions if p.topic in topics),
                    )
                    for m in members
                )
            result.append(GroupOffsets(group, state, members, offsets))
        partitions = {p for g in result for p in g.partitions()}
        log_end = await self._log_end(partitions)
        return Snapshot(time.time(), tuple(result), log_end)

    async def _find_coordinators(self, groups: list[str]) -> dict[str, int]:
        missing = [g for g in groups if g not in self._coordinators]
        found = await self._call(
            "finding group coordinators",
            asyncio.gather(*(self.admin.find_coordinator(g) for g in missing)),
        )
        self._coordinators.update(zip(missing, found, strict=True))
        return {g: self._coordinators[g] for g in groups}

    async def _describe(
        self, coordinators: Mapping[str, int]
    ) -> dict[str, tuple[str, tuple[Member, ...]]]:
        by_node: dict[int, list[str]] = defaultdict(list)
        for group, node in coordinators.items():
            by_node[node].append(group)
        client = compat.admin_connection(self.admin)
        responses = await self._call(
            "describing consumer groups",
            asyncio.gather(*(client.send(n, _DescribeGroups(gs)) for n, gs in by_node.items())),
        )
        out: dict[str, tuple[str, tuple[Member, ...]]] = {}
        for response in responses:
            for error_code, group, state, _ptype, _protocol, members, *_ in response.groups:
                if error_code == _GROUP_ID_NOT_FOUND:
                    out[group] = ("Dead", ())
                elif error_code in _RETRY_CODES:
                    raise _Retry
                elif error_code:
                    raise BrokerError(
                        f"describing group {group!r} failed: {for_code(error_code).__name__}"
                    )
                else:
                    out[group] = (state, _members(members))
        return out

    async def _committed(
        self, coordinators: Mapping[str, int]
    ) -> dict[str, dict[PartitionId, int]]:
        groups = list(coordinators)
        fetched = await self._call(
            "reading committed offsets",
            asyncio.gather(
                *(self.admin.list_consumer_group_offsets(g, coordinators[g]) for g in groups)
            ),
        )
        return {
            g: {
                PartitionId(tp.topic, tp.partition): om.offset
                for tp, om in f.items()
                if om.offset >= 0
            }
            for g, f in zip(groups, fetched, strict=True)
        }

    async def _log_end(self, partitions: Collection[PartitionId]) -> dict[PartitionId, int]:
        """High watermarks of ``partitions``; partitions of deleted topics are left out."""
        if not partitions:
            return {}
        topics = sorted({p.topic for p in partitions})
        client = compat.admin_connection(self.admin)
        # Asked explicitly: a broker with auto.create.topics.enable would otherwise recreate
        # a deleted topic that a group still has offsets for.
        request = MetadataRequest(topics, allow_auto_topic_creation=False)
        response = await self._call(
            "reading topic metadata", client.send(client.get_random_node(), request)
        )
        metadata = response.to_object()["topics"]
        by_leader: dict[int, dict[str, list[tuple[int, int]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for topic in metadata:
            if topic["error_code"]:
                continue
            for part in topic["partitions"]:
                p = PartitionId(topic["topic"], part["partition"])
                if p in partitions and part["leader"] >= 0:
                    by_leader[part["leader"]][p.topic].append((p.partition, _LATEST))
        requests = [
            client.send(leader, OffsetRequest(-1, _READ_UNCOMMITTED, list(topics.items())))
            for leader, topics in by_leader.items()
        ]
        responses = await self._call("reading log end offsets", asyncio.gather(*requests))
        out: dict[PartitionId, int] = {}
        for response in responses:
            for topic, parts in response.topics:
                for partition, error_code, *rest in parts:
                    if not error_code:
                        out[PartitionId(topic, partition)] = rest[1]  # (timestamp, offset, ...)
        return out

    async def record_times(
        self, wanted: Mapping[PartitionId, Sequence[int]], timeout_s: float = 3.0
    ) -> dict[tuple[PartitionId, int], float]:
        """Timestamps (wall seconds) of the records at the wanted offsets of each partition.

        Each round seeks every partition to its lowest offset still wanted and reads one
        fetch, which answers every wanted offset it covers. Rounds go on while offsets remain
        and ``timeout_s`` allows; what is left out is read at a later call. A record gone to
        retention or compaction yields the next one's timestamp.
        """
        remaining = {p: sorted(offsets) for p, offsets in wanted.items() if offsets}
        out: dict[tuple[PartitionId, int], float] = {}
        if not remaining:
            return out
        probe = await self._get_probe()
        deadline = time.monotonic() + timeout_s
        try:
            while remaining and time.monotonic() < deadline:
                tps = {TopicPartition(p.topic, p.partition): p for p in remaining}
                probe.assign(list(tps))
                for tp, p in tps.items():
                    probe.seek(tp, remaining[p][0])
                pending = set(tps)
                while pending and time.monotonic() < deadline:
                    batches = await probe.getmany(*pending, timeout_ms=200)
                    for tp, records in batches.items():
                        if not records or tp not in pending:
                            continue
                        pending.discard(tp)
                        p = tps[tp]
                        offsets = remaining[p]
                        for record in records:
                            while offsets and offsets[0] <= record.offset:
                                out[p, offsets.pop(0)] = record.timestamp / 1000
                        if not offsets:
                            del remaining[p]
                for tp in pending:  # no answer within the deadline: give up on it for now
                    remaining.pop(tps[tp], None)
        except KafkaError:
            pass  # time lag falls back to extrapolation for what is left
        finally:
            # Paused, the probe stops prefetching; the next call replaces its assignment.
            probe.pause(*probe.assignment())
        return out

    async def _get_probe(self) -> AIOKafkaConsumer:
        if self._probe is None:
            probe = AIOKafkaConsumer(
                **self.kafka.client_kwargs(),
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=64 * 1024,
                request_timeout_ms=10_000,
            )
            await start_client(probe, self.kafka, self.timeout_s)
            self._probe = probe
        return self._probe
