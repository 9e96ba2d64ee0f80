"""The container layer: podman builds the images and runs docker-compose.yml end to end.

Nothing here skips. A machine without podman (and the rest below) fails these tests with one
line naming the script that installs it; ``make test`` and ``.ci/run`` run that script first.
Registry images cannot be pulled here, so ``deploy/podman/build-images.sh`` makes local
stand-ins (a debootstrap Debian base, Python, Kafka, Prometheus, the Schema Registry) and a
wheelhouse, cached in ``.cache/`` and podman's store. What each test measured (image sizes, how
long each step took) and what could not run here is printed at the end of the session.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
BUILD_IMAGES = REPO / "deploy" / "podman" / "build-images.sh"
COMPOSE_OVERRIDE = Path(__file__).with_name("compose.test.yml")
TOOLS_HINT = "run deploy/tools/test-tools.sh as root (`make test` and .ci/run do)"
# podman 4.3 without systemd says so on every container start and stop: noise in any message.
_PODMAN_NOISE = ("unable to get systemd connection", "Removing timer for container")

_NOTES = pytest.StashKey[list[str]]()
T = TypeVar("T")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The container tests' measurements and what they could not run, after the results."""
    notes = config.stash.get(_NOTES, [])
    if notes:
        terminalreporter.section("containers (tests/container)")
        for line in notes:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def notes(request: pytest.FixtureRequest) -> list[str]:
    """Lines for the end-of-session summary: sizes, times, what was not run here."""
    return request.config.stash.setdefault(_NOTES, [])


@contextmanager
def timed(notes: list[str], what: str) -> Iterator[None]:
    """Record how long the block took as a summary line."""
    start = time.monotonic()
    yield
    notes.append(f"{what}: {time.monotonic() - start:.0f} s")


def quiet(text: str) -> str:
    """``text`` without podman's systemd complaints."""
    return "\n".join(
        line for line in text.splitlines() if not any(n in line for n in _PODMAN_NOISE)
    )


