"""Running a segment's batch calls: ``async`` map_batch and enrich functions, once a batch.

The core yields a :class:`~streams.core.segment.Call` where a batch function must be
awaited; this awaits it (with a deadline per attempt, and backoff between attempts) and
sends the result back, so a chunk costs one await per batch step, never one per event.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any

from streams.core.outcome import Outcome
from streams.core.segment import Call, CallGen, CallResult

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
BACKOFF_S = 0.2


async def drive(gen: CallGen) -> Outcome:
    """Run a task's ``process`` generator to its outcome, answering its calls."""
    try:
        call = next(gen)
        while True:
            call = gen.send(await answer(call))
    except StopIteration as stop:
        outcome: Outcome = stop.value
        return outcome


async def answer(call: Call) -> CallResult:
    """Call ``call.fn(call.arg)`` up to ``call.attempts`` times; the last error if all fail."""
    started = time.perf_counter()
    error: BaseException | None = None
    for attempt in range(call.attempts):
        if attempt:
            await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
        try:
            result: Any = call.fn(call.arg)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, CALL_TIMEOUT_S)
            return CallResult(result, None, time.perf_counter() - started)
        except Exception as exc:
            error = exc
            log.warning(
                "%s failed (attempt %d of %d): %r", call.what, attempt + 1, call.attempts, exc
            )
    return CallResult(None, error, time.perf_counter() - started)
