"""Reading a process from outside: its figures in ``/proc``, and a worker's ``/metrics`` text."""

from __future__ import annotations

import os
import urllib.request


def status_mb(pid: int | str, field: str) -> float:
    """A memory field of ``/proc/<pid>/status`` (``VmHWM`` peak, ``VmRSS`` current) in MB.

    ``pid`` may be ``"self"``. Raises ``OSError`` when the process is gone.
    """
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:")) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metrics_text(port: int) -> str | None:
    """The Prometheus text a worker serves on ``port``; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return None
