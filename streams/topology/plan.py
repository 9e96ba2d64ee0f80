"""From a declared app to what a run needs: segments, topics, stores and their fingerprints.

A pipeline splits into **segments** at each ``group_by``: a segment reads one topic (the
pipeline's source, or a repartition topic), runs its operators per input partition, and ends
in the pipeline's output or in the next repartition topic. A segment holds at most one
window: its operators before it (``ops``), the window and its aggregation, and the operators
its final records go through (``post``); a second window after an aggregation starts a new
segment behind a repartition topic keyed as the records are. Every check that needs the whole
app happens here, before a worker touches Kafka, each failing with one line that names the
declaring line and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.errors import DeclarationError
from streams.topology import nodes
from streams.topology.aggregations import describe
from streams.topology.windows import Session, Sliding

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Operators that run inside a segment (the rest end it or make it windowed).
SEGMENT_OPS = (
    nodes.Filter,
    nodes.Map,
    nodes.FlatMap,
    nodes.MapBatch,
    nodes.Dedupe,
    nodes.Join,
    nodes.Enrich,
    nodes.Process,
)


@dataclass(frozen=True)
class Store:
    """A stateful operator's state: its changelog key tag and what it depends on."""

    tag: bytes
    op: nodes.Op
    fingerprint: str


@dataclass(frozen=True)
class Segment:
    """One stretch of a pipeline between topics, run per partition of ``input``.

    The first segment reads the declared source: ``key``/``timestamp`` name value fields.
    A later one reads its repartition topic: the key is the message key and event time the
    record timestamp (``key_from_message``).
    """

    pipeline: str
    index: int
    input: str
    source: nodes.TopicDecl | None
    key: str | None
    timestamp: str | None
    ops: tuple[nodes.Op, ...]
    window: nodes.Window | None
    aggregate: nodes.Aggregate | None
    sink: nodes.To | None
    group_by: nodes.GroupBy | None
    repartition: str | None
    dlq: str
    late: str | None
    changelog: str | None
    stores: tuple[Store, ...]
    key_from_message: bool = False
    where: str = field(default="", compare=False)
    post: tuple[nodes.Op, ...] = ()

    @property
    def name(self) -> str:
        """``pipeline`` or ``pipeline#index`` for a later segment (logs, metrics)."""
        return self.pipeline if self.index == 0 else f"{self.pipeline}#{self.index}"

    @property
    def output(self) -> str:
        """The topic this segment writes its results to."""
        if self.sink is not None:
            return self.sink.topic
        assert self.repartition is not None
        return self.repartition

    @property
    def emit_updates(self) -> bool:
        """True when the windowed output also carries ``"final": false`` updates."""
        return (
            self.sink is not None
            and self.window is not None
            and not self.post
            and self.sink.emit == "updates"
        )

    @property
    def after_window(self) -> bool:
        """True when the window's final records go on through operators (``post``) or a
        ``group_by`` instead of straight to the output."""
        return self.window is not None and (bool(self.post) or self.group_by is not None)

    @property
    def emits_finals(self) -> bool:
        """True when the output is the window's final records themselves."""
        return self.window is not None and not self.after_window


@dataclass(frozen=True)
class PlannedTopic:
    """A topic the app uses, and how ``streams topics create`` makes it.

    ``partitions_like`` names the topic whose partition count it must have (changelog and
    repartition topics follow their input); ``None`` means the configured default.
    """

    name: str
    role: str
    partitions_like: str | None = None
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """Everything a run of the app needs, derived once from its declaration."""

    app_id: str
    segments: tuple[Segment, ...]
    topics: tuple[PlannedTopic, ...]
    tables: tuple[str, ...]

    @property
    def inputs(self) -> tuple[str, ...]:
        """Topics the worker consumes, in first-use order."""
        return tuple(dict.fromkeys(segment.input for segment in self.segments))

    @property
    def pipelines(self) -> tuple[str, ...]:
        """Pipeline names in declaration order."""
        return tuple(dict.fromkeys(segment.pipeline for segment in self.segments))

    def reading(self, topic: str) -> tuple[Segment, ...]:
        """The segments that consume ``topic``."""
        return tuple(s for s in self.segments if s.input == topic)

    def topic(self, name: str) -> PlannedTopic:
        """The planned topic called ``name``."""
        return next(t for t in self.topics if t.name == name)


