"""The supervisor of ``streams worker --processes N`` with tiny real child processes in place
of workers: each serves ``/metrics`` and ``/health/*`` on the port it is given, notes its
start and the signals it gets in a file, and behaves as its mode says."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from streams.broker.local import free_port
from streams.config import Settings
from streams.worker.shutdown import EXIT_FORCED
from streams.worker.supervisor import Backoff, Supervisor, worker_launch

CHILD = r"""
import http.server, json, os, signal, sys, threading, time

slot, port, mode, notes = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

def note(what):
    with open(notes, "a") as f:
        f.write(f"{time.monotonic()} {slot} {what}\n")

asked_ready = threading.Event()
scraped = threading.Event()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/metrics":
            body = (
                "# HELP streams_events_consumed_total Messages consumed.\n"
                "# TYPE streams_events_consumed_total counter\n"
                f"streams_events_consumed_total {10 * (slot + 1)}.0\n"
            ).encode()
            scraped.set()
        else:
            body = b"{}"
            asked_ready.set()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

def totals():
    print(json.dumps({"consumed": 10 * (slot + 1), "first_batch_at": 5.0 + slot,
                      "last_batch_at": 9.0 + slot}), flush=True)

def on_signal(signum, frame):
    note(signal.Signals(signum).name)
    if mode != "stubborn":
        totals()
        sys.exit(0)

# Before it answers anything: seen ready, it may be sent a signal.
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
note("start")
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
if mode == "fail":
    sys.exit(2)
if mode in ("crash", "idle"):
    asked_ready.wait()  # the supervisor saw it ready
    scraped.wait()  # and read its counters (a real worker's since the last scrape are lost)
    if mode == "idle":
        totals()
    sys.exit(1 if mode == "crash" else 0)
while True:
    time.sleep(1)
"""

BACKOFF = Backoff(first_s=0.5, max_s=1.0, reset_after_s=60)


class Children:
    """The child processes' notes: when each started, what signals it got."""

    def __init__(self, tmp_path: Path, *modes: str) -> None:
        self.modes = modes
        self.notes = tmp_path / "notes"
        self.notes.touch()

    def launch(self, slot: int, port: int) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-c", CHILD, str(slot), str(port), self.modes[slot]]
        return [*argv, str(self.notes)], {}

    def events(self, what: str | None = None) -> list[tuple[float, int, str]]:
        rows = [line.split() for line in self.notes.read_text().splitlines()]
        return [(float(t), int(s), w) for t, s, w in rows if what is None or w == what]


def supervisor(
    children: Children,
    *,
    idle_exits: bool = False,
    backoff: Backoff = BACKOFF,
    deadline_s: float = 30.0,
) -> tuple[Supervisor, int]:
    port = free_port()
    sup = Supervisor(
        len(children.modes),
        children.launch,
        port,
        idle_exits=idle_exits,
        backoff=backoff,
        deadline_s=deadline_s,
        scrape_interval_s=0.05,
    )
    return sup, port


def restarts(sup: Supervisor) -> float | None:
    return sup.registry.get_sample_value("streams_worker_restarts_total")


async def _until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_a_process_that_dies_is_restarted_after_a_growing_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    children = Children(tmp_path, "serve", "crash")
    sup, port = supervisor(children)
    running = asyncio.ensure_future(sup.run())
    # Stopped while the fourth process's death is waited out (one crashing during the stop
    # would be the stop's failure).
    await _until(
        lambda: (
            len([e for e in children.events("start") if e[1] == 1]) == 4
            and not sup.slots[1].running
        )
    )
    status, text = await _get(port, "/metrics")
    sup.stop(signal.SIGTERM)
    assert await running == 0

    # 0.5 s, then 1 s (doubled), then 1 s (the cap).
    delays = [
        float(r.getMessage().rsplit(" ", 1)[1].removesuffix("s"))
        for r in caplog.records
        if "restarting it in" in r.getMessage()
    ]
    assert delays == [0.5, 1.0, 1.0, 1.0]
    # And waited out: each gap between starts also holds a process's start and its wait to
    # be seen ready.
    starts = [t for t, slot, _ in children.events("start") if slot == 1]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=False)), gaps
    assert status == 200
    assert f"streams_worker_restarts_total {len(starts) - 1}.0" in text.splitlines()
    # Each crashed process keeps its count (20) in the sum: four of them, and the one running.
    assert "streams_events_consumed_total 90.0" in text.splitlines()
    assert restarts(sup) == 3
    # The healthy process was never restarted, and got the stop's SIGTERM once.
    assert [w for _, s, w in children.events() if s == 0] == ["start", "SIGTERM"]


