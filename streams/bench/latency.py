"""Latency scenarios: input append to output append at a fixed input rate.

Input and output topics use broker append time (``LogAppendTime``), so both ends of each
latency are stamped by the broker's clock. The input is published by ``streams generate
--rate`` in a process of its own, as a real producer would (it must not share the measured
process's event loop or time slice).

- :func:`latency`: the reference app in update mode, under the guarantee asked for. An
  event's latency runs from its append to the append of the first update of its (key,
  window) whose count includes it. The worker's own ``streams_batch_phase_seconds`` say
  where its batches' time went.
- :func:`echo`: the floor on the same broker at the same rate: a plain aiokafka loop that
  sends each consumed record on, unchanged, to the same partition of another topic.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from streams.broker.admin import TopicSpec, ensure_topics, start_client, stop_within
from streams.broker.reading import read_topic
from streams.config import KafkaSettings, Settings
from streams.runtime.metrics import BATCH_PHASES

Args = dict[str, Any]
_LOG_APPEND = {"message.timestamp.type": "LogAppendTime"}
# How long a run may take past its paced input (the worker's last batches, an echo's tail).
_DRAIN_S = 120.0


def _kafka_env(args: Args) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("KAFKA_")}
    return {**env, "KAFKA_BOOTSTRAP_SERVERS": args["bootstrap"]}


async def _publish(args: Args, topic: str, total: int) -> asyncio.subprocess.Process:
    """Start publishing ``total`` generated events to ``topic`` at ``args["rate"]``/s."""
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "streams", "generate", "--count", str(total)),
        *("--rate", str(args["rate"]), "--start-ts", "now", "--seed", "3", "--topic", topic),
        env={**os.environ, **_kafka_env(args)},
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _published(publisher: asyncio.subprocess.Process) -> None:
    if await publisher.wait() != 0:
        raise RuntimeError("the latency publisher failed")


def percentiles(latencies: list[int]) -> dict[str, float]:
    """p50, p99 and max of latencies in ms (-1 for none)."""
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        if not ordered:
            return -1.0
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return {
        "measured": len(ordered),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": float(ordered[-1]) if ordered else -1.0,
    }


async def latency(args: Args) -> dict[str, Any]:
    """The reference app in update mode under ``args["guarantee"]``, paced input."""
    from streams.worker.app import create_worker

    kafka = KafkaSettings.from_env(_kafka_env(args))
    app_id, parts, rate = args["app_id"], args["partitions"], args["rate"]
    total = int(rate * args["seconds"])
    topics = [f"{app_id}-in", f"{app_id}-aggregates"]
    await ensure_topics(kafka, [TopicSpec(t, parts, _LOG_APPEND) for t in topics])
    settings = Settings.from_env(
        {
            **_kafka_env(args),
            "STREAMS_APP_ID": app_id,
            "STREAMS_INPUT_TOPIC": topics[0],
            "STREAMS_OUTPUT_TOPIC": topics[1],
            "STREAMS_DLQ_TOPIC": f"{app_id}-dlq",
            "STREAMS_LATE_TOPIC": f"{app_id}-late",
            "STREAMS_PARTITIONS": str(parts),
            "STREAMS_EMIT": "updates",
            "STREAMS_GUARANTEE": args["guarantee"],
        }
    )
    worker = create_worker(settings)
    await worker.start()
    running = asyncio.ensure_future(worker.run(stop_after=total))
    await asyncio.wait_for(_adopted(worker, parts), timeout=60)
    await _published(await _publish(args, topics[0], total))
    await asyncio.wait_for(running, timeout=_DRAIN_S)
    await worker.stop()

    size = settings.window_size_ms
    appended: dict[tuple[str, int], list[int]] = {}
    input_bytes = 0
    for records in (await read_topic(kafka, topics[0])).values():
        for record in records:
            input_bytes += len(record.value)
            event = orjson.loads(record.value)
            key = (event["user_id"], event["ts"] - event["ts"] % size)
            appended.setdefault(key, []).append(record.timestamp)
    latencies: list[int] = []
    covered: dict[tuple[str, int], int] = {}
    updates = [
        (orjson.loads(r.value), r.timestamp)
        for records in (await read_topic(kafka, topics[1])).values()
        for r in records
    ]
    for value, out_ts in sorted(
        updates, key=lambda u: (u[0]["key"], u[0]["window_start"], u[0]["count"])
    ):
        key = (value["key"], value["window_start"])
        done = covered.get(key, 0)
        latencies.extend(out_ts - t for t in appended.get(key, [])[done : value["count"]])
        covered[key] = max(done, value["count"])
    return {
        "events": total,
        "seconds": args["seconds"],
        "bytes": input_bytes,
        "rate": rate,
        "guarantee": args["guarantee"],
        **percentiles(latencies),
        "phases": phase_breakdown(worker.metrics.registry),
    }


async def _adopted(worker: Any, partitions: int) -> None:
    """Until the worker has adopted every input partition and is ready: events published
    before then would wait for its start (group join, restore), which is not what this
    measures (seen: the first second of a run at up to 700 ms, the rest under 70)."""
    await worker.assigned.wait()
    # Readiness is several flags the loop sets as it adopts; no event announces it.
    while not (worker.health.ready() and len(worker.tasks.active) >= partitions):  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def echo(args: Args) -> dict[str, Any]:
    """A plain aiokafka consume -> produce loop (``getmany``, ``send`` each record on, no
    processing, clients' default settings), paced input: the floor of :func:`latency`."""
    kafka = KafkaSettings.from_env(_kafka_env(args))
    app_id, parts, rate = args["app_id"], args["partitions"], args["rate"]
    total = int(rate * args["seconds"])
    source, sink = f"{app_id}-in", f"{app_id}-out"
    await ensure_topics(kafka, [TopicSpec(t, parts, _LOG_APPEND) for t in (source, sink)])
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=None)
    producer = AIOKafkaProducer(**kafka.client_kwargs())
    await start_client(consumer, kafka)
    await start_client(producer, kafka)
    tps = [TopicPartition(source, p) for p in range(parts)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    publisher = await _publish(args, source, total)
    seen = 0
    deadline = time.monotonic() + args["seconds"] + _DRAIN_S
    try:
        while seen < total and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for record in records:
                    await producer.send(sink, record.value, key=record.key, partition=tp.partition)
                seen += len(records)
        await producer.flush()
    finally:
        await stop_within(consumer, 10.0)
        await stop_within(producer, 10.0)
    await _published(publisher)
    inputs = await read_topic(kafka, source)
    outputs = await read_topic(kafka, sink)
    latencies = [
        out.timestamp - got.timestamp
        for p, records in inputs.items()
        for got, out in zip(records, outputs[p], strict=False)
    ]
    return {
        "events": total,
        "seconds": args["seconds"],
        "bytes": sum(len(r.value) for records in inputs.values() for r in records),
        "rate": rate,
        "guarantee": "echo",
        **percentiles(latencies),
    }


def phase_breakdown(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """Per phase of ``streams_batch_phase_seconds``: batches, mean, p50 and p99 in ms (the
    percentiles interpolated in the histogram's buckets, as Prometheus'
    ``histogram_quantile`` does)."""
    buckets: dict[str, list[tuple[float, float]]] = {phase: [] for phase in BATCH_PHASES}
    sums: dict[str, float] = {}
    for family in registry.collect():
        if family.name != "streams_batch_phase_seconds":
            continue
        for sample in family.samples:
            phase = sample.labels.get("phase", "")
            if sample.name.endswith("_bucket"):
                buckets[phase].append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                sums[phase] = sample.value
    out = {}
    for phase in BATCH_PHASES:
        cumulative = sorted(buckets[phase])
        count = cumulative[-1][1] if cumulative else 0.0
        if not count:
            out[phase] = {"batches": 0, "mean_ms": -1.0, "p50_ms": -1.0, "p99_ms": -1.0}
            continue
        out[phase] = {
            "batches": int(count),
            "mean_ms": round(1000 * sums.get(phase, 0.0) / count, 2),
            "p50_ms": round(1000 * _quantile(0.50, cumulative), 2),
            "p99_ms": round(1000 * _quantile(0.99, cumulative), 2),
        }
    return out


def _quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """``histogram_quantile(q)`` over ``(upper bound, cumulative count)`` buckets, not all
    empty: the last finite bound when the rank falls in ``+Inf``."""
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below or 1)
        lower, below = upper, count
    return lower
