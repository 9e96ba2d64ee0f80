"""yamllint, strict, over every YAML file in the repository (rules: .yamllint)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.unit.test_deploy_tools import COMPOSE_FILE, K8S_BASE, K8S_OVERLAY, REPO


def _yamllint(*args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("yamllint") is None:
        pytest.fail(
            "yamllint is needed for this check: `pip install -c constraints.txt yamllint` "
            "(it is in the `test` extra)",
            pytrace=False,
        )
    return subprocess.run(
        [sys.executable, "-m", "yamllint", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_yamllint_covers_the_deploy_files() -> None:
    # An over-broad ignore in .yamllint would make the lint below pass on nothing.
    listed = {(REPO / line).resolve() for line in _yamllint("--list-files", ".").stdout.split()}
    expected = {COMPOSE_FILE, *K8S_BASE.glob("*.yaml"), *K8S_OVERLAY.glob("*.yaml")}
    assert expected <= listed, expected - listed


def test_yamllint_finds_nothing() -> None:
    done = _yamllint("--strict", "--format", "parsable", ".")
    assert done.returncode == 0, done.stdout + done.stderr