CHANGELOG_CONFIGS = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
# A repartitioned record carries its event time as its timestamp (the next segment reads event
# time from it). Under time retention the broker deleted those of a replay of past events
# (older than retention.ms) before the next segment or the audit had read them: no time
# retention, as Kafka Streams gives its repartition topics.
REPARTITION_CONFIGS = {"retention.ms": "-1"}


def plan(app: nodes.AppDecl, app_id: str | None = None) -> Plan:
    """Check the declaration ``app`` (``App.decl``) and derive its plan; ``app_id``
    overrides the app's name."""
    app_id = app_id or app.name
    _check_name(app.where, "app id", app_id)
    if app.dangling:
        raise DeclarationError(
            f"{app.dangling[0]}: this stream never reaches a .to(topic); end it with "
            ".to(...) or remove it"
        )
    if not app.pipelines:
        raise DeclarationError(
            f"{app.where}: app {app.name!r} declares no pipeline; add "
            "app.stream(topic, key=...)...to(topic)"
        )
    segments: list[Segment] = []
    for pipeline in app.pipelines:
        segments.extend(_segments(pipeline, app_id, app))
    _check_unique(app, segments)
    return Plan(
        app_id=app_id,
        segments=tuple(segments),
        topics=_topics(segments, app),
        tables=tuple(app.tables),
    )


def _check_name(where: str, what: str, name: str) -> None:
    if not _TOPIC_NAME.match(name):
        raise DeclarationError(
            f"{where}: {what} {name!r} cannot name Kafka topics: use letters, digits, '.', "
            "'_' and '-' (at most 249)"
        )


def _segments(pipeline: nodes.PipelineDecl, app_id: str, app: nodes.AppDecl) -> list[Segment]:
    _check_name(pipeline.where, "pipeline name", pipeline.name)
    for topic in (pipeline.source.name, pipeline.sink.topic):
        _check_name(pipeline.where, "topic", topic)
    segments: list[Segment] = []
    ops: list[nodes.Op] = []  # before the window (all of them without one)
    post: list[nodes.Op] = []  # after the aggregation
    index = 0
    topic = pipeline.source.name
    key: str | None = pipeline.key
    key_desc = f"field {pipeline.key!r}" if pipeline.key else "message key"
    window: nodes.Window | None = None
    aggregate: nodes.Aggregate | None = None

    def end(group_by: nodes.GroupBy) -> None:
        """The segment so far ends in a repartition topic; the next one reads it."""
        nonlocal index, topic, ops, post, key, key_desc, window, aggregate
        repartition = f"{app_id}-{pipeline.name}-repartition"
        if index:
            repartition += f"-{index + 1}"
        segments.append(
            _segment(
                pipeline,
                app_id,
                index,
                topic,
                key,
                tuple(ops),
                window,
                aggregate,
                tuple(post),
                group_by,
                repartition,
                key_desc,
            )
        )
        index += 1
        topic = repartition
        ops, post = [], []
        window = aggregate = None
        key = None
        if not group_by.keep_key:
            by = group_by.by if isinstance(group_by.by, str) else _fn_name(group_by.by)
            key_desc = f"group_by {by}"

    for op in pipeline.ops:
        if isinstance(op, SEGMENT_OPS):
            if isinstance(op, nodes.Join) and op.table.name not in app.tables:
                raise DeclarationError(
                    f"{op.where}: .join() uses table {op.table.name!r} of another app; "
                    "declare it with this app's app.table(...)"
                )
            if isinstance(op, nodes.Process) and key is None and index == 0:
                raise DeclarationError(
                    f"{op.where}: .process() keeps state per key and needs one: declare "
                    "app.stream(topic, key=FIELD) or re-key with .group_by(...) first"
                )
            (post if aggregate is not None else ops).append(op)
        elif isinstance(op, nodes.GroupBy):
            end(op)
        elif isinstance(op, nodes.Window):
            if aggregate is not None:
                # A second window over the first one's results: the first segment's records
                # go through a repartition topic keyed as they are, and a new segment
                # windows them (one window per segment).
                end(nodes.GroupBy(where=op.where, keep_key=True))
            if key is None and index == 0:
                raise DeclarationError(
                    f"{op.where}: .window() needs a key to aggregate by: declare "
                    "app.stream(topic, key=FIELD) or re-key with .group_by(...) first"
                )
            window = op
        elif isinstance(op, nodes.Aggregate):
            aggregate = op
    sink = pipeline.sink
    segments.append(
        _segment(
            pipeline,
            app_id,
            index,
            topic,
            key,
            tuple(ops),
            window,
            aggregate,
            tuple(post),
            sink,
            None,
            key_desc,
        )
    )
    return segments


