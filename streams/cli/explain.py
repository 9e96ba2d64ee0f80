"""``streams explain [APP]``: what an app declares, and what a worker of it will do.

Per pipeline: every topic with its role and partition count (from the broker when one answers
within a few seconds), each segment with its operators in order and the lines that declared
them, each stateful operator with its changelog tag and fingerprint, and the guarantee. With
``--code``, each segment's generated loop; with ``--json``, one document for machines. It
never creates a topic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click
import orjson

from streams.apps.selection import plan_for
from streams.broker.admin import partition_counts
from streams.config import KafkaSettings, Settings
from streams.errors import BrokerError
from streams.topology import nodes
from streams.topology.aggregations import describe
from streams.topology.plan import Plan, Segment

# How long the broker gets to say which topics exist: an explanation should not wait long.
BROKER_TIMEOUT_S = 3.0
NOT_CREATED = "not created"
NO_BROKER = "unknown (no broker)"


@click.command(name="explain")
@click.argument("app", required=False)
@click.option("--code", is_flag=True, help="Also print each segment's generated loop.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
def command(app: str | None, code: bool, as_json: bool) -> None:
    """Explain APP (module:attribute or path.py[:attribute]; default STREAMS_APP, else the
    reference pipeline): per pipeline, its topics with their roles and partition counts,
    its segments with their operators and declaring lines, its state, and the guarantee.

    Partition counts come from KAFKA_BOOTSTRAP_SERVERS when a broker answers within 3 s.
    """
    planned, settings = plan_for(Settings.from_env(), app)
    sources = _sources(planned, settings) if code else None
    counts, broker = asyncio.run(_partitions(settings.kafka, [t.name for t in planned.topics]))
    doc = explain(planned, settings.guarantee, counts, broker, sources)
    if as_json:
        click.echo(orjson.dumps(doc).decode())
    else:
        for line in render(doc):
            click.echo(line)


async def _partitions(kafka: KafkaSettings, names: list[str]) -> tuple[dict[str, int] | None, str]:
    """The partition count of each existing topic among ``names`` and what the broker said;
    no counts when it did not answer."""
    try:
        counts = await asyncio.wait_for(
            partition_counts(kafka, names, timeout_s=BROKER_TIMEOUT_S), BROKER_TIMEOUT_S + 1
        )
    except BrokerError as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"no answer from Kafka at {kafka.bootstrap_servers} within 3 s"
    return counts, f"Kafka at {kafka.bootstrap_servers} answered"


def _sources(planned: Plan, settings: Settings) -> dict[tuple[str, int], str]:
    """Each segment's generated loop, compiled as the worker compiles it."""
    from streams.runtime.processing import compile_plan

    _, compiled = compile_plan(
        planned, settings.max_message_bytes, spilled=settings.store == "rocksdb"
    )
    return {(c.segment.pipeline, c.segment.index): c.source for cs in compiled.values() for c in cs}


def explain(
    planned: Plan,
    guarantee: str,
    counts: dict[str, int] | None,
    broker: str,
    sources: dict[tuple[str, int], str] | None = None,
) -> dict[str, Any]:
    """The explanation as data (what ``--json`` prints). ``counts`` holds the partition
    count of each existing topic (None: no broker answered); ``sources`` the generated loop
    of each (pipeline, segment index)."""

    def topic(name: str, role: str) -> dict[str, Any]:
        if counts is None:
            partitions, state = None, NO_BROKER
        else:
            partitions = counts.get(name)
            state = NOT_CREATED if partitions is None else "created"
        # Values: JSON, unless the topic is in a schema registry's format (with its schema).
        decl = planned.formats.get(name)
        fmt = "json" if decl is None or role not in ("input", "output") else decl.format
        schema = None if decl is None or decl.schema is None else str(decl.schema)
        return {
            "name": name,
            "role": role,
            "partitions": partitions,
            "state": state,
            "format": fmt,
            "schema": schema if fmt != "json" else None,
        }

    pipelines = []
    for name in planned.pipelines:
        segments = [s for s in planned.segments if s.pipeline == name]
        roles: dict[str, str] = {}
        for segment in segments:
            for topic_name, role in _roles(segment):
                roles.setdefault(topic_name, role)
        pipelines.append(
            {
                "name": name,
                "topics": [topic(t, role) for t, role in roles.items()],
                "segments": [_segment(s, sources) for s in segments],
            }
        )
    return {
        "app": planned.app_id,
        "guarantee": guarantee,
        "broker": {"answered": counts is not None, "says": broker},
        "pipelines": pipelines,
    }


