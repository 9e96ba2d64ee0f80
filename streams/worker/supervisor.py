"""``streams worker --processes N``: a supervisor process and N worker processes.

A worker is one Python process, so it uses one core. With N > 1 the process the user started
runs no pipeline: it starts N ``streams worker`` processes of the same app (one consumer
group, each an ordinary worker) and

- restarts one that dies (or that someone else stopped), after a backoff (1 s, doubling to
  30 s; a process that ran a minute starts over at 1 s), counted in
  ``streams_worker_restarts_total``; under ``--exit-when-idle`` one that exits 0 is done. One
  that fails before any process of its slot was ever ready (no broker, state that does not
  match) is not restarted: the supervisor stops the others and exits with its code, as a
  single worker would;
- passes SIGTERM and SIGINT on to them (they run in process groups of their own, so a
  terminal's Ctrl-C reaches them once, through here) and exits when they have stopped; one
  still running a second before the worker stop deadline (30 s) is killed, so the
  supervisor never outlives the deadline;
- serves one ``/metrics`` (:mod:`streams.worker.exposition`: the processes' metrics merged),
  ``/health/live`` and ``/health/ready`` (ready when every process is) on
  ``STREAMS_METRICS_PORT``; the processes serve theirs on private ports.

With ``STREAMS_GROUP_INSTANCE_ID`` (or a StatefulSet pod's name) each slot gets the id
``<id>-<slot>``, so a restarted process takes its partitions back without a rebalance
(docs/decisions/0016).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from streams.apps.selection import plan_for
from streams.broker.local import free_port, port_in_use
from streams.config import Settings
from streams.errors import ConfigError
from streams.runtime.health import RunStats
from streams.worker.exposition import Exposition
from streams.worker.shutdown import EXIT_FORCED, STOP_DEADLINE_S

log = logging.getLogger(__name__)

# A worker process's command line and environment for (slot, port).
Launch = Callable[[int, int], tuple[list[str], dict[str, str]]]

# How often the processes are scraped between requests: what a process that dies takes
# with it is at most this much of its counting (the sums carry its last scrape).
SCRAPE_INTERVAL_S = 1.0
SCRAPE_TIMEOUT_S = 2.0
# A process whose web server does not answer yet counts as live this long after its start
# (a worker's own liveness allows its loop 60 s).
START_GRACE_S = 60.0
# Stragglers are killed this long before the stop deadline, so the supervisor exits within it.
KILL_MARGIN_S = 1.0
# The supervisor's pid, in its worker processes' environment (see follow_supervisor).
SUPERVISOR_PID = "STREAMS_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (-signal.SIGTERM, -signal.SIGINT)


@dataclass(frozen=True)
class Backoff:
    """Delays before restarting a process that died: ``first_s``, doubling up to ``max_s``;
    a process that ran ``reset_after_s`` before it died starts over at ``first_s``."""

    first_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0

    def delay(self, failures: int) -> float:
        """The delay after the ``failures``-th death in a row (from 1)."""
        return float(min(self.max_s, self.first_s * 2 ** (failures - 1)))


class Slot:
    """One of the N places for a worker process: the process in it now, and its history."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self.started = 0.0
        self.ready = False
        # Some process of this slot answered ready once: a later death is a crash, not a
        # start that cannot succeed.
        self.ever_ready = False
        self.failures = 0
        self.exit_code: int | None = None
        self.stats: RunStats | None = None
        # The process in it has exited and its counts are carried: later scrapes of it are
        # late news, not to be counted again.
        self.ended = False

    @property
    def running(self) -> bool:
        """A process is in the slot and has not exited."""
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Runs N worker processes (``launch`` makes their command lines) and serves their
    metrics and health on ``port``. With ``idle_exits`` (``--exit-when-idle``) a process that
    exits 0 is done; otherwise only the stop ends a process for good."""

    def __init__(
        self,
        processes: int,
        launch: Launch,
        port: int,
        *,
        idle_exits: bool = False,
        backoff: Backoff = Backoff(),
        deadline_s: float = STOP_DEADLINE_S,
        scrape_interval_s: float = SCRAPE_INTERVAL_S,
    ) -> None:
        self.slots = [Slot(i) for i in range(processes)]
        self._launch = launch
        self._port = port
        self._idle_exits = idle_exits
        self._backoff = backoff
        self._deadline_s = deadline_s
        self._scrape_interval_s = scrape_interval_s
        self._stopping = False
        self._stop = asyncio.Event()
        self._forced = False
        self._failed: int | None = None
        # Set when run() ends: the stop watchdog has nothing left to do.
        self._done = threading.Event()
        self._session: aiohttp.ClientSession | None = None
        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "streams_worker_restarts_total",
            "Worker processes the supervisor restarted after they died.",
            registry=self.registry,
        )
        Gauge(
            "streams_worker_processes",
            "Worker processes running under the supervisor.",
            registry=self.registry,
        ).set_function(lambda: sum(s.running for s in self.slots))
        Gauge(
            "streams_worker_ready",
            "1 when /health/ready answers 200 (every worker process ready), else 0.",
            registry=self.registry,
        ).set_function(lambda: float(self._ready()))
        self.exposition = Exposition(served={"streams_worker_ready"})
        self.registry.register(self.exposition)

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> int:
        """Start the processes, keep them running until they end or a signal stops them;
        returns the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, signum)
        timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as self._session:
            runner = await self._serve()
            scraping = asyncio.ensure_future(self._scrape_every(self._scrape_interval_s))
            try:
                await asyncio.gather(*(self._keep(slot) for slot in self.slots))
            finally:
                self._done.set()
                scraping.cancel()
                await runner.cleanup()
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
        return self._exit_code()

    def stop(self, signum: int = signal.SIGTERM, reason: str | None = None) -> None:
        """Pass ``signum`` on to every process and stop restarting them (``reason``: why, if
        not the signal itself); a second call passes it on again (a worker's second signal
        ends it at once)."""
        name = signal.Signals(signum).name
        running = [s for s in self.slots if s.running]
        if self._stopping:
            log.warning("second %s: passed on to %d worker processes", name, len(running))
        else:
            self._stopping = True
            self._stop.set()
            log.info(
                "%s: stopping %d worker processes within %.0fs",
                reason or name,
                len(running),
                self._deadline_s,
            )
            threading.Thread(target=self._watch, name="stop-watchdog", daemon=True).start()
        for slot in running:
            _signal(slot, signum)

    async def _keep(self, slot: Slot) -> None:
        """Run a process in ``slot``; restart it after a backoff whenever it ends, until the
        supervisor stops or the process exits idle."""
        restart = False
        while not self._stopping:
            if restart:
                self.restarts.inc()
            await self._start(slot)
            code = await self._wait(slot)
            if self._stopping or (code == 0 and self._idle_exits):
                # One that died of the signal passed on (it came before the worker's handlers
                # were in place) stopped as asked.
                slot.exit_code = 0 if code in _STOP_SIGNALS else code
                log.info("worker process %d %s", slot.index, _describe(code))
                return
            if not slot.ever_ready:
                self._failed = code
                self.stop(
                    reason=f"worker process {slot.index} {_describe(code)} before it was ever ready"
                )
                return
            ran = time.monotonic() - slot.started
            slot.failures = 1 if ran >= self._backoff.reset_after_s else slot.failures + 1
            delay = self._backoff.delay(slot.failures)
            restart = True
            log.warning(
                "worker process %d %s after %.1fs; restarting it in %.1fs",
                slot.index,
                _describe(code),
                ran,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _start(self, slot: Slot) -> None:
        taken = {s.port for s in self.slots}
        port = free_port()
        while port in taken:
            port = free_port()
        argv, env = self._launch(slot.index, port)
        # A process group of its own: a terminal's SIGINT goes to the supervisor only, which
        # passes it on once (twice would be a worker's "second signal": an immediate exit).
        slot.process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            process_group=0,
        )
        slot.port, slot.started, slot.ready, slot.ended = port, time.monotonic(), False, False
        log.info("worker process %d started: pid %d", slot.index, slot.process.pid)
        if self._stopping:  # the signal came while it was being started
            _signal(slot, signal.SIGTERM)

    async def _wait(self, slot: Slot) -> int:
        """Wait for the process in ``slot`` to exit; keep its totals (the JSON line it prints
        at exit) and carry its counters."""
        process = slot.process
        assert process is not None
        assert process.stdout is not None
        out = await process.stdout.read()
        code = await process.wait()
        slot.ready, slot.ended = False, True
        self.exposition.forget(slot.index)
        slot.stats = _stats(out)
        return code

    def _watch(self) -> None:
        """The stop deadline, on a thread of its own (whatever the event loop is doing)."""
        if self._done.wait(max(0.0, self._deadline_s - KILL_MARGIN_S)):
            return
        for slot in self.slots:
            process = slot.process
            if process is not None and process.returncode is None:
                log.critical(
                    "worker process %d (pid %d) did not stop within %.0fs; killing it: its "
                    "partitions' next owner re-reads what it did not commit",
                    slot.index,
                    process.pid,
                    self._deadline_s - KILL_MARGIN_S,
                )
                self._forced = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        if self._done.wait(KILL_MARGIN_S):
            return
        log.critical("the supervisor did not stop within %.0fs; exiting now", self._deadline_s)
        logging.shutdown()
        os._exit(EXIT_FORCED)

    def _exit_code(self) -> int:
        if self._failed is not None:
            return _shell_code(self._failed)
        if self._forced:
            return EXIT_FORCED
        # The processes' own exits at the stop (or idle); one that died before is no failure
        # of the stop.
        codes = [s.exit_code for s in self.slots if s.exit_code]
        return _shell_code(codes[0]) if codes else 0

    def totals(self) -> RunStats:
        """The totals of the last process of every slot (a process that died took its own
        totals with it; its metrics are carried)."""
        total = RunStats()
        for stats in (s.stats for s in self.slots if s.stats is not None):
            for name in ("consumed", "invalid", "duplicates", "late", "emitted", "failed"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            total.batches += stats.batches
            # time.monotonic() is one clock for every process of the machine (Linux).
            if stats.first_batch_at:
                first = total.first_batch_at or stats.first_batch_at
                total.first_batch_at = min(first, stats.first_batch_at)
            total.last_batch_at = max(total.last_batch_at, stats.last_batch_at)
        return total

    # -- metrics and health ----------------------------------------------------------------

    async def _serve(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health/live", self._live)
        app.router.add_get("/health/ready", self._ready_page)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", self._port).start()
        return runner

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._scrape_all()
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _ready_page(self, request: web.Request) -> web.Response:
        await self._scrape_all()
        ok = self._ready()
        body = {
            "ready": ok,
            "processes": [
                {"process": s.index, "pid": s.process.pid if s.process else None, "ready": s.ready}
                for s in self.slots
            ],
        }
        return web.json_response(body, status=200 if ok else 503)

    async def _live(self, request: web.Request) -> web.Response:
        answers = await asyncio.gather(*(self._child_live(s) for s in self.slots))
        ok = not self._stopping and all(answers)
        return web.json_response({"live": ok}, status=200 if ok else 503)

    def _ready(self) -> bool:
        return not self._stopping and all(s.running and s.ready for s in self.slots)

    async def _child_live(self, slot: Slot) -> bool:
        """Live, or being restarted, or just started (its web server may not answer yet)."""
        if not slot.running:
            return True
        status = await self._get_status(slot, "/health/live")
        if status is None:
            return time.monotonic() - slot.started < START_GRACE_S
        return status == 200

    async def _scrape_every(self, interval_s: float) -> None:
        while True:
            await self._scrape_all()
            await asyncio.sleep(interval_s)

    async def _scrape_all(self) -> None:
        await asyncio.gather(*(self._scrape(s) for s in self.slots if s.running))

    async def _scrape(self, slot: Slot) -> None:
        """One process's metrics into the exposition, and whether it is ready."""
        process = slot.process
        metrics = await self._get(slot, "/metrics")
        if metrics is not None and slot.process is process and not slot.ended:
            self.exposition.update(slot.index, metrics)
        ready = await self._get_status(slot, "/health/ready") == 200
        if slot.process is process and not slot.ended:
            slot.ready = ready
            slot.ever_ready |= ready

    async def _get(self, slot: Slot, path: str) -> str | None:
        assert self._session is not None
        try:
            async with self._session.get(f"http://127.0.0.1:{slot.port}{path}") as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _get_status(self, slot: Slot, path: str) -> int | None:
        assert self._session is not None
        try:
            async with self._session.get(f"http://127.0.0.1:{slot.port}{path}") as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None


def _signal(slot: Slot, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        assert slot.process is not None
        slot.process.send_signal(signum)


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited {code}"


def _shell_code(code: int) -> int:
    """A child's exit code as a shell reports it (128 + the signal that killed it)."""
    return 128 - code if code < 0 else code


def _stats(out: bytes) -> RunStats | None:
    """The totals a worker printed as its last line (``--json``), if it printed them."""
    lines = out.strip().splitlines()
    if not lines:
        return None
    try:
        return RunStats(**orjson.loads(lines[-1]))
    except (orjson.JSONDecodeError, TypeError):
        return None


def worker_launch(
    settings: Settings, app: str | None, exit_when_idle_s: float | None, env: Mapping[str, str]
) -> Launch:
    """How the supervisor starts the worker process of a slot: ``streams worker`` of the same
    app with this environment, one process, its metrics on a private port, and its group
    instance id suffixed with the slot."""

    def launch(slot: int, port: int) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "streams", "worker", *([app] if app else []), "--json"]
        if exit_when_idle_s is not None:
            argv += ["--exit-when-idle", str(exit_when_idle_s)]
        child = {
            **env,
            "STREAMS_PROCESSES": "1",
            "STREAMS_METRICS_PORT": str(port),
            SUPERVISOR_PID: str(os.getpid()),
        }
        if settings.group_instance_id:
            child["STREAMS_GROUP_INSTANCE_ID"] = f"{settings.group_instance_id}-{slot}"
        return argv, child

    return launch


def follow_supervisor(env: Mapping[str, str]) -> None:
    """In a worker process a supervisor started: be sent SIGTERM when the supervisor dies
    (killed with SIGKILL, it cannot pass a signal on), instead of running on unsupervised."""
    supervisor = env.get(SUPERVISOR_PID)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    libc: Any = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(
    settings: Settings, *, app: str | None = None, exit_when_idle_s: float | None = None
) -> tuple[RunStats, int]:
    """Run ``settings.processes`` workers of ``app`` under a supervisor until they end or
    SIGTERM/SIGINT; returns their totals and the exit code. A bad declaration fails here,
    once, before any process starts."""
    plan_for(settings, app)
    if port_in_use(settings.metrics_port):
        raise ConfigError(
            f"STREAMS_METRICS_PORT={settings.metrics_port} is already in use; pick a free port"
        )
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"
    )
    launch = worker_launch(settings, app, exit_when_idle_s, os.environ)

    async def main() -> tuple[RunStats, int]:
        supervisor = Supervisor(
            settings.processes,
            launch,
            settings.metrics_port,
            idle_exits=exit_when_idle_s is not None,
        )
        code = await supervisor.run()
        return supervisor.totals(), code

    return asyncio.run(main())
