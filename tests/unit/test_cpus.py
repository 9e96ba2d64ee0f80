"""The CPUs a worker may use (``STREAMS_PROCESSES=auto``): the cgroup's quota, else the
affinity mask, read from a fake cgroup tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.cpus import available_cpus, quota_cpus


def _write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process allowed on 8 CPUs."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))


@pytest.mark.usefixtures("affinity")
@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "200000 100000"}, 2),
        ({"cpu.max": "150000 100000"}, 1),  # a fraction rounds down
        ({"cpu.max": "50000 100000"}, 1),  # at least one
        ({"cpu.max": "max 100000"}, 8),  # no quota: the affinity mask
        ({"cpu.max": "1600000 100000"}, 8),  # a quota above the CPUs there are
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us": "50000"}, 2),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 8),
        ({"cpu.max": "garbage"}, 8),
        ({}, 8),
    ],
)
def test_available_cpus_follow_the_quota(tmp_path: Path, files: dict[str, str], cpus: int) -> None:
    for name, text in files.items():
        _write(tmp_path, name, text)
    assert available_cpus(tmp_path) == cpus


def test_v2_wins_over_v1_when_both_are_mounted(tmp_path: Path) -> None:
    _write(tmp_path, "cpu.max", "100000 100000")
    _write(tmp_path, "cpu/cpu.cfs_quota_us", "400000")
    _write(tmp_path, "cpu/cpu.cfs_period_us", "100000")
    assert quota_cpus(tmp_path) == 1.0


def test_this_machine_has_at_least_one() -> None:
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
