"""Asking a running worker what it is waiting on: ``kill -USR1 <pid>`` logs every task's stack.

A stuck asyncio program shows nothing useful in a thread dump (the loop sits in ``select``);
the awaiting coroutines are what tell where it waits.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
from typing import Any

log = logging.getLogger(__name__)


def task_stacks() -> str:
    """Every pending task of the running loop with the chain of awaits it is suspended in."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        for line in await_chain(task.get_coro())[:25]:
            out.write(f"  {line}\n")
    return out.getvalue()


def await_chain(coro: Any) -> list[str]:
    """Where a suspended coroutine waits, outermost first, down to the innermost await.

    ``Task.print_stack`` shows one frame of a suspended task (the outermost), which says
    nothing about where it waits.
    """
    lines = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return lines


def install_task_dump(loop: asyncio.AbstractEventLoop) -> None:
    """On SIGUSR1, log the stacks of all tasks (once per signal)."""
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("tasks:\n%s", task_stacks()))
