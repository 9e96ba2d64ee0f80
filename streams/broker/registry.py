"""A real Schema Registry run as a plain JVM process: Apicurio Registry, in memory.

Apicurio Registry 2.4.2.Final serves Confluent's Schema Registry REST API under
``/apis/ccompat/v7``. Maven Central has its app only as classes, so the first use builds a
runnable server from ``deploy/registry`` (a Quarkus build, ~1 min with downloads) into the
git-ignored cache, next to the Kafka jars; later uses reuse it without Maven. Like a
:class:`~streams.broker.local.LocalKafka`, a :class:`LocalRegistry` keeps its log and pid file in
one directory, every wait has a deadline, and every failure raises a
:class:`~streams.errors.RegistryServerError` carrying the log's tail. Storage is the app's
in-memory H2 database: a restart forgets every schema.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from streams.broker.local import cache_root, port_in_use, terminate
from streams.errors import RegistryServerError
from streams.registry.client import APICURIO_CCOMPAT

REGISTRY_VERSION = "2.4.2.Final"
DEFAULT_PORT = 8081
RUNNER_JAR = "apicurio-registry-runner.jar"
# Where Apicurio serves Confluent's API: the path clients (and RegistryClient) use.
API_PATH = APICURIO_CCOMPAT
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The environment the server sees: Apicurio reads dozens of variables (HTTP_PORT, LOG_LEVEL,
# KAFKA_BOOTSTRAP_SERVERS for its event sink, REGISTRY_DATASOURCE_URL, AUTH_ENABLED, ...), so
# it gets only these, never a developer's or a test's settings meant for something else.
_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "JAVA_HOME")


def _resource_dir() -> Path:
    """The build project: shipped in the wheel, or ``deploy/registry`` of a checkout."""
    shipped = _PACKAGE_DIR / "_registry"
    return shipped if shipped.is_dir() else _PACKAGE_DIR.parent / "deploy" / "registry"


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RegistryServerError(f"`{tool}` not found on PATH: {hint}")
    return path


def _project_files(project: Path) -> list[Path]:
    """The files the build reads (not the README), in a stable order."""
    return sorted(
        p
        for p in project.rglob("*")
        if p.is_file() and p.name != "README.md" and "target" not in p.relative_to(project).parts
    )


def project_fingerprint(project: Path) -> str:
    """A digest of the build project: a built server is reused only while it matches."""
    digest = hashlib.sha256()
    for path in _project_files(project):
        digest.update(path.relative_to(project).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_command(mvn: str, project: Path) -> list[str]:
    """The Maven command building the server in ``project`` (a copy of ``deploy/registry``).

    Maven's local repository is the default one, which the Kafka jars use too; the project's
    ``settings.xml`` sends every repository Apicurio's POMs name to Maven Central.
    """
    return [
        mvn,
        "-B",
        "--no-transfer-progress",
        "-Dstyle.color=never",
        "-s",
        str(project / "settings.xml"),
        "-f",
        str(project / "pom.xml"),
        "-DskipTests",
        "package",
    ]


def maven_errors(output: str, limit: int = 8) -> str:
    """The lines saying why a Maven build failed, without Maven's generic advice after them."""
    errors = []
    for line in _ANSI.sub("", output).splitlines():
        if not line.startswith("[ERROR]"):
            continue
        cause, advice, _ = line.removeprefix("[ERROR]").partition("-> [Help 1]")
        if cause.strip():
            errors.append(cause.strip())
        if advice:  # the cause ends here; Maven's generic advice follows
            break
    if not errors:
        errors = output.strip().splitlines()[-limit:]
    return " | ".join(errors[:limit])


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (two sessions never build at once)."""
    with lock_path.open("a") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryServerError(
                        f"another process held {lock_path} (building the Schema Registry) for "
                        f"over {timeout_s:.0f}s; retry when it is done"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _built(server: Path, fingerprint: str) -> bool:
    try:
        return (server / ".complete").read_text().strip() == fingerprint
    except OSError:
        return False


def ensure_registry_built(*, timeout_s: float = 900.0) -> Path:
    """Build the server with Maven once; later calls return the cached directory at once.

    Returns the directory holding ``apicurio-registry-runner.jar`` and its ``lib/``:
    ``cache_root()/registry/<version>/server``. The project is copied into the cache and built
    there, so nothing is written to the checkout or the installed package. A change to the
    project (pom, settings, properties) triggers a rebuild; the full Maven output of the last
    build is kept in ``build.log`` next to ``server``.
    """
    root = cache_root() / "registry" / REGISTRY_VERSION
    server = root / "server"
    resources = _resource_dir()
    fingerprint = project_fingerprint(resources)
    if _built(server, fingerprint):
        return server
    mvn = _require("mvn", "install Maven (e.g. `apt-get install maven`) to build the registry")
    _require("java", "install a Java 17+ runtime (e.g. `apt-get install default-jre`)")
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with _exclusive(root / ".build.lock", timeout_s):
        if _built(server, fingerprint):  # another process built it while this one waited
            return server
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            project = staging / "project"
            shutil.copytree(
                resources, project, ignore=shutil.ignore_patterns("README.md", "target")
            )
            _run_maven(build_command(mvn, project), root / "build.log", deadline)
            target = project / "target"
            built = staging / "server"
            built.mkdir()
            (target / RUNNER_JAR).rename(built / RUNNER_JAR)
            (target / "lib").rename(built / "lib")
            (built / ".complete").write_text(fingerprint)
            shutil.rmtree(server, ignore_errors=True)
            built.rename(server)
        except FileNotFoundError as exc:
            raise RegistryServerError(
                f"the Schema Registry build left no {exc.filename}; see {root / 'build.log'}"
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return server


def _run_maven(cmd: list[str], log_path: Path, deadline: float) -> None:
    with log_path.open("w") as log:
        try:
            done = subprocess.run(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RegistryServerError(
                f"Maven did not finish building the Schema Registry in time; check access to "
                f"Maven Central and retry (log: {log_path})"
            ) from None
    if done.returncode != 0:
        why = maven_errors(log_path.read_text(errors="replace"))
        raise RegistryServerError(
            f"Maven could not build the Schema Registry ({why}); full log: {log_path}"
        )


def server_command(java: str, server: Path, port: int, *, heap_mb: int = 256) -> list[str]:
    """The command line of the registry JVM: small heap, serial GC, C1 only (ready in about
    2 s, ~140 MB resident), in-memory storage, listening on 127.0.0.1 alone.

    ``-Xms32m``: the initial heap is otherwise 1/64 of the machine's memory up to ``-Xmx``, so
    on a large machine the young generation is sized for 256 MB at once and start-up touches
    all of it before its first collection (~210 MB resident instead of ~140 MB, no faster).
    """
    return [
        java,
        "-Xms32m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        "-Dquarkus.http.host=127.0.0.1",
        f"-Dquarkus.http.port={port}",
        "-Dquarkus.datasource.jdbc.url=jdbc:h2:mem:registry_db",
        "-jar",
        str(server / RUNNER_JAR),
    ]


def server_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The registry JVM's environment: the few variables of ``_PASSED_ENV`` that are set."""
    return {name: environ[name] for name in _PASSED_ENV if name in environ}


