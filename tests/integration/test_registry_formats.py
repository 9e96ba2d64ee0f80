"""Avro and JSON Schema topics on a real broker and a real schema registry (Apicurio, with
Confluent's API), against an independent client: Confluent's own serializers write what a
worker reads, and Confluent's deserializers read what it writes, logical types included.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streams.broker.local import free_port
from streams.broker.reading import read_topic
from streams.config import KafkaSettings
from streams.core.formats import frame
from streams.dlq import header_map
from streams.publish import Publisher
from tests.conftest import Worker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UTC = datetime.UTC
IDLE_EXIT = ("--exit-when-idle", "3")

APP = """
from streams import App

app = App("{app}")
payments = app.topic("{pay_in}", format="avro")
flagged = app.topic("{pay_out}", format="avro", schema="{pay_schema}")
signups = app.topic("{sign_in}", format="json-schema")
welcomed = app.topic("{sign_out}", format="json-schema", schema="{sign_schema}")
(
    app.stream(payments, key="card", name="payments")
    .filter(lambda p: p["amount"] >= 100)
    .map(lambda p: {{**p, "cents": "n/a" if p["currency"] == "XXX" else round(p["amount"] * 100),
                    "note": "not in the output schema"}})
    .to(flagged)
)
(
    app.stream(signups, key="user", name="signups")
    .map(lambda s: {{**s, "greeting": "hello " + s["name"], "extra": 1}})
    .to(welcomed)
)
"""

PAYMENT = {
    "type": "record",
    "name": "Payment",
    "namespace": "test",
    "fields": [
        {"name": "card", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "currency", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "raw", "type": "bytes"},
        {"name": "memo", "type": ["null", "string"], "default": None},
    ],
}
FLAGGED = {
    "type": "record",
    "name": "Flagged",
    "namespace": "test",
    "fields": [
        {"name": "card", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "cents", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "raw", "type": "bytes"},
        {"name": "memo", "type": ["null", "string"], "default": None},
    ],
}
SIGNUP = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "user": {"type": "string"},
        "name": {"type": "string"},
        "age": {"type": "integer"},
    },
    "required": ["user", "name"],
}
WELCOMED = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "properties": {
        "user": {"type": "string"},
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "greeting": {"type": "string"},
    },
    "required": ["user", "greeting"],
    "additionalProperties": False,
}


class FormatsRun:
    """The two-pipeline app above, with topic names of its own, run through the CLI."""

    def __init__(self, bootstrap: str, registry: str, name: Callable[[str], str], tmp: Path):
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap)
        self.registry = registry
        self.topics = {k: name(k.replace("_", "-")) for k in ("pay_in", "pay_out", "sign_in")}
        self.topics["sign_out"] = name("sign-out")
        (tmp / "flagged.avsc").write_text(json.dumps(FLAGGED))
        (tmp / "welcomed.json").write_text(json.dumps(WELCOMED))
        self.spec = str(tmp / "formats_app.py")
        Path(self.spec).write_text(
            APP.format(
                app=name("formats"),
                pay_schema=tmp / "flagged.avsc",
                sign_schema=tmp / "welcomed.json",
                **self.topics,
            )
        )
        self.tmp = tmp
        self.env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMS_SCHEMA_REGISTRY_URL": registry,
            "STREAMS_PARTITIONS": "2",
            "STREAMS_IDLE_TIMEOUT_MS": "1500",
        }

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams", *args],
            cwd=REPO,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def worker(self, **env: str) -> Worker:
        port = free_port()
        log_path = self.tmp / f"worker-{port}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streams", "worker", self.spec, "--json", *IDLE_EXIT],
                cwd=REPO,
                env={**self.env, "STREAMS_METRICS_PORT": str(port), **env},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        return Worker(proc, port, log_path)


@pytest.fixture
def formats_run(
    kafka_bootstrap: str,
    schema_registry: str,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> FormatsRun:
    return FormatsRun(kafka_bootstrap, schema_registry, unique_name, tmp_path)


def _payments(count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        out.append(
            {
                "card": f"card-{i % 17}",
                "amount": float((i * 37) % 250),
                "currency": "XXX" if i % 23 == 0 else "EUR",
                "ts": datetime.datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
                + datetime.timedelta(milliseconds=i * 1001),
                "day": datetime.date(2026, 1, 1) + datetime.timedelta(days=i % 300),
                "raw": bytes([i % 256, 0, 255]),
                "memo": None if i % 2 else f"memo {i}",
            }
        )
    return out


async def test_confluent_serializers_in_and_deserializers_out(formats_run: FormatsRun) -> None:
    """Avro and JSON Schema both ways with Confluent's client; what does not decode or does
    not fit the output schema is a dead letter with the encoder's reason; `verify` exact."""
    run = formats_run
    created = run.cli("topics", "create", run.spec)
    assert created.returncode == 0, created.stderr
    client = SchemaRegistryClient({"url": run.registry})
    pay_in, sign_in = run.topics["pay_in"], run.topics["sign_in"]
    avro_out = AvroSerializer(client, json.dumps(PAYMENT))
    json_out = JSONSerializer(json.dumps(SIGNUP), client)
    payments = _payments(600)
    signups = [
        {"user": f"u{i}", "name": f"name {i}", **({"age": 20 + i % 50} if i % 3 else {})}
        for i in range(300)
    ]
    pay_ctx = SerializationContext(pay_in, MessageField.VALUE)
    sign_ctx = SerializationContext(sign_in, MessageField.VALUE)
    pay_messages = [(p["card"].encode(), avro_out(p, pay_ctx)) for p in payments]
    sign_messages = [(s["user"].encode(), json_out(s, sign_ctx)) for s in signups]
    # Not the wire format, and a JSON value its writer schema refuses (name missing).
    json_id = int.from_bytes(sign_messages[0][1][1:5], "big")
    pay_messages.append((b"card-1", orjson.dumps(payments[1] | {"ts": 0, "day": 0, "raw": ""})))
    sign_messages.append((b"u-bad", frame(json_id, b'{"user": "u-bad"}')))
    async with Publisher(run.kafka) as publisher:
        await publisher.publish(pay_in, pay_messages)
        await publisher.publish(sign_in, sign_messages)

    totals = run.worker(STREAMS_GUARANTEE="exactly_once").finish()
    assert totals["consumed"] == len(pay_messages) + len(sign_messages)

    # Confluent's deserializers read every output, and get the input's values back.
    avro_in = AvroDeserializer(client)
    out_ctx = SerializationContext(run.topics["pay_out"], MessageField.VALUE)
    flagged = [
        avro_in(r.value, out_ctx)
        for rs in (await read_topic(run.kafka, run.topics["pay_out"])).values()
        for r in rs
    ]
    kept = [p for p in payments if p["amount"] >= 100]
    expected = [
        {k: p[k] for k in ("card", "amount", "ts", "day", "raw", "memo")}
        | {"cents": round(p["amount"] * 100)}
        for p in kept
        if p["currency"] != "XXX"
    ]
    assert len(expected) > 200
    assert sorted(flagged, key=repr) == sorted(expected, key=repr)

    json_in = JSONDeserializer(None, schema_registry_client=client)
    welcomed_ctx = SerializationContext(run.topics["sign_out"], MessageField.VALUE)
    welcomed = [
        json_in(r.value, welcomed_ctx)
        for rs in (await read_topic(run.kafka, run.topics["sign_out"])).values()
        for r in rs
    ]
    assert sorted(welcomed, key=repr) == sorted(
        ({**s, "greeting": "hello " + s["name"]} for s in signups), key=repr
    )

    # Dead letters: the two that do not decode, and the outputs that do not fit.
    letters = [
        (header_map(r.headers), r.value)
        for topic in (f"{pay_in}.dlq", f"{sign_in}.dlq")
        for rs in (await read_topic(run.kafka, topic)).values()
        for r in rs
    ]
    stages = sorted(h["error.stage"] for h, _ in letters)
    misfits = [p for p in kept if p["currency"] == "XXX"]
    assert stages == sorted(["decode", "decode"] + ["produce"] * len(misfits))
    produce = [(h, v) for h, v in letters if h["error.stage"] == "produce"]
    assert all("Flagged.cents" in h["error.message"] for h, _ in produce), produce[0]
    assert all(orjson.loads(v)["cents"] == "n/a" for _, v in produce)  # the value, as JSON
    decode = {
        h["source.topic"]: h["error.message"] for h, _ in letters if h["error.stage"] == "decode"
    }
    assert "not 0" in decode[pay_in]
    assert "name" in decode[sign_in]

    done = run.cli("verify", run.spec, "--json")
    report = orjson.loads(done.stdout)
    assert report["exact"], done.stdout
    assert done.returncode == 0


