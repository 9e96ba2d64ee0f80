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
class RightSide:
    """The second input of a segment with a ``join_stream``: its topic (the other stream's
    source, or its repartition topic after a ``group_by``), how its key and event time are
    read, its own stateless operators in the segment, and where its dead letters and late
    events go."""

    input: str
    source: nodes.TopicDecl | None
    key: str | None
    timestamp: str | None
    ops: tuple[nodes.Op, ...]
    dlq: str
    late: str
    key_from_message: bool = False
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class Segment:
    """One stretch of a pipeline between topics, run per partition of ``input``.

    The first segment reads the declared source: ``key``/``timestamp`` name value fields.
    A later one reads its repartition topic: the key is the message key and event time the
    record timestamp (``key_from_message``). A segment with a ``join_stream`` among its
    ``ops`` also reads ``right`` (co-partitioned: partition ``p`` of both is one task), and
    its left events that come late to the join go to ``join_late``.
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
    right: RightSide | None = None
    join_late: str | None = None
    # The topic whose partition count its repartition topic takes (None: its input).
    repartition_like: str | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        """The topics it reads: its input, and a join's second one."""
        return (self.input,) if self.right is None else (self.input, self.right.input)

    @property
    def join(self) -> nodes.JoinStream | None:
        """Its ``join_stream``, if any."""
        return next((op for op in self.ops if isinstance(op, nodes.JoinStream)), None)

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
    # Topics in a schema registry's format (``format="avro"`` or ``"json-schema"``), by name.
    formats: Mapping[str, nodes.TopicDecl] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[str, ...]:
        """Topics the worker consumes, in first-use order."""
        return tuple(dict.fromkeys(topic for segment in self.segments for topic in segment.inputs))

    @property
    def joined(self) -> dict[str, str]:
        """Each input topic that a join reads with another, and the topic its tasks are
        named after (the first of its group): partition ``p`` of a group is one task."""
        leader: dict[str, str] = {}
        for segment in self.segments:
            if segment.right is None:
                continue
            left, right = segment.input, segment.right.input
            group = {left, right} | {t for t, lead in leader.items() if lead in (left, right)}
            head = leader.get(left, left)
            for topic in group:
                leader[topic] = head
        return leader

    @property
    def pipelines(self) -> tuple[str, ...]:
        """Pipeline names in declaration order."""
        return tuple(dict.fromkeys(segment.pipeline for segment in self.segments))

    def reading(self, topic: str) -> tuple[Segment, ...]:
        """The segments that consume ``topic``."""
        return tuple(s for s in self.segments if topic in s.inputs)

    def topic(self, name: str) -> PlannedTopic:
        """The planned topic called ``name``."""
        return next(t for t in self.topics if t.name == name)


# A changelog takes record batches up to CHANGELOG_BATCH_BYTES: each drain of a task goes in one
# batch (BatchSender.extend_whole), which the broker appends whole or not at all.
CHANGELOG_BATCH_BYTES = 8 * 1024 * 1024
CHANGELOG_CONFIGS = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": "60000",
    "max.message.bytes": str(CHANGELOG_BATCH_BYTES),
}
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
        formats=_formats(segments, app),
    )


def _formats(segments: list[Segment], app: nodes.AppDecl) -> dict[str, nodes.TopicDecl]:
    """The declared topics in a schema registry's format that the plan reads or writes; an
    output among them needs its schema (what it is registered and encoded with)."""
    declared = {decl.name: decl for decl in app.topics if decl.format != "json"}
    used: dict[str, nodes.TopicDecl] = {}
    for segment in segments:
        for topic in segment.inputs:
            if topic in declared:
                used[topic] = declared[topic]
        sink = segment.sink
        if sink is not None and sink.topic in declared:
            decl = used[sink.topic] = declared[sink.topic]
            if decl.schema is None:
                raise DeclarationError(
                    f"{sink.where}: .to({sink.topic!r}) writes a format={decl.format!r} topic "
                    f"declared without a schema; declare it with app.topic({sink.topic!r}, "
                    f"format={decl.format!r}, schema='schemas/....') to register and encode with"
                )
    for name in app.tables:
        if name in declared:
            raise DeclarationError(
                f"{app.where}: table {name!r} is declared format={declared[name].format!r}; "
                "tables read JSON values only"
            )
    return used


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
    return _PipelinePlanner(pipeline, app_id, app).plan()


