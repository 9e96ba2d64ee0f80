"""What the deploy files say about the app must be true of the app, and the files must agree
with one another: environment variable names, image names, ports, mounted paths.

A misspelt variable (``STREAMS_GUARANTE``) is silently ignored by the app and the default
runs instead, so every name a deploy file sets is checked against the names the code reads.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from streams.cli import main
from streams.config import Settings
from tests.unit.test_deploy_tools import (
    DOCKERFILE,
    K8S_BASE,
    K8S_OVERLAY,
    REPO,
    load_compose,
    parse_dockerfile,
    render,
)

ENV_NAME = re.compile(r"(?:STREAMS|KAFKA)_[A-Z0-9_]+")
# Read by the interpreter, pip or the process launcher (PATH: the image's virtualenv first),
# not by the app: allowed in the Dockerfile only.
INTERPRETER_ENV = re.compile(r"PYTHON[A-Z]+|PIP_[A-Z_]+|PATH")
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
# Kubernetes objects that run pods of the image.
WORKLOADS = {"Deployment", "StatefulSet"}


@functools.cache
def app_env_names() -> frozenset[str]:
    """Every ``STREAMS_*``/``KAFKA_*`` string literal in the package: the names it can read."""
    names: set[str] = set()
    for path in (REPO / "streams").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            value = node.value if isinstance(node, ast.Constant) else None
            if isinstance(value, str) and ENV_NAME.fullmatch(value):
                names.add(value)
    return frozenset(names)


def _streams_services() -> dict[str, dict[str, Any]]:
    """Compose services that run the streams image."""
    services = load_compose()["services"]
    return {n: s for n, s in services.items() if "build" in s}


def _k8s_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            env |= doc["data"]
        if doc["kind"] in WORKLOADS:
            for container in doc["spec"]["template"]["spec"]["containers"]:
                env |= {e["name"]: e.get("value", "") for e in container.get("env", [])}
    return env


def test_the_collector_finds_the_documented_names() -> None:
    # DESIGN.md's configuration table, a sample: if these are missing the scan is broken.
    assert {
        "KAFKA_BOOTSTRAP_SERVERS",
        "STREAMS_APP_ID",
        "STREAMS_METRICS_PORT",
        "STREAMS_GUARANTEE",
        "STREAMS_IDLE_TIMEOUT_MS",
        "KAFKA_SASL_PASSWORD",
    } <= app_env_names()


@pytest.mark.parametrize("service", sorted(_streams_services()))
def test_compose_sets_only_variables_the_app_reads(service: str) -> None:
    env = _streams_services()[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: write environment as a mapping"
    assert set(env) <= app_env_names(), set(env) - app_env_names()
    # And the values are ones the app accepts.
    Settings.from_env({k: str(v) for k, v in env.items()})


@pytest.mark.parametrize("directory", [K8S_BASE, K8S_OVERLAY], ids=["base", "overlay"])
def test_kubernetes_sets_only_variables_the_app_reads(directory: Path) -> None:
    env = _k8s_env(render(directory))
    assert env
    assert set(env) <= app_env_names(), set(env) - app_env_names()


def test_dockerfile_sets_only_variables_the_app_or_python_reads() -> None:
    names = set()
    for instruction in parse_dockerfile(DOCKERFILE.read_text()):
        if instruction.keyword == "ENV":
            names |= set(re.findall(r"(\w+)=", instruction.args))
    assert names
    unknown = {n for n in names if n not in app_env_names() and not INTERPRETER_ENV.fullmatch(n)}
    assert not unknown, unknown


def _parse_cli(args: list[str]) -> None:
    """Parse ``streams ARGS`` as the CLI would, without running the command."""
    ctx = click.Context(main, info_name="streams")
    command: click.Command = main
    name, rest = "streams", list(args)
    while isinstance(command, click.Group):
        found, sub, rest = command.resolve_command(ctx, rest)
        assert found is not None, f"no command in {args}"
        assert sub is not None, f"no command in {args}"
        name, command = found, sub
        ctx = click.Context(command, info_name=name, parent=ctx)
    command.make_context(name, rest, parent=ctx.parent)


def _check_cli(where: str, args: list[str]) -> None:
    try:
        _parse_cli(args)
    except click.UsageError as exc:
        pytest.fail(f"{where}: `streams {' '.join(args)}`: {exc.format_message()}")


@pytest.mark.parametrize("service", sorted(_streams_services()))
def test_compose_runs_real_cli_commands(service: str) -> None:
    _check_cli(service, [str(a) for a in _streams_services()[service]["command"]])


@pytest.mark.parametrize("directory", [K8S_BASE, K8S_OVERLAY], ids=["base", "overlay"])
def test_kubernetes_runs_real_cli_commands(directory: Path) -> None:
    for doc in render(directory):
        if doc["kind"] in WORKLOADS:
            for container in doc["spec"]["template"]["spec"]["containers"]:
                _check_cli(doc["metadata"]["name"], container["args"])


def test_compose_and_kubernetes_run_one_image() -> None:
    compose_images = {s["image"] for s in _streams_services().values()}
    k8s_images = {
        c["image"]
        for d in render(K8S_BASE)
        if d["kind"] in WORKLOADS
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert compose_images == k8s_images, (compose_images, k8s_images)
    # The overlay renames that image, so it must know the base's name for it.
    overlay = yaml.safe_load((K8S_OVERLAY / "kustomization.yaml").read_text())
    (image,) = k8s_images
    assert [i["name"] for i in overlay["images"]] == [image.split(":")[0]]


def test_compose_and_kubernetes_agree_on_settings() -> None:
    k8s = _k8s_env(render(K8S_BASE))
    for name, service in _streams_services().items():
        env = service["environment"]
        for key in (
            "STREAMS_APP_ID",
            "STREAMS_INPUT_TOPIC",
            "STREAMS_OUTPUT_TOPIC",
            "STREAMS_PARTITIONS",
            "STREAMS_METRICS_PORT",
        ):
            assert str(env.get(key)) == k8s.get(key), (name, key)


# --- the monitoring files other parts of the repository own -------------------------------


def _container_mounts(service: str) -> dict[str, Path]:
    """Bind mounts of a compose service: target path in the container -> file in the repo."""
    mounts = {}
    for volume in load_compose()["services"][service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = REPO / source
    return mounts


def test_prometheus_loads_the_mounted_rules_and_scrapes_the_services() -> None:
    mounts = _container_mounts("prometheus")
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    assert config_path == PROMETHEUS_DIR / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    for rule_file in config.get("rule_files", []):
        target = rule_file if rule_file.startswith("/") else f"/etc/prometheus/{rule_file}"
        assert target in mounts, f"prometheus.yml loads {rule_file}, which is not mounted"
    text = yaml.safe_dump(config["scrape_configs"])
    # Compose's DNS names and ports: `worker` resolves to every scaled replica.
    assert "lag-exporter:9308" in text
    worker_jobs = [
        sd
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        if "worker" in sd.get("names", [])
    ]
    assert [sd["port"] for sd in worker_jobs] == [Settings().metrics_port]


def test_grafana_provisioning_finds_the_mounted_dashboards_and_prometheus() -> None:
    mounts = _container_mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == GRAFANA_DIR / "provisioning"
    providers = [
        p
        for path in (GRAFANA_DIR / "provisioning" / "dashboards").glob("*.y*ml")
        for p in yaml.safe_load(path.read_text()).get("providers", [])
    ]
    assert providers
    for provider in providers:
        folder = provider["options"]["path"]
        assert folder in mounts, f"dashboards are read from {folder}, which is not mounted"
        assert list(mounts[folder].glob("*.json")), f"no dashboard in {mounts[folder]}"
    sources = [
        s
        for path in (GRAFANA_DIR / "provisioning" / "datasources").glob("*.y*ml")
        for s in yaml.safe_load(path.read_text()).get("datasources", [])
    ]
    assert "http://prometheus:9090" in {s.get("url") for s in sources}
