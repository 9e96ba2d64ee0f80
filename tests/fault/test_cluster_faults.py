"""A 3-broker cluster fails under an exactly_once worker while events are being published: the
broker leading the run's partitions is SIGKILLed and restarted; every broker is restarted in
turn; a broker goes for good. Topics have 3 replicas and min.insync.replicas 2 (the project's
defaults on three brokers), so each fault leaves a quorum of replicas serving.

Nothing published may be lost, and ``verify`` must be exact. The cluster is the session's own
(``local_cluster``), never a ``KAFKA_BOOTSTRAP_SERVERS`` one; each test leaves all three nodes
running and in sync for the next.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.broker.admin import admin_client, describe_partitions
from streams.broker.local import LocalCluster
from tests.conftest import (
    THROUGH_FAULTS,
    Generator,
    PipelineRun,
    Worker,
    assert_exactly_once,
    assert_nothing_lost,
    finish_after_faults,
    pipeline_runs,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

CONSUMED = "streams_events_consumed_total"
EOS = {"STREAMS_GUARANTEE": "exactly_once"}


@pytest.fixture
def cluster(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The session's cluster; afterwards every node runs again and every partition is in sync."""
    yield local_cluster
    for node in local_cluster.nodes:
        if node.pid() is None:
            node.start(timeout_s=120)
    local_cluster.wait_in_sync(timeout_s=120)


@pytest.fixture
def cluster_run(
    cluster: LocalCluster, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., PipelineRun]]:
    yield from pipeline_runs(cluster.bootstrap, unique_name)


async def run_topics(run: PipelineRun) -> list[str]:
    """The run's topics: its own, and the internal ones its app creates (named after the app
    id, as changelog and repartition topics are)."""
    async with admin_client(run.kafka) as admin:
        internal = [t for t in await admin.list_topics() if t.startswith(run.app_id)]
    assert internal, "the worker created no topic of its own (no changelog?)"
    return [run.input, run.output, run.dlq, run.late, *internal]


async def busiest_leader(run: PipelineRun) -> int:
    """The broker that leads the most of the run's partitions; it leads some of the input's,
    the output's and the internal topics' partitions."""
    topics = await run_topics(run)
    leaders = {
        where: r.leader for where, r in (await describe_partitions(run.kafka, topics)).items()
    }
    node, _ = Counter(leaders.values()).most_common(1)[0]
    led = {topic for (topic, _), leader in leaders.items() if leader == node}
    assert {run.input, run.output} <= led, leaders
    assert any(t.startswith(run.app_id) for t in led), leaders
    return node


def progress(worker: Worker, publisher: Generator, events: int) -> int:
    """What the worker's consumed count must reach to show it goes on: ``events`` more, or
    everything published (publishing may end first)."""
    return min(int(worker.metric(CONSUMED) or 0) + events, publisher.count)


async def assert_replicated(run: PipelineRun, replicas: int) -> None:
    """Every partition of the run's topics has ``replicas`` replicas, and every topic a
    min.insync.replicas of one less."""
    topics = await run_topics(run)
    partitions = await describe_partitions(run.kafka, topics)
    assert {len(r.replicas) for r in partitions.values()} == {replicas}, partitions
    wanted = {"min.insync.replicas": None}
    async with admin_client(run.kafka) as admin:
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, wanted) for topic in topics]
        )
    min_isr = {
        topic: value
        for response in described
        for _, _, _, topic, entries in response.resources
        for _name, value, *_ in entries
    }
    assert min_isr == dict.fromkeys(topics, str(replicas - 1))


async def drain_and_audit(run: PipelineRun, publisher: Generator, worker: Worker) -> None:
    """Publishing ends, the rest is processed (see finish_after_faults); then nothing
    published is missing from the input and the output is exact."""
    finish_after_faults(run, publisher, worker, **EOS)
    await assert_nothing_lost(run, publisher)
    assert_exactly_once(await run.verify())


async def test_the_leader_of_the_runs_partitions_is_sigkilled_and_restarted(
    cluster: LocalCluster, cluster_run: Callable[..., PipelineRun]
) -> None:
    run = cluster_run(partitions=3)
    await run.create_topics()
    publisher = Generator(run, count=60_000, rate=2_000, seed=51)
    worker = run.start_worker(**EOS, **THROUGH_FAULTS)
    worker.wait_metric_at_least(CONSUMED, 10_000, timeout_s=120)
    await assert_replicated(run, 3)

    victim = await busiest_leader(run)
    cluster.node(victim).kill()
    worker.wait_metric_at_least(CONSUMED, progress(worker, publisher, 10_000), timeout_s=180)
    await asyncio.to_thread(cluster.node(victim).start, timeout_s=120)

    await drain_and_audit(run, publisher, worker)


async def test_a_rolling_restart_of_every_broker_during_processing(
    cluster: LocalCluster, cluster_run: Callable[..., PipelineRun]
) -> None:
    run = cluster_run(partitions=3)
    await run.create_topics()
    publisher = Generator(run, count=90_000, rate=1_000, seed=52)
    worker = run.start_worker(**EOS, **THROUGH_FAULTS)
    worker.wait_metric_at_least(CONSUMED, 5_000, timeout_s=120)

    for node in cluster.nodes:
        await asyncio.to_thread(node.stop)
        worker.wait_metric_at_least(CONSUMED, progress(worker, publisher, 2_000), timeout_s=180)
        await asyncio.to_thread(node.start, timeout_s=120)
        # A rolling restart waits for the node to catch up before the next one goes.
        await asyncio.to_thread(cluster.wait_in_sync, timeout_s=120)

    await drain_and_audit(run, publisher, worker)


async def test_a_broker_gone_for_good(
    cluster: LocalCluster, cluster_run: Callable[..., PipelineRun]
) -> None:
    """Two of three replicas still meet min.insync.replicas = 2: publishing, processing and
    the audit all finish without the third broker."""
    run = cluster_run(partitions=3)
    await run.create_topics()
    publisher = Generator(run, count=60_000, rate=2_500, seed=53)
    worker = run.start_worker(**EOS, **THROUGH_FAULTS)
    worker.wait_metric_at_least(CONSUMED, 10_000, timeout_s=120)

    cluster.node(await busiest_leader(run)).kill()

    await drain_and_audit(run, publisher, worker)
