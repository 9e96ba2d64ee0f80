"""The image's contents, without Docker: the wheel deploy/Dockerfile installs, run as it runs.

The wheel is built, as the Dockerfile's build stage builds it, from the files the Docker
build context holds under .dockerignore, and installed into an empty virtualenv with the
project's constraints and binary wheels only. Its ``streams`` then creates the topics (as
compose's topic-init does) and runs the worker, which must find its JSON Schema inside the
installed package. While the worker runs, the Dockerfile's HEALTHCHECK command and the
Kubernetes probes' paths must answer.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml

from streams.broker.local import free_port
from tests.conftest import PipelineRun
from tests.unit.test_deploy_tools import (
    K8S_BASE,
    REPO,
    build_context_files,
    dockerfile_healthcheck,
)

pytestmark = pytest.mark.integration

# Variables that would let the installed command import the checkout instead of the wheel.
_LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


def _run(
    cmd: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}", pytrace=False)
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding only the streams wheel and its dependencies; returns its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    context = root / "context"
    for relative in build_context_files():
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, context / relative)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run(
        [*pip, "wheel", "--no-deps", "--wheel-dir", str(root / "wheels"), str(context)], timeout=300
    )
    (wheel,) = (root / "wheels").glob("streams-*.whl")
    venv = root / "venv"
    # No pip inside the venv: the outer pip installs into it (--python), which saves
    # bootstrapping one; pip's cache keeps the downloads local after the first run.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    _run(
        [
            *pip,
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-compile",
            "--only-binary=:all:",
            "--constraint",
            str(REPO / "constraints.txt"),
            str(wheel),
        ],
        timeout=600,
    )
    return venv / "bin"


def _env(run: PipelineRun, port: int) -> dict[str, str]:
    env = {k: v for k, v in run.env.items() if k not in _LEAKY_ENV}
    return env | {"STREAMS_METRICS_PORT": str(port)}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start_worker(streams: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """``streams worker`` as the image's CMD runs it, exiting once idle for 3 s."""
    return subprocess.Popen(
        [streams, "worker", "--exit-when-idle", "3", "--json"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until_healthy(
    worker: subprocess.Popen[str], installed: Path, env: dict[str, str], port: int
) -> bool:
    """Run the Dockerfile's HEALTHCHECK as Docker would (the venv's python standing in for the
    image's) and GET every path the Kubernetes probes and scrape annotations use, until all
    answer at once; False if the worker exits first."""
    healthcheck = dockerfile_healthcheck()
    assert healthcheck[0] == "python"
    healthcheck[0] = str(installed / "python")
    deployment = yaml.safe_load((K8S_BASE / "worker-statefulset.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    paths = {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    paths.add(deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
    deadline = time.monotonic() + 60
    while worker.poll() is None and time.monotonic() < deadline:
        check = subprocess.run(healthcheck, env=env, capture_output=True, timeout=10, check=False)
        if check.returncode == 0 and all(
            _answers(f"http://127.0.0.1:{port}{path}") for path in sorted(paths)
        ):
            return True
        time.sleep(0.2)
    return False


def _finish(worker: subprocess.Popen[str]) -> str:
    """The worker's stdout once it exited on its own, successfully."""
    try:
        out, err = worker.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        worker.kill()
        out, err = worker.communicate()
        pytest.fail(f"the installed worker did not exit when idle:\n{err[-3000:]}")
    assert worker.returncode == 0, err[-3000:]
    return out


def test_the_wheel_finds_its_schema_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    code = "import streams, streams.schemas as s; print(streams.__file__); print(s.schema_path())"
    done = _run([str(installed / "python"), "-c", code], cwd=tmp_path, timeout=60)
    package, schema = (Path(line) for line in done.stdout.split())
    venv = installed.parent
    assert package.is_relative_to(venv), f"imported {package}, not the installed wheel"
    assert schema.is_relative_to(venv)
    assert schema.is_file()
    assert schema.read_bytes() == (REPO / "schemas" / "event" / "v1.json").read_bytes()


async def test_the_installed_worker_runs_the_pipeline(
    installed: Path, pipeline_run: Callable[..., PipelineRun], tmp_path: Path
) -> None:
    run = pipeline_run(partitions=3)
    port = free_port()
    env = _env(run, port)
    streams = str(installed / "streams")
    # cwd is a scratch dir: the worker's Faust data directory goes there, as in the image.
    _run([streams, "topics", "create"], env=env, cwd=tmp_path, timeout=120)
    kinds = await run.publish(300, seed=23, dup_ratio=0.02, bad_ratio=0.05)
    assert kinds["bad"] > 0

    worker = _start_worker(streams, env, tmp_path)
    run.workers.append(worker)  # killed at teardown if the test fails midway
    answered = _wait_until_healthy(worker, installed, env, port)
    out = _finish(worker)
    assert answered, "the HEALTHCHECK or a probe path never answered while the worker ran"

    stats = orjson.loads(out.strip().splitlines()[-1])
    assert stats["consumed"] == 300
    # Invalid events were caught by the schema shipped inside the wheel.
    assert stats["invalid"] == kinds["bad"]
    report = await run.verify()
    assert report.exact(), report.as_dict()
    assert stats["emitted"] == report.output_finals == report.expected_finals > 0
