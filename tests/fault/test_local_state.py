"""A worker with its state in RocksDB on a persistent state directory, SIGKILLed under load
(under exactly_once inside a transaction) and restarted: it restores only the changelog after
its stores' checkpoints, exactly_once stays exact and at_least_once loses nothing and counts
nothing twice (decision 0017)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.apps.reference import build
from streams.bench.state import HOUR_MS, event
from streams.publish import Publisher
from streams.state import checkpoint
from streams.topology.plan import plan
from tests.conftest import PipelineRun, Worker, assert_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]

CONSUMED = "streams_events_consumed_total"
KEYS = 100_000  # users, each one (user, window) aggregate and one event id in the state
MORE = 40_000  # events for new users after the checkpoint, of which the kill interrupts some
RESTORED = re.compile(
    r"restored (\d+) changelog records for (\d+) partitions of \S+ \((\d+) from a local store"
)


async def _publish(run: PipelineRun, first: int, count: int, *, per_s: int | None = None) -> None:
    """Events ``first`` … of users of their own, all in one hour-long window; ``per_s`` of
    them a second, in steps of a tenth of a second, or all at once."""
    step = count if per_s is None else max(1, per_s // 10)
    async with Publisher(run.kafka) as publisher:
        for begin in range(first, first + count, step):
            end = min(begin + step, first + count)
            await publisher.publish(
                run.input, ((f"u{i}".encode(), orjson.dumps(event(i))) for i in range(begin, end))
            )
            if per_s is not None:
                await asyncio.sleep(0.1)


class Changelog:
    """The ends of the run's changelog partitions: what a read_committed reader sees (the
    last stable offset) and what is written (the high watermark)."""

    def __init__(self, run: PipelineRun) -> None:
        planned = plan(build(run.settings).decl, run.app_id)
        [segment] = planned.segments
        assert segment.changelog is not None
        self.segment = segment.name
        self.tps = [TopicPartition(segment.changelog, p) for p in range(run.partitions)]
        servers = run.kafka.bootstrap_servers
        self._committed = AIOKafkaConsumer(
            bootstrap_servers=servers, isolation_level="read_committed"
        )
        self._written = AIOKafkaConsumer(bootstrap_servers=servers)

    async def __aenter__(self) -> Changelog:
        await self._committed.start()
        await self._written.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._committed.stop()
        await self._written.stop()

    async def written(self) -> dict[TopicPartition, int]:
        return await self._written.end_offsets(self.tps)

    async def in_transaction(self) -> bool:
        """True while records of a transaction not committed (nor aborted) are in it."""
        stable = await self._committed.end_offsets(self.tps)
        written = await self.written()
        return any(stable[tp] < written[tp] for tp in self.tps)


async def _until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f}s")
        await asyncio.sleep(0.1)


async def _kill_inside_a_transaction(worker: Worker, changelog: Changelog, after: int) -> None:
    """Once the worker consumed ``after`` events, SIGKILL it inside one of its transactions:
    frozen (SIGSTOP) at a random moment, as often as it takes, until a transaction of its is
    open and still open 300 ms later (its commit was not on the wire)."""
    deadline = time.monotonic() + 120
    while (worker.metric(CONSUMED) or 0) < after:
        assert worker.proc.poll() is None, worker.log_tail()
        if time.monotonic() > deadline:
            worker.fail(f"{CONSUMED} did not reach {after}")
        await asyncio.sleep(0.02)
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, worker.log_tail()
        worker.proc.send_signal(signal.SIGSTOP)
        if await changelog.in_transaction():
            await asyncio.sleep(0.3)
            if await changelog.in_transaction():
                worker.kill()
                return
        worker.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.01)
    worker.fail("no transaction seen open")


async def _kill_under_load(worker: Worker, after: int) -> None:
    """SIGKILL the worker once it consumed ``after`` events (at_least_once: no transaction)."""
    while (worker.metric(CONSUMED) or 0) < after:
        assert worker.proc.poll() is None, worker.log_tail()
        await asyncio.sleep(0.02)
    worker.kill()


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
async def test_a_worker_killed_under_load_replays_only_the_changelogs_tail(
    pipeline_run: Callable[..., PipelineRun], tmp_path: Path, guarantee: str
) -> None:
    run = pipeline_run(partitions=3)
    await run.create_topics()
    rocks = {
        "STREAMS_STORE": "rocksdb",
        "STREAMS_STATE_DIR": str(tmp_path),
        "STREAMS_GUARANTEE": guarantee,
        "STREAMS_COMMIT_INTERVAL_MS": "100",
        "STREAMS_WINDOW_SIZE_MS": str(HOUR_MS),
    }
    await _publish(run, 0, KEYS)
    # Nothing closes while the first worker runs (no idle advance): it holds every key.
    worker = run.start_worker(STREAMS_IDLE_TIMEOUT_MS="900000", **rocks)
    worker.wait_metric_at_least(CONSUMED, KEYS, timeout_s=180)
    async with Changelog(run) as changelog:
        directory = tmp_path / run.app_id / changelog.segment

        async def checkpointed_all() -> bool:
            written = await changelog.written()
            found = [
                checkpoint.read(directory / f"{run.input}-{tp.partition}" / "checkpoint.json")
                for tp in changelog.tps
            ]
            # Idle, each store is checkpointed up to its last record (then a commit marker).
            return all(
                f is not None and f.offset >= written[tp] - 1
                for f, tp in zip(found, changelog.tps, strict=True)
            )

        await _until(checkpointed_all, "the idle worker's checkpoints")
        # Killed while it works through the events published meanwhile.
        publishing = asyncio.ensure_future(_publish(run, KEYS, MORE, per_s=MORE // 8))
        if guarantee == "exactly_once":
            await _kill_inside_a_transaction(worker, changelog, after=KEYS + 1_000)
        else:
            await _kill_under_load(worker, after=KEYS + 1_000)
        await publishing
        size = sum((await changelog.written()).values())

    final = run.start_worker(exit_when_idle=3, **rocks).finish(timeout_s=300)
    assert final["consumed"] > 0
    log = run.log_dir / f"worker-{len(run.workers) - 1}.log"
    match = RESTORED.search(log.read_text())
    assert match is not None, log.read_text()[-3000:]
    restored, partitions, reused = map(int, match.groups())
    assert (partitions, reused) == (3, 3)
    assert "restoring from the whole changelog" not in log.read_text()
    # Every key is in the changelog (its size > KEYS); the restart replayed what was
    # committed after the checkpoints (seen: 1,021 records of 101,500), not even the
    # aborted transaction's records.
    assert size > KEYS
    assert restored < size / 10, (restored, size)

    report = await run.verify(window_size_ms=HOUR_MS)
    if guarantee == "exactly_once":
        assert_exactly_once(report)
    else:
        # A final may repeat; a value may not: the reused state counted each event once.
        assert (report.missing, report.wrong, report.extra) == (0, 0, 0), report.as_dict()
        assert report.exact(allow_duplicates=True), report.as_dict()
