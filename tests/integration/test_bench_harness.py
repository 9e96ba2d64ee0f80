"""The benchmark harness keeps working: every scenario runs and processes every event.

No figure is asserted here (performance is measured with `streams bench`, not in tests); this
only guards the harness against rot.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest

from streams.bench.runner import ALL_SCENARIOS
from streams.broker.local import port_in_use

pytestmark = pytest.mark.integration

EVENTS = 50_000
FAUST_EVENTS = 3_000
CODEC_EVENTS = 5_000


def test_bench_runs_every_scenario_on_every_event(project_env: dict[str, str]) -> None:
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams",
                "bench",
                "--events",
                str(EVENTS),
                "--faust-events",
                str(FAUST_EVENTS),
                "--codec-events",
                str(CODEC_EVENTS),
                "--latency-seconds",
                "3",
                "--rounds",
                "2",
                "--json",
            ],
            env=project_env,
            capture_output=True,
            text=True,
            timeout=270,  # under pytest's 300 s, to show where it stopped
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"streams bench ran over 270 s; its progress: {stderr[-3000:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    report = orjson.loads(done.stdout.strip().splitlines()[-1])
    rows = {row["scenario"]: row for row in report["results"]}
    # The latency runs at the default rate (half pipeline-alo's): the echo floor and both
    # guarantees, each with its own row.
    latency = {f"latency-{kind}-half" for kind in ("echo", "alo", "eos")}
    assert set(rows) == {*ALL_SCENARIOS, "limit-again", *latency} - {"latency"}
    for name in (
        "publish",
        "limit",
        "limit-again",
        "decode",
        "pipeline-alo",
        "pipeline-avro",
        "pipeline-eos",
        "pipeline-user",
    ):
        assert rows[name]["events"] == EVENTS, name
    assert rows["faust-naive"]["events"] == FAUST_EVENTS
    assert rows["codec"]["events"] == CODEC_EVENTS
    for name in latency:
        assert rows[name]["measured"] == rows[name]["events"] > 0, name
    for name in latency - {"latency-echo-half"}:
        phases = rows[name]["phases"]
        assert all(phases[phase]["batches"] > 0 for phase in phases), name
    # Every scenario but the slow Faust one ran in both rounds, on every event each time.
    for name in (
        "limit",
        "limit-again",
        "decode",
        "pipeline-alo",
        "pipeline-avro",
        "pipeline-eos",
        "pipeline-user",
    ):
        assert [r["round"] for r in rows[name]["rounds"]] == [1, 2], name
    assert "rounds" not in rows["faust-naive"]
    assert "rounds" not in rows["codec"]
    # The state scenario's worker held one aggregate and one id per event, before and after
    # its restart, and reported its own RSS (far above the ~50 MB of the scenario process).
    state = rows["state"]
    assert state["open_windows"] == state["dedupe_ids"] == EVENTS
    assert state["open_windows_after_restore"] == EVENTS
    assert state["changelog_records_restored"] >= EVENTS
    assert state["peak_rss_mb"] > 60
    # In each round, ratios are to the mean of that round's two limit runs.
    for first, again in zip(rows["limit"]["rounds"], rows["limit-again"]["rounds"], strict=True):
        assert first["ratio_to_limit"] + again["ratio_to_limit"] == pytest.approx(2.0, abs=0.002)
    for row in rows.values():
        assert row["events_per_second"] > 0
        assert row["seconds"] > 0
    assert {"date", "python", "kafka", "cpu"} <= set(report["environment"])


def _processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (the bench's and its children's)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_stopped_bench_leaves_no_worker_behind(project_env: dict[str, str]) -> None:
    """SIGTERM to the bench while its state scenario runs a `streams worker`: the bench exits
    and takes the scenario's whole process group with it (a worker used to be left running)."""
    marker = f"STREAMS_BENCH_TEST={uuid.uuid4().hex}"
    name, value = marker.split("=")
    bench = subprocess.Popen(
        [sys.executable, "-m", "streams", "bench", "--scenario", "state", "--events", "300000"],
        env={**project_env, name: value},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(_is_worker(pid) for pid in _processes_with(marker)):
            assert bench.poll() is None, bench.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the state scenario started no worker in 120s"
            time.sleep(0.1)
        bench.send_signal(signal.SIGTERM)
        bench.communicate(timeout=60)
        assert bench.returncode == 128 + signal.SIGTERM
        assert _processes_with(marker) == []
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.communicate()


def _is_worker(pid: int) -> bool:
    try:
        return b"\0worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_bench_runs_pipeline_alo_with_processes(project_env: dict[str, str]) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "streams", "bench", "--events", "20000"),
            *("--scenario", "limit", "--processes", "1", "--processes", "2", "--json"),
        ],
        env=project_env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["scenario"]: row for row in orjson.loads(done.stdout)["results"]}
    assert set(rows) == {"limit", "pipeline-alo-p1", "pipeline-alo-p2", "limit-again"}
    for processes in (1, 2):
        row = rows[f"pipeline-alo-p{processes}"]
        assert (row["events"], row["processes"]) == (20_000, processes)
        assert row["ratio_to_limit"] > 0


def test_bench_runs_pipeline_avro_and_codec(project_env: dict[str, str]) -> None:
    """pipeline-avro reads the Avro copy of the input through the run's own Schema Registry
    (started and stopped by the bench), next to pipeline-alo; codec measures in process."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "streams", "bench", "--events", "20000"),
            *("--scenario", "limit", "--scenario", "pipeline-alo", "--scenario", "pipeline-avro"),
            *("--scenario", "codec", "--codec-events", "2000", "--json"),
        ],
        env=project_env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["scenario"]: row for row in orjson.loads(done.stdout)["results"]}
    assert set(rows) == {"limit", "pipeline-alo", "pipeline-avro", "limit-again", "codec"}
    avro, alo = rows["pipeline-avro"], rows["pipeline-alo"]
    assert avro["events"] == alo["events"] == 20_000
    # The same events give as many aggregates (none final yet: 20k events are 20 s of event
    # time), none of them invalid either way.
    assert avro["emitted"] == alo["emitted"]
    assert avro["invalid"] == alo["invalid"] == 0
    assert avro["ratio_to_limit"] > 0
    assert avro["ratio_to_pipeline_alo"] > 0
    # Avro input is smaller than the JSON (MB/s are of each one's own bytes).
    assert (
        0
        < avro["mb_per_second"] / avro["events_per_second"]
        < (alo["mb_per_second"] / alo["events_per_second"])
    )
    codec = rows["codec"]
    assert codec["events"] == codec["json_valid"] == codec["avro_valid"] == 2_000
    for name in ("json_decode_us", "avro_decode_us", "avro_encode_us", "json_encode_us"):
        assert codec[name] > 0, name
    assert codec["ratio_to_limit"] is None
    # The registry the bench started is stopped.
    started = re.search(r"Schema Registry on port (\d+)", done.stderr)
    assert started is not None, done.stderr[-3000:]
    assert not port_in_use(int(started.group(1)))
