"""``streams reset``: after a change of declaration, an app starts over on purpose.

A worker with 60 s windows runs; the window is then changed to 10 s. Without a reset the
worker refuses the old state (tests/fault/test_state_changes.py); with
``streams reset --from-beginning`` the state starts afresh, the input is processed again from
its beginning, and the new output is exactly the recomputation with 10 s windows.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.conftest import PipelineRun

pytestmark = pytest.mark.integration

PAST = 1_600_000_000_000


def _reset(run: PipelineRun, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", "reset", *args],
        env=run.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_reset_from_the_beginning_reprocesses_with_the_new_declaration(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=2)
    await run.create_topics()
    await run.publish(10_000, seed=81, start_ts=PAST, dup_ratio=0.02, bad_ratio=0.01)
    run.start_worker(exit_when_idle=3).finish()

    running = run.start_worker()  # the first declaration, still running
    running.wait_metric_at_least("streams_worker_ready", 1)
    refused = _reset(run)
    assert refused.returncode == 2
    assert "running workers; stop them before resetting" in refused.stderr
    running.proc.terminate()  # a clean stop leaves the group at once
    running.proc.communicate(timeout=60)

    run.env["STREAMS_WINDOW_SIZE_MS"] = "10000"
    done = _reset(run, "--from-beginning")
    assert done.returncode == 0, done.stderr
    assert f"{run.app_id}-state-changelog" in done.stdout
    assert "rewound group" in done.stdout
    # A fresh output topic for the new declaration's results.
    run.output = run.env["STREAMS_OUTPUT_TOPIC"] = f"{run.output}-10s"
    totals = run.start_worker(exit_when_idle=3).finish()
    assert totals["consumed"] == 10_000  # all of it again, from the beginning
    report = await run.verify()
    assert report.missing == report.extra == report.wrong == report.duplicate_finals == 0
    assert report.expected_finals > 100
    # The dead letters and late records of the input are there twice: once per processing.
    assert report.dead_missing == report.dead_extra == 0
    assert report.dead_duplicates == report.expected_dead
