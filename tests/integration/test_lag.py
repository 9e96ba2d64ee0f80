"""Consumer lag against a real broker: `streams lag` agrees with Kafka's own
kafka-consumer-groups, the exporter serves the admin's figures, statuses follow a consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from streams.broker.local import free_port, run_tool
from streams.config import KafkaSettings
from streams.lag.collect import LagCollector
from streams.lag.exporter import LagExporter, serve
from streams.lag.monitor import LagMonitor
from streams.lag.status import Status

pytestmark = pytest.mark.integration

# Records per partition of the test topic; partition 2 stays empty.
RECORDS = {0: 100, 1: 60, 2: 0}
CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


async def join(kafka: KafkaSettings, group: str, topic: str) -> AIOKafkaConsumer:
    """A member of ``group`` that has its assignment (and commits nothing on its own)."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka.client_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    deadline = time.monotonic() + 30
    while not consumer.assignment():
        assert time.monotonic() < deadline, f"{group} got no assignment"
        await consumer.getmany(timeout_ms=200)
    return consumer


async def commit(consumer: AIOKafkaConsumer, topic: str, offsets: dict[int, int]) -> None:
    await consumer.commit({TopicPartition(topic, p): o for p, o in offsets.items()})


@dataclass
class Groups:
    """Three groups on one topic: behind (a live member), caught up (a live member), idle."""

    topic: str
    behind: str
    caught: str
    idle: str
    produced_at: float
    members: dict[str, AIOKafkaConsumer] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [self.behind, self.caught, self.idle]


