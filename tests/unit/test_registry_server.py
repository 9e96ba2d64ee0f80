"""Pure parts of the local Schema Registry manager (streams.broker.registry): no JVM, no Maven."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.broker import registry
from streams.broker.registry import (
    RUNNER_JAR,
    LocalRegistry,
    build_command,
    ensure_registry_built,
    maven_errors,
    project_fingerprint,
    server_command,
    server_env,
)
from streams.cli import main
from streams.errors import BrokerError, RegistryServerError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STREAMS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_jvm_runs_small_in_memory_and_on_loopback_only() -> None:
    cmd = server_command("/usr/bin/java", Path("/c/server"), 18081)
    assert cmd[0] == "/usr/bin/java"
    assert cmd[1:5] == ["-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
    assert "-Dquarkus.http.host=127.0.0.1" in cmd
    assert "-Dquarkus.http.port=18081" in cmd
    assert "-Dquarkus.datasource.jdbc.url=jdbc:h2:mem:registry_db" in cmd
    assert cmd[-2:] == ["-jar", f"/c/server/{RUNNER_JAR}"]


def test_the_server_never_sees_settings_meant_for_others() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",  # Apicurio's event sink would use it
        "HTTP_PORT": "9999",
        "LOG_LEVEL": "TRACE",
        "REGISTRY_DATASOURCE_URL": "jdbc:postgresql://db/registry",
    }
    assert server_env(environ) == {"PATH": "/usr/bin", "HOME": "/root"}


def test_maven_builds_the_copied_project_with_its_own_settings(tmp_path: Path) -> None:
    cmd = build_command("/usr/bin/mvn", tmp_path)
    assert cmd[0] == "/usr/bin/mvn"
    assert cmd[cmd.index("-s") + 1] == str(tmp_path / "settings.xml")
    assert cmd[cmd.index("-f") + 1] == str(tmp_path / "pom.xml")
    assert cmd[-1] == "package"
    # The local repository is Maven's default, the one the Kafka jars are fetched into.
    assert not any(arg.startswith("-Dmaven.repo.local") for arg in cmd)


def test_the_build_project_carries_the_three_adjustments() -> None:
    project = REPO / "deploy" / "registry"
    pom = (project / "pom.xml").read_text()
    assert "<artifactId>apicurio-registry-app</artifactId>" in pom
    assert "<artifactId>everit-json-schema</artifactId>" in pom
    assert "<version>0.1.10.Final</version>" in pom
    props = (project / "src" / "main" / "resources" / "application.properties").read_text()
    assert "quarkus.index-dependency.apicurio-registry-app.artifact-id=apicurio-registry-app" in (
        props
    )
    assert "<mirrorOf>*</mirrorOf>" in (project / "settings.xml").read_text()
    assert registry._resource_dir() == project


def test_maven_errors_keep_the_cause_and_drop_the_advice() -> None:
    output = "\n".join(
        [
            "[INFO] BUILD FAILURE",
            "\x1b[1;31m[ERROR]\x1b[m Failed to execute goal on project x: Could not resolve "
            "dependencies -> [Help 1]",
            "[ERROR] ",
            "[ERROR] Re-run Maven using the -X switch to enable full debug logging.",
        ]
    )
    assert maven_errors(output) == (
        "Failed to execute goal on project x: Could not resolve dependencies"
    )
    two = "[ERROR] Failed to execute goal x\n[ERROR] caused by y\n[ERROR] -> [Help 1]\n[ERROR] z"
    assert maven_errors(two) == "Failed to execute goal x | caused by y"
    assert maven_errors("Error: JAVA_HOME is not defined correctly.") == (
        "Error: JAVA_HOME is not defined correctly."
    )


def test_the_fingerprint_follows_the_build_files_but_not_the_readme(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "pom.xml").write_text("<project/>")
    (tmp_path / "src" / "application.properties").write_text("a=1")
    first = project_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("notes")
    assert project_fingerprint(tmp_path) == first
    (tmp_path / "src" / "application.properties").write_text("a=2")
    assert project_fingerprint(tmp_path) != first


def test_a_built_server_is_reused_without_maven(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = cache / "registry" / registry.REGISTRY_VERSION / "server"
    server.mkdir(parents=True)
    (server / ".complete").write_text(project_fingerprint(registry._resource_dir()))
    monkeypatch.setenv("PATH", "")  # no mvn, no java: neither may be needed
    assert ensure_registry_built() == server


def test_a_stale_or_missing_server_needs_maven(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = cache / "registry" / registry.REGISTRY_VERSION / "server"
    server.mkdir(parents=True)
    (server / ".complete").write_text("built-from-another-pom")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RegistryServerError, match="`mvn` not found"):
        ensure_registry_built()


def test_a_registry_error_is_a_broker_error() -> None:
    assert issubclass(RegistryServerError, BrokerError)


def test_url_and_the_port_a_restart_finds_again(tmp_path: Path) -> None:
    assert LocalRegistry(tmp_path).url == "http://127.0.0.1:8081/apis/ccompat/v7"
    (tmp_path / "registry.port").write_text("18082")
    assert LocalRegistry(tmp_path).url == "http://127.0.0.1:18082/apis/ccompat/v7"
    assert LocalRegistry(tmp_path, port=18083).port == 18083


def test_a_pid_file_naming_another_process_is_not_a_running_registry(tmp_path: Path) -> None:
    local = LocalRegistry(tmp_path)
    assert local.pid() is None
    (tmp_path / "registry.pid").write_text(str(os.getpid()))  # alive, but not the registry
    assert not local.is_running()
    assert local.stop() is False
    assert local.status().as_dict() == {
        "running": False,
        "url": "http://127.0.0.1:8081/apis/ccompat/v7",
        "pid": None,
        "version": registry.REGISTRY_VERSION,
        "home": str(tmp_path),
    }


def test_start_refuses_a_port_in_use_before_building(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")  # it must fail on the port, not on a missing mvn
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RegistryServerError, match=f"port {port} is already in use"):
            LocalRegistry(cache / "home").start(port)
        done = CliRunner().invoke(main, ["registry", "start", "--port", str(port)])
    assert done.exit_code == 2
    assert f"error: port {port} is already in use" in done.output


def test_status_of_a_registry_never_started(cache: Path) -> None:
    done = CliRunner().invoke(main, ["registry", "status"])
    assert done.exit_code == 1
    assert done.output.startswith("stopped  url=http://127.0.0.1:8081/apis/ccompat/v7")
    done = CliRunner().invoke(main, ["registry", "stop"])
    assert (done.exit_code, done.output) == (0, "Schema Registry was not running\n")