def subjects_answer(url: str, *, timeout_s: float = 2.0) -> bool:
    """True when ``GET <url>/subjects`` answers 200 (``url`` as :attr:`LocalRegistry.url`)."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class RegistryStatus:
    """What ``streams registry status`` reports."""

    running: bool
    url: str
    pid: int | None
    version: str
    home: str

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        return dict(self.__dict__)


class LocalRegistry:
    """One local Schema Registry living in ``home`` (log, pid and port files).

    ``port`` defaults to the one the registry in ``home`` was last started on, else 8081.
    """

    def __init__(self, home: Path | None = None, *, port: int | None = None, heap_mb: int = 256):
        self.home = home or cache_root() / "registry" / "run" / "default"
        self.port = port or self._saved_port() or DEFAULT_PORT
        self.heap_mb = heap_mb
        self.version = REGISTRY_VERSION
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The Confluent-compatible API's base URL: what clients take as the registry URL
        (``STREAMS_SCHEMA_REGISTRY_URL``)."""
        return f"http://127.0.0.1:{self.port}{API_PATH}"

    @property
    def log_path(self) -> Path:
        """Where the registry's console output goes (appended to across restarts)."""
        return self.home / "logs" / "registry.log"

    @property
    def _pid_path(self) -> Path:
        return self.home / "registry.pid"

    @property
    def _port_path(self) -> Path:
        return self.home / "registry.port"

    def _saved_port(self) -> int | None:
        try:
            return int(self._port_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """The pid of this instance's registry if it is alive."""
        try:
            pid = int(self._pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if RUNNER_JAR.encode() in cmdline else None

    def is_running(self) -> bool:
        """True while this instance's registry process is alive (ready or still starting)."""
        return self.pid() is not None

    def status(self) -> RegistryStatus:
        """Running or not, where, which pid and version."""
        pid = self.pid()
        return RegistryStatus(pid is not None, self.url, pid, self.version, str(self.home))

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the registry log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no registry log yet)"
        return "\n".join(text.strip().splitlines()[-lines:])

    def start(self, port: int | None = None, *, timeout_s: float = 120.0) -> bool:
        """Build the server if needed, start it on ``port`` (else :attr:`port`) and wait until
        its API answers; False when it was already running (on the port it was started on)."""
        if self.is_running():
            self.port = self._saved_port() or self.port
            return False
        if port is not None:
            self.port = port
        if port_in_use(self.port):
            raise RegistryServerError(
                f"port {self.port} is already in use by another process; stop that process "
                "or pick another port (--port)"
            )
        server = ensure_registry_built()
        java = _require("java", "install a Java 17+ runtime (e.g. `apt-get install default-jre`)")
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- starting on port {self.port} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                server_command(java, server, self.port, heap_mb=self.heap_mb),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env(os.environ),
                # Anything the server writes relative to its working dir lands in its home.
                cwd=self.home,
                start_new_session=True,
            )
        self._pid_path.write_text(str(self._proc.pid))
        self._port_path.write_text(str(self.port))
        try:
            self._wait_ready(self._proc, timeout_s)
        except BaseException:
            terminate([self._proc.pid], grace_s=5)
            self._pid_path.unlink(missing_ok=True)
            raise
        return True

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RegistryServerError(
                    f"the Schema Registry exited with code {proc.returncode} during start; "
                    f"log tail:\n{self.log_tail()}"
                )
            if subjects_answer(self.url, timeout_s=max(0.5, min(2.0, deadline - time.monotonic()))):
                return
            time.sleep(0.1)
        raise RegistryServerError(
            f"the Schema Registry did not answer at {self.url} within {timeout_s:.0f}s; "
            f"log tail:\n{self.log_tail()}"
        )

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout_s``; False if it was not running."""
        pid = self.pid()
        if pid is None:
            return False
        terminate([pid], grace_s=timeout_s)
        self._pid_path.unlink(missing_ok=True)
        return True