@pytest.fixture
async def groups(
    kafka_settings: KafkaSettings,
    create_topic: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> AsyncIterator[Groups]:
    topic = await create_topic("lag", partitions=3)
    producer = AIOKafkaProducer(**kafka_settings.client_kwargs(), acks="all")
    await producer.start()
    try:
        produced_at = time.time()
        for partition, count in RECORDS.items():
            for i in range(count):
                await producer.send(topic, b"x%d" % i, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    g = Groups(
        topic, unique_name("behind"), unique_name("caught"), unique_name("idle"), produced_at
    )
    try:
        g.members[g.behind] = await join(kafka_settings, g.behind, topic)
        await commit(g.members[g.behind], topic, {0: 40, 1: 10})  # nothing for partition 2
        g.members[g.caught] = await join(kafka_settings, g.caught, topic)
        await commit(g.members[g.caught], topic, RECORDS)
        idle = await join(kafka_settings, g.idle, topic)
        await commit(idle, topic, {0: 5, 1: 60, 2: 0})
        await idle.stop()  # leaves the group: no members, offsets stay
        yield g
    finally:
        for consumer in g.members.values():
            await consumer.stop()


async def streams_cli(
    env: dict[str, str], *args: str, timeout_s: float = 60
) -> tuple[int, str, str]:
    """Run ``streams ARGS`` without blocking the loop (the test's consumers keep heartbeating)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def parse_describe(text: str, groups: list[str]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Rows of `kafka-consumer-groups --describe`, ``-`` as None."""
    rows = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) == 9 and cols[0] in groups:
            group, topic, partition = cols[:3]
            current, end, lag, consumer_id, host, client_id = (
                None if c == "-" else c for c in cols[3:]
            )
            rows[group, topic, int(partition)] = {
                "committed_offset": None if current is None else int(current),
                "log_end_offset": None if end is None else int(end),
                "lag": None if lag is None else int(lag),
                "consumer_id": consumer_id,
                "host": None if host is None else host.lstrip("/"),
                "client_id": client_id,
            }
    return rows


async def test_offsets_equal_kafka_consumer_groups_describe(
    groups: Groups, kafka_bootstrap: str, project_env: dict[str, str]
) -> None:
    names = [x for g in groups.names for x in ("--group", g)]
    code, out, err = await streams_cli(project_env, "lag", "--json", "--window", "0", *names)
    assert code == 0, err
    ours = {
        (g["group"], p["topic"], p["partition"]): p
        for g in orjson.loads(out)["groups"]
        for p in g["partitions"]
    }
    kafkas_text = await asyncio.to_thread(
        run_tool,
        CONSUMER_GROUP_COMMAND,
        "--bootstrap-server",
        kafka_bootstrap,
        "--describe",
        *names,
    )
    kafkas = parse_describe(kafkas_text, groups.names)

    assert ours.keys() == kafkas.keys(), kafkas_text
    for key, theirs in kafkas.items():
        for column in (
            "committed_offset",
            "log_end_offset",
            "lag",
            "consumer_id",
            "host",
            "client_id",
        ):
            assert ours[key][column] == theirs[column], (key, column, kafkas_text)
    # The three situations this test is about, as both tools see them.
    assert kafkas[groups.behind, groups.topic, 0]["lag"] == 60
    assert kafkas[groups.behind, groups.topic, 2]["committed_offset"] is None
    assert kafkas[groups.behind, groups.topic, 2]["consumer_id"] is not None
    assert all(kafkas[groups.caught, groups.topic, p]["lag"] == 0 for p in RECORDS)
    assert kafkas[groups.idle, groups.topic, 0] == {
        "committed_offset": 5,
        "log_end_offset": 100,
        "lag": 95,
        "consumer_id": None,
        "host": None,
        "client_id": None,
    }


async def test_status_and_time_lag_of_the_three_groups(
    groups: Groups, project_env: dict[str, str]
) -> None:
    names = [x for g in groups.names for x in ("--group", g)]
    code, out, err = await streams_cli(
        project_env, "lag", "--json", "--window", "1", "--interval", "0.5", *names
    )
    assert code == 0, err
    report = {g["group"]: g for g in orjson.loads(out)["groups"]}
    assert report[groups.idle]["status"] == Status.STOPPED
    assert report[groups.idle]["members"] == 0
    # A live member parked at lag 60 that commits nothing over the window.
    assert report[groups.behind]["status"] == Status.STALLED
    assert (report[groups.behind]["sum_lag"], report[groups.behind]["max_lag"]) == (110, 60)
    assert report[groups.caught]["status"] == Status.OK
    assert report[groups.caught]["max_time_lag_seconds"] == 0
    # Time lag of offsets older than the 1 s of samples comes from the record timestamps,
    # for every group of a shared partition (idle and behind sit at 5 and 40 of partition 0).
    lagging = [p for g in (groups.idle, groups.behind) for p in report[g]["partitions"] if p["lag"]]
    assert len(lagging) == 3
    for p in lagging:
        assert p["time_lag_source"] == "record", p
        assert 0 < p["time_lag_seconds"] <= time.time() - groups.produced_at + 1


async def test_errors_are_one_line(project_env: dict[str, str]) -> None:
    code, _, err = await streams_cli(project_env, "lag", "--group", "no-such-group-x")
    assert code == 2
    bootstrap = project_env["KAFKA_BOOTSTRAP_SERVERS"]
    assert err.strip().splitlines() == [
        f"error: consumer group 'no-such-group-x' not found at {bootstrap}; "
        "`streams lag` without --group lists every group"
    ]
    nowhere = {**project_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    code, _, err = await streams_cli(nowhere, "lag")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: cannot reach Kafka at 127.0.0.1:")


async def test_watch_json_prints_one_object_per_refresh(
    groups: Groups, project_env: dict[str, str]
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams",
        "lag",
        "--watch",
        "--json",
        "--interval",
        "0.2",
        "--group",
        groups.caught,
        env=project_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines = [await asyncio.wait_for(proc.stdout.readline(), 30) for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0
    samples = [orjson.loads(line)["samples"] for line in lines]
    assert samples == [1, 2, 3]


async def admin_figures(
    kafka: KafkaSettings, group: str, topic: str
) -> tuple[dict[int, int], dict[int, int]]:
    """Committed offsets and log end offsets straight from aiokafka, for comparison."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    consumer = AIOKafkaConsumer(**kafka.client_kwargs())
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in RECORDS])
    finally:
        await consumer.stop()
        await admin.close()
    return (
        {tp.partition: om.offset for tp, om in committed.items() if tp.topic == topic},
        {tp.partition: end for tp, end in ends.items()},
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def samples_of(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_exporter_serves_the_admin_offsets(
    groups: Groups, kafka_settings: KafkaSettings
) -> None:
    port = free_port()
    exporter = LagExporter(
        kafka_settings, interval_s=0.3, window_s=1.0, pattern="|".join(groups.names)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(exporter, port=port, bind="127.0.0.1", stop=stop))
    try:
        text = ""
        stalled = (("group", groups.behind), ("status", "STALLED"))
        deadline = time.monotonic() + 30
        # The window must fill (1 s) before the live member parked behind counts as STALLED.
        while samples_of(text, "kafka_consumergroup_group_status").get(stalled) != 1:
            assert time.monotonic() < deadline, text
            await asyncio.sleep(0.3)
            with contextlib.suppress(OSError):
                text = await asyncio.to_thread(scrape, port)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)

    lag = samples_of(text, "kafka_consumergroup_group_lag")
    offset = samples_of(text, "kafka_consumergroup_group_offset")
    latest = samples_of(text, "kafka_partition_latest_offset")
    for group in groups.names:
        committed, ends = await admin_figures(kafka_settings, group, groups.topic)
        for p, end in ends.items():
            assert latest[(("partition", str(p)), ("topic", groups.topic))] == end
        mine = {k: v for k, v in lag.items() if ("group", group) in k}
        assert len(mine) == len(committed), (group, mine)
        for p, c in committed.items():
            (key,) = [k for k in mine if ("partition", str(p)) in k]
            assert mine[key] == ends[p] - c
            assert offset[key] == c
            labels = dict(key)
            if group == groups.idle:
                assert labels["consumer_id"] == labels["client_id"] == "unknown"
            elif group == groups.behind:
                assert labels["consumer_id"].startswith(labels["client_id"])
                assert labels["member_host"] == "127.0.0.1"
        sums = samples_of(text, "kafka_consumergroup_group_sum_lag")
        assert sums[(("group", group),)] == sum(ends[p] - c for p, c in committed.items())
    status = samples_of(text, "kafka_consumergroup_group_status")
    assert status[(("group", groups.idle), ("status", "STOPPED"))] == 1
    assert status[(("group", groups.behind), ("status", "STALLED"))] == 1
    assert status[(("group", groups.caught), ("status", "OK"))] == 1
    assert samples_of(text, "kafka_consumergroup_group_max_lag")[(("group", groups.behind),)] == 60


async def test_status_follows_a_consumer_from_ok_to_stalled_to_stopped(
    kafka_settings: KafkaSettings,
    create_topic: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> None:
    """A live consumer keeps up (OK), stops consuming but stays a member (STALLED), leaves
    (STOPPED); a producer writes all along."""
    topic = await create_topic("status", partitions=2)
    group = unique_name("status")
    producer = AIOKafkaProducer(**kafka_settings.client_kwargs(), linger_ms=0)
    await producer.start()
    consumer = await join(kafka_settings, group, topic)

    async def produce() -> None:
        while True:
            for i in range(10):
                await producer.send(topic, b"%d" % i, partition=i % 2)
            await producer.flush()
            await asyncio.sleep(0.1)

    async def consume() -> None:
        while True:
            await consumer.getmany(timeout_ms=50)
            await consumer.commit()

    monitor = LagMonitor(window_s=1.0)
    tasks = [asyncio.create_task(produce()), asyncio.create_task(consume())]

    async def statuses(
        collector: LagCollector, seconds: float, until: Status | None = None
    ) -> list[Status]:
        seen: list[Status] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            monitor.observe(await collector.snapshot([group]))
            seen.append(monitor.report()[0].status)
            if until is not None and seen[-1] is until:
                break
            await asyncio.sleep(0.2)
        return seen

    try:
        async with LagCollector(kafka_settings) as collector:
            await statuses(collector, 1.5)  # fill the window
            assert set(await statuses(collector, 2.0)) == {Status.OK}

            tasks.pop().cancel()  # stop consuming; heartbeats go on in the background
            seen = await statuses(collector, 15.0, until=Status.STALLED)
            assert seen[-1] is Status.STALLED, seen
            assert Status.STOPPED not in seen
            assert monitor.report()[0].members == 1

            await consumer.stop()  # leaves the group
            seen = await statuses(collector, 15.0, until=Status.STOPPED)
            assert seen[-1] is Status.STOPPED, seen
            assert monitor.report()[0].members == 0
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