async def test_signals_are_passed_on_once_and_the_stop_waits_for_every_process(
    tmp_path: Path,
) -> None:
    children = Children(tmp_path, "serve", "serve", "serve")
    sup, port = supervisor(children)
    running = asyncio.ensure_future(sup.run())
    await _until(lambda: all(s.ready for s in sup.slots))
    status, body = await _get(port, "/health/ready")
    assert status == 200, body
    assert (await _get(port, "/health/live"))[0] == 200
    sup.stop(signal.SIGINT)
    assert await running == 0
    assert sorted((s, w) for _, s, w in children.events("SIGINT")) == [
        (0, "SIGINT"),
        (1, "SIGINT"),
        (2, "SIGINT"),
    ]
    totals = sup.totals()
    assert (totals.consumed, totals.first_batch_at, totals.last_batch_at) == (60, 5.0, 11.0)


async def test_a_process_that_ignores_the_stop_is_killed_within_the_deadline(
    tmp_path: Path,
) -> None:
    children = Children(tmp_path, "serve", "stubborn")
    sup, _ = supervisor(children, deadline_s=2.0)
    running = asyncio.ensure_future(sup.run())
    await _until(lambda: all(s.ready for s in sup.slots))
    began = time.monotonic()
    sup.stop(signal.SIGTERM)
    assert await running == EXIT_FORCED
    assert time.monotonic() - began < 2.0
    assert sorted(s for _, s, _ in children.events("SIGTERM")) == [0, 1]
    assert sup.slots[1].process is not None
    assert sup.slots[1].process.returncode == -signal.SIGKILL


async def test_a_process_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    children = Children(tmp_path, "serve", "fail")
    sup, _ = supervisor(children)
    assert await asyncio.wait_for(sup.run(), 30) == 2
    assert restarts(sup) == 0
    assert [s for _, s, _ in children.events("start")].count(1) == 1
    assert sup.slots[0].process is not None
    assert sup.slots[0].process.returncode is not None


async def test_processes_that_exit_when_idle_end_the_supervisor(tmp_path: Path) -> None:
    children = Children(tmp_path, "idle", "idle")
    sup, _ = supervisor(children, idle_exits=True)
    assert await asyncio.wait_for(sup.run(), 30) == 0
    assert sup.totals().consumed == 30
    assert restarts(sup) == 0


async def test_a_process_that_exits_unasked_is_restarted(tmp_path: Path) -> None:
    # Not run with --exit-when-idle, a worker exits 0 only when stopped: by someone else.
    children = Children(tmp_path, "idle")
    sup, _ = supervisor(children)
    running = asyncio.ensure_future(sup.run())
    await _until(lambda: restarts(sup) == 1)
    sup.stop()
    assert await running == 0


async def test_the_supervisor_serves_the_processes_metrics_once(tmp_path: Path) -> None:
    children = Children(tmp_path, "serve", "serve")
    sup, port = supervisor(children)
    running = asyncio.ensure_future(sup.run())
    await _until(lambda: all(s.ready for s in sup.slots))
    status, text = await _get(port, "/metrics")
    sup.stop()
    assert await running == 0
    assert status == 200
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert "streams_events_consumed_total 30.0" in lines
    assert "streams_worker_processes 2.0" in lines
    assert "streams_worker_ready 1.0" in lines


def test_each_slot_gets_its_own_instance_id_and_port() -> None:
    settings = Settings.from_env(
        {"STREAMS_GROUP_INSTANCE_ID": "orders-a", "STREAMS_PROCESSES": "2"}
    )
    launch = worker_launch(settings, "app.py", 3.0, {"PATH": "/bin", "STREAMS_PROCESSES": "2"})
    argv, env = launch(1, 4321)
    assert argv[1:] == ["-m", "streams", "worker", "app.py", "--json", "--exit-when-idle", "3.0"]
    assert env["STREAMS_GROUP_INSTANCE_ID"] == "orders-a-1"
    assert (env["STREAMS_PROCESSES"], env["STREAMS_METRICS_PORT"]) == ("1", "4321")
    assert env["PATH"] == "/bin"
    dynamic = worker_launch(Settings.from_env({}), None, None, {})(0, 1)[1]
    assert "STREAMS_GROUP_INSTANCE_ID" not in dynamic


FOLLOWER = """
import os, signal, sys, time
from streams.worker.supervisor import follow_supervisor
signal.signal(signal.SIGTERM, lambda *a: (print("SIGTERM", flush=True), sys.exit(0)))
follow_supervisor(os.environ)
print("following", flush=True)
time.sleep(60)
"""

PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env={
    **os.environ, "STREAMS_SUPERVISOR_PID": str(os.getpid())})
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_worker_process_stops_when_its_supervisor_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "child.out"
    with out.open("w") as child_out:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, FOLLOWER], stdout=subprocess.PIPE, stderr=child_out
        )
    assert parent.stdout is not None
    int(parent.stdout.readline())  # the child's pid
    assert parent.stdout.readline() == b"following\n"
    parent.kill()
    parent.wait()
    # The child, not its parent, wrote that and closed the pipe: it got SIGTERM and exited.
    assert parent.stdout.read() == b"SIGTERM\n", out.read_text()
