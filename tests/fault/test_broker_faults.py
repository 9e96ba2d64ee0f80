"""The broker itself fails: SIGKILLed and restarted on the same data dir, and stopped for longer
than every client timeout — while a publisher and a worker run; and a worker is stopped while
its broker is gone.

These tests need a broker they may kill, so they start their own local one (never the shared
session broker, nor a ``KAFKA_BOOTSTRAP_SERVERS`` cluster) and fail loudly when they cannot.
Publishers must retry without loss or duplicates (idempotent producer), workers must ride out
the outage and resume, and ``verify`` must be exact under exactly_once, complete under
at_least_once.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from streams.broker.local import LocalKafka
from streams.worker.shutdown import STOP_DEADLINE_S
from tests.conftest import (
    THROUGH_FAULTS,
    Generator,
    PipelineRun,
    assert_exactly_once,
    assert_nothing_lost,
    finish_after_faults,
    pipeline_runs,
    start_broker,
)

pytestmark = [pytest.mark.integration, pytest.mark.fault]

CONSUMED = "streams_events_consumed_total"
EOS = {"STREAMS_GUARANTEE": "exactly_once"}
# Longer than aiokafka's request timeout (40 s), the transaction deadline (30 s), the client
# start deadline (20 s) and the session timeout the tests use (6 s).
LONG_OUTAGE_S = 45.0


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker of this module's own, to kill and restart."""
    broker = start_broker(tmp_path_factory.mktemp("faulty-kafka"), "the broker-fault tests")
    yield broker
    broker.stop()


@pytest.fixture
def faulty_run(
    own_broker: LocalKafka, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., PipelineRun]]:
    yield from pipeline_runs(own_broker.bootstrap, unique_name)


async def restart(broker: LocalKafka, down_s: float, *, kill: bool) -> None:
    """SIGKILL (or stop) the broker, keep it down for ``down_s``, start it on the same data."""
    if kill:
        broker.kill()
    else:
        await asyncio.to_thread(broker.stop)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(broker.start, timeout_s=120)


async def test_exactly_once_survives_broker_sigkill_and_a_long_outage(
    own_broker: LocalKafka, faulty_run: Callable[..., PipelineRun]
) -> None:
    run = faulty_run(partitions=3)
    await run.create_topics()
    publisher = Generator(run, count=60_000, rate=2_500, seed=31)
    worker = run.start_worker(**EOS, **THROUGH_FAULTS)
    worker.wait_metric_at_least(CONSUMED, 5_000, timeout_s=120)

    await restart(own_broker, down_s=2.0, kill=True)  # fault 1: SIGKILL mid-run, quick restart
    worker.wait_metric_at_least(CONSUMED, 25_000, timeout_s=180)
    await restart(own_broker, down_s=LONG_OUTAGE_S, kill=False)  # fault 2: down past all timeouts
    # The worker that went through both faults goes on processing after the long outage.
    worker.wait_metric_at_least(CONSUMED, 30_000, timeout_s=180)

    # (The worker that finishes may find nothing left to consume: the first one can drain the
    # backlog before it is stopped. It closes the last windows either way.)
    finish_after_faults(run, publisher, worker, **EOS)

    await assert_nothing_lost(run, publisher)
    assert_exactly_once(await run.verify())


async def test_at_least_once_is_complete_after_broker_sigkill(
    own_broker: LocalKafka, faulty_run: Callable[..., PipelineRun]
) -> None:
    run = faulty_run(partitions=3)
    await run.create_topics()
    publisher = Generator(run, count=40_000, rate=4_000, seed=32)
    worker = run.start_worker(**THROUGH_FAULTS)
    worker.wait_metric_at_least(CONSUMED, 8_000, timeout_s=120)

    await restart(own_broker, down_s=3.0, kill=True)

    finish_after_faults(run, publisher, worker)
    await assert_nothing_lost(run, publisher)
    report = await run.verify()
    assert report.missing == 0, report.as_dict()
    assert report.wrong == 0, report.as_dict()
    assert report.extra == 0, report.as_dict()
    assert report.exact(allow_duplicates=True), report.as_dict()


