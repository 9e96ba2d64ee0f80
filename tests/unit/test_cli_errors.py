"""People get one clear line, not a traceback: a missing broker, a bad setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.broker.local import free_port


def _streams(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMS_", "KAFKA_"))}
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [("topics", "create"), ("worker",), ("verify",), ("lag",), ("publish", "events", "/dev/null")],
)
def test_missing_broker_is_one_line(args: tuple[str, ...]) -> None:
    done = _streams(*args, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot reach Kafka at 127.0.0.1:")
    assert "streams kafka start" in lines[0]


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("STREAMS_WINDOW_SIZE_MS", "abc", "is not an integer"),
        ("STREAMS_GUARANTEE", "maybe", "is not one of at_least_once, exactly_once"),
        ("STREAMS_WINDOW_STEP_MS", "120000", "must not exceed the window size"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "needs KAFKA_SASL_USERNAME"),
        ("STREAMS_METRICS_PORT", "0", "is below the minimum 1"),
        ("STREAMS_METRICS_PORT", "70000", "is above the maximum 65535"),
        ("STREAMS_METADATA_REFRESH_MS", "10", "is below the minimum 1000"),
        ("STREAMS_REPLICATION_FACTOR", "three", "is not an integer"),
        ("STREAMS_REPLICATION_FACTOR", "0", "is below the minimum 1"),
        ("STREAMS_PROCESSES", "0", "is below the minimum 1"),
        ("STREAMS_PROCESSES", "many", "is neither a whole number nor auto"),
        ("STREAMS_GROUP_INSTANCE_ID", "pod 1", "is not a valid group instance id"),
    ],
)
def test_bad_setting_is_one_line_naming_it(name: str, value: str, says: str) -> None:
    done = _streams("worker", **{name: value})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {name}") or name in lines[0]
    assert says in lines[0]


def test_bad_process_count_option_is_one_line() -> None:
    done = _streams("worker", "--processes", "many")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --processes='many' is neither a whole number nor auto; set the number of "
        "worker processes (e.g. 2), or auto for one per CPU the container may use"
    ]