class _PipelinePlanner:
    """One pipeline's segments: a new one at each ``group_by`` (and at a second window, or a
    join after a window), the other side of a join planned as segments of its own up to its
    last ``group_by``."""

    def __init__(self, pipeline: nodes.PipelineDecl, app_id: str, app: nodes.AppDecl) -> None:
        self.pipeline = pipeline
        self.app_id = app_id
        self.app = app
        self.segments: list[Segment] = []
        self.next_index = 1
        self.index = 0
        self.topic = pipeline.source.name
        self.origin: nodes.TopicDecl = pipeline.source
        self.first = True
        self.key: str | None = pipeline.key
        self.key_desc = f"field {pipeline.key!r}" if pipeline.key else "message key"
        self.ops: list[nodes.Op] = []  # before the window (all of them without one)
        self.post: list[nodes.Op] = []  # after the aggregation
        self.window: nodes.Window | None = None
        self.aggregate: nodes.Aggregate | None = None
        self.right: RightSide | None = None

    def plan(self) -> list[Segment]:
        for op in self.pipeline.ops:
            self._op(op)
        self._emit(self.pipeline.sink, None)
        return self.segments

    def _op(self, op: nodes.Op) -> None:
        if isinstance(op, SEGMENT_OPS):
            if isinstance(op, nodes.Join) and op.table.name not in self.app.tables:
                raise DeclarationError(
                    f"{op.where}: .join() uses table {op.table.name!r} of another app; "
                    "declare it with this app's app.table(...)"
                )
            if isinstance(op, nodes.Process) and self.key is None and self.first:
                raise DeclarationError(
                    f"{op.where}: .process() keeps state per key and needs one: declare "
                    "app.stream(topic, key=FIELD) or re-key with .group_by(...) first"
                )
            (self.post if self.aggregate is not None else self.ops).append(op)
        elif isinstance(op, nodes.GroupBy):
            self._end(op)
        elif isinstance(op, nodes.JoinStream):
            self._join(op)
        elif isinstance(op, nodes.Window):
            if self.aggregate is not None:
                # A second window over the first one's results: the first segment's records
                # go through a repartition topic keyed as they are, and a new segment
                # windows them (one window per segment).
                self._end(nodes.GroupBy(where=op.where, keep_key=True))
            if self.key is None and self.first:
                raise DeclarationError(
                    f"{op.where}: .window() needs a key to aggregate by: declare "
                    "app.stream(topic, key=FIELD) or re-key with .group_by(...) first"
                )
            self.window = op
        elif isinstance(op, nodes.Aggregate):
            self.aggregate = op

    def _join(self, op: nodes.JoinStream) -> None:
        if self.aggregate is not None or self.right is not None:
            # One join per segment, before any window: the records so far go through a
            # repartition topic keyed as they are, and a new segment joins them.
            self._end(nodes.GroupBy(where=op.where, keep_key=True))
        if self.key is None and self.first:
            raise DeclarationError(
                f"{op.where}: .join_stream() pairs events by key and needs one: declare "
                "app.stream(topic, key=FIELD) or re-key with .group_by(...) first"
            )
        other = op.other
        assert other is not None
        topic, origin, first = other.source.name, other.source, True
        key, ops = other.key, []
        for side_op in other.ops:
            if not isinstance(side_op, nodes.GroupBy):
                ops.append(side_op)
                continue
            index = self._new_index()
            repartition = self._repartition(index)
            self.segments.append(
                self._segment(
                    index,
                    topic,
                    origin,
                    first,
                    other.timestamp if first else None,
                    key,
                    tuple(ops),
                    None,
                    None,
                    (),
                    side_op,
                    repartition,
                    f"field {key!r}" if key else "message key",
                    repartition_like=self.topic,
                )
            )
            topic, first, key, ops = repartition, False, None, []
        if key is None and first:
            raise DeclarationError(
                f"{op.where}: .join_stream(other): other needs a key: declare "
                "app.stream(topic, key=FIELD) or re-key it with .group_by(...) first"
            )
        self.right = RightSide(
            input=topic,
            source=origin if first else None,
            key=key,
            timestamp=other.timestamp if first else None,
            ops=tuple(ops),
            dlq=origin.dlq_topic,
            late=f"{origin.name}.late",
            key_from_message=not first,
            where=other.where,
        )
        self.ops.append(op)

    def _new_index(self) -> int:
        index = self.next_index
        self.next_index += 1
        return index

    def _repartition(self, index: int) -> str:
        name = f"{self.app_id}-{self.pipeline.name}-repartition"
        return name if index == 0 else f"{name}-{index + 1}"

    def _end(self, group_by: nodes.GroupBy) -> None:
        """The segment so far ends in a repartition topic; the next one reads it."""
        repartition = self._repartition(self.index)
        self._emit(group_by, repartition)
        self.index = self._new_index()
        self.topic = repartition
        self.first = False
        self.ops, self.post = [], []
        self.window = self.aggregate = None
        self.right = None
        self.key = None
        if not group_by.keep_key:
            by = group_by.by if isinstance(group_by.by, str) else _fn_name(group_by.by)
            self.key_desc = f"group_by {by}"

    def _emit(self, end: nodes.To | nodes.GroupBy, repartition: str | None) -> None:
        self.segments.append(
            self._segment(
                self.index,
                self.topic,
                self.origin,
                self.first,
                self.pipeline.timestamp if self.first else None,
                self.key,
                tuple(self.ops),
                self.window,
                self.aggregate,
                tuple(self.post),
                end,
                repartition,
                self.key_desc,
                right=self.right,
            )
        )

    def _segment(
        self,
        index: int,
        topic: str,
        origin: nodes.TopicDecl,
        first: bool,
        timestamp: str | None,
        key: str | None,
        ops: tuple[nodes.Op, ...],
        window: nodes.Window | None,
        aggregate: nodes.Aggregate | None,
        post: tuple[nodes.Op, ...],
        end: nodes.To | nodes.GroupBy,
        repartition: str | None,
        key_desc: str,
        *,
        right: RightSide | None = None,
        repartition_like: str | None = None,
    ) -> Segment:
        pipeline = self.pipeline
        app_id = self.app_id
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
            source=origin if first else None,
            key=key,
            timestamp=timestamp,
            ops=ops,
            window=window,
            aggregate=aggregate,
            sink=end if isinstance(end, nodes.To) else None,
            group_by=end if isinstance(end, nodes.GroupBy) else None,
            repartition=repartition,
            dlq=origin.dlq_topic,
            late=late,
            changelog=changelog,
            stores=stores,
            key_from_message=not first,
            where=pipeline.where,
            post=post,
            right=right,
            join_late=None if right is None else f"{origin.name}.late",
            repartition_like=repartition_like,
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
        if isinstance(op, nodes.JoinStream):
            assert op.other is not None
            fingerprint = _fingerprint(
                {
                    "op": "join_stream",
                    "within_ms": op.within_ms,
                    "grace_ms": op.grace_ms,
                    "how": op.how,
                    "into": op.into,
                    "other": _describe_side(op.other),
                    "key": key_desc,
                }
            )
            stores.append(Store(JOIN_TAG, op, fingerprint))
        elif isinstance(op, nodes.Dedupe):
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


