"""docker-compose.yml, checked without a Docker daemon.

Where the compose plugin answers (``docker compose version``), its own ``config -q`` validates
the file against the Compose specification; it needs no daemon. Everywhere, the structure is
checked here from the parsed YAML: pinned images, healthchecks, start order, volumes, scaling.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.broker.local import KAFKA_VERSION, LocalKafka
from streams.broker.registry import API_PATH, REGISTRY_VERSION
from streams.config import Settings
from tests.unit.test_deploy_tools import (
    COMPOSE_FILE,
    DOCKERFILE,
    REPO,
    compose_variables,
    dockerfile_healthcheck,
    load_compose,
)

SERVICES = {
    "kafka",
    "registry",
    "topic-init",
    "worker",
    "lag-exporter",
    "generator",
    "prometheus",
    "grafana",
}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _services() -> dict[str, dict[str, Any]]:
    services = load_compose()["services"]
    assert isinstance(services, dict)
    return services


def _built_here(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and (REPO / build.get("dockerfile", "")) == DOCKERFILE


def _has_healthcheck(service: dict[str, Any]) -> bool:
    """Declared in the file, or inherited from deploy/Dockerfile's HEALTHCHECK."""
    check = service.get("healthcheck")
    if isinstance(check, dict):
        return not check.get("disable") and bool(check.get("test"))
    return _built_here(service) and bool(dockerfile_healthcheck())


def _one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart", "no") == "no"


def _compose_plugin_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


def test_compose_plugin_validates_the_file_when_present() -> None:
    if not _compose_plugin_answers():
        # The structural tests below still run; this one has nothing more to add.
        return
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", "demo", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_pipeline_services_are_all_there() -> None:
    assert set(_services()) == SERVICES


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name: str) -> None:
    image = _services()[name].get("image", "")
    assert re.fullmatch(r"[\w./-]+:[\w.-]*\d[\w.-]*(@sha256:[0-9a-f]{64})?", image), (
        f"{name}: image {image!r} needs a version tag"
    )
    assert not image.endswith(":latest")


