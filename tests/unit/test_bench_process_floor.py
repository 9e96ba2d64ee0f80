"""bench/process_floor.py: its loops do the same work, or its figures would not compare."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "process_floor.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("process_floor", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_thinnest_loop_emits_what_the_engine_emits() -> None:
    # Past the first minute of event time (~60k of the bench's events), so timers fire.
    figures = _load().measure(events=70_000, users=2_000, chunk=5_000, rounds=1)
    emitted = figures["emitted"]
    assert emitted["engine"] > 0
    assert emitted["thinnest"] == emitted["engine"]
    assert set(figures["cpu_us_per_event"]) == {"decode", "functions", "thinnest", "engine"}
