"""Audit an app: recompute every pipeline from its input topics and compare.

Each segment's input is read from the beginning, per partition in offset order, and run
through the plain interpreter of its declaration (:mod:`streams.core.interpreter`), which
closes every window at the end of input. Outputs are read ``read_committed``. Compared:

- windowed outputs: each (key, window) must have exactly one final record, equal to the
  recomputation (floats to 1e-9 relative); updates are counted, not compared;
- stateless outputs and repartition topics: the same (key, value) records, as multisets;
- dead letters (by source topic, partition, offset and stage) and late records (by source
  topic, partition and offset), as sets, with duplicates counted.

A segment after a ``group_by`` is recomputed from its actual repartition topic, so the
interleaving of upstream partitions (which no recomputation can know) does not matter. A
repartition topic a worker purged (records deleted below its committed offsets) cannot be
recomputed from its beginning: that segment's audit says so and does not pass.
User functions (``.process`` ones included) must be deterministic for the audit to mean
anything: a report that differs on a segment with user functions says so. Enrichment
functions are called again, and tables are read as they are now (decision 0009).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.broker.reading import log_starts, read_topic
from streams.config import KafkaSettings, Settings
from streams.core.formats import SCHEMA_TYPES, FormatDecoder, codec_for, schema_text
from streams.core.interpreter import Batch, interpret, same_value
from streams.dlq import header_map
from streams.errors import BrokerError
from streams.runtime.formats import registry_for
from streams.topology import nodes
from streams.topology.plan import Plan, Segment

WindowKey = tuple[str, int, int]
_SAMPLES = 20
_PRODUCE = "produce"


@dataclass
class VerifyReport:
    """Differences between one segment's outputs and the recomputation (samples short)."""

    pipeline: str = ""
    input_messages: int = 0
    invalid: int = 0
    expected_late: int = 0
    expected_duplicates: int = 0
    expected_finals: int = 0
    output_finals: int = 0
    output_updates: int = 0
    missing: int = 0
    extra: int = 0
    duplicate_finals: int = 0
    wrong: int = 0
    unreadable: int = 0
    expected_dead: int = 0
    dlq_records: int | None = None
    late_records: int | None = None
    dead_missing: int = 0
    dead_extra: int = 0
    dead_duplicates: int = 0
    late_missing: int = 0
    late_extra: int = 0
    late_duplicates: int = 0
    poison: int = 0
    # Records deleted from the input (a purged repartition topic): no recomputation.
    purged: dict[int, int] = field(default_factory=dict)
    user_functions: bool = False
    samples: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    def exact(self, *, allow_duplicates: bool = False) -> bool:
        """True when nothing is missing, extra, wrong or (unless allowed) duplicated, in
        the outputs, the dead letters and the late records."""
        dupes = self.duplicate_finals + self.dead_duplicates + self.late_duplicates
        if dupes and not allow_duplicates:
            return False
        return not (
            self.purged
            or self.missing
            or self.extra
            or self.wrong
            or self.unreadable
            or self.dead_missing
            or self.dead_extra
            or self.late_missing
            or self.late_extra
        )

    def sample(self, kind: str, item: Any) -> None:
        """Keep a few examples of each kind of difference."""
        if len(self.samples[kind]) < _SAMPLES:
            self.samples[kind].append(item)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``exact`` included, duplicates not allowed)."""
        data = {k: v for k, v in self.__dict__.items() if k != "samples"}
        data["samples"] = dict(self.samples)
        data["exact"] = self.exact()
        return data


@dataclass
class AppReport:
    """One :class:`VerifyReport` per segment of the app."""

    app_id: str
    pipelines: list[VerifyReport]

    def exact(self, *, allow_duplicates: bool = False) -> bool:
        """Every segment exact."""
        return all(p.exact(allow_duplicates=allow_duplicates) for p in self.pipelines)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "app_id": self.app_id,
            "exact": self.exact(),
            "pipelines": [p.as_dict() for p in self.pipelines],
        }


class _Reader:
    """Reads each topic once per audit (several segments share inputs, DLQs, late topics)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self._cache: dict[str, dict[int, list[Any]]] = {}

    async def read(self, topic: str) -> dict[int, list[Any]]:
        if topic not in self._cache:
            self._cache[topic] = await read_topic(self.kafka, topic)
        return self._cache[topic]