def _segment(
    pipeline: nodes.PipelineDecl,
    app_id: str,
    index: int,
    topic: str,
    key: str | None,
    ops: tuple[nodes.Op, ...],
    window: nodes.Window | None,
    aggregate: nodes.Aggregate | None,
    post: tuple[nodes.Op, ...],
    end: nodes.To | nodes.GroupBy,
    repartition: str | None,
    key_desc: str,
) -> Segment:
    stores = _stores(ops, window, aggregate, post, key_desc)
    changelog = None
    if stores:
        if index == 0 and pipeline.changelog:
            changelog = pipeline.changelog.replace("{app_id}", app_id)
            _check_name(pipeline.where, "changelog topic", changelog)
        else:
            suffix = "" if index == 0 else f"-{index}"
            changelog = f"{app_id}-{pipeline.name}{suffix}-changelog"
    late = None
    if window is not None:
        late = window.late_topic or f"{pipeline.source.name}.late"
    return Segment(
        pipeline=pipeline.name,
        index=index,
        input=topic,
        source=pipeline.source if index == 0 else None,
        key=key,
        timestamp=pipeline.timestamp if index == 0 else None,
        ops=ops,
        window=window,
        aggregate=aggregate,
        sink=end if isinstance(end, nodes.To) else None,
        group_by=end if isinstance(end, nodes.GroupBy) else None,
        repartition=repartition,
        dlq=pipeline.source.dlq_topic,
        late=late,
        changelog=changelog,
        stores=stores,
        key_from_message=index > 0,
        where=pipeline.where,
        post=post,
    )


def _fn_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _fingerprint(data: dict[str, Any]) -> str:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()


def _stores(
    ops: tuple[nodes.Op, ...],
    window: nodes.Window | None,
    aggregate: nodes.Aggregate | None,
    post: tuple[nodes.Op, ...],
    key_desc: str,
) -> tuple[Store, ...]:
    """Each stateful operator with its changelog tag and fingerprint.

    The fingerprint holds what its stored state depends on, so a changed declaration is
    never fed state it did not build (decision 0009). Tags: ``d`` / ``D<n>:`` for dedupes,
    ``w``, ``s`` or ``l`` for the window, ``p<n>:`` for the ``n``-th ``.process``.
    """
    stores: list[Store] = []
    dedupes = 0
    processes = 0
    for op in (*ops, *post):
        if isinstance(op, nodes.Dedupe):
            tag = b"d" if dedupes == 0 else b"D%d:" % dedupes
            dedupes += 1
            fingerprint = _fingerprint({"op": "dedupe", "field": op.field, "key": key_desc})
            stores.append(Store(tag, op, fingerprint))
        elif isinstance(op, nodes.Process):
            tag = b"p%d:" % processes
            processes += 1
            fingerprint = _fingerprint(
                {
                    "op": "process",
                    "fn": _function_id(op.fn),
                    "on_timer": None if op.on_timer is None else _function_id(op.on_timer),
                    "ttl_ms": op.ttl_ms,
                    "key": key_desc,
                }
            )
            stores.append(Store(tag, op, fingerprint))
    if window is not None:
        assert window.spec is not None
        assert aggregate is not None
        fingerprint = _fingerprint(
            {
                "op": "window",
                "window": window.spec.describe(),
                "grace_ms": window.grace_ms,
                "aggregations": [[name, describe(agg)] for name, agg in aggregate.named],
                "key": key_desc,
            }
        )
        tag = window_tag(window.spec)
        stores.append(Store(tag, window, fingerprint))
    return tuple(stores)