JOIN_TAG = b"j"


def _describe_side(side: nodes.StreamSide) -> dict[str, Any]:
    """What a join's state depends on of its other side: topic, key, time, operators."""
    return {
        "topic": side.source.name,
        "key": side.key,
        "timestamp": side.timestamp,
        "ops": [
            f"{op.stage}:{_function_id(op.fn) if hasattr(op, 'fn') else ''}"
            if not isinstance(op, nodes.GroupBy)
            else f"group_by:{op.by if isinstance(op.by, str) else _function_id(op.by)}"
            for op in side.ops
        ],
    }


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
        right = segment.right
        for topic in (
            segment.dlq,
            segment.late,
            segment.changelog,
            segment.repartition,
            segment.join_late,
            None if right is None else right.dlq,
            None if right is None else right.late,
        ):
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
        if segment.right is not None and segment.right.source is not None:
            add(PlannedTopic(segment.right.input, "input"))
    for segment in segments:
        add(PlannedTopic(segment.dlq, "dlq"))
        if segment.late is not None:
            add(PlannedTopic(segment.late, "late"))
        if segment.join_late is not None:
            add(PlannedTopic(segment.join_late, "late"))
        if segment.right is not None:
            add(PlannedTopic(segment.right.dlq, "dlq"))
            add(PlannedTopic(segment.right.late, "late"))
        if segment.repartition is not None:
            add(
                PlannedTopic(
                    segment.repartition,
                    "repartition",
                    partitions_like=segment.repartition_like or segment.input,
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