async def verify_app(
    settings: Settings, plan: Plan, *, max_message_bytes: int | None = None
) -> AppReport:
    """Audit every segment of ``plan`` on the cluster of ``settings``."""
    reader = _Reader(settings.kafka)
    tables = {name: await _table(reader, name) for name in plan.tables}
    registry = registry_for(plan, settings.schema_registry)
    if registry is not None:
        await asyncio.to_thread(registry.check)
    reports = []
    for segment in plan.segments:
        reports.append(
            await _verify_segment(
                reader,
                segment,
                tables,
                settings.idle_timeout_ms,
                max_message_bytes or settings.max_message_bytes,
                OutputFormat.of(plan, segment.output, registry),
            )
        )
    return AppReport(plan.app_id, reports)


async def _table(reader: _Reader, name: str) -> dict[str, Any]:
    from streams.runtime.tables import apply_records

    table: dict[str, Any] = {}
    for records in (await reader.read(name)).values():
        apply_records(table, records)
    return table


async def _verify_segment(
    reader: _Reader,
    segment: Segment,
    tables: dict[str, Any],
    idle_timeout_ms: int,
    max_bytes: int,
    output_format: OutputFormat | None = None,
) -> VerifyReport:
    report = VerifyReport(pipeline=segment.name, user_functions=_has_user_functions(segment))
    fmt = output_format or OutputFormat()
    if segment.key_from_message:
        starts = await log_starts(reader.kafka, segment.input)
        report.purged = {p: start for p, start in starts.items() if start > 0}
        if report.purged:
            return report
    inputs = await reader.read(segment.input)
    right = await reader.read(segment.right.input) if segment.right is not None else {}
    expected_outputs: list[tuple[bytes | None, Any, int | None]] = []
    expected_dead: set[tuple[Any, ...]] = set()
    expected_late: set[tuple[Any, ...]] = set()
    process_times = await _process_times(reader, segment)
    join_times = await _join_times(reader, segment)
    for partition, records in inputs.items():
        # A join's second input in the same fetch: taken in event-time order with the first.
        seconds = right.get(partition, [])
        result = await asyncio.to_thread(
            interpret,
            segment,
            [Batch(0, records, seconds)],
            tables=tables,
            idle_timeout_ms=idle_timeout_ms,
            max_message_bytes=max_bytes,
            process_times=process_times.get(partition),
            join_time=join_times.get(partition),
            schemas=fmt.schemas,
        )
        report.input_messages += len(records) + len(seconds)
        report.expected_duplicates += len(result.duplicates)
        expected_outputs.extend(result.outputs)
        where = _Sources(segment, records, seconds)
        for index, (stage, _, _) in result.dead.items():
            if stage in ("validate", "decode"):
                report.invalid += 1
            expected_dead.add((*where.of(index, partition), stage))
        for key, value, stage, _ in result.derived:
            expected_dead.add(_derived(partition, stage, key, value))
        for index in (*result.late, *result.late_join):
            expected_late.add(where.of(index, partition))
        for late_key, late_value in result.late_derived:
            raw_key = None if late_key is None else late_key.encode()
            expected_late.add((partition, raw_key, _canonical(late_value)))
    report.expected_late = len(expected_late)
    report.expected_dead = len(expected_dead)
    output = segment.output
    actual = await reader.read(output)
    expected_outputs = fmt.written(expected_outputs)
    if segment.emits_finals:
        _compare_finals(report, expected_outputs, actual, fmt.load)
    else:
        _compare_records(report, expected_outputs, actual, fmt.load)
    await _compare_dead(report, reader, segment, expected_dead)
    if _late_topics(segment):
        await _compare_late(report, reader, segment, expected_late)
    return report