@pytest.mark.parametrize(
    ("guarantee", "signum", "broker_goes"),
    [
        ("exactly_once", signal.SIGTERM, "killed"),
        ("at_least_once", signal.SIGINT, "killed"),
        ("exactly_once", signal.SIGTERM, "shutting down"),
    ],
    ids=[
        "exactly_once-SIGTERM-killed",
        "at_least_once-SIGINT-killed",
        "exactly_once-SIGTERM-stopping",
    ],
)
async def test_a_worker_stops_within_the_deadline_with_its_broker_gone_and_loses_nothing(
    own_broker: LocalKafka,
    faulty_run: Callable[..., PipelineRun],
    guarantee: str,
    signum: signal.Signals,
    broker_goes: str,
) -> None:
    """The broker goes (SIGKILL, or a clean shutdown under way) while the worker is busy with
    a backlog, then the worker is told to stop: it exits by the orderly path within the
    documented deadline, saying in one line what it could not commit. With the broker back, a
    new worker re-reads that and the output is complete (exact under exactly_once)."""
    run = faulty_run(partitions=3)
    await run.create_topics()
    await run.publish(150_000, seed=33, dup_ratio=0.02, late_ratio=0.01, bad_ratio=0.01)
    worker = run.start_worker(STREAMS_GUARANTEE=guarantee)
    worker.wait_metric_at_least(CONSUMED, 20_000)

    broker_gone: asyncio.Future[None] | None = None
    try:
        if broker_goes == "killed":
            own_broker.kill()
        else:
            broker_gone = asyncio.ensure_future(asyncio.to_thread(own_broker.stop))
        signalled = time.monotonic()
        worker.proc.send_signal(signum)
        try:
            await asyncio.to_thread(worker.proc.wait, STOP_DEADLINE_S + 15)
        except subprocess.TimeoutExpired:
            worker.fail(f"the worker did not exit within {STOP_DEADLINE_S + 15:.0f}s of {signum!r}")
        took = time.monotonic() - signalled
        print(f"{guarantee}, broker {broker_goes}: exited {took:.1f}s after {signum.name}")
        log = worker.log_tail(100_000)
        assert worker.proc.returncode == 0, log[-3000:]  # the orderly path, not the watchdog
        assert took < STOP_DEADLINE_S, log[-3000:]
        # The line on what was not committed (anywhere: retries may have logged after it).
        assert f"after {signum.name}: " in worker.log_tail(None), log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    finally:
        if broker_gone is not None:
            await broker_gone
        await asyncio.to_thread(own_broker.start, timeout_s=120)

    run.start_worker(exit_when_idle=5, STREAMS_GUARANTEE=guarantee).finish(timeout_s=240)
    report = await run.verify()
    if guarantee == "exactly_once":
        assert_exactly_once(report)
    else:
        assert report.missing == report.wrong == report.extra == 0, report.as_dict()


async def test_a_broker_outage_is_no_idleness(
    own_broker: LocalKafka, faulty_run: Callable[..., PipelineRun]
) -> None:
    """While its broker is gone, a worker cannot see whether a partition gets new events: the
    last log end it knows stays put, so every partition looked caught up and idle. Its idle
    advance then closed every window early, and --exit-when-idle exited with input to come
    (seen in CI). Down for longer than the idle timeout, the worker must do neither: events
    appended once the broker is back fall in the windows still open, and the output is
    complete."""
    idle_timeout_s = 10
    run = faulty_run(partitions=2)
    await run.create_topics()
    start = 1_735_689_600_000
    await run.publish(2_000, seed=71, start_ts=start)  # event times start .. start + 2 s
    worker = run.start_worker(exit_when_idle=3, STREAMS_IDLE_TIMEOUT_MS=str(idle_timeout_s * 1000))
    worker.wait_metric_at_least(CONSUMED, 2_000)

    own_broker.kill()
    await asyncio.sleep(idle_timeout_s + 4)  # the fault: an outage longer than the idle timeout
    assert worker.proc.poll() is None, f"the worker exited without a broker: {worker.log_tail()}"
    await asyncio.to_thread(own_broker.start, timeout_s=120)
    await run.publish(2_000, seed=72, start_ts=start + 2_000)  # the same minute's windows

    worker.finish(timeout_s=240)
    report = await run.verify()
    assert report.missing == report.wrong == report.extra == 0, report.as_dict()
