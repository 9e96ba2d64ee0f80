"""Secured clusters on a real broker: SASL_PLAINTEXT and SASL_SSL (SCRAM-SHA-512) and SSL for
every client (publisher, consumers, worker, lag, lag exporter). A wrong password or an
untrusted certificate is one clear line; the password never shows anywhere.

One local broker (``LocalKafka`` with ``BrokerSecurity``) serves the module; it cannot come
from ``KAFKA_BOOTSTRAP_SERVERS`` or testcontainers, since the tests need its SCRAM user and CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from streams.broker.admin import TopicSpec, commit_offsets, ensure_topics, start_client
from streams.broker.certs import TestPki, write_ca, write_test_pki
from streams.broker.local import BrokerSecurity, LocalKafka, free_port
from streams.config import KafkaSettings, Settings
from streams.errors import ConfigError
from streams.generator import generate_messages
from streams.publish import Publisher
from tests.conftest import PipelineRun

pytestmark = pytest.mark.integration

USER = "alice"
MECHANISM = "SCRAM-SHA-512"
CLI_TIMEOUT_S = 60  # a failing command must end well within this: no hang


@dataclass
class SecuredBroker:
    """The module's broker, its SCRAM password, its CA and an unrelated CA."""

    broker: LocalKafka
    password: str
    pki: TestPki
    untrusted_ca: Path

    def env(self, protocol: str, **overrides: str) -> dict[str, str]:
        """``KAFKA_*`` variables for a client of the listener speaking ``protocol``."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_for(protocol),
            "KAFKA_SECURITY_PROTOCOL": protocol,
        }
        if protocol.startswith("SASL"):
            env |= {
                "KAFKA_SASL_MECHANISM": MECHANISM,
                "KAFKA_SASL_USERNAME": USER,
                "KAFKA_SASL_PASSWORD": self.password,
            }
        if protocol.endswith("SSL"):
            env["KAFKA_SSL_CAFILE"] = str(self.pki.ca_cert)
        return env | overrides

    def settings(self, protocol: str, **overrides: str) -> KafkaSettings:
        """Client settings for the listener speaking ``protocol``."""
        return KafkaSettings.from_env(self.env(protocol, **overrides))

    def process_env(self, protocol: str, **overrides: str) -> dict[str, str]:
        """The environment of a ``streams`` subprocess using that listener."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMS_", "KAFKA_"))}
        return base | {"PYTHONUNBUFFERED": "1"} | self.env(protocol, **overrides)


