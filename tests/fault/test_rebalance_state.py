"""A rebalance keeps the state of partitions a worker still owns: when a third worker joins
two, only the partitions that moved are replayed from their changelogs.

Before issue 14, every rebalance dropped every partition's state and replayed it, the
partitions a worker kept included (eager protocol: all are revoked first). Each worker here
holds half of 50k open windows and dedupe ids when the third one joins.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable

import pytest
from aiokafka import TopicPartition

from streams.broker.reading import bulk_reader
from tests.conftest import PipelineRun, Worker, assert_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]

EVENTS = 50_000
PAST = 1_600_000_000_000
RESTORED = "streams_recovery_records_restored_total"
KEPT = "streams_rebalance_kept_partitions_total"
# Windows stay open while the three run: stream time must not follow the wall clock.
HOLD = {"STREAMS_GUARANTEE": "exactly_once", "STREAMS_IDLE_TIMEOUT_MS": "600000"}


def _assignments(worker: Worker) -> list[set[int]]:
    """The input partitions of each assignment the worker received, from its log."""
    lines = re.findall(r"assigned input partitions (.*)", worker.log_tail(500_000))
    return [{int(p) for p in re.findall(r"\[(\d+)\]", line)} for line in lines]


def _assigned(worker: Worker) -> set[int]:
    """The input partitions of the worker's last assignment."""
    found = _assignments(worker)
    return found[-1] if found else set()


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} within {timeout_s:.0f}s")


async def test_a_joining_worker_replays_only_the_partitions_that_moved(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=6)
    await run.create_topics()
    await run.publish(EVENTS, seed=61, start_ts=PAST, users=25_000)
    first, second = run.start_worker(**HOLD), run.start_worker(**HOLD)
    _wait(
        lambda: (
            (first.metric("streams_events_consumed_total") or 0)
            + (second.metric("streams_events_consumed_total") or 0)
            >= EVENTS
        ),
        "the two workers consumed the input",
    )
    before = {"first": first.metric(RESTORED), "second": second.metric(RESTORED)}
    held = {"first": _assigned(first), "second": _assigned(second)}
    seen = {"first": len(_assignments(first)), "second": len(_assignments(second))}

    third = run.start_worker(**HOLD)
    _wait(lambda: bool(_assigned(third)), "the third worker got partitions")
    _wait(
        lambda: all(_ready(w) for w in (first, second, third)),
        "all three ready after the rebalance",
    )
    after = {
        name: (worker.metric(RESTORED) or 0.0) - (before[name] or 0.0)
        for name, worker in (("first", first), ("second", second))
    }
    now = {"first": _assigned(first), "second": _assigned(second), "third": _assigned(third)}
    sizes = await _changelog_sizes(run)
    kept = (first.metric(KEPT) or 0) + (second.metric(KEPT) or 0)
    full_replay = {name: sum(sizes[p] for p in now[name]) for name in ("first", "second")}
    print(
        f"rebalance: before the join {held}, after {now}; records restored by the first two "
        f"after the join {after} where replaying their whole assignment would be "
        f"{full_replay}; by the third {third.metric(RESTORED):.0f}; partitions kept {kept:.0f}"
    )
    assert now["third"], now
    assert kept >= 1
    for name, worker in (("first", first), ("second", second)):
        # Only partitions new to the worker (in any assignment since the join: the group
        # may rebalance more than once) are replayed; the ones it kept are not.
        since = set().union(*_assignments(worker)[seen[name] :])
        moved_in = since - held[name]
        assert after[name] <= sum(sizes[p] for p in moved_in), (name, now, held, after)
    assert sum(after.values()) < sum(full_replay.values())

    for worker in (first, second, third):
        worker.proc.send_signal(signal.SIGTERM)
    for worker in (first, second, third):
        worker.proc.communicate(timeout=60)
    # A last worker closes every window (stream time follows the wall clock once idle).
    run.start_worker(exit_when_idle=3, STREAMS_GUARANTEE="exactly_once").finish()
    assert_exactly_once(await run.verify())


def _ready(worker: Worker) -> bool:
    return worker.metric("streams_worker_ready") == 1.0


async def _changelog_sizes(run: PipelineRun) -> dict[int, int]:
    consumer = await bulk_reader(run.kafka, read_committed=True)
    try:
        tps = [TopicPartition(f"{run.app_id}-state-changelog", p) for p in range(6)]
        ends = await asyncio.wait_for(consumer.end_offsets(tps), 30)
    finally:
        await consumer.stop()
    return {tp.partition: ends[tp] for tp in tps}