def test_start_up_refusals_exit_2_with_one_line(formats_run: FormatsRun) -> None:
    """No registry URL, a registry that does not answer, and an output schema the subject's
    compatibility rule refuses: each stops the worker before it reads, code 2, one line."""
    run = formats_run
    missing = run.cli("worker", run.spec, STREAMS_SCHEMA_REGISTRY_URL="")
    assert missing.returncode == 2
    assert "STREAMS_SCHEMA_REGISTRY_URL" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr

    dead = f"http://127.0.0.1:{free_port()}"
    unreachable = run.cli("worker", run.spec, STREAMS_SCHEMA_REGISTRY_URL=dead)
    assert unreachable.returncode == 2
    assert "does not answer" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1, unreachable.stderr

    subject = f"{run.topics['pay_out']}-value"
    older = {**FLAGGED, "fields": [{"name": "card", "type": "string"}]}
    _post(f"{run.registry}/subjects/{subject}/versions", {"schema": json.dumps(older)})
    _put(f"{run.registry}/config/{subject}", {"compatibility": "BACKWARD"})
    refused = run.cli("worker", run.spec)
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert subject in line
    assert "BACKWARD" in line


def _post(url: str, body: Any) -> Any:
    return _send("POST", url, body)


def _put(url: str, body: Any) -> Any:
    return _send("PUT", url, body)


def _send(method: str, url: str, body: Any) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())