@dataclass
class OutputFormat:
    """How an output topic's values are written: JSON, or a registry format (read back by
    schema id; expected values written and read with the declared schema, those that do
    not fit it left out: they are the pipeline's ``produce`` dead letters)."""

    schemas: Any = None
    decoder: FormatDecoder | None = None
    codec: Any = None

    @classmethod
    def of(cls, plan: Plan, topic: str, registry: Any) -> OutputFormat:
        decl = plan.formats.get(topic)
        if decl is None or decl.schema is None:
            return cls(schemas=registry)
        schema_type = SCHEMA_TYPES[decl.format]
        codec = codec_for(schema_type, schema_text(decl.format, decl.schema), str(decl.schema))
        return cls(registry, FormatDecoder(topic, decl.format, registry, 1 << 62), codec)

    def load(self, raw: bytes) -> Any:
        if self.decoder is None:
            return orjson.loads(raw)
        _, values, failures = self.decoder.decode([raw])
        if failures:
            raise ValueError(failures[0][1])
        return values[0]

    def written(
        self, outputs: list[tuple[bytes | None, Any, int | None]]
    ) -> list[tuple[bytes | None, Any, int | None]]:
        if self.codec is None:
            return outputs
        out = []
        for key, value, ts in outputs:
            try:
                out.append((key, self.codec.read(self.codec.write(value)), ts))
            except Exception:
                continue
        return out


class _Sources:
    """Where the interpreter's record ``index`` of one partition came from: the first input's
    records, then a join's second input's."""

    def __init__(self, segment: Segment, records: list[Any], seconds: list[Any]) -> None:
        self.segment = segment
        self.records = records
        self.seconds = seconds

    def of(self, index: int, partition: int) -> tuple[str, int, int]:
        if index < len(self.records):
            return (self.segment.input, partition, self.records[index].offset)
        assert self.segment.right is not None
        return (self.segment.right.input, partition, self.seconds[index - len(self.records)].offset)


def _late_topics(segment: Segment) -> list[str]:
    right = segment.right
    topics = [segment.late, segment.join_late, None if right is None else right.late]
    return list(dict.fromkeys(t for t in topics if t is not None))


def _dlq_topics(segment: Segment) -> list[str]:
    right = segment.right
    return list(dict.fromkeys([segment.dlq] + ([] if right is None else [right.dlq])))


