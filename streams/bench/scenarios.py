"""Benchmark scenarios. Each runs in a fresh process (``python -m streams.bench.scenarios``)
so that its CPU time and peak RSS are its own; it prints one JSON line of measurements.

Throughput is events over the time from the first non-empty fetch to the last event: start-up,
group join and restore are excluded alike for every consumer scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.bench.probe import status_mb
from streams.broker.admin import start_client, topic_partitions
from streams.config import KafkaSettings, Settings
from streams.validation import decode_batch

Args = dict[str, Any]


def _kafka_env(args: Args) -> dict[str, str]:
    """The ``KAFKA_*`` variables this process inherited (security settings), at the bench's
    broker."""
    env = {k: v for k, v in os.environ.items() if k.startswith("KAFKA_")}
    return {**env, "KAFKA_BOOTSTRAP_SERVERS": args["bootstrap"]}


def _kafka(args: Args) -> KafkaSettings:
    return KafkaSettings.from_env(_kafka_env(args))


def _usage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec.
    return {"cpu": usage.ru_utime + usage.ru_stime, "rss_mb": status_mb("self", "VmHWM")}


async def _consume(args: Args, per_batch: Callable[[list[bytes]], object] | None) -> dict[str, Any]:
    """Read ``events`` records from the input with a bare consumer (no group)."""
    kafka = _kafka(args)
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=2 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    await start_client(consumer, kafka)
    tps = [TopicPartition(args["topic"], p) for p in await topic_partitions(kafka, args["topic"])]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    target = args["events"]
    count = size = 0
    first = 0.0
    try:
        while count < target:
            batches = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            if batches and not first:
                first = time.monotonic()
            for records in batches.values():
                count += len(records)
                values = [record.value for record in records]
                size += sum(map(len, values))
                if per_batch is not None:
                    per_batch(values)
        elapsed = time.monotonic() - first
    finally:
        await consumer.stop()
    return {"events": count, "seconds": elapsed, "bytes": size}


async def limit(args: Args) -> dict[str, Any]:
    """Raw consume loop: ``getmany``, no decode — the ceiling for a Python consumer."""
    return await _consume(args, None)


async def decode(args: Args) -> dict[str, Any]:
    """Consume + orjson decode + schema validation, no output, in the worker's chunks."""
    from streams.runtime.processing import DECODE_CHUNK

    def decode_chunks(values: list[bytes]) -> None:
        # As in the worker: no collector while a batch's decoded events are alive.
        gc.disable()
        try:
            for lo in range(0, len(values), DECODE_CHUNK):
                decode_batch(values[lo : lo + DECODE_CHUNK])
        finally:
            gc.enable()

    return await _consume(args, decode_chunks)


def _pipeline_env(args: Args) -> dict[str, str]:
    """The reference app's settings on the bench's input, with topics of the run's own."""
    return {
        **_kafka_env(args),
        "STREAMS_APP_ID": args["app_id"],
        "STREAMS_INPUT_TOPIC": args["topic"],
        "STREAMS_OUTPUT_TOPIC": f"{args['app_id']}-aggregates",
        "STREAMS_DLQ_TOPIC": f"{args['app_id']}-dlq",
        "STREAMS_LATE_TOPIC": f"{args['app_id']}-late",
        "STREAMS_PARTITIONS": str(args["partitions"]),
        "STREAMS_GUARANTEE": args["guarantee"],
        "STREAMS_EMIT": args.get("emit", "final"),
    }


async def pipeline(args: Args) -> dict[str, Any]:
    """The worker's pipeline, in process, until it has consumed every event."""
    from streams.worker.app import create_worker

    settings = Settings.from_env(_pipeline_env(args))
    return await _run_worker(create_worker(settings), args)


