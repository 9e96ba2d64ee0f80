"""One partition's fetched records through its task: decode, validate, every segment, in
chunks; results to the output sender, changelog records to the changelog sender.

Shared by the worker's poll loop and the broker-free test driver, so both produce the same
records for the same input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from streams.core.compile import NONE, Compiled, compile_segment
from streams.core.formats import Decoder, FormatDecoder, SchemaSource, input_decoder
from streams.errors import ConfigError
from streams.runtime.calls import drive
from streams.runtime.collector import Collector, Sink
from streams.runtime.formats import learn_ids
from streams.runtime.tasks import PartitionTask
from streams.topology.plan import Plan

# A fetched batch (up to 20k records) is decoded and processed in chunks of this many: the
# decoded events of a chunk stay in the CPU cache and in memory the allocator reuses, where a
# whole batch's ~8 MB of fresh dicts cost page faults and cache misses (measured, BENCHMARKS).
DECODE_CHUNK = 2_000


def make_decoder(
    topic: str, source: Any, max_message_bytes: int, schemas: SchemaSource | None
) -> Decoder:
    """The decoder of an input topic: JSON (validated by its schema, if any), or a registry
    format's (needs ``schemas``)."""
    if source is not None and source.format != "json" and schemas is None:
        raise ConfigError(
            f"topic {topic!r} is format={source.format!r}: set STREAMS_SCHEMA_REGISTRY_URL"
        )
    return input_decoder(topic, source, max_message_bytes, schemas)


def compile_plan(
    plan: Plan,
    max_message_bytes: int,
    *,
    spilled: bool = False,
    schemas: SchemaSource | None = None,
) -> tuple[dict[str, Decoder], dict[str, list[Compiled]]]:
    """Every input topic's decoder and the compiled segments reading it, in plan order;
    ``spilled`` compiles stateful segments for a key-value store (STREAMS_STORE=rocksdb);
    ``schemas`` gives the writer schemas of ``format="avro"``/``"json-schema"`` inputs."""
    decoders: dict[str, Decoder] = {}
    compiled: dict[str, list[Compiled]] = {}

    def decoder_of(topic: str, source: Any) -> Decoder:
        decoder = decoders.get(topic)
        if decoder is None:
            decoder = decoders[topic] = make_decoder(topic, source, max_message_bytes, schemas)
        return decoder

    for segment in plan.segments:
        decoder = decoder_of(segment.input, segment.source)
        right = segment.right
        right_guarantees = (
            NONE if right is None else decoder_of(right.input, right.source).guarantees
        )
        done = compile_segment(
            segment,
            decoder.guarantees,
            spilled=spilled and bool(segment.stores),
            right_guarantees=right_guarantees,
        )
        for topic in segment.inputs:  # a join's task runs under both of its topics
            compiled.setdefault(topic, []).append(done)
    return decoders, compiled


async def run_partition(
    task: PartitionTask,
    records: list[Any],
    wall: int,
    collector: Collector,
    outputs: Sink,
    changelog: Sink,
    dlq: str,
    *,
    drain: bool = True,
) -> None:
    """Run ``records`` (one partition's, in offset order) through ``task`` at ``wall``;
    with ``drain``, then :func:`drain_partition` (the worker drains once per commit)."""
    tp = task.tp
    decoder = task.decoder
    metrics = collector.metrics
    stage = decoder.stage
    for lo in range(0, len(records), DECODE_CHUNK):
        chunk = records[lo : lo + DECODE_CHUNK]
        values = [record.value for record in chunk]
        if decoder.__class__ is FormatDecoder:  # ids not seen yet are looked up first
            await learn_ids(decoder, values)
        idxs, vals, failures = decoder.decode(values)
        if failures:
            collector.dead_letters(
                outputs, dlq, tp, chunk, [(i, stage, why, None) for i, why in failures], wall
            )
            metrics.invalid.labels(tp.topic).inc(len(failures))
            collector.stats.invalid += len(failures)
        for n, segment in enumerate(task.segments):
            if n:  # each pipeline gets values of its own (user functions may change them)
                _, vals, _ = decoder.decode(values)
            seg_idxs, seg_vals = _from_position(segment.position_of(tp.topic), chunk, idxs, vals)
            if seg_idxs is None:
                continue
            right = segment.segment.right
            if right is not None and right.input == tp.topic:  # a join's second input
                outcome = segment.process_right(chunk, seg_idxs, seg_vals, wall)
            else:
                outcome = await drive(segment.process(chunk, seg_idxs, seg_vals, wall))
            collector.outcome(outputs, segment, tp, chunk, outcome, wall)
        # Let the event loop run between chunks: the previous batch's commit (its sends and
        # acknowledgements) progresses while this one is processed.
        await asyncio.sleep(0)
    if drain:
        drain_partition(task, records[-1].offset + 1, collector, changelog)


def drain_partition(task: PartitionTask, end: int, collector: Collector, changelog: Sink) -> None:
    """The state of ``task`` stands at input offset ``end``: its segments' changelog records
    since the last drain (ending with that position) to ``changelog``."""
    for segment in task.segments:
        segment.note_position(end, task.tp.topic)
        collector.changelog(changelog, segment, task.tp.partition)


def _from_position(
    position: int | None, chunk: Sequence[Any], idxs: Sequence[int], vals: list[Any]
) -> tuple[Sequence[int] | None, list[Any]]:
    """The chunk's valid events at or after a segment's position (its state already holds
    the earlier ones: a replay after a partial failure starts at the earliest position of a
    partition's segments). ``None`` when none is left."""
    if position is None or chunk[0].offset >= position:
        return idxs, vals
    if chunk[-1].offset < position:
        return None, []
    keep = [(i, v) for i, v in zip(idxs, vals, strict=True) if chunk[i].offset >= position]
    return [i for i, _ in keep], [v for _, v in keep]
