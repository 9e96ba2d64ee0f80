"""deploy/Dockerfile: hadolint, plus the image rules this project holds it to, as code.

Each rule is a function from parsed instructions to a list of problems, so the same rule is
run on the real Dockerfile and, in ``test_each_rule_catches_a_bad_dockerfile``, on a broken
one: a rule that cannot fail would check nothing.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.config import Settings
from tests.unit.test_deploy_tools import (
    DOCKERFILE,
    REPO,
    Instruction,
    build_context_files,
    parse_dockerfile,
    require_tool,
    stages,
)

Rule = Callable[[list[Instruction]], list[str]]

# Build tools that must stay out of the runtime image.
COMPILERS = ("gcc", "g++", "build-essential", "make", "clang", "cargo", "rustc")


def _image(instruction: Instruction) -> tuple[str, str | None]:
    """(image, stage alias) of a FROM; flags such as --platform skipped."""
    words = [w for w in instruction.args.split() if not w.startswith("--")]
    alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
    return words[0], alias


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """Defaults of the global ARGs (those before the first FROM), which FROM lines may use."""
    defaults: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            defaults[name.strip()] = default.strip()
    return defaults


def _base_images(instructions: list[Instruction]) -> list[tuple[Instruction, str]]:
    """Each FROM that names an image (not an earlier stage, not scratch), ARGs resolved."""
    args = build_args(instructions)
    aliases: set[str] = set()
    found = []
    for instruction in (i for i in instructions if i.keyword == "FROM"):
        image, alias = _image(instruction)
        resolved = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], ""), image)
        if image not in aliases and resolved != "scratch":
            found.append((instruction, resolved))
        if alias:
            aliases.add(alias)
    return found


def multi_stage(instructions: list[Instruction]) -> list[str]:
    """Wheels are built in one stage and installed in another."""
    count = sum(1 for i in instructions if i.keyword == "FROM")
    return [] if count >= 2 else [f"one build stage ({count} FROM); build wheels in a first stage"]


def pinned_bases(instructions: list[Instruction]) -> list[str]:
    """Every external base image (a build argument's default included) has a versioned tag
    (or a digest), never ``latest``."""
    problems = []
    for instruction, image in _base_images(instructions):
        if "@sha256:" in image:
            continue
        tag = image.rpartition(":")[2] if ":" in image.split("/")[-1] else ""
        if not tag or tag == "latest" or not re.search(r"\d", tag):
            problems.append(
                f"line {instruction.line}: base image {image} is not pinned to a version"
            )
    return problems


def python_matches_project(instructions: list[Instruction]) -> list[str]:
    """Base images run the Python that pyproject.toml's requires-python names."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r"3\.\d+", requires)
    assert minor, requires
    problems = []
    for instruction, image in _base_images(instructions):
        if image.startswith("python:") and not image.startswith(f"python:{minor.group()}"):
            problems.append(f"line {instruction.line}: {image} is not Python {minor.group()}")
    return problems


def non_root_user(instructions: list[Instruction]) -> list[str]:
    """The final stage switches to a non-root user before its ENTRYPOINT."""
    final = stages(instructions)[-1]
    users = [(n, i) for n, i in enumerate(final) if i.keyword == "USER"]
    entry = next((n for n, i in enumerate(final) if i.keyword == "ENTRYPOINT"), None)
    if not users:
        return ["the final stage has no USER: the app would run as root"]
    at, user = users[-1]
    name = user.args.split(":")[0].strip()
    problems = []
    if name in ("root", "0"):
        problems.append(f"line {user.line}: USER {user.args} is root")
    if entry is None or at > entry:
        problems.append(f"line {user.line}: USER must come before ENTRYPOINT")
    return problems


def apt_hygiene(instructions: list[Instruction]) -> list[str]:
    """apt-get install without recommends, after an update, with the lists removed after."""
    problems = []
    for instruction in (i for i in instructions if i.keyword == "RUN"):
        for command in re.split(r"&&|;", instruction.args):
            if re.search(r"\bapt-get\b.*\binstall\b", command):
                if "--no-install-recommends" not in command:
                    problems.append(
                        f"line {instruction.line}: apt-get install without --no-install-recommends"
                    )
                if "apt-get update" not in instruction.args:
                    problems.append(
                        f"line {instruction.line}: apt-get install without an "
                        "apt-get update in the same RUN"
                    )
                if "rm -rf /var/lib/apt/lists" not in instruction.args:
                    problems.append(
                        f"line {instruction.line}: apt-get install without "
                        "`rm -rf /var/lib/apt/lists/*` in the same RUN"
                    )
    return problems


def no_add_for_local_files(instructions: list[Instruction]) -> list[str]:
    """COPY, not ADD, for files of the build context (ADD also unpacks and fetches)."""
    problems = []
    for instruction in (i for i in instructions if i.keyword == "ADD"):
        sources = [w for w in instruction.args.split() if not w.startswith("--")][:-1]
        local = [s for s in sources if not re.match(r"(https?|git)://|git@", s)]
        if local:
            problems.append(f"line {instruction.line}: ADD {' '.join(local)}; use COPY")
    return problems


def healthcheck(instructions: list[Instruction]) -> list[str]:
    """The final stage has a HEALTHCHECK on /health/live of the metrics port."""
    final = stages(instructions)[-1]
    checks = [i for i in final if i.keyword == "HEALTHCHECK"]
    if not checks or checks[-1].args.upper() == "NONE":
        return ["the final stage has no HEALTHCHECK"]
    command = " ".join(checks[-1].exec_form() or [checks[-1].args])
    problems = []
    if "/health/live" not in command or "STREAMS_METRICS_PORT" not in command:
        problems.append("the HEALTHCHECK must GET /health/live on STREAMS_METRICS_PORT")
    if str(Settings().metrics_port) not in command:
        problems.append(f"the HEALTHCHECK must default to port {Settings().metrics_port}")
    if re.search(r"\b(curl|wget)\b", command):
        problems.append("the HEALTHCHECK uses curl/wget, which python:*-slim does not have")
    return problems


def runtime_contract(instructions: list[Instruction]) -> list[str]:
    """ENTRYPOINT streams, CMD worker, SIGTERM, the metrics port exposed."""
    final = stages(instructions)[-1]

    def last(keyword: str) -> Instruction | None:
        found = [i for i in final if i.keyword == keyword]
        return found[-1] if found else None

    problems = []
    entry, cmd, signal = last("ENTRYPOINT"), last("CMD"), last("STOPSIGNAL")
    if entry is None or entry.exec_form() != ["streams"]:
        problems.append('ENTRYPOINT must be ["streams"] (exec form: signals reach the app)')
    if cmd is None or cmd.exec_form() != ["worker"]:
        problems.append('CMD must be ["worker"]')
    if signal is None or signal.args != "SIGTERM":
        problems.append("STOPSIGNAL must be SIGTERM (Faust's graceful shutdown)")
    exposed = {p.split("/")[0] for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    if str(Settings().metrics_port) not in exposed:
        problems.append(f"EXPOSE must include the metrics port {Settings().metrics_port}")
    return problems


def wheels_only_runtime(instructions: list[Instruction]) -> list[str]:
    """Wheels built with the constraints; the runtime installs only them, with no compiler."""
    all_stages = stages(instructions)
    problems = []
    build_runs = " ".join(i.args for s in all_stages[:-1] for i in s if i.keyword == "RUN")
    if not re.search(r"pip wheel\b.*(-c|--constraint)[ =]constraints\.txt", build_runs):
        problems.append("no `pip wheel ... --constraint constraints.txt` in a build stage")
    for instruction in (i for i in all_stages[-1] if i.keyword == "RUN"):
        if "pip install" in instruction.args and "--no-index" not in instruction.args:
            problems.append(
                f"line {instruction.line}: the runtime stage installs from an index; "
                "install the build stage's wheels with --no-index"
            )
        if re.search(r"\bapt-get\b.*\binstall\b", instruction.args):
            named = [
                c for c in COMPILERS if re.search(rf"(?<![\w-]){re.escape(c)}\b", instruction.args)
            ]
            if named:
                problems.append(f"line {instruction.line}: build tools in the runtime: {named}")
    if all_stages[-1][0].args.split()[0] in {_image(s[0])[1] for s in all_stages[:-1]}:
        problems.append("the runtime stage starts FROM the build stage, keeping its tools")
    return problems


def base_is_a_build_arg(instructions: list[Instruction]) -> list[str]:
    """Every stage on an image starts FROM the one build argument BASE, so a build where no
    registry answers (tests/container) can give all of them a local image."""
    if "BASE" not in build_args(instructions):
        return ["no global `ARG BASE=<image>` before the first FROM"]
    return [
        f"line {instruction.line}: FROM {_image(instruction)[0]}; use FROM ${{BASE}}"
        for instruction, _ in _base_images(instructions)
        if _image(instruction)[0] not in ("${BASE}", "$BASE")
    ]


def offline_build(instructions: list[Instruction]) -> list[str]:
    """The app is installed from a stage named ``wheelhouse`` alone (--no-index): a build given
    ``--build-context wheelhouse=DIR`` needs no network. That stage is FROM scratch, so it
    holds nothing but wheels, as such a directory does."""
    named = {_image(s[0])[1]: s for s in stages(instructions)}
    wheelhouse = named.get("wheelhouse")
    if wheelhouse is None or _image(wheelhouse[0])[0] != "scratch":
        return ["no stage `FROM scratch AS wheelhouse` (what --build-context wheelhouse= replaces)"]
    problems = []
    users = [
        i
        for i in instructions
        if i.keyword in ("RUN", "COPY") and re.search(r"--(mount=\S*)?from=wheelhouse\b", i.args)
    ]
    if not any("pip install" in i.args for i in users):
        problems.append("no stage installs the app with pip from the wheelhouse stage")
    for instruction in users:
        if "pip" in instruction.args and "--no-index" not in instruction.args:
            problems.append(f"line {instruction.line}: pip with the wheelhouse but no --no-index")
    return problems


RULES: list[Rule] = [
    multi_stage,
    base_is_a_build_arg,
    offline_build,
    pinned_bases,
    python_matches_project,
    non_root_user,
    apt_hygiene,
    no_add_for_local_files,
    healthcheck,
    runtime_contract,
    wheels_only_runtime,
]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_dockerfile_follows_the_rule(rule: Rule) -> None:
    assert rule(parse_dockerfile(DOCKERFILE.read_text())) == []


def test_build_stage_copies_the_whole_build_context() -> None:
    # tests/integration/test_wheel_worker.py builds its wheel from the context as .dockerignore
    # leaves it; that is the Dockerfile's wheel only if the build stage copies all of it.
    (build,) = (
        s
        for s in stages(parse_dockerfile(DOCKERFILE.read_text()))
        if s[0].args.endswith(" AS build")
    )
    sources = [
        source.rstrip("/")
        for i in build
        if i.keyword == "COPY" and "--from" not in i.args
        for source in i.args.split()[:-1]
    ]
    context = build_context_files()
    for source in sources:
        assert any(f == source or f.startswith(source + "/") for f in context), source
    uncopied = [f for f in context if not any(f == s or f.startswith(s + "/") for s in sources)]
    assert not uncopied, f"in the build context but not copied: {uncopied}"


# The image, and the stand-ins for registry images that tests/container builds with podman.
ALL_DOCKERFILES = [DOCKERFILE, *sorted((REPO / "deploy" / "podman").glob("*/Dockerfile"))]


@pytest.mark.parametrize("path", ALL_DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint_finds_nothing(path: Path) -> None:
    hadolint = require_tool("hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


GOOD = """\
ARG BASE=python:3.11.14-slim-bookworm
FROM ${BASE} AS pypi-wheels
RUN python3 -m pip wheel --wheel-dir /wheelhouse --constraint constraints.txt .
FROM scratch AS wheelhouse
COPY --from=pypi-wheels /wheelhouse /
FROM ${BASE} AS build
RUN --mount=type=bind,from=wheelhouse,target=/wheelhouse \\
    python3 -m venv /opt/streams \\
    && /opt/streams/bin/pip install --no-index --find-links=/wheelhouse .
FROM ${BASE}
COPY --from=build /opt/streams /opt/streams
USER 10001:10001
EXPOSE 9108
HEALTHCHECK CMD ["python", "-c", "import os; os.environ.get('STREAMS_METRICS_PORT') or '9108'; '/health/live'"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["streams"]
CMD ["worker"]
"""  # noqa: E501
# Everything before the runtime stage: without it, one stage is left.
BUILD_STAGES = GOOD[GOOD.index("FROM") : GOOD.index("FROM ${BASE}\nCOPY")]


@pytest.mark.parametrize(
    ("rule", "old", "new"),
    [
        (multi_stage, BUILD_STAGES, ""),
        (base_is_a_build_arg, "ARG BASE=python:3.11.14-slim-bookworm\n", ""),
        (
            base_is_a_build_arg,
            "FROM ${BASE} AS build",
            "FROM python:3.11.14-slim-bookworm AS build",
        ),
        (offline_build, "FROM scratch AS wheelhouse", "FROM ${BASE} AS wheelhouse"),
        (offline_build, "--no-index ", ""),
        (offline_build, "from=wheelhouse,", "from=pypi-wheels,"),
        (pinned_bases, "ARG BASE=python:3.11.14-slim-bookworm", "ARG BASE=python:latest"),
        (pinned_bases, "ARG BASE=python:3.11.14-slim-bookworm", "ARG BASE=python"),
        (python_matches_project, "ARG BASE=python:3.11.14-slim-bookworm", "ARG BASE=python:3.10"),
        (non_root_user, "USER 10001:10001", "USER root"),
        (non_root_user, "USER 10001:10001\n", ""),
        (non_root_user, "USER 10001:10001\n", 'ENTRYPOINT ["streams"]\nUSER 10001\n'),
        (apt_hygiene, "EXPOSE 9108", "RUN apt-get update && apt-get install -y tini\nEXPOSE 9108"),
        (
            apt_hygiene,
            "EXPOSE 9108",
            "RUN apt-get update && apt-get install -y --no-install-recommends tini\nEXPOSE 9108",
        ),
        (no_add_for_local_files, "EXPOSE 9108", "ADD streams /src/streams\nEXPOSE 9108"),
        (healthcheck, "HEALTHCHECK CMD", "HEALTHCHECK NONE\n#"),
        (healthcheck, "'/health/live'", "'/metrics'"),
        (runtime_contract, 'ENTRYPOINT ["streams"]', "ENTRYPOINT streams"),
        (runtime_contract, 'CMD ["worker"]', 'CMD ["lag-exporter"]'),
        (runtime_contract, "STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL"),
        (runtime_contract, "EXPOSE 9108", "EXPOSE 8080"),
        (
            wheels_only_runtime,
            "COPY --from=build /opt/streams /opt/streams",
            "RUN pip install streams",
        ),
        (wheels_only_runtime, "--constraint constraints.txt ", ""),
        (
            wheels_only_runtime,
            "EXPOSE 9108",
            "RUN apt-get update && apt-get install -y --no-install-recommends gcc "
            "&& rm -rf /var/lib/apt/lists/*\nEXPOSE 9108",
        ),
    ],
)
def test_each_rule_catches_a_bad_dockerfile(rule: Rule, old: str, new: str) -> None:
    assert rule(parse_dockerfile(GOOD)) == [], "the good example must pass"
    assert old in GOOD, old
    assert rule(parse_dockerfile(GOOD.replace(old, new, 1))) != []