def pipeline_processes(args: Args) -> dict[str, Any]:
    """``pipeline``'s app and settings run by ``streams worker --processes N`` (a supervisor and
    N worker processes) until every process is idle; throughput from the first batch of any
    process to the last batch of all (their ``--json`` totals).

    That span includes the group's forming: on a broker without an initial rebalance delay (the
    local one) the first process to join starts alone, and the others join one heartbeat
    later (~2 s). CPU is the whole process tree's; peak RSS the largest process's.
    """
    from streams.broker.local import free_port

    env = {
        **os.environ,
        **_pipeline_env(args),
        # Windows close once the input ends, so the processes exit soon after (not measured).
        "STREAMS_IDLE_TIMEOUT_MS": "1000",
        "STREAMS_METRICS_PORT": str(free_port()),
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "streams", "worker", "--processes", str(args["processes"])),
            *("--exit-when-idle", "1", "--json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"streams worker --processes failed: {done.stderr[-3000:]}")
    totals = orjson.loads(done.stdout.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "events": totals["consumed"],
        "seconds": totals["last_batch_at"] - totals["first_batch_at"],
        "bytes": args["input_bytes"],
        "emitted": totals["emitted"],
        "invalid": totals["invalid"],
        "processes": args["processes"],
        "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        "peak_rss_mb": after.ru_maxrss / 1024,
    }


async def pipeline_user(args: Args) -> dict[str, Any]:
    """Example (a)'s shape (dedupe, filter, map, window, five aggregations), declared with
    the public API, in process, until it has consumed every event."""
    from streams.bench.user_app import build

    return await _run_app(args, build, "revenue")


async def pipeline_avro(args: Args) -> dict[str, Any]:
    """The reference pipeline's shape on the bench's events Avro-encoded (a topic of their
    own, schemas in the run's registry at ``registry_url``), Avro aggregates out, in process,
    until it has consumed every event."""
    from streams.bench.avro_app import build

    registry = {"STREAMS_SCHEMA_REGISTRY_URL": args["registry_url"]}
    return await _run_app(args, build, "aggregates", env=registry)


def codec(args: Args) -> dict[str, Any]:
    """µs per record of JSON and Avro decoding and encoding, in process, no broker
    (:func:`streams.bench.codec.measure_codecs`)."""
    from streams.bench.codec import measure_codecs

    return measure_codecs(args["events"], users=args["users"], repeats=args.get("repeats", 5))


async def pipeline_process(args: Args) -> dict[str, Any]:
    """The card example's shape (``.process``: a list per key, one timer per event), declared
    with the public API, in process, until it has consumed every event."""
    from streams.bench.process_app import build

    return await _run_app(args, build, "alerts")


async def pipeline_join_stream(args: Args) -> dict[str, Any]:
    """The bench's events joined with their twins in a second topic (``join_stream``, inner,
    ten minutes): the rate counts the records of both topics."""
    from streams.bench.join_app import build

    return await _run_app(args, build, "pairs", events=2 * args["events"])


async def pipeline_sliding(args: Args) -> dict[str, Any]:
    """The rolling example's shape (a 5-minute sliding window, ``Count`` and ``Sum``),
    declared with the public API, in process, until it has consumed every event."""
    from streams.bench.sliding_app import build

    return await _run_app(args, build, "spend")


async def _run_app(
    args: Args,
    build: Callable[[str, str, str], Any],
    output: str,
    events: int | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the app ``build(app_id, input topic, output topic)`` makes in process until it
    has consumed ``events`` (default: the bench's); ``env``: more settings (``STREAMS_*``)."""
    from streams.runtime.health import Health
    from streams.runtime.metrics import WorkerMetrics
    from streams.runtime.worker import Worker
    from streams.topology.plan import plan

    app_id = args["app_id"]
    settings = Settings.from_env(
        {
            **_kafka_env(args),
            "STREAMS_APP_ID": app_id,
            "STREAMS_PARTITIONS": str(args["partitions"]),
            "STREAMS_GUARANTEE": args["guarantee"],
            **(env or {}),
        }
    )
    app = build(app_id, args["topic"], f"{app_id}-{output}")
    worker = Worker(settings, plan(app.decl, app_id), WorkerMetrics(), Health())
    return await _run_worker(worker, {**args, "events": events or args["events"]})


async def _run_worker(worker: Any, args: Args) -> dict[str, Any]:
    await worker.start()
    try:
        stats = await worker.run(stop_after=args["events"])
    finally:
        await worker.stop()
    return {
        "events": stats.consumed,
        "seconds": stats.last_batch_at - stats.first_batch_at,
        "bytes": args["input_bytes"],
        "emitted": stats.emitted,
        "invalid": stats.invalid,
    }


def faust_naive(args: Args) -> dict[str, Any]:
    """What a Faust user writes: a per-event agent, dedupe and window aggregate in tables."""
    import faust

    from streams.validation import check_event

    defaults = Settings()
    size = defaults.window_size_ms
    target = args["events"]
    before = args["before"]
    app = faust.App(
        args["app_id"],
        broker=f"kafka://{args['bootstrap']}",
        broker_credentials=_kafka(args).faust_credentials(),
        store="memory://",
        web_enabled=False,
        topic_partitions=args["partitions"],
        datadir=defaults.faust_data_dir(args["app_id"]),
    )
    topic = app.topic(args["topic"], value_serializer="raw", key_serializer="raw")
    seen = app.Table("seen", default=int, partitions=args["partitions"])
    windows = app.Table(
        "windows", default=lambda: [0, 0.0, None, None], partitions=args["partitions"]
    )
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.spinner = None
    state: dict[str, Any] = {"count": 0, "first": 0.0, "last": 0.0, "bytes": 0}
    stopping: list[Any] = []

    @app.agent(topic)
    async def aggregate(stream: Any) -> None:
        async for value in stream:
            if not state["first"]:
                state["first"] = time.monotonic()
            event = orjson.loads(value)
            if check_event(event) is None and not seen[event["event_id"]]:
                seen[event["event_id"]] = event["ts"]
                key = f"{event['user_id']}:{event['ts'] - event['ts'] % size}"
                agg = list(windows[key])
                amount = event.get("amount")
                agg[0] += 1
                if amount is not None:
                    agg[1] += amount
                    agg[2] = amount if agg[2] is None else min(agg[2], amount)
                    agg[3] = amount if agg[3] is None else max(agg[3], amount)
                windows[key] = agg
            state["count"] += 1
            state["bytes"] += len(value)
            if state["count"] == target:
                state["last"] = time.monotonic()
                stopping.append(asyncio.ensure_future(worker.stop()))

    def measured() -> dict[str, Any]:
        last = state["last"] or time.monotonic()
        return {
            "events": state["count"],
            "seconds": last - state["first"] if state["first"] else 0.0,
            "bytes": state["bytes"],
        }

    threading.Thread(target=_faust_watchdog, args=(state, measured, before), daemon=True).start()
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return measured()


# Faust sometimes stalls: seen once in five harness runs, a worker that never consumed (or
# never stopped) on a fresh broker. The baseline must not hang the bench.
FAUST_STALL_S = 60.0
FAUST_STOP_GRACE_S = 20.0


def _faust_watchdog(
    state: dict[str, Any], measured: Callable[[], dict[str, Any]], before: dict[str, float]
) -> None:
    """Report what Faust did and exit if it stops making progress or does not stop."""
    count, changed = -1, time.monotonic()
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        if state["count"] != count:
            count, changed = state["count"], now
        if state["last"] and now - state["last"] > FAUST_STOP_GRACE_S:
            reason = f"Faust did not stop within {FAUST_STOP_GRACE_S:.0f}s of its last event"
        elif not state["last"] and now - changed > FAUST_STALL_S:
            reason = f"Faust made no progress for {FAUST_STALL_S:.0f}s at {count} events"
        else:
            continue
        print(f"faust-naive: {reason}; reporting what it did", file=sys.stderr, flush=True)
        _report({**measured(), "stalled": reason}, before)
        os._exit(0)


async def latency(args: Args) -> dict[str, Any]:
    """The reference app's append-to-output latency (:func:`streams.bench.latency.latency`)."""
    from streams.bench import latency as scenario

    return await scenario.latency(args)


async def echo(args: Args) -> dict[str, Any]:
    """The latency floor: a plain consume -> produce echo (:func:`streams.bench.latency.echo`)."""
    from streams.bench import latency as scenario

    return await scenario.echo(args)


def state(args: Args) -> dict[str, Any]:
    """A real worker holding ``events`` distinct keys: its peak RSS, and its restart."""
    from streams.bench.state import measure_state

    return measure_state(_kafka(args), args["events"], args.get("store", "memory"))


SCENARIOS: dict[str, Callable[[Args], Any]] = {
    "state": state,
    "latency": latency,
    "echo": echo,
    "limit": limit,
    "decode": decode,
    "pipeline": pipeline,
    "pipeline-user": pipeline_user,
    "pipeline-avro": pipeline_avro,
    "codec": codec,
    "pipeline-process": pipeline_process,
    "pipeline-join-stream": pipeline_join_stream,
    "pipeline-sliding": pipeline_sliding,
    "pipeline-processes": pipeline_processes,
    "faust-naive": faust_naive,
}


def main() -> None:
    """Run the scenario named in the JSON argument; print its measurements as JSON."""
    args: Args = orjson.loads(sys.argv[1])
    name = args["scenario"]
    before = _usage()
    args["before"] = before
    func = SCENARIOS[name]
    # Faust's worker runs its own event loop; the other scenarios are coroutines.
    result = asyncio.run(func(args)) if asyncio.iscoroutinefunction(func) else func(args)
    _report(result, before)


def _report(result: dict[str, Any], before: dict[str, float]) -> None:
    """Print a scenario's measurements, with its CPU time and peak RSS, as one JSON line."""
    after = _usage()
    # A scenario that measured another process (state: the worker) reports that one's.
    result.setdefault("cpu_seconds", after["cpu"] - before["cpu"])
    result.setdefault("peak_rss_mb", after["rss_mb"])
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
