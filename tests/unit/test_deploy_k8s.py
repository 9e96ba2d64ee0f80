"""deploy/k8s: the kustomize base and the example overlay render, and what they render holds
together: probes on the ports and paths the worker serves, selectors that select, the
autoscaler's query on metrics the lag exporter exports, settings the app accepts.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from streams.config import Settings
from streams.lag.exporter import PARTITION_LABELS, LagMetrics
from tests.unit.test_deploy_tools import K8S_BASE, K8S_OVERLAY, REPO, render

BOTH = pytest.mark.parametrize("directory", [K8S_BASE, K8S_OVERLAY], ids=["base", "overlay"])
CLUSTER_SCOPED = {"Namespace"}
# Objects that run pods of the image: the lag exporter's Deployment, the workers' StatefulSet.
WORKLOADS = {"Deployment", "StatefulSet"}

# What the worker's web server answers (streams/worker/app.py); DESIGN.md's health contract.
LIVE, READY, METRICS = "/health/live", "/health/ready", "/metrics"
EXPORTER_PORT = 9308


def _project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _config(docs: list[dict[str, Any]]) -> dict[str, str]:
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(maps) == 1, "one ConfigMap of settings"
    return dict(maps[0]["data"])


def _settings(docs: list[dict[str, Any]]) -> Settings:
    """The settings a pod of this render reads: the ConfigMap, plus the optional Secret
    streams-kafka-credentials that a SASL cluster needs (placeholders here)."""
    env = _config(docs)
    if env.get("KAFKA_SECURITY_PROTOCOL", "").startswith("SASL"):
        env |= {"KAFKA_SASL_USERNAME": "from-secret", "KAFKA_SASL_PASSWORD": "from-secret"}
    return Settings.from_env(env)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"port name {port!r} is not declared by {container['name']}"
    return int(named[port])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def exporter_metric_names() -> set[str]:
    """Every family the lag exporter serves, from its own collector."""
    return {family.name for family in LagMetrics().collect()}


@BOTH
def test_renders_the_expected_objects(directory: Path) -> None:
    kinds = sorted(d["kind"] for d in render(directory))
    expected = [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "ScaledObject",
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    if directory == K8S_OVERLAY:
        expected = sorted([*expected, "Namespace"])
    assert kinds == expected


@BOTH
def test_workloads_are_complete_and_locked_down(directory: Path) -> None:
    docs = render(directory)
    for deployment in (d for d in docs if d["kind"] in WORKLOADS):
        name = deployment["metadata"]["name"]
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        assert _selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["automountServiceAccountToken"] is False, name
        _one(docs, "ServiceAccount", pod["serviceAccountName"])
        container = _container(deployment)
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, (name, kind)
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert container["livenessProbe"], name
        assert container["readinessProbe"], name
        config_refs = [
            e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e
        ]
        assert config_refs, f"{name} takes no settings from the ConfigMap"
        for ref in config_refs:
            _one(docs, "ConfigMap", ref)
        # The scrape annotations point at a port the container declares.
        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == METRICS
        declared = {p["containerPort"] for p in container["ports"]}
        assert int(annotations["prometheus.io/port"]) in declared, name


@BOTH
def test_worker_probes_hit_what_the_worker_serves(directory: Path) -> None:
    docs = render(directory)
    worker = _one(docs, "StatefulSet", "streams-worker")
    container = _container(worker)
    port = _settings(docs).metrics_port
    assert container["args"] == ["worker"]
    for probe, path in (("startupProbe", LIVE), ("livenessProbe", LIVE), ("readinessProbe", READY)):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _port_number(container, get["port"]) == port, probe
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port


@BOTH
def test_workers_get_time_to_shut_down_and_a_writable_workdir(directory: Path) -> None:
    worker = _one(render(directory), "StatefulSet", "streams-worker")
    pod = worker["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60
    # Faust writes its app data directory into the image's WORKDIR (deploy/Dockerfile).
    mounts = {m["mountPath"] for m in _container(worker)["volumeMounts"]}
    assert "/var/lib/streams" in mounts
    assert "replicas" not in worker["spec"], "the ScaledObject owns the worker count"


@BOTH
def test_services_select_pods_and_target_declared_ports(directory: Path) -> None:
    docs = render(directory)
    deployments = [d for d in docs if d["kind"] in WORKLOADS]
    for service in (d for d in docs if d["kind"] == "Service"):
        selected = [
            d
            for d in deployments
            if _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        container = _container(selected[0])
        for port in service["spec"]["ports"]:
            _port_number(container, port["targetPort"])


@BOTH
def test_workers_are_static_members_with_a_cpu_per_process(directory: Path) -> None:
    docs = render(directory)
    worker = _one(docs, "StatefulSet", "streams-worker")
    spec = worker["spec"]
    # Its governing Service is the headless one that lists the worker pods.
    service = _one(docs, "Service", spec["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert _selects(service["spec"]["selector"], spec["template"]["metadata"]["labels"])
    # A pod takes its name (<set>-<ordinal>) as its group instance id: stable across restarts.
    name = worker["metadata"]["name"]
    in_pod = {
        **_config(docs),
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "HOSTNAME": f"{name}-3",
    }
    if in_pod.get("KAFKA_SECURITY_PROTOCOL", "").startswith("SASL"):
        in_pod |= {"KAFKA_SASL_USERNAME": "from-secret", "KAFKA_SASL_PASSWORD": "from-secret"}
    settings = Settings.from_env(in_pod)
    assert settings.group_instance_id == f"{name}-3"
    # One CPU per worker process, requested and capped alike.
    resources = _container(worker)["resources"]
    assert settings.processes > 1
    for kind in ("requests", "limits"):
        assert int(resources[kind]["cpu"]) == settings.processes, kind
    # A restarted pod rejoins within the session timeout (its stop and start take seconds).
    assert settings.session_timeout_ms >= 30_000


@BOTH
def test_disruption_budget_covers_the_workers(directory: Path) -> None:
    docs = render(directory)
    pdb = _one(docs, "PodDisruptionBudget", "streams-worker")
    worker = _one(docs, "StatefulSet", "streams-worker")
    assert _selects(
        pdb["spec"]["selector"]["matchLabels"], worker["spec"]["template"]["metadata"]["labels"]
    )
    assert pdb["spec"].get("maxUnavailable") == 1


@BOTH
def test_autoscaler_scales_the_workers_on_the_exporters_lag(directory: Path) -> None:
    docs = render(directory)
    scaled = _one(docs, "ScaledObject", "streams-worker")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", "streams-worker")
    _one(docs, "StatefulSet", target["name"])
    settings = _settings(docs)
    # More worker processes than input partitions would sit idle in the group.
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] * settings.processes <= settings.partitions
    assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]

    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert re.fullmatch(r"https?://[\w.-]+:\d+", meta["serverAddress"])
    assert int(meta["threshold"]) > 0
    assert meta["ignoreNullValues"] == "false", "no data must not read as zero lag"
    query = meta["query"]
    metrics = set(re.findall(r"\b(?:kafka|streams)_[a-z0-9_]+\b", query))
    assert metrics, query
    assert metrics <= exporter_metric_names(), f"the exporter serves no {metrics}"
    # The consumer group of the workers is their app id.
    groups = re.findall(r'group="([^"]+)"', query)
    assert groups == [settings.app_id], query
    unquoted = re.sub(r'"[^"]*"', '""', query)
    for labels in re.findall(r"by \(([^)]*)\)", unquoted) + re.findall(r"\{([^}]*)\}", unquoted):
        for label in re.findall(r"\w+", labels):
            assert label in PARTITION_LABELS, f"the exporter has no label {label!r}"


@BOTH
def test_lag_exporter_serves_on_its_port(directory: Path) -> None:
    docs = render(directory)
    exporter = _one(docs, "Deployment", "streams-lag-exporter")
    container = _container(exporter)
    assert container["args"] == ["lag-exporter", "--port", str(EXPORTER_PORT)]
    assert [p["containerPort"] for p in container["ports"]] == [EXPORTER_PORT]
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert (get["path"], _port_number(container, get["port"])) == (METRICS, EXPORTER_PORT)
    service = _one(docs, "Service", "streams-lag-exporter")
    assert [p["port"] for p in service["spec"]["ports"]] == [EXPORTER_PORT]


@BOTH
def test_settings_parse_as_the_app_reads_them(directory: Path) -> None:
    docs = render(directory)
    assert _settings(docs).kafka.bootstrap_servers == _config(docs)["KAFKA_BOOTSTRAP_SERVERS"]


def test_base_image_is_the_project_image() -> None:
    for deployment in (d for d in render(K8S_BASE) if d["kind"] in WORKLOADS):
        assert _container(deployment)["image"] == f"streams:{_project_version()}"


def test_overlay_changes_image_replicas_and_brokers() -> None:
    base, overlay = render(K8S_BASE), render(K8S_OVERLAY)
    images = {_container(d)["image"] for d in overlay if d["kind"] in WORKLOADS}
    assert len(images) == 1
    (image,) = images
    assert image != f"streams:{_project_version()}"
    assert image.endswith(":" + _project_version())
    assert _config(overlay)["KAFKA_BOOTSTRAP_SERVERS"] != _config(base)["KAFKA_BOOTSTRAP_SERVERS"]
    base_scale = _one(base, "ScaledObject", "streams-worker")["spec"]
    overlay_scale = _one(overlay, "ScaledObject", "streams-worker")["spec"]
    assert (overlay_scale["minReplicaCount"], overlay_scale["maxReplicaCount"]) != (
        base_scale["minReplicaCount"],
        base_scale["maxReplicaCount"],
    )
    namespaces = {
        d["metadata"].get("namespace") for d in overlay if d["kind"] not in CLUSTER_SCOPED
    }
    assert namespaces == {"streams"}