def window_tag(spec: Any) -> bytes:
    """The changelog tag of a window's state: ``w`` tumbling and hopping, ``s`` sessions,
    ``l`` sliding windows."""
    if isinstance(spec, Session):
        return b"s"
    return b"l" if isinstance(spec, Sliding) else b"w"


def _function_id(fn: Any) -> str:
    """A function as a fingerprint names it: module and qualified name (a lambda, which has
    no name of its own, with the line it starts on)."""
    name = _fn_name(fn)
    code = getattr(fn, "__code__", None)
    if "<lambda>" in name and code is not None:
        name += f"@{code.co_firstlineno}"
    return name


def _check_unique(app: nodes.AppDecl, segments: list[Segment]) -> None:
    """Names and topics no two pipelines may share, and topics no output may clobber."""
    outputs: dict[str, str] = {}
    for pipeline in app.pipelines:
        sink = pipeline.sink
        if sink.topic in outputs:
            raise DeclarationError(
                f"{sink.where}: two pipelines write {sink.topic!r} (the other at "
                f"{outputs[sink.topic]}); give each pipeline its own output topic"
            )
        outputs[sink.topic] = sink.where
        if sink.topic == pipeline.source.name:
            raise DeclarationError(
                f"{sink.where}: pipeline {pipeline.name!r} writes its own input "
                f"{sink.topic!r}; write to another topic"
            )
    pipelines: dict[str, str] = {}
    for pipeline in app.pipelines:
        if pipeline.name in pipelines:
            raise DeclarationError(
                f"{pipeline.where}: two pipelines are named {pipeline.name!r} (the other at "
                f"{pipelines[pipeline.name]}); give one a name=... or another output topic"
            )
        pipelines[pipeline.name] = pipeline.where
    internal: dict[str, str] = {}
    for segment in segments:
        for topic in (segment.dlq, segment.late, segment.changelog, segment.repartition):
            if topic is not None:
                internal[topic] = segment.pipeline
    for name, where in outputs.items():
        if name in internal:
            raise DeclarationError(
                f"{where}: output topic {name!r} is also a dead-letter, late, changelog or "
                f"repartition topic of pipeline {internal[name]!r}; pick another name"
            )
    changelogs: dict[str, str] = {}
    for segment in segments:
        if segment.changelog is None:
            continue
        if segment.changelog in changelogs:
            raise DeclarationError(
                f"pipelines {changelogs[segment.changelog]!r} and {segment.pipeline!r} would "
                f"share the changelog {segment.changelog!r}; give one another changelog=..."
            )
        changelogs[segment.changelog] = segment.pipeline


def _topics(segments: list[Segment], app: nodes.AppDecl) -> tuple[PlannedTopic, ...]:
    topics: dict[str, PlannedTopic] = {}

    def add(topic: PlannedTopic) -> None:
        topics.setdefault(topic.name, topic)

    for segment in segments:
        if segment.source is not None:
            add(PlannedTopic(segment.input, "input"))
    for segment in segments:
        add(PlannedTopic(segment.dlq, "dlq"))
        if segment.late is not None:
            add(PlannedTopic(segment.late, "late"))
        if segment.repartition is not None:
            add(
                PlannedTopic(
                    segment.repartition,
                    "repartition",
                    partitions_like=segment.input,
                    configs=dict(REPARTITION_CONFIGS),
                )
            )
        if segment.sink is not None:
            add(PlannedTopic(segment.sink.topic, "output"))
        if segment.changelog is not None:
            add(
                PlannedTopic(segment.changelog, "changelog", segment.input, dict(CHANGELOG_CONFIGS))
            )
    for name in app.tables:
        add(PlannedTopic(name, "table", configs={"cleanup.policy": "compact"}))
    return tuple(topics.values())