def test_kafka_runs_the_version_the_tests_use() -> None:
    assert _services()["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_the_registry_is_the_one_the_tests_use_and_the_app_is_pointed_at_it() -> None:
    services = _services()
    assert services["registry"]["image"] == f"apicurio/apicurio-registry-mem:{REGISTRY_VERSION}"
    (published,) = services["registry"]["ports"]
    url = f"http://registry:{published.rpartition(':')[2]}{API_PATH}"
    for name in ("topic-init", "worker", "lag-exporter", "generator"):
        assert services[name]["environment"]["STREAMS_SCHEMA_REGISTRY_URL"] == url, name


# The public images a user's `docker compose up` pulls, each replaceable by a variable (where
# no image registry answers: deploy/podman/build-images.sh makes stand-ins for all but Grafana).
PUBLIC_IMAGES = {
    "kafka": ("KAFKA_IMAGE", f"apache/kafka:{KAFKA_VERSION}"),
    "registry": ("REGISTRY_IMAGE", f"apicurio/apicurio-registry-mem:{REGISTRY_VERSION}"),
    "prometheus": ("PROMETHEUS_IMAGE", "prom/prometheus:v3.5.0"),
    "grafana": ("GRAFANA_IMAGE", "grafana/grafana:12.1.1"),
}


@pytest.mark.parametrize("name", sorted(PUBLIC_IMAGES))
def test_public_images_come_from_variables(name: str) -> None:
    variable, default = PUBLIC_IMAGES[name]
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"][name]["image"]
    assert raw == f"${{{variable}:-{default}}}"
    assert load_compose({variable: "localhost/stand-in:1"})["services"][name]["image"] == (
        "localhost/stand-in:1"
    )


def test_every_variable_has_a_default() -> None:
    # Unset, each variable gives what the file said before it had variables: a user's
    # `docker compose up` needs none of them.
    variables = compose_variables(COMPOSE_FILE.read_text())
    assert variables, "the file substitutes no variables"
    assert all(default for default in variables.values()), variables


@pytest.mark.parametrize("env", [{}, {"KAFKA_HOST_PORT": "39092"}], ids=["default", "set"])
def test_kafka_advertises_the_host_port_it_publishes(env: dict[str, str]) -> None:
    kafka = load_compose(env)["services"]["kafka"]
    (published,) = kafka["ports"]
    address, _, container_port = published.rpartition(":")
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert f"HOST://{address}" in advertised
    assert container_port == "29092"
    assert address.rpartition(":")[2] == env.get("KAFKA_HOST_PORT", "29092")


def _broker_properties(env: dict[str, Any]) -> dict[str, str]:
    """server.properties as the apache/kafka image writes it from KAFKA_* variables."""
    return {
        key[len("KAFKA_") :].lower().replace("_", "."): str(value)
        for key, value in env.items()
        if key.startswith("KAFKA_")
    }


def test_kafka_is_configured_like_the_local_broker(tmp_path: Path) -> None:
    # The broker every test runs against (streams/broker/local.py): same behaviour here,
    # except for addresses and paths, which differ by design.
    local = LocalKafka(tmp_path)._write_config().read_text()
    expected = dict(line.split("=", 1) for line in local.splitlines() if "=" in line)
    where = ("listeners", "advertised.listeners", "controller.quorum.voters", "log.dirs")
    naming = ("inter.broker.listener.name", "listener.security.protocol.map")
    compose = _broker_properties(_services()["kafka"]["environment"])
    for key, value in expected.items():
        if key not in where + naming:
            assert compose.get(key) == value, f"{key}: compose {compose.get(key)}, local {value}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_host_networking_or_privileges(name: str) -> None:
    service = _services()[name]
    assert service.get("network_mode") != "host"
    assert not service.get("privileged")
    assert service.get("pid") != "host"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_long_running_services_have_a_healthcheck(name: str) -> None:
    service = _services()[name]
    if _one_shot(service):
        return
    assert _has_healthcheck(service), f"{name} runs indefinitely but has no healthcheck"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependencies_wait_for_the_right_condition(name: str) -> None:
    services = _services()
    depends = services[name].get("depends_on", {})
    assert isinstance(depends, dict), f"{name}: depends_on needs the long form with conditions"
    for target, spec in depends.items():
        assert target in services, f"{name} depends on an unknown service {target}"
        condition = spec.get("condition")
        assert condition in CONDITIONS, f"{name} -> {target}: condition {condition!r}"
        if condition == "service_healthy":
            assert _has_healthcheck(services[target]), f"{target} has no healthcheck"
        if condition == "service_completed_successfully":
            assert _one_shot(services[target]), f"{target} is not a one-shot service"
        if _one_shot(services[target]):
            assert condition == "service_completed_successfully", f"{name} -> {target}"


def test_everything_that_talks_to_kafka_waits_for_a_healthy_broker() -> None:
    for name, service in _services().items():
        if "KAFKA_BOOTSTRAP_SERVERS" in service.get("environment", {}):
            assert service["depends_on"]["kafka"]["condition"] == "service_healthy", name


def test_workers_and_the_generator_start_after_the_topics_exist() -> None:
    services = _services()
    assert services["topic-init"]["command"] == ["topics", "create"]
    for name in ("worker", "generator"):
        condition = services[name]["depends_on"]["topic-init"]["condition"]
        assert condition == "service_completed_successfully", name


def test_workers_scale_out() -> None:
    worker = _services()["worker"]
    # A fixed name or host port would make `docker compose up --scale worker=3` fail.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"] == ["worker"]
    assert "deploy" not in worker or "replicas" not in worker["deploy"]


def test_each_worker_runs_a_process_per_cpu_it_may_use() -> None:
    worker = _services()["worker"]
    settings = Settings.from_env({k: str(v) for k, v in worker["environment"].items()})
    assert settings.processes > 1
    assert float(worker["deploy"]["resources"]["limits"]["cpus"]) == settings.processes


def test_the_lag_exporter_serves_on_its_port() -> None:
    exporter = _services()["lag-exporter"]
    assert exporter["command"] == ["lag-exporter", "--port", "9308"]
    assert "9308" in [str(p) for p in exporter.get("expose", [])]
    assert "9308/metrics" in " ".join(exporter["healthcheck"]["test"])


def test_the_generator_is_a_demo_that_feeds_the_input_topic() -> None:
    generator = _services()["generator"]
    assert generator["profiles"] == ["demo"]
    command = generator["command"]
    assert command[0] == "generate"
    assert "--count" in command
    topic = command[command.index("--topic") + 1]
    assert topic == generator["environment"]["STREAMS_INPUT_TOPIC"]


def test_volumes_are_declared_and_bind_mounts_exist() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"
    assert "kafka-data" in used


def test_services_built_here_use_the_project_image() -> None:
    built = {n: s for n, s in _services().items() if "build" in s}
    assert set(built) == {"topic-init", "worker", "lag-exporter", "generator"}
    for name, service in built.items():
        assert _built_here(service), f"{name} is not built from deploy/Dockerfile"
        assert service["build"]["context"] == ".", name
    assert len({s["image"] for s in built.values()}) == 1, "one image for all streams services"
