"""Prometheus config and alert rules, checked and unit-tested by promtool.

promtool comes with Debian's ``prometheus`` package; without it these tests fail (they are
part of the contract), saying how to install it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
INSTALL_HINT = "apt-get update && apt-get install -y --no-install-recommends prometheus"


def require(tool: str) -> str:
    """The path of ``tool`` (promtool, prometheus); the test fails when it is not installed."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"`{tool}` not found on PATH: install it with `{INSTALL_HINT}`", pytrace=False)
    return path


def promtool(*args: str) -> str:
    done = subprocess.run(
        [require("promtool"), *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_prometheus_config_and_its_rule_files_are_valid() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in out


def test_alert_rules_pass_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        line.split(":", 1)[1].strip()
        for line in (PROMETHEUS_DIR / "alerts.yml").read_text().splitlines()
        if line.strip().startswith("- alert:")
    }
    tests = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    assert alerts, "no alerts found"
    for alert in alerts:
        assert f"alertname: {alert}" in tests, f"{alert} has no promtool test"
