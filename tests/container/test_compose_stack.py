"""docker-compose.yml for real, with podman: the image built from deploy/Dockerfile as a user
builds it, then the stack brought up, loaded, disturbed, audited and taken down.

Debian bookworm's podman (4.3) has no systemd here to schedule healthchecks, and podman-compose
ignores ``service_healthy`` on a podman older than 4.6. So the test brings the services up one
at a time, in the file's dependency order, and waits for each ``depends_on`` condition the file
declares itself: ``podman healthcheck run`` for a healthy one, the exit code for a completed one.

Grafana is not run: no grafana/grafana image can be pulled here and Debian has no grafana
package. Its dashboard and provisioning stay checked statically
(tests/unit/test_lag_dashboard.py, tests/unit/test_deploy_contracts.py); the session summary
says so too.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.broker.local import free_port
from streams.broker.registry import API_PATH
from tests.container.conftest import (
    COMPOSE_OVERRIDE,
    REPO,
    LocalImages,
    Stack,
    log_since,
    run,
    timed,
    wait_until,
)
from tests.unit.test_deploy_tools import (
    DOCKERFILE,
    K8S_BASE,
    dockerfile_healthcheck,
    load_compose,
    render,
)

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

# Everything but Grafana (not to be had here) and the generator (the load, started later).
SERVICES = ["kafka", "registry", "topic-init", "worker", "lag-exporter", "prometheus"]
WORKERS = 2
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
# Run in a worker container: registers argv[2] under argv[1] through the compose stack's
# registry URL, then reads it back by id with a second client (the first one caches it).
REGISTER_AND_READ = """
import json, os, sys
from streams.registry import RegistryClient
url = os.environ["STREAMS_SCHEMA_REGISTRY_URL"]
RegistryClient(url).check()
schema_id = RegistryClient(url).register(sys.argv[1], "AVRO", sys.argv[2])
print(json.dumps([schema_id, *RegistryClient(url).schema(schema_id)]))
"""


def _seconds(duration: str) -> float:
    """A Compose duration such as ``60s`` or ``1m30s``."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts, f"unreadable duration {duration!r}"
    assert duration, "an empty duration"
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.fixture(scope="module")
def streams_image(local_images: LocalImages, notes: list[str]) -> str:
    """deploy/Dockerfile built as the README says, on the local Python base, from the wheelhouse,
    with no network at all; the image name compose runs. No layer cache: each build stage would
    leave an untagged image behind, a pile of them over repeated runs."""
    image = str(load_compose()["services"]["worker"]["image"])
    env = local_images.env
    replaced = local_images.image_id(image)
    with timed(notes, f"podman build of {image} from deploy/Dockerfile (no network)"):
        run(
            [
                "podman", "build", "--format", "docker", "--network", "none", "--layers=false",
                "--file", str(DOCKERFILE),
                "--build-arg", f"BASE={env['PYTHON_BASE_IMAGE']}",
                "--build-context", f"wheelhouse={env['WHEELHOUSE']}",
                "--tag", image, str(REPO),
            ],
            env=env,
            timeout=900,
            what="building deploy/Dockerfile",
        )  # fmt: skip
    if replaced and local_images.image_id(image) != replaced:
        # As build-images.sh does: repeated runs leave no pile of untagged images.
        run(["podman", "rmi", replaced], env=env, timeout=120, what="removing", check=False)
    notes.append(f"image {image}: {local_images.size_mb(image):.0f} MB")
    return image


def test_the_image_runs_as_kubernetes_runs_it(
    streams_image: str, local_images: LocalImages
) -> None:
    (inspected,) = json.loads(
        run(
            ["podman", "image", "inspect", streams_image],
            env=local_images.env,
            timeout=60,
            what="inspecting the image",
        ).stdout
    )
    config = inspected["Config"]
    assert (config["Entrypoint"], config["Cmd"]) == (["streams"], ["worker"])
    assert config["StopSignal"] == "SIGTERM"
    # Kept only in Docker's image format (hence --format docker), which compose runs.
    assert inspected.get("Healthcheck", {}).get("Test") == ["CMD", *dockerfile_healthcheck()]
    exposed = {int(port.split("/")[0]) for port in config["ExposedPorts"]}
    image_uid = int(config["User"].split(":")[0])
    assert image_uid != 0
    deployments = [d for d in render(K8S_BASE) if d["kind"] in ("Deployment", "StatefulSet")]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        name = deployment["metadata"]["name"]
        assert container["image"] == streams_image.removeprefix("localhost/"), name
        # `args` only: the image's ENTRYPOINT (streams) stays what runs.
        assert "command" not in container, name
        args = container["args"]
        chosen = {int(_option(args, "--port"))} if "--port" in args else set()
        for port in (p["containerPort"] for p in container["ports"]):
            assert port in exposed | chosen, f"{name}: port {port} is neither exposed nor chosen"
        assert pod["securityContext"]["runAsUser"] == image_uid, name
        # As the pod runs it: its user, a read-only root, no capabilities, its one writable
        # mount; the entrypoint and the manifest's args must resolve to a real command.
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        tmpfs = [arg for path in mounts for arg in ("--tmpfs", path)]
        done = run(
            [
                "podman", "run", "--rm", "--network", "none", "--read-only", *tmpfs,
                "--user", str(pod["securityContext"]["runAsUser"]), "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", streams_image, *args, "--help",
            ],
            env=local_images.env,
            timeout=120,
            what=f"running {name}'s container as its pod would",
        )  # fmt: skip
        assert done.stdout.startswith("Usage: streams "), done.stdout[:200]