def _compare_finals(
    report: VerifyReport,
    expected_outputs: list[tuple[bytes | None, Any, int | None]],
    topic: dict[int, list[Any]],
    load: Callable[[bytes], Any] = orjson.loads,
) -> None:
    # An output schema without a "final" field writes finals only (updates too, under
    # emit="updates", indistinguishably): every record read counts as final.
    fmt_final = load is not orjson.loads
    expected: dict[WindowKey, list[dict[str, Any]]] = defaultdict(list)
    for _, final, _ in expected_outputs:
        expected[(final["key"], final["window_start"], final["window_end"])].append(final)
    report.expected_finals = sum(len(v) for v in expected.values())
    actual: dict[WindowKey, list[dict[str, Any]]] = defaultdict(list)
    for records in topic.values():
        for record in records:
            try:
                value = load(record.value)
                key: WindowKey = (value["key"], value["window_start"], value["window_end"])
            except (ValueError, KeyError, TypeError):
                report.unreadable += 1
                report.sample("unreadable", repr((record.value or b"")[:200]))
                continue
            if value.get("final", fmt_final) is True:
                actual[key].append(value)
            else:
                report.output_updates += 1
    report.output_finals = sum(len(v) for v in actual.values())
    for key, wants in expected.items():
        gots = actual.get(key, [])
        if not gots:
            report.missing += len(wants)
            report.sample("missing", wants[0])
            continue
        if len(gots) > len(wants):
            report.duplicate_finals += len(gots) - len(wants)
            report.sample("duplicate", gots[0])
        unmatched = list(wants)
        for got in gots:
            match = next((w for w in unmatched if same_value(w, got)), None)
            if match is not None:
                unmatched.remove(match)
            elif not any(same_value(w, got) for w in wants):
                report.wrong += 1
                report.sample("wrong", {"expected": wants[0], "actual": got})
        if len(gots) < len(wants):
            report.missing += len(wants) - len(gots)
    for key, gots in actual.items():
        if key not in expected:
            report.extra += len(gots)
            report.sample("extra", gots[0])


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _compare_records(
    report: VerifyReport,
    expected_outputs: list[tuple[bytes | None, Any, int | None]],
    topic: dict[int, list[Any]],
    load: Callable[[bytes], Any] = orjson.loads,
) -> None:
    """Stateless outputs: the same (key, value) records, counted."""
    expected = Counter((key, _canonical(value)) for key, value, _ in expected_outputs)
    actual: Counter[tuple[bytes | None, str]] = Counter()
    for records in topic.values():
        for record in records:
            try:
                actual[(record.key, _canonical(load(record.value)))] += 1
            except (ValueError, TypeError):
                report.unreadable += 1
                report.sample("unreadable", repr((record.value or b"")[:200]))
    report.expected_finals = sum(expected.values())
    report.output_finals = sum(actual.values())
    for item, want in expected.items():
        got = actual.get(item, 0)
        if got < want:
            report.missing += want - got
            report.sample("missing", _show(item))
        elif got > want:
            report.duplicate_finals += got - want
            report.sample("duplicate", _show(item))
    for item, got in actual.items():
        if item not in expected:
            report.extra += got
            report.sample("extra", _show(item))


def _show(item: tuple[bytes | None, str]) -> dict[str, Any]:
    key, value = item
    return {"key": None if key is None else key.decode("utf-8", "replace"), "value": value}


async def _process_times(reader: _Reader, segment: Segment) -> dict[int, dict[int, int]]:
    """Where the workers left each ``.process``'s stream time, per partition (the last
    ``q<n>:`` record of the changelog): their idle advance fired the timers up to there."""
    if segment.changelog is None or not any(
        isinstance(op, nodes.Process) for op in (*segment.ops, *segment.post)
    ):
        return {}
    times: dict[int, dict[int, int]] = {}
    for partition, records in (await _read_optional(reader, segment.changelog)).items():
        for record in records:
            key = record.key or b""
            if key[:1] == b"q" and record.value is not None:
                stream_time = orjson.loads(record.value)[0]
                if stream_time is not None:
                    times.setdefault(partition, {})[int(key[1 : key.index(b":")])] = stream_time
    return times


async def _join_times(reader: _Reader, segment: Segment) -> dict[int, int]:
    """Where the workers left a join's stream time, per partition (its changelog's last
    ``jt`` record): their idle advance emitted the left events nothing joined up to there."""
    if segment.changelog is None or segment.join is None:
        return {}
    times: dict[int, int] = {}
    for partition, records in (await _read_optional(reader, segment.changelog)).items():
        for record in records:
            if record.key == b"jt" and record.value is not None:
                stream_time = orjson.loads(record.value)[0]
                if stream_time is not None:
                    times[partition] = stream_time
    return times


def _has_user_functions(segment: Segment) -> bool:
    return any(
        isinstance(op, nodes.Filter | nodes.Map | nodes.FlatMap | nodes.MapBatch | nodes.Process)
        for op in (*segment.ops, *segment.post)
    ) or (segment.group_by is not None and callable(segment.group_by.by))


