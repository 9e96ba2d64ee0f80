"""The nodes of a declared app: topics, tables, operators and pipelines, as frozen data.

Every operator remembers where it was declared (``where``: ``file.py:line``), so a problem
found when the app is planned can point at the line to fix. Functions are kept as given; the
core calls them in its batched loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.topology.windows import WindowSpec

UserFn = Callable[..., Any]


@dataclass(frozen=True)
class TopicDecl:
    """An input or output topic. ``format``: ``json`` (UTF-8 JSON objects; ``schema``, a JSON
    Schema, validates values read), or ``avro``/``json-schema`` in the schema registry's wire
    format (``schema``: the reader schema of an input, the registered schema of an output)."""

    name: str
    schema: Path | None = None
    dlq: str | None = None
    format: str = "json"

    @property
    def dlq_topic(self) -> str:
        """Where its dead letters go: ``<name>.dlq`` unless declared otherwise."""
        return self.dlq or f"{self.name}.dlq"


@dataclass(frozen=True)
class TableDecl:
    """A compacted topic held whole by every worker: latest value per message key."""

    name: str


@dataclass(frozen=True)
class Op:
    """One operator of a pipeline, in declaration order."""

    where: str = field(default="", compare=False)

    @property
    def stage(self) -> str:
        """The name dead letters carry in ``error.stage`` for a failure in this operator."""
        return type(self).__name__.lower()


@dataclass(frozen=True)
class Filter(Op):
    """Keep the events for which ``fn(value)`` is true."""

    fn: UserFn = print


@dataclass(frozen=True)
class Map(Op):
    """Replace each value by ``fn(value)``, a dict."""

    fn: UserFn = print


@dataclass(frozen=True)
class FlatMap(Op):
    """Replace each value by the values of the iterable ``fn(value)``."""

    fn: UserFn = print

    @property
    def stage(self) -> str:
        """``flat_map``."""
        return "flat_map"


@dataclass(frozen=True)
class MapBatch(Op):
    """``fn(values)`` once per batch (awaited once if it is ``async def``): a list out."""

    fn: UserFn = print
    is_async: bool = False

    @property
    def stage(self) -> str:
        """``map_batch``."""
        return "map_batch"


@dataclass(frozen=True)
class Dedupe(Op):
    """Drop an event whose ``field`` value an accepted event had within ``horizon_ms``."""

    field: str = ""
    horizon_ms: int = 3_600_000


@dataclass(frozen=True)
class Join(Op):
    """``value[into]`` = the table's current value for key ``value[on]`` (or None)."""

    table: TableDecl = TableDecl("")
    on: str = ""
    into: str = ""
    how: str = "left"


@dataclass(frozen=True)
class Enrich(Op):
    """``value[into]`` = what ``await fn(keys)`` returned for ``value[key]``, cached."""

    fn: UserFn = print
    key: str = ""
    into: str = ""
    ttl_ms: int = 60_000
    max_entries: int = 100_000
    attempts: int = 3
    is_async: bool = True


@dataclass(frozen=True)
class StreamSide:
    """The other side of a stream-stream join: its source, how its key and event time are
    read, and its own operators (stateless ones, and ``group_by``)."""

    source: TopicDecl
    key: str | None
    timestamp: str | None
    ops: tuple[Op, ...]
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class JoinStream(Op):
    """Pairs of this stream's and ``other``'s events with the same key and event times at
    most ``within_ms`` apart: ``value[into]`` = the other's value (``None`` for a left event
    no partner joined, with ``how="left"``); late by ``grace_ms`` as sessions are."""

    other: StreamSide | None = None
    within_ms: int = 0
    into: str = ""
    how: str = "inner"
    grace_ms: int = 0

    @property
    def stage(self) -> str:
        """``join_stream``."""
        return "join_stream"


@dataclass(frozen=True)
class Process(Op):
    """The user's stateful processor: ``fn(value, state)`` per event, ``on_timer(key, state,
    at_ms)`` per due event-time timer, state per key (``ttl_ms``: forgotten when untouched
    for that much stream time)."""

    fn: UserFn = print
    on_timer: UserFn | None = None
    ttl_ms: int | None = None


@dataclass(frozen=True)
class GroupBy(Op):
    """Re-key by a field or ``fn(value)``, through a repartition topic; ``keep_key`` keeps
    the key as it is (a second window after an aggregation needs a topic in between)."""

    by: str | UserFn = ""
    keep_key: bool = False

    @property
    def stage(self) -> str:
        """``group_by``."""
        return "group_by"


@dataclass(frozen=True)
class Window(Op):
    """Event-time windows of the spec, with grace and a late topic."""

    spec: WindowSpec | None = None
    grace_ms: int = 0
    late_topic: str | None = None


@dataclass(frozen=True)
class Aggregate(Op):
    """Named aggregations over each (key, window), in declaration order."""

    named: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class To(Op):
    """The pipeline's output topic; ``emit`` is ``final`` or ``updates`` after a window."""

    topic: str = ""
    emit: str = "final"


@dataclass(frozen=True)
class PipelineDecl:
    """One ``app.stream(...)...to(...)`` chain.

    ``key`` is the field the source topic is partitioned by (the aggregation and output key);
    ``timestamp`` the event-time field (else the record's Kafka timestamp). ``changelog``, if
    set, names the state changelog topic (``{app_id}`` is replaced by the app id).
    """

    name: str
    source: TopicDecl
    key: str | None
    timestamp: str | None
    ops: tuple[Op, ...]
    where: str = field(default="", compare=False)
    changelog: str | None = None

    @property
    def sink(self) -> To:
        """The final ``.to(...)``."""
        last = self.ops[-1]
        assert isinstance(last, To)
        return last


@dataclass(frozen=True)
class AppDecl:
    """A whole app as declared: what the planner reads (``streams.api.App.decl`` builds it).

    ``tables`` names the app's tables; ``dangling`` holds where chains were started and
    never ended with ``.to(...)`` (each an error when planned); ``where`` is the line that
    declared the app.
    """

    name: str
    pipelines: tuple[PipelineDecl, ...]
    tables: tuple[str, ...] = ()
    dangling: tuple[str, ...] = ()
    topics: tuple[TopicDecl, ...] = ()
    where: str = field(default="", compare=False)