def run(
    cmd: list[str], *, env: dict[str, str], timeout: float, what: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; unless ``check`` is off, a failure or a timeout fails the test with ``what``
    and the end of the command's own output."""
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        output = quiet((exc.stderr or b"").decode(errors="replace"))[-2000:]
        pytest.fail(
            f"{what}: no answer within {timeout:.0f} s ({cmd[0]} {cmd[1]})\n{output}",
            pytrace=False,
        )
    if check and done.returncode != 0:
        output = quiet(done.stdout + done.stderr)[-3000:]
        pytest.fail(
            f"{what}: `{' '.join(cmd[:4])} ...` exited {done.returncode}\n{output}", pytrace=False
        )
    return done


def wait_until(
    what: str, probe: Callable[[], T | None], timeout: float, explain: Callable[[], str] = str
) -> T:
    """Poll ``probe`` until it returns something other than None or False; on timeout, fail
    with ``what`` and ``explain()`` (what was last seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s {explain()}".rstrip(), pytrace=False)
        time.sleep(0.5)


def log_since(path: Path, since: datetime.datetime) -> str:
    """The lines of a ``podman logs --timestamps`` file from ``since`` on, each message once
    with how often it came (a worker that cannot reach its broker repeats itself)."""
    counts: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stamp, _, message = line.partition(" ")
        when = datetime.datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")
        if when >= since:
            message = re.sub(r"^\[[\d-]+ [\d:,]+\] ", "", message)
            counts[message] = counts.get(message, 0) + 1
    return "\n".join(f"{m}" + (f"  (x{n})" if n > 1 else "") for m, n in counts.items())


def _require_tools() -> str:
    """The podman-compose beside this Python; fails with the fix when a tool is missing."""
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if not Path("/usr/lib/cni/dnsname").is_file():
        missing.append("CNI's dnsname plugin")
    compose = Path(sys.executable).with_name("podman-compose")
    if not compose.is_file():
        missing.append("podman-compose (`pip install -c constraints.txt -e '.[test]'`)")
    if missing:
        pytest.fail(f"the container tests need {', '.join(missing)}: {TOOLS_HINT}", pytrace=False)
    return str(compose)


@dataclass(frozen=True)
class LocalImages:
    """What deploy/podman/build-images.sh made, as the variables it printed."""

    env: dict[str, str]
    podman_compose: str

    def image_id(self, image: str) -> str | None:
        """The id of ``image``, None when there is none."""
        done = run(
            ["podman", "image", "inspect", "--format", "{{.Id}}", image],
            env=self.env,
            timeout=60,
            what=f"inspecting {image}",
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else None

    def size_mb(self, image: str) -> float:
        """``podman image inspect``'s size of ``image``, in MB."""
        done = run(
            ["podman", "image", "inspect", "--format", "{{.Size}}", image],
            env=self.env,
            timeout=60,
            what=f"inspecting {image}",
        )
        return int(done.stdout.strip()) / 1e6


@pytest.fixture(scope="module")
def local_images(notes: list[str]) -> LocalImages:
    """The local base, Kafka, Prometheus and registry images and the wheelhouse (cached after a
    first run)."""
    podman_compose = _require_tools()
    env = {**os.environ, "PYTHON": sys.executable}
    with timed(
        notes,
        "deploy/podman/build-images.sh (base, Python, Kafka, Prometheus, registry, wheelhouse)",
    ):
        done = run([str(BUILD_IMAGES)], env=env, timeout=1500, what="building the local images")
    for line in done.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    images = LocalImages(env, podman_compose)
    for name in ("PYTHON_BASE_IMAGE", "KAFKA_IMAGE", "PROMETHEUS_IMAGE", "REGISTRY_IMAGE"):
        notes.append(f"image {env[name]}: {images.size_mb(env[name]):.0f} MB")
    return images


class Stack:
    """One podman-compose project of docker-compose.yml with compose.test.yml on top.

    Its own project name, so it shares no container, network or volume with any other run, and
    its own host ports. ``remove`` force-removes whatever of it is left.
    """

    def __init__(self, images: LocalImages, project: str, host_ports: dict[str, int]) -> None:
        self.project = project
        self.images = images
        self.env = {**images.env, **{name: str(port) for name, port in host_ports.items()}}
        self._followers: list[subprocess.Popen[bytes]] = []

    def compose(
        self, *args: str, timeout: float = 180, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``podman-compose ARGS`` on this project (the demo profile included)."""
        files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(COMPOSE_OVERRIDE)]
        cmd = [self.images.podman_compose, "-p", self.project, *files, "--profile", "demo", *args]
        return run(
            cmd, env=self.env, timeout=timeout, what=f"podman-compose {args[0]}", check=check
        )

    def podman(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``podman ARGS``."""
        return run(
            ["podman", *args], env=self.env, timeout=timeout, what=f"podman {args[0]}", check=check
        )

    def container(self, service: str, index: int = 1) -> str:
        """The name podman-compose gives a service's ``index``-th container."""
        return f"{self.project}_{service}_{index}"

    def state(self, container: str) -> dict[str, Any]:
        """``podman inspect``'s State of ``container``."""
        done = self.podman("inspect", "--format", "{{json .State}}", container)
        return dict(json.loads(done.stdout))

    def healthy(self, container: str) -> bool:
        """Whether the container's own healthcheck passes now (podman schedules none without
        systemd, so this runs it)."""
        return self.podman("healthcheck", "run", container, check=False).returncode == 0

    def exit_code(self, container: str, timeout: float) -> int:
        """Wait until ``container`` has exited; its exit code."""
        done = self.podman("wait", container, timeout=timeout)
        return int(done.stdout.strip())

    def metrics(self, container: str, port: int) -> dict[str, float]:
        """Each metric's samples summed, read from inside the container; {} while it does not
        answer."""
        url = f"http://127.0.0.1:{port}/metrics"
        fetch = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=4).read().decode())"
        done = self.podman("exec", container, "python", "-c", fetch, check=False)
        if done.returncode != 0:
            return {}
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(done.stdout):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        """An instant query to the stack's Prometheus, through its published port."""
        port = self.env["PROMETHEUS_HOST_PORT"]
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.load(response)
        except OSError:
            return []
        return list(body["data"]["result"])

    def follow_logs(self, container: str, path: Path) -> None:
        """Copy the container's log into ``path`` until it stops (it is gone after ``down``)."""
        with path.open("wb") as log:
            self._followers.append(
                subprocess.Popen(
                    ["podman", "logs", "--follow", "--timestamps", container],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def ended_since(self, since: datetime.datetime) -> dict[str, tuple[int, float]]:
        """Each of this project's containers that ended after ``since``: its exit code and how
        many seconds after ``since`` it ended (podman's event log keeps removed ones too)."""
        label = f"label=io.podman.compose.project={self.project}"
        done = self.podman(
            "events", "--stream=false", "--since", since.isoformat(), "--filter", "event=died",
            "--filter", label, "--format", "{{.Name}} {{.ContainerExitCode}} {{.Time.UnixNano}}",
        )  # fmt: skip
        ended = {}
        for line in done.stdout.splitlines():
            name, code, nanos = line.split()
            ended[name] = (int(code), int(nanos) / 1e9 - since.timestamp())
        return ended

    def address(self, container: str) -> str:
        """The container's IP address on the project's network."""
        done = self.podman(
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            container,
        )
        return done.stdout.strip()

    def save_logs(self, directory: Path) -> list[Path]:
        """Write the log of each of this project's containers into ``directory``."""
        saved = []
        for container in self.leftovers():
            directory.mkdir(parents=True, exist_ok=True)
            done = self.podman("logs", "--timestamps", container, check=False)
            path = directory / f"{container}.log"
            path.write_text(done.stdout + done.stderr)
            saved.append(path)
        return saved

    def leftovers(self) -> list[str]:
        """Names of this project's containers that still exist."""
        done = self.podman(
            "ps",
            "--all",
            "--format",
            "{{.Names}}",
            "--filter",
            f"label=io.podman.compose.project={self.project}",
        )
        return done.stdout.split()

    def remove(self) -> None:
        """Force-remove every container, pod, network and volume of this project."""
        for follower in self._followers:
            if follower.poll() is None:
                follower.terminate()
            follower.wait(timeout=30)
        label = f"label=io.podman.compose.project={self.project}"
        listings = {
            ("rm", "--force", "--time", "0"): ["ps", "--all", "--quiet", "--filter", label],
            ("pod", "rm", "--force"): [
                "pod",
                "ls",
                "--quiet",
                "--filter",
                f"name=pod_{self.project}",
            ],
            ("network", "rm", "--force"): ["network", "ls", "--quiet", "--filter", label],
            ("volume", "rm", "--force"): ["volume", "ls", "--quiet", "--filter", label],
        }
        for remove, listing in listings.items():
            found = self.podman(*listing, check=False).stdout.split()
            if found:
                self.podman(*remove, *found, check=False)