def _derived(partition: int, stage: str, key: bytes | None, value: Any) -> tuple[Any, ...]:
    """How a dead letter of no input record is known: its partition, stage, key, and its
    value without the accumulators (a session's custom accumulator may have merged in
    another order)."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "accumulators"}
    return (partition, stage, key, _canonical(value))


async def _compare_dead(
    report: VerifyReport, reader: _Reader, segment: Segment, expected: set[tuple[Any, ...]]
) -> None:
    """This segment's dead letters: validation ones of its input (once per topic, whoever
    reads it) and its own operators' (named by ``error.pipeline``), those of no input record
    (a window's failed result) by their key and value."""
    letters = [
        letter
        for topic in _dlq_topics(segment)
        for rs in (await _read_optional(reader, topic)).values()
        for letter in rs
    ]
    seen: Counter[tuple[Any, ...]] = Counter()
    total = 0
    for letter in letters:
        headers = header_map(letter.headers)
        stage = headers.get("error.stage", "")
        if stage == _PRODUCE:
            if headers.get("error.pipeline") == segment.name:
                report.poison += 1
            continue
        source = headers.get("source.topic")
        if source not in segment.inputs:
            continue
        pipeline = headers.get("error.pipeline")
        if pipeline is not None and pipeline != segment.name:
            continue
        if "source.offset" not in headers and pipeline is not None:
            try:
                body = orjson.loads(letter.value or b"")
                where = _derived(int(headers["source.partition"]), stage, letter.key, body)
            except (orjson.JSONDecodeError, KeyError, ValueError):
                continue
            total += 1
            seen[where] += 1
            continue
        try:
            where = (
                source,
                int(headers["source.partition"]),
                int(headers["source.offset"]),
                stage,
            )
        except (KeyError, ValueError):
            continue
        total += 1
        seen[where] += 1
    report.dlq_records = total
    _compare_sets(report, "dead", expected, seen)


async def _compare_late(
    report: VerifyReport, reader: _Reader, segment: Segment, expected: set[tuple[Any, ...]]
) -> None:
    records = [
        record
        for topic in _late_topics(segment)
        for rs in (await _read_optional(reader, topic)).values()
        for record in rs
    ]
    seen: Counter[tuple[Any, ...]] = Counter()
    total = 0
    for record in records:
        headers = header_map(record.headers)
        source = headers.get("source.topic")
        if source not in segment.inputs:
            continue
        try:
            if "source.offset" not in headers:  # an event no input record made (a timer's)
                value = _canonical(orjson.loads(record.value or b""))
                seen[(int(headers["source.partition"]), record.key, value)] += 1
                total += 1
                continue
            seen[(source, int(headers["source.partition"]), int(headers["source.offset"]))] += 1
        except (KeyError, ValueError):
            continue
        total += 1
    report.late_records = total
    _compare_sets(report, "late", expected, seen)


def _compare_sets(report: VerifyReport, kind: str, expected: set[Any], seen: Counter[Any]) -> None:
    missing = [item for item in expected if item not in seen]
    extra = [item for item in seen if item not in expected]
    duplicates = sum(count - 1 for count in seen.values() if count > 1)
    setattr(report, f"{kind}_missing", len(missing))
    setattr(report, f"{kind}_extra", len(extra))
    setattr(report, f"{kind}_duplicates", duplicates)
    for item in missing[:3]:
        report.sample(f"{kind}_missing", item)
    for item in extra[:3]:
        report.sample(f"{kind}_extra", item)


async def _read_optional(reader: _Reader, topic: str) -> dict[int, list[Any]]:
    try:
        return await reader.read(topic)
    except BrokerError:
        return {}


async def verify_pipeline(settings: Settings, **windows: int) -> VerifyReport:
    """The reference pipeline's audit on its own topics and settings (``windows`` overrides
    ``window_size_ms``, ``window_step_ms``, ``grace_ms`` or ``max_message_bytes``)."""
    from streams.apps.reference import build
    from streams.topology.plan import plan

    overrides = {k: v for k, v in windows.items() if k != "max_message_bytes"}
    if "window_size_ms" in overrides and "window_step_ms" not in overrides:
        overrides["window_step_ms"] = overrides["window_size_ms"]
    settings = dataclasses.replace(settings, **overrides)  # type: ignore[arg-type]
    planned = plan(build(settings).decl, settings.app_id)
    report = await verify_app(settings, planned, max_message_bytes=windows.get("max_message_bytes"))
    return report.pipelines[0]
