"""Real Apache Kafka brokers (KRaft) run as plain JVM processes: one node, or a cluster.

Jars come from Maven Central through ``deploy/kafka/pom.xml`` into a git-ignored cache;
each node keeps its config, data, log and pid file in one directory. A :class:`LocalKafka` is
one combined broker + controller node (alone, a cluster of one); a :class:`LocalCluster` is
several such nodes on one machine sharing one controller quorum (KAFKA.md). Every wait has a
deadline, and every failure raises a :class:`BrokerError` carrying the broker log's tail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from streams.errors import BrokerError

KAFKA_VERSION = "4.1.1"
STARTED_MARKER = "Kafka Server started"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _resource_dir() -> Path:
    """The pom and log4j config: shipped in the wheel, or in ``deploy/kafka`` of a checkout."""
    shipped = _PACKAGE_DIR / "_kafka"
    return shipped if shipped.is_dir() else _PACKAGE_DIR.parent / "deploy" / "kafka"


def cache_root() -> Path:
    """``STREAMS_CACHE_DIR``, else ``.cache`` of a source checkout, else ``~/.cache/streams``."""
    configured = os.environ.get("STREAMS_CACHE_DIR")
    if configured:
        return Path(configured)
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".cache"
    return Path.home() / ".cache" / "streams"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago (all held while picking)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` not found on PATH: {hint}")
    return path


def fetch_jars(version: str = KAFKA_VERSION, *, timeout_s: float = 600.0) -> Path:
    """Download the broker jars with Maven once; later calls return the cached directory."""
    libs = cache_root() / "kafka" / version / "libs"
    if (libs / ".complete").is_file():
        return libs
    mvn = _require("mvn", "install Maven (e.g. `apt-get install maven`) to fetch the Kafka jars")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(_resource_dir() / "pom.xml"),
        f"-Dkafka.version={version}",
        "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"Maven did not finish fetching Kafka {version} within {timeout_s:.0f}s; "
            "check access to Maven Central and retry"
        ) from None
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise BrokerError(f"Maven could not fetch Kafka {version} jars: {tail}")
    (staging / ".complete").write_text(version)
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def new_cluster_id() -> str:
    """A random KRaft cluster id: 22 URL-safe base64 characters, never starting with ``-``
    (the storage tool would read that as an option; Kafka's own generator avoids it too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def java_command(libs: Path, main: str, *args: str, jvm_args: list[str] | None = None) -> list[str]:
    """The command line running ``main`` from Kafka's jars."""
    java = _require("java", "install a Java 17+ runtime (e.g. `apt-get install default-jre`)")
    return [
        java,
        *(jvm_args or []),
        f"-Dlog4j2.configurationFile={_resource_dir() / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def run_tool(main: str, *args: str, timeout_s: float = 120.0) -> str:
    """Run one of Kafka's own command-line tools (e.g. ``kafka.admin.ConfigCommand``)."""
    cmd = java_command(fetch_jars(), main, *args)
    env = {**os.environ, "KAFKA_LOG_LEVEL": "WARN"}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise BrokerError(f"{main} did not finish within {timeout_s:.0f}s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise BrokerError(f"{main} failed: {tail}")
    return done.stdout


@dataclass
class BrokerStatus:
    """What ``streams kafka status`` reports."""

    running: bool
    bootstrap: str
    pid: int | None
    version: str
    home: str

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        return dict(self.__dict__)


SCRAM_MECHANISM = "SCRAM-SHA-512"
_SCRAM_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


@dataclass(frozen=True)
class BrokerSecurity:
    """Secured listeners a :class:`LocalKafka` opens next to its PLAINTEXT one.

    ``SASL_PLAINTEXT`` (SCRAM-SHA-512), ``SSL`` (server certificate only, no client
    certificates) and ``SASL_SSL`` (SCRAM-SHA-512 over TLS), each on its own port. The one
    SCRAM user is created when the data dir is formatted, so it exists only in a fresh home.
    ``server_cert`` is the PEM chain (leaf first) and ``server_key`` its unencrypted PKCS#8
    PEM key, e.g. from :func:`streams.broker.certs.write_test_pki`. The controller and
    inter-broker traffic stay on PLAINTEXT. Secrets never appear in ``repr``.
    """

    username: str
    password: str = field(repr=False)
    server_cert: Path
    server_key: Path
    sasl_plaintext_port: int
    ssl_port: int
    sasl_ssl_port: int

    def ports(self) -> dict[str, int]:
        """Listener name to port."""
        return {
            "SASL_PLAINTEXT": self.sasl_plaintext_port,
            "SSL": self.ssl_port,
            "SASL_SSL": self.sasl_ssl_port,
        }


class LocalKafka:
    """One local broker node living in ``home`` (config, data, logs, pid file).

    Alone it is a single-node cluster. As a node of a :class:`LocalCluster` it has its own
    ``node_id``, the controller ports of every node (``voters``), the cluster's id to format
    its data dir with, and ``internal_replicas``: the replication factor of Kafka's own
    offsets, transaction and share-state topics (their min ISR is one less, at least 1).
    """

    def __init__(
        self,
        home: Path | None = None,
        *,
        port: int = 9092,
        controller_port: int = 9093,
        version: str = KAFKA_VERSION,
        heap_mb: int = 512,
        security: BrokerSecurity | None = None,
        node_id: int = 1,
        voters: Mapping[int, int] | None = None,
        cluster_id: str | None = None,
        internal_replicas: int = 1,
    ) -> None:
        self.home = home or cache_root() / "kafka" / "run" / "default"
        self.port = port
        self.controller_port = controller_port
        self.version = version
        self.heap_mb = heap_mb
        self.security = security
        self.node_id = node_id
        self.voters = dict(voters or {node_id: controller_port})
        self.cluster_id = cluster_id
        self.internal_replicas = internal_replicas
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def bootstrap(self) -> str:
        """The address clients connect to (the PLAINTEXT listener)."""
        return f"127.0.0.1:{self.port}"

    def bootstrap_for(self, protocol: str) -> str:
        """The address of the listener speaking ``protocol`` (PLAINTEXT, SSL, SASL_*)."""
        if protocol == "PLAINTEXT":
            return self.bootstrap
        ports = self.security.ports() if self.security else {}
        if protocol not in ports:
            raise BrokerError(f"this broker has no {protocol} listener")
        return f"127.0.0.1:{ports[protocol]}"

    @property
    def log_path(self) -> Path:
        """Where the broker's console output goes."""
        return self.home / "logs" / "broker.log"

    @property
    def _pid_path(self) -> Path:
        return self.home / "broker.pid"

    def pid(self) -> int | None:
        """The pid of this instance's broker if it is alive."""
        try:
            pid = int(self._pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"kafka.Kafka" in cmdline else None

    def status(self) -> BrokerStatus:
        """Running or not, where, which pid and version."""
        pid = self.pid()
        return BrokerStatus(pid is not None, self.bootstrap, pid, self.version, str(self.home))

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the broker log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no broker log yet)"
        return "\n".join(text.strip().splitlines()[-lines:])

    def _listener_lines(self) -> list[str]:
        ports = {"PLAINTEXT": self.port, **(self.security.ports() if self.security else {})}
        advertised = ",".join(f"{name}://127.0.0.1:{port}" for name, port in ports.items())
        protocols = ",".join(f"{name}:{name}" for name in ports)
        return [
            f"listeners={advertised},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={advertised}",
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{protocols}",
        ]

    def _security_lines(self) -> list[str]:
        """SCRAM and TLS settings of the secured listeners; writes the server's key store."""
        if self.security is None:
            return []
        # Kafka's PEM key store in a file: the (unencrypted PKCS#8) key, then the chain.
        keystore = self.home / "server-keystore.pem"
        keystore.touch(mode=0o600)
        keystore.write_text(
            self.security.server_key.read_text().strip()
            + "\n"
            + self.security.server_cert.read_text().strip()
            + "\n"
        )
        jaas = f"{SCRAM_MECHANISM.lower()}.sasl.jaas.config={_SCRAM_JAAS}"
        return [
            f"sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"listener.name.sasl_plaintext.{jaas}",
            f"listener.name.sasl_ssl.{jaas}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={keystore}",
            "ssl.client.auth=none",
        ]

    def _write_config(self) -> Path:
        data = self.home / "data"
        props = self.home / "server.properties"
        voters = ",".join(f"{node}@127.0.0.1:{port}" for node, port in sorted(self.voters.items()))
        replicas = self.internal_replicas
        min_isr = max(1, replicas - 1)
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    f"node.id={self.node_id}",
                    f"controller.quorum.voters={voters}",
                    *self._listener_lines(),
                    *self._security_lines(),
                    f"log.dirs={data}",
                    "num.partitions=1",
                    f"offsets.topic.replication.factor={replicas}",
                    "offsets.topic.num.partitions=6",
                    f"transaction.state.log.replication.factor={replicas}",
                    f"transaction.state.log.min.isr={min_isr}",
                    "transaction.state.log.num.partitions=6",
                    f"share.coordinator.state.topic.replication.factor={replicas}",
                    f"share.coordinator.state.topic.min.isr={min_isr}",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "transaction.max.timeout.ms=900000",
                    "",
                ]
            )
        )
        return props

    def start(self, *, timeout_s: float = 90.0) -> bool:
        """Start the broker and wait until it answers; False when it was already running."""
        if not self.launch():
            return False
        self.wait_ready(timeout_s)
        return True

    def launch(self) -> bool:
        """Start the broker's process without waiting for it (a cluster's nodes start together,
        since none is ready before a quorum of controllers runs); False if already running."""
        if self.pid() is not None:
            return False
        extra = list(self.security.ports().values()) if self.security else []
        for port in (self.port, self.controller_port, *extra):
            if port_in_use(port):
                raise BrokerError(
                    f"port {port} is already in use by another process; stop that process "
                    "or pick other ports (KAFKA_BOOTSTRAP_SERVERS, --port)"
                )
        libs = fetch_jars(self.version)
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        props = self._write_config()
        if not (self.home / "data" / "meta.properties").is_file():
            self._format(libs, props)
        env = {**os.environ, "KAFKA_LOG_LEVEL": os.environ.get("KAFKA_LOG_LEVEL", "INFO")}
        with self.log_path.open("ab") as log:
            # The log is appended to across restarts: readiness is read from this run's part.
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                java_command(libs, "kafka.Kafka", str(props), jvm_args=self._jvm_args()),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._pid_path.write_text(str(self._proc.pid))
        return True

    def _jvm_args(self) -> list[str]:
        return [
            f"-Xms{self.heap_mb}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
        ]

    def _format(self, libs: Path, props: Path) -> None:
        cluster_id = self.cluster_id or new_cluster_id()
        args = ["format", "-t", cluster_id, "-c", str(props)]
        if self.security is not None:
            user = f"name={self.security.username},password={self.security.password}"
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[{user}]"]
        cmd = java_command(libs, "kafka.tools.StorageTool", *args)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired:
            raise BrokerError("formatting the Kafka data dir took over 120s; retry") from None
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            if self.security is not None:
                tail = tail.replace(self.security.password, "***")
            raise BrokerError(f"formatting the Kafka data dir failed: {tail}")

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the broker :meth:`launch` started logs that it started and answers a
        metadata request; on failure it is stopped and a BrokerError says why."""
        proc = self._proc
        assert proc is not None, "launch() first"
        try:
            self._wait_ready(proc, timeout_s)
        except BaseException:
            terminate([proc.pid], grace_s=5)
            raise

    def _started(self) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return STARTED_MARKER.encode() in log.read()

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(
                    f"the Kafka broker (node {self.node_id}) exited with code {proc.returncode} "
                    f"during start; log tail:\n{self.log_tail()}"
                )
            if self._started() and metadata_answers(
                self.bootstrap, timeout_s=max(1.0, deadline - time.monotonic())
            ):
                return
            time.sleep(0.2)
        raise BrokerError(
            f"the Kafka broker (node {self.node_id}) did not become ready within "
            f"{timeout_s:.0f}s; log tail:\n{self.log_tail()}"
        )

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """SIGTERM (clean shutdown), then SIGKILL after ``timeout_s``; False if not running."""
        pid = self.pid()
        if pid is None:
            return False
        terminate([pid], grace_s=timeout_s)
        self.forget_pid()
        return True

    def forget_pid(self) -> None:
        """The broker was stopped: drop its pid file."""
        self._pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the broker: a crash, for fault tests."""
        pid = self.pid()
        if pid is not None:
            terminate([pid], grace_s=0)


