"""Asking a running worker what it is waiting on: ``kill -USR1 <pid>`` logs every task's stack.

A stuck asyncio program shows nothing useful in a thread dump (the loop sits in ``select``);
the awaiting coroutines are what tell where it waits.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal

log = logging.getLogger(__name__)


def task_stacks() -> str:
    """Every pending task of the running loop with the stack it is suspended in."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(limit=25, file=out)
    return out.getvalue()


def install_task_dump(loop: asyncio.AbstractEventLoop) -> None:
    """On SIGUSR1, log the stacks of all tasks (once per signal)."""
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("tasks:\n%s", task_stacks()))