@pytest.fixture
def stack(
    local_images: LocalImages, streams_image: str, notes: list[str], tmp_path: Path
) -> Iterator[Stack]:
    """A podman-compose project of its own (name, network, volumes, host ports); afterwards
    every container's log is saved under the test's tmp_path and all of it is removed."""
    names = ("KAFKA_HOST_PORT", "REGISTRY_HOST_PORT", "PROMETHEUS_HOST_PORT")
    ports = {name: free_port() for name in names}
    stack = Stack(local_images, f"streams-test-{uuid.uuid4().hex[:8]}", ports)
    yield stack
    saved = stack.save_logs(tmp_path / "logs")
    if saved:
        notes.append(f"logs of the containers still there at the end: {tmp_path / 'logs'}")
    stack.remove()


def _containers(service: str) -> list[int]:
    return list(range(1, (WORKERS if service == "worker" else 1) + 1))


def _bring_up(stack: Stack, services: dict[str, Any]) -> None:
    """``up`` each service once what it ``depends_on`` holds, then wait until every
    long-running container's healthcheck passes."""
    started: set[str] = set()
    for name in SERVICES:
        for dependency, spec in services[name].get("depends_on", {}).items():
            assert dependency in started, f"{name} needs {dependency}, not started before it"
            for index in _containers(dependency):
                container = stack.container(dependency, index)
                if spec["condition"] == "service_completed_successfully":
                    code = stack.exit_code(container, timeout=180)
                    if code != 0:
                        logs = stack.podman("logs", container, check=False).stderr
                        pytest.fail(f"{container} exited {code}: {logs[-2000:]}", pytrace=False)
                elif spec["condition"] == "service_healthy":
                    wait_until(
                        f"{container} healthy", functools.partial(stack.healthy, container), 180
                    )
        scale = ["--scale", f"worker={WORKERS}"] if name == "worker" else []
        stack.compose("up", "--detach", "--no-deps", *scale, name)
        started.add(name)
    for name in (n for n in SERVICES if services[n].get("restart", "no") != "no"):
        for index in _containers(name):
            container = stack.container(name, index)
            wait_until(f"{container} healthy", functools.partial(stack.healthy, container), 180)


def _check_registry(stack: Stack, worker: str) -> int:
    """A worker registers an Avro schema by the registry's service name and reads it back by
    id; the host then finds its subject on the published port. The schema's id."""
    subject = "compose-check-value"
    schema = {"type": "record", "name": "Check", "fields": [{"name": "n", "type": "long"}]}
    done = stack.podman(
        "exec", worker, "python", "-c", REGISTER_AND_READ, subject, json.dumps(schema)
    )
    schema_id, schema_type, text = json.loads(done.stdout.splitlines()[-1])
    assert (schema_type, json.loads(text)) == ("AVRO", schema), done.stdout
    url = f"http://127.0.0.1:{stack.env['REGISTRY_HOST_PORT']}{API_PATH}/subjects"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        subjects = json.load(response)
    assert isinstance(subjects, list), subjects
    assert subject in subjects, subjects
    return int(schema_id)