def _roles(segment: Segment) -> list[tuple[str, str]]:
    roles = [(segment.input, "input" if segment.source is not None else "repartition")]
    roles += [(op.table.name, "table") for op in segment.ops if isinstance(op, nodes.Join)]
    roles.append((segment.output, "output" if segment.sink is not None else "repartition"))
    roles.append((segment.dlq, "dlq"))
    if segment.late is not None:
        roles.append((segment.late, "late"))
    if segment.changelog is not None:
        roles.append((segment.changelog, "changelog"))
    return roles


def _segment(segment: Segment, sources: dict[tuple[str, int], str] | None) -> dict[str, Any]:
    if segment.key_from_message:
        key, timestamp = "message key", "record timestamp"
    else:
        key = f"field {segment.key!r}" if segment.key else "message key"
        timestamp = f"field {segment.timestamp!r}" if segment.timestamp else "record timestamp"
    ops: list[nodes.Op] = [*segment.ops]
    ops += [op for op in (segment.window, segment.aggregate) if op is not None]
    ops += [op for op in (segment.sink, segment.group_by) if op is not None]
    doc: dict[str, Any] = {
        "name": segment.name,
        "input": segment.input,
        "output": segment.output,
        "key": key,
        "timestamp": timestamp,
        "operators": [{"where": op.where, "operator": operator(op)} for op in ops],
        "state": [
            {
                "operator": store.op.stage,
                "where": store.op.where,
                "tag": store.tag.decode(),
                "changelog": segment.changelog,
                "fingerprint": store.fingerprint,
            }
            for store in segment.stores
        ],
    }
    if sources is not None:
        doc["code"] = sources[(segment.pipeline, segment.index)]
    return doc


def operator(op: nodes.Op) -> str:
    """How an operator's declaration reads, e.g. ``dedupe('order_id', horizon_ms=3600000)``."""
    if isinstance(op, nodes.Filter | nodes.Map | nodes.FlatMap):
        return f"{op.stage}({_fn(op.fn)})"
    if isinstance(op, nodes.MapBatch):
        return f"map_batch({_fn(op.fn)}{', async' if op.is_async else ''})"
    if isinstance(op, nodes.Dedupe):
        return f"dedupe({op.field!r}, horizon_ms={op.horizon_ms})"
    if isinstance(op, nodes.Join):
        return f"join({op.table.name!r}, on={op.on!r}, into={op.into!r}, how={op.how!r})"
    if isinstance(op, nodes.Enrich):
        return (
            f"enrich({_fn(op.fn)}, key={op.key!r}, into={op.into!r}, ttl_ms={op.ttl_ms}, "
            f"max_entries={op.max_entries}, attempts={op.attempts})"
        )
    if isinstance(op, nodes.GroupBy):
        return f"group_by({op.by!r})" if isinstance(op.by, str) else f"group_by({_fn(op.by)})"
    if isinstance(op, nodes.Window):
        assert op.spec is not None
        late = f", late_topic={op.late_topic!r}" if op.late_topic else ""
        return f"window({op.spec.describe()}, grace_ms={op.grace_ms}{late})"
    if isinstance(op, nodes.Aggregate):
        return f"aggregate({', '.join(f'{name}={describe(a)}' for name, a in op.named)})"
    if isinstance(op, nodes.To):
        return f"to({op.topic!r}, emit={op.emit!r})"
    return op.stage


def _fn(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def render(doc: dict[str, Any]) -> list[str]:
    """The explanation as lines of text (what ``streams explain`` prints)."""
    lines = [
        f"app {doc['app']}: guarantee {doc['guarantee']}",
        f"broker: {doc['broker']['says']}",
    ]
    for pipeline in doc["pipelines"]:
        lines += ["", f"pipeline {pipeline['name']}", "  topics"]
        width = max(len(t["name"]) for t in pipeline["topics"])
        for t in pipeline["topics"]:
            count = f"{t['partitions']} partitions" if t["partitions"] is not None else t["state"]
            fmt = "" if t.get("format", "json") == "json" else f"  format {t['format']}"
            if t.get("schema"):
                fmt += f" ({t['schema']})"
            lines.append(f"    {t['role']:<12}{t['name']:<{width}}  {count}{fmt}")
        for segment in pipeline["segments"]:
            lines += [
                f"  segment {segment['name']}: {segment['input']} -> {segment['output']}",
                f"    key: {segment['key']}; event time: {segment['timestamp']}",
            ]
            where = max(len(op["where"]) for op in segment["operators"])
            lines += [
                f"    {op['where']:<{where}}  {op['operator']}" for op in segment["operators"]
            ]
            if segment["state"]:
                lines.append(f"    state, in changelog {segment['state'][0]['changelog']}")
            for store in segment["state"]:
                lines.append(
                    f"      {store['operator']} ({store['where']}): tag {store['tag']!r}, "
                    f"fingerprint {store['fingerprint']}"
                )
            if "code" in segment:
                lines.append("    generated loop:")
                lines += [f"      {line}" if line else "" for line in segment["code"].splitlines()]
    return lines