@dataclass
class ClusterStatus:
    """What ``streams kafka status`` reports for a :class:`LocalCluster`: each node's status."""

    nodes: list[BrokerStatus]
    home: str

    @property
    def running(self) -> bool:
        """Every node runs."""
        return all(node.running for node in self.nodes)

    @property
    def bootstrap(self) -> str:
        """Every node's address, as clients list them."""
        return ",".join(node.bootstrap for node in self.nodes)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view."""
        return {
            "running": self.running,
            "bootstrap": self.bootstrap,
            "home": self.home,
            "nodes": [node.as_dict() for node in self.nodes],
        }


_LAYOUT = "cluster.json"


def cluster_home(brokers: int) -> Path:
    """Where ``streams kafka start --brokers N`` keeps its cluster."""
    return cache_root() / "kafka" / "run" / f"cluster-{brokers}"


def cluster_ports(
    brokers: int, port: int = 9092, controller_port: int = 9093
) -> list[tuple[int, int]]:
    """The command line's layout: node i (from 0) serves clients on ``port + 2i`` and its
    controller on ``controller_port + 2i`` (9092/9093, 9094/9095, 9096/9097 by default)."""
    return [(port + 2 * i, controller_port + 2 * i) for i in range(brokers)]


class LocalCluster:
    """Several :class:`LocalKafka` nodes forming one KRaft cluster on this machine.

    Each node is a combined broker + controller; all of them vote in the one controller quorum
    (so a majority must run for any to serve). One cluster id is formatted into every node's
    data dir, and Kafka's own offsets and transaction topics are replicated min(3, brokers)
    times with a min ISR one less (KAFKA.md, "Three brokers on one machine"). The layout
    (ports, cluster id) is kept in ``home/cluster.json``, where :meth:`load` finds it again.
    """

    def __init__(
        self,
        home: Path,
        ports: list[tuple[int, int]],
        *,
        version: str = KAFKA_VERSION,
        heap_mb: int = 384,
    ) -> None:
        self.home = home
        self.version = version
        layout = home / _LAYOUT
        cluster_id = (
            json.loads(layout.read_text())["cluster_id"] if layout.is_file() else new_cluster_id()
        )
        self.cluster_id = cluster_id
        voters = {node: controller for node, (_, controller) in enumerate(ports, start=1)}
        self.nodes = [
            LocalKafka(
                home / f"node-{node}",
                port=port,
                controller_port=controller,
                version=version,
                heap_mb=heap_mb,
                node_id=node,
                voters=voters,
                cluster_id=cluster_id,
                internal_replicas=min(3, len(ports)),
            )
            for node, (port, controller) in enumerate(ports, start=1)
        ]

    @classmethod
    def load(cls, home: Path) -> LocalCluster | None:
        """The cluster a previous :meth:`start` left in ``home``, if any."""
        try:
            layout = json.loads((home / _LAYOUT).read_text())
        except (OSError, ValueError):
            return None
        return cls(home, [tuple(pair) for pair in layout["ports"]], version=layout["version"])

    @property
    def bootstrap(self) -> str:
        """Every node's address: clients keep working while any one of them is down."""
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        """The node with ``node_id`` (1, 2, ...)."""
        return self.nodes[node_id - 1]

    def status(self) -> ClusterStatus:
        """Each node's status."""
        return ClusterStatus([node.status() for node in self.nodes], str(self.home))

    def start(self, *, timeout_s: float = 180.0) -> bool:
        """Start the nodes not running, wait until each is ready and Kafka's own topics are
        created and fully in sync; False when every node was already running."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / _LAYOUT).write_text(
            json.dumps(
                {
                    "cluster_id": self.cluster_id,
                    "version": self.version,
                    "ports": [[n.port, n.controller_port] for n in self.nodes],
                }
            )
        )
        deadline = time.monotonic() + timeout_s
        launched = []
        try:
            for node in self.nodes:
                if node.launch():
                    launched.append(node)
            if not launched:
                return False
            for node in launched:
                node.wait_ready(max(1.0, deadline - time.monotonic()))
            self.wait_in_sync(timeout_s=max(1.0, deadline - time.monotonic()))
        except BaseException:
            terminate([pid for node in launched if (pid := node.pid()) is not None], grace_s=5)
            raise
        return True

    def wait_in_sync(self, *, timeout_s: float = 120.0) -> None:
        """Wait until every partition (Kafka's offsets and transaction topics, created here if
        they are not yet) has a leader and all its replicas in sync: after a node restarts, it
        is caught up before the next one may go (a rolling restart)."""
        asyncio.run(_settle(self.bootstrap, timeout_s))

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """SIGTERM every node at once (one by one, the last would wait for a quorum that is
        gone), SIGKILL after ``timeout_s``; False if none was running."""
        running = [(node, pid) for node in self.nodes if (pid := node.pid()) is not None]
        terminate([pid for _, pid in running], grace_s=timeout_s)
        for node, _ in running:
            node.forget_pid()
        return bool(running)


async def _settle(bootstrap: str, timeout_s: float) -> None:
    from aiokafka.errors import KafkaError

    from streams.broker.admin import admin_client, describe_partitions
    from streams.config import KafkaSettings

    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + timeout_s
    lagging: list[tuple[str, int]] = []
    while time.monotonic() < deadline:
        try:
            async with admin_client(kafka) as admin:
                # Kafka creates its offsets and transaction topics when first asked for a
                # coordinator: now, while every node runs, so that they get every replica.
                await admin.find_coordinator("streams-cluster-ready", 0)
                await admin.find_coordinator("streams-cluster-ready", 1)
            partitions = await describe_partitions(kafka)
        except (KafkaError, BrokerError):
            await asyncio.sleep(0.5)
            continue
        lagging = sorted(
            where
            for where, r in partitions.items()
            if r.leader < 0 or set(r.in_sync) != set(r.replicas)
        )
        names = {topic for topic, _ in partitions}
        if not lagging and {"__consumer_offsets", "__transaction_state"} <= names:
            return
        await asyncio.sleep(0.5)
    raise BrokerError(
        f"the local cluster at {bootstrap} did not get every partition in sync within "
        f"{timeout_s:.0f}s (still lagging: {lagging[:5]})"
    )


def terminate(pids: Iterable[int], grace_s: float) -> None:
    """SIGTERM every process at once (SIGKILL when ``grace_s`` is 0), SIGKILL those still
    alive after ``grace_s``; returns once all are gone (their ports free), and reaped."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
    _wait_gone(pids, grace_s)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # A SIGKILLed process is gone within moments, not at once: a restart must not find its
    # ports still bound.
    _wait_gone(pids, 10.0)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def metadata_answers(bootstrap: str, *, timeout_s: float = 5.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request within the deadline."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        # Refused connections are the expected answer while a broker starts: not errors.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            await asyncio.wait_for(admin.describe_cluster(), timeout_s)
            return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    return asyncio.run(probe())