def _audit(stack: Stack) -> tuple[int, dict[str, Any]]:
    """``streams verify --allow-duplicates --json`` in a one-off worker container, as the
    README runs it: its exit code and report."""
    done = stack.compose(
        "run", "--rm", "--no-deps", "worker", "verify", "--allow-duplicates", "--json", check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, (json.loads(lines[-1]) if lines else {"output": done.stderr[-500:]})


def test_the_compose_stack_runs_end_to_end(stack: Stack, notes: list[str], tmp_path: Path) -> None:
    services = load_compose(stack.env)["services"]
    worker_env = services["worker"]["environment"]
    group, topic = worker_env["STREAMS_APP_ID"], worker_env["STREAMS_INPUT_TOPIC"]
    partitions = int(worker_env["STREAMS_PARTITIONS"])
    metrics_port = int(worker_env["STREAMS_METRICS_PORT"])
    workers = [stack.container("worker", index) for index in _containers("worker")]
    load = yaml.safe_load(COMPOSE_OVERRIDE.read_text())["services"]["generator"]["command"]
    notes.append(
        "grafana: not run (no grafana/grafana image can be pulled here and Debian has no "
        "grafana package); deploy/grafana is checked statically by tests/unit"
    )

    with timed(notes, f"up: {', '.join(SERVICES)} ({WORKERS} workers), all healthy"):
        _bring_up(stack, services)

    schema_id = _check_registry(stack, workers[0])
    notes.append(
        f"registry: {workers[0]} registered an Avro schema (id {schema_id}) at "
        f"{worker_env['STREAMS_SCHEMA_REGISTRY_URL']} and read it back; the host found its "
        "subject on the published port"
    )

    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    expected = {
        (job["job_name"], target)
        for job in scrape
        for static in job.get("static_configs", [])
        for target in static["targets"]
    } | {
        (job["job_name"], f"{stack.address(worker)}:{sd['port']}")
        for job in scrape
        for sd in job.get("dns_sd_configs", [])
        for worker in workers
    }
    assert len(expected) == WORKERS + 1, expected

    def targets_up() -> bool:
        up = {(s["metric"]["job"], s["metric"]["instance"]) for s in stack.prometheus("up == 1")}
        return expected <= up

    with timed(notes, "Prometheus reports both workers and the lag exporter up"):
        wait_until(
            "Prometheus reports both workers and the lag exporter up",
            targets_up,
            120,
            lambda: f"(expected {sorted(expected)}, up: {stack.prometheus('up')})",
        )

    generator, victim = stack.container("generator"), workers[0]
    with timed(notes, f"demo load ({_option(load, '--count')} events), {victim} killed mid-run"):
        stack.compose("up", "--detach", "--no-deps", "generator")
        wait_until(
            f"{victim} consumes the demo load",
            lambda: stack.metrics(victim, metrics_port).get("streams_events_consumed_total", 0) > 0,
            90,
        )
        assert stack.state(generator)["Running"], "the load ended before a worker was killed"
        stack.podman("kill", "--signal", "KILL", victim)
        assert stack.exit_code(victim, timeout=30) == 137
        stack.podman("start", victim)
        wait_until(f"{victim} healthy after its restart", lambda: stack.healthy(victim), 180)
        assert stack.exit_code(generator, timeout=300) == 0, "the generator failed"

    lag = f'max by (partition) (kafka_consumergroup_group_lag{{group="{group}",topic="{topic}"}})'

    def caught_up() -> bool:
        series = stack.prometheus(lag)
        return len(series) == partitions and all(float(s["value"][1]) == 0 for s in series)

    with timed(notes, "the exporter's lag of the group, through Prometheus, back to 0"):
        wait_until(
            f"the lag exporter reports {group}'s lag on {topic} back to 0 on every partition",
            caught_up,
            180,
            lambda: f"(Prometheus: {stack.prometheus(lag)})",
        )

    # The last windows close STREAMS_IDLE_TIMEOUT_MS after the input stops, so the audit is
    # repeated until they are all out; a lost event never comes back and fails it.
    audits: list[dict[str, Any]] = []

    def audit_passes() -> bool:
        code, report = _audit(stack)
        audits.append(report)
        return code == 0

    with timed(notes, "streams verify --allow-duplicates until it passes"):
        wait_until(
            "streams verify --allow-duplicates finds nothing missing, extra or wrong",
            audit_passes,
            120,
            lambda: f"(last report: {audits[-1] if audits else None})",
        )
    report = audits[-1]
    assert report["missing"] == 0, report
    assert report["input_messages"] == int(_option(load, "--count")), report
    assert report["dlq_records"] >= report["invalid"], report
    assert report["late_records"] >= report["expected_late"], report
    notes.append(
        f"verify: {report['expected_finals']} finals expected, {report['output_finals']} found, "
        f"{report['duplicate_finals']} duplicates (at-least-once after the kill), 0 missing"
    )

    deadline = _seconds(services["worker"]["stop_grace_period"])
    logs = {worker: tmp_path / f"{worker}.log" for worker in workers}
    for worker, path in logs.items():
        stack.follow_logs(worker, path)
    down_at = datetime.datetime.now(datetime.UTC)
    start = time.monotonic()
    stack.compose("down", "--volumes", timeout=deadline + 120)
    took = time.monotonic() - start
    ended = stack.ended_since(down_at)
    short = {name: name.removeprefix(f"{stack.project}_") for name in ended}
    notes.append(
        f"podman-compose down: {took:.1f} s; ended (exit code, s after down began): "
        + ", ".join(f"{short[n]} ({code}, {at:.1f})" for n, (code, at) in sorted(ended.items()))
    )
    assert not stack.leftovers(), "podman-compose down left containers behind"
    killed = sorted(name for name, (code, _) in ended.items() if code == 137)
    if took >= deadline or killed:
        stack.remove()  # ends the log followers, so the logs below are complete
        kafka = ended.get(stack.container("kafka"), (None, float("nan")))
        named = ", ".join(short[n] for n in killed) or "none"
        pytest.fail(
            f"podman-compose down took {took:.0f} s, the workers' stop_grace_period being "
            f"{deadline:.0f} s; SIGKILLed at its end: {named}"
            f". Kafka, stopped at the same time (podman-compose stops every service at once), "
            f"had ended {kafka[1]:.1f} s after down began.\n"
            + "\n".join(
                f"--- {short[w]}'s log since down began:\n{log_since(logs[w], down_at)}"
                for w in killed
                if w in logs
            ),
            pytrace=False,
        )
