"""The stop's last lines of defence, without a broker: the watchdog and a second signal.

A real process (the watchdog ends it with ``os._exit``) runs a :class:`Shutdown` around work
that ignores cancellation, the way a Kafka client stuck retrying against a gone broker can.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from aiokafka import TopicPartition

from streams.broker.uncommitted import Uncommitted
from streams.worker.shutdown import EXIT_FORCED

STUBBORN_WORKER = """
import asyncio, logging
from aiokafka import TopicPartition
from streams.broker.uncommitted import Uncommitted
from streams.worker.shutdown import Shutdown

logging.basicConfig(level=logging.INFO, format="%(message)s")

async def stubborn():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

async def main():
    uncommitted = Uncommitted()
    uncommitted.fetched(TopicPartition("events", 2), 40, 43, 3)
    shutdown = Shutdown(lambda: None, uncommitted, deadline_s=8, batch_grace_s=1)
    shutdown.install(asyncio.get_running_loop())
    print("ready", flush=True)
    await shutdown.guard(stubborn())
    await shutdown.close(stubborn)

asyncio.run(main())
"""


def _stubborn_worker() -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN_WORKER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_the_watchdog_ends_a_stop_that_hangs_with_one_line() -> None:
    proc = _stubborn_worker()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_FORCED, err
    assert "abandoning it" in err  # the batch grace (1 s) passed first, then the unwind (2 s)
    last = err.strip().splitlines()[-1]
    assert last.startswith("the worker did not stop within 8s (closing the Kafka clients)")
    assert "3 events were not committed (events[2] offsets 40..42)" in last


def test_a_second_signal_exits_at_once() -> None:
    proc = _stubborn_worker()
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    # Signals of one kind that arrive together are delivered once: wait for the first.
    assert "SIGINT: stopping within 8s" in proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_FORCED, err
    assert "second SIGINT: exiting before the stop finished" in err.strip().splitlines()[-1]
    assert "abandoning it" not in err


def test_uncommitted_follows_fetches_commits_and_rewinds() -> None:
    held = Uncommitted()
    a, b = TopicPartition("in", 0), TopicPartition("in", 1)
    assert held.describe() == "every event processed was committed"
    held.fetched(a, 100, 150, 50)
    held.fetched(a, 150, 200, 49)  # a transaction marker took one offset
    held.fetched(b, 7, 9, 2)
    assert held.total() == 101
    assert held.describe().startswith(
        "101 events were not committed (in[0] offsets 100..199, in[1] offsets 7..8)"
    )
    held.committed({a: 150})  # an older commit covers only part: the range stays
    assert held.total() == 101
    held.committed({a: 200})
    assert held.total() == 2
    held.forget([b])
    assert held.total() == 0
