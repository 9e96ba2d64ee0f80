"""Stopping a worker on SIGTERM or SIGINT within a deadline, whether or not a broker answers.

The orderly path has three bounded steps:

1. the work in hand (the batch being processed, its output and its commit) gets
   ``BATCH_GRACE_S`` to finish. Past that (a broker that does not answer) it is cancelled;
   what it did not commit stays with the partitions' next owner, which re-reads it from the
   committed offsets;
2. the Kafka clients close, together, within ``CLOSE_DEADLINE_S``;
3. Faust's worker stops (web server, services) and the process exits.

Then one line says what could not be committed (:class:`~streams.broker.uncommitted.Uncommitted`).
A watchdog thread ends the process with ``os._exit`` if it is still alive ``STOP_DEADLINE_S``
after the signal, and a second signal ends it at once; either logs one line saying so, what
it was waiting on and what was not committed. Nothing is lost either way: offsets are only
committed for work whose output is acknowledged (at_least_once) or inside its transaction
(exactly_once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from streams.broker.uncommitted import Uncommitted

log = logging.getLogger(__name__)

T = TypeVar("T")

STOP_DEADLINE_S = 30.0
BATCH_GRACE_S = 10.0
# How long a cancelled batch gets to unwind before the stop goes on without it.
UNWIND_S = 2.0
CLOSE_DEADLINE_S = 12.0
# The exit code when the watchdog or a second signal ended the process.
EXIT_FORCED = 3


class Shutdown:
    """The stop of one worker process: its signal handlers, deadlines and watchdog."""

    def __init__(
        self,
        request_stop: Callable[[], None],
        uncommitted: Uncommitted,
        *,
        deadline_s: float = STOP_DEADLINE_S,
        batch_grace_s: float = BATCH_GRACE_S,
    ) -> None:
        self._request_stop = request_stop
        self._uncommitted = uncommitted
        self.deadline_s = deadline_s
        self.batch_grace_s = batch_grace_s
        self.phase = "finishing the batch in hand"
        self._signal: str | None = None
        self._began: float | None = None
        self._work: asyncio.Future[Any] | None = None
        self._abandoned = asyncio.Event()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take over SIGTERM and SIGINT (from Faust, whose own stop could take minutes)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._signal is not None:
            self._exit(f"second {name}: exiting before the stop finished ({self.phase})")
        self._signal = name
        log.info("%s: stopping within %.0fs, after the batch in hand", name, self.deadline_s)
        self.begin()
        self._request_stop()
        asyncio.get_running_loop().call_later(self.batch_grace_s, self._abandon)

    def begin(self) -> None:
        """The stop starts (a signal, an idle exit, an error): arm the watchdog, once."""
        if self._began is not None:
            return
        self._began = time.monotonic()
        threading.Thread(target=self._watch, name="stop-watchdog", daemon=True).start()

    async def guard(self, work: Awaitable[T]) -> T | None:
        """Run ``work`` (start and run the pipeline); None if a stop had to abandon it."""
        task: asyncio.Future[T] = asyncio.ensure_future(work)
        self._work = task
        abandoned = asyncio.ensure_future(self._abandoned.wait())
        try:
            either: set[asyncio.Future[Any]] = {task, abandoned}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=UNWIND_S)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            abandoned.cancel()
        if not task.done() or task.cancelled():
            return None
        return task.result()

    def _abandon(self) -> None:
        work = self._work
        if work is None or work.done():
            return
        log.warning(
            "the batch in hand did not finish within %.0fs of %s (is the broker answering?); "
            "abandoning it: its input is re-read by the partitions' next owner",
            self.batch_grace_s,
            self._signal,
        )
        work.cancel()
        self._abandoned.set()

    async def close(self, stop: Callable[[], Awaitable[None]]) -> None:
        """Close the Kafka clients (``stop``), abandoning them after ``CLOSE_DEADLINE_S``."""
        self.begin()
        self.phase = "closing the Kafka clients"
        closing = asyncio.ensure_future(stop())
        await asyncio.wait({closing}, timeout=CLOSE_DEADLINE_S)
        if not closing.done():
            closing.cancel()
            log.warning("the Kafka clients did not close within %.0fs; abandoned", CLOSE_DEADLINE_S)
        elif not closing.cancelled() and closing.exception() is not None:
            log.warning("closing the Kafka clients failed (%r)", closing.exception())
        # A client abandoned above may go on retrying a broker that is gone until the process
        # exits, logging each attempt: the line below must stay the stop's last word.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        self.phase = "stopping Faust's worker (web server, services)"
        # Said when asked to stop, or when something is left over (an error): an idle exit or
        # a failed start (one error line on the terminal) has nothing to add.
        if self._signal is not None or self._uncommitted.total():
            log.info("stopped%s: %s", self._since(), self._uncommitted.describe())

    def _since(self) -> str:
        if self._signal is None or self._began is None:
            return ""
        return f" {time.monotonic() - self._began:.1f}s after {self._signal}"

    def _watch(self) -> None:
        assert self._began is not None
        time.sleep(max(0.0, self._began + self.deadline_s - time.monotonic()))
        self._exit(f"the worker did not stop within {self.deadline_s:.0f}s ({self.phase})")

    def _exit(self, reason: str) -> None:
        """The last line of defence: one line, then exit without waiting for anything."""
        try:
            uncommitted = self._uncommitted.describe()
        except Exception as exc:  # the watchdog thread reads state the loop is changing
            uncommitted = f"what was not committed is unknown ({exc!r})"
        log.critical("%s; exiting now (code %d): %s", reason, EXIT_FORCED, uncommitted)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_FORCED)