def _distinct_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return list(ports)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    """A fresh broker with SASL_PLAINTEXT, SSL and SASL_SSL listeners; stopped at the end."""
    home = tmp_path_factory.mktemp("secured-kafka")
    pki = write_test_pki(home / "pki")
    untrusted = write_ca(home / "pki" / "untrusted-ca.pem", "an unrelated CA")
    password = f"scram-{secrets.token_hex(16)}"
    port, controller, sasl_plain, ssl_port, sasl_ssl = _distinct_ports(5)
    security = BrokerSecurity(
        USER, password, pki.server_cert, pki.server_key, sasl_plain, ssl_port, sasl_ssl
    )
    broker = LocalKafka(home / "broker", port=port, controller_port=controller, security=security)
    started = time.monotonic()
    try:
        broker.start(timeout_s=120)
    except Exception as exc:
        broker.stop()
        pytest.fail(f"no secured Kafka broker for the security tests: {exc}", pytrace=False)
    print(f"secured broker ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    yield SecuredBroker(broker, password, pki, untrusted)
    broker.stop()


def streams_cli(
    env: dict[str, str], *args: str, stdin: bytes = b"", timeout_s: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m streams ARGS``; a run over ``timeout_s`` fails the test (a hang)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "streams", *args],
            env=env,
            input=stdin.decode(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`streams {' '.join(args)}` hung for over {timeout_s}s: {exc.stderr!r}")


def fetch(port: int, path: str) -> bytes:
    """GET a local endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
        return bytes(response.read())


def assert_no_secret(password: str, *texts: str | bytes) -> None:
    for text in texts:
        body = text.decode(errors="replace") if isinstance(text, bytes) else text
        assert password not in body, "the SASL password leaked"


async def consume(kafka: KafkaSettings, topic: str, count: int, group: str) -> list[bytes]:
    """Read ``count`` records of ``topic`` as a member of ``group``, then commit."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka.client_kwargs(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await start_client(consumer, kafka)
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(values) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(r.value for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return values


async def test_publish_over_sasl_ssl_read_back_over_sasl_plaintext_and_ssl(
    secured: SecuredBroker, unique_name: Callable[[str], str]
) -> None:
    sasl_ssl = secured.settings("SASL_SSL")
    topic = unique_name("secured")
    await ensure_topics(sasl_ssl, [TopicSpec(topic, 3)])
    cli_values = [m.value for m in generate_messages(200, seed=71)]
    done = streams_cli(
        secured.process_env("SASL_SSL"),
        "publish",
        topic,
        "--json",
        stdin=b"\n".join(cli_values) + b"\n",
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout.strip().splitlines()[-1])["sent"] == 200
    assert_no_secret(secured.password, done.stdout, done.stderr)

    api_values = [m.value for m in generate_messages(50, seed=72)]
    async with Publisher(sasl_ssl) as publisher:
        report = await publisher.publish(topic, [(None, v) for v in api_values])
    assert report.sent == 50

    expected = Counter(cli_values + api_values)
    for protocol in ("SASL_PLAINTEXT", "SSL"):
        got = await consume(secured.settings(protocol), topic, 250, unique_name(protocol.lower()))
        assert Counter(got) == expected, protocol


def consumed_total(metrics: str) -> float:
    """``streams_events_consumed_total`` summed over its labels."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("streams_events_consumed_total{")
    )


async def wait_consumed(proc: asyncio.subprocess.Process, port: int, count: int) -> str:
    """The worker's ``/metrics`` once it consumed ``count`` events (fails after 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            pytest.fail(f"the worker exited early with code {proc.returncode}")
        with contextlib.suppress(OSError):
            body = (await asyncio.to_thread(fetch, port, "/metrics")).decode()
            if consumed_total(body) >= count:
                return body
        await asyncio.sleep(0.1)
    pytest.fail(f"the worker did not consume {count} events within 60s")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_worker_over_sasl_ssl(
    secured: SecuredBroker,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    guarantee: str,
) -> None:
    run = PipelineRun(secured.broker.bootstrap_for("SASL_SSL"), unique_name, partitions=3)
    run.kafka = secured.settings("SASL_SSL")
    env = {k: v for k, v in run.env.items() if not k.startswith("KAFKA_")}
    env |= secured.env("SASL_SSL") | {"STREAMS_GUARANTEE": guarantee}
    run.env = env  # what verify() reads too
    assert run.settings.kafka == run.kafka
    await run.create_topics()
    kinds = await run.publish(300, seed=73, dup_ratio=0.05, bad_ratio=0.05)

    port = free_port()
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:  # a file, not a pipe nobody reads while it runs
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "streams", "worker", "--exit-when-idle", "3", "--json"),
            env=env | {"STREAMS_METRICS_PORT": str(port)},
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    try:
        metrics_body = await wait_consumed(proc, port, 300)
        stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        pytest.fail("the worker did not exit when idle within 60s")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    out, err = stdout.decode(), log_path.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert_no_secret(secured.password, out, err, metrics_body)
    stats = orjson.loads(out.strip().splitlines()[-1])
    assert stats["consumed"] == 300
    assert stats["invalid"] == kinds["bad"]
    report = await run.verify()  # reads input, output, DLQ and late topics over SASL_SSL
    assert report.exact(), report.as_dict()
    assert stats["emitted"] == report.expected_finals > 0


async def test_lag_cli_and_exporter_over_sasl_ssl(
    secured: SecuredBroker, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("lagged"), unique_name("group")
    await ensure_topics(secured.settings("SSL"), [TopicSpec(topic, 1)])
    async with Publisher(secured.settings("SSL")) as publisher:
        await publisher.publish(topic, [(None, b'{"n": %d}' % i) for i in range(100)])
    await commit_offsets(secured.settings("SASL_PLAINTEXT"), group, topic, {0: 40})
    env = secured.process_env("SASL_SSL")

    done = streams_cli(env, "lag", "--json", "--group", group, "--window", "0")
    assert done.returncode == 0, done.stderr
    assert_no_secret(secured.password, done.stdout, done.stderr)
    (report,) = orjson.loads(done.stdout)["groups"]
    assert report["sum_lag"] == 60
    (partition,) = report["partitions"]
    assert (partition["committed_offset"], partition["log_end_offset"]) == (40, 100)

    port = free_port()
    exporter = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams",
        "lag-exporter",
        *("--port", str(port), "--bind", "127.0.0.1", "--interval", "0.5"),
        *("--group-pattern", group),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    wanted = f'kafka_consumergroup_group_sum_lag{{group="{group}"}} 60.0'
    body = ""
    try:
        deadline = time.monotonic() + 30
        while wanted not in body and time.monotonic() < deadline and exporter.returncode is None:
            with contextlib.suppress(OSError):
                body = (await asyncio.to_thread(fetch, port, "/metrics")).decode()
            await asyncio.sleep(0.2)
    finally:
        if exporter.returncode is None:
            exporter.send_signal(signal.SIGTERM)
        try:
            out, err = await asyncio.wait_for(exporter.communicate(), 20)
        except TimeoutError:
            exporter.kill()
            out, err = await exporter.communicate()
    log = err.decode(errors="replace")[-3000:]
    assert wanted in body, log
    assert "streams_lag_exporter_poll_errors_total 0.0" in body, log
    assert exporter.returncode == 0, log
    assert_no_secret(secured.password, out, err, body)


def _failing_run(verb: str, env: dict[str, str], topic: str) -> subprocess.CompletedProcess[str]:
    """``verb`` against a broker that will refuse it (the topic need not exist)."""
    if verb == "publish":
        return streams_cli(env, "publish", topic, stdin=b'{"event_id": "e1"}\n')
    if verb == "lag":
        return streams_cli(env, "lag", "--json", "--window", "0")
    env = env | {"STREAMS_METRICS_PORT": str(free_port()), "STREAMS_APP_ID": topic}
    env |= {"STREAMS_INPUT_TOPIC": topic}
    return streams_cli(env, "worker", "--exit-when-idle", "3", "--json")


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("verb", "protocol"),
    [("publish", "SASL_PLAINTEXT"), ("lag", "SASL_SSL"), ("worker", "SASL_SSL")],
)
def test_wrong_password_is_one_clear_line(
    secured: SecuredBroker, unique_name: Callable[[str], str], verb: str, protocol: str
) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    env = secured.process_env(protocol, KAFKA_SASL_PASSWORD=wrong)
    started = time.monotonic()
    done = _failing_run(verb, env, unique_name("nowhere"))
    line = _one_line(done)
    assert line.startswith("error: authentication failed"), line
    assert "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD" in line, line
    assert time.monotonic() - started < 30, "the failure took too long to report"
    assert_no_secret(secured.password, done.stdout, done.stderr)
    assert_no_secret(wrong, done.stdout, done.stderr)


@pytest.mark.parametrize(
    ("verb", "protocol"), [("publish", "SSL"), ("lag", "SASL_SSL"), ("worker", "SSL")]
)
def test_untrusted_certificate_is_one_clear_line(
    secured: SecuredBroker, unique_name: Callable[[str], str], verb: str, protocol: str
) -> None:
    env = secured.process_env(protocol, KAFKA_SSL_CAFILE=str(secured.untrusted_ca))
    started = time.monotonic()
    done = _failing_run(verb, env, unique_name("nowhere"))
    line = _one_line(done)
    assert line.startswith("error: TLS certificate verification"), line
    assert "KAFKA_SSL_CAFILE" in line, line
    assert time.monotonic() - started < 30, "the failure took too long to report"
    assert_no_secret(secured.password, done.stdout, done.stderr)


def test_secrets_never_appear_in_help_repr_or_config_errors(secured: SecuredBroker) -> None:
    password = secured.password
    env = secured.process_env("SASL_SSL")
    for verb in ("worker", "publish"):
        done = streams_cli(env, verb, "--help")
        assert done.returncode == 0, done.stderr
        assert_no_secret(password, done.stdout, done.stderr)

    settings = Settings.from_env(secured.env("SASL_SSL"))
    assert settings.kafka.sasl_password == password
    assert_no_secret(
        password,
        repr(settings),
        str(settings),
        repr(settings.kafka),
        repr(secured.broker.security),
        repr(settings.kafka.faust_credentials()),
    )

    broken = [
        {"KAFKA_SASL_USERNAME": ""},
        {"KAFKA_SASL_MECHANISM": "GSSAPI"},
        {"KAFKA_SECURITY_PROTOCOL": "SASL_TLS"},
        {"KAFKA_SSL_CAFILE": str(secured.pki.ca_cert) + ".missing"},
        {"KAFKA_SSL_CERTFILE": str(secured.pki.ca_cert), "KAFKA_SSL_KEYFILE": "/nonexistent"},
    ]
    for overrides in broken:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(secured.env("SASL_SSL", **overrides)).kafka.client_kwargs()
        assert_no_secret(password, str(caught.value))
