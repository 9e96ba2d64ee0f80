"""How many CPUs this process may use: its container's CPU quota, else the CPUs it may run on.

``os.cpu_count()`` counts the machine's CPUs, not the container's: a pod limited to 2 CPUs on
a 32-core node would start 32 worker processes, all throttled. The quota is the cgroup's:
v2 ``cpu.max`` (``<quota> <period>`` or ``max <period>``), v1 ``cpu.cfs_quota_us`` and
``cpu.cfs_period_us`` (quota ``-1``: none). A fractional quota rounds down, as Go's
automaxprocs does: two processes on 1.5 CPUs are both throttled, one uses a whole CPU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Where cgroup v1 mounts the cpu controller (a symlink to cpu,cpuacct on most systems).
_V1_DIRS = ("cpu", "cpu,cpuacct")


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use: the cgroup quota, at most the CPUs of its affinity mask,
    at least 1."""
    allowed = len(os.sched_getaffinity(0))
    quota = quota_cpus(root)
    if quota is None:
        return max(1, allowed)
    return max(1, min(allowed, math.floor(quota)))


def quota_cpus(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (quota / period), or None when there
    is none or it cannot be read."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _ratio(quota, period)
    for name in _V1_DIRS:
        quota_text = _read(root / name / "cpu.cfs_quota_us")
        period_text = _read(root / name / "cpu.cfs_period_us")
        if quota_text is not None and period_text is not None:
            return _ratio(quota_text, period_text)
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    if q <= 0 or p <= 0:  # v1 says -1 for none
        return None
    return q / p


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
