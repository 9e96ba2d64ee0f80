"""The stream builder: ``app.stream(...)`` and its chain of operators up to ``.to(...)``.

Each call returns a new stream, so a stream can be branched (two chains from one prefix are
two pipelines). ``.to(...)`` registers the pipeline with its app. Arguments are checked here,
at declaration, with one-line errors naming the declaring line; what needs the whole app
(names, topics, keys) is checked when the app is planned.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from streams.api.topics import Table, Topic
from streams.errors import DeclarationError
from streams.topology import nodes
from streams.topology.aggregations import Builtin, check_custom, is_builtin
from streams.topology.windows import Hopping, Session, Sliding, WindowSpec

_API_DIR = str(Path(__file__).parent)
EMIT_MODES = ("final", "updates")
RESERVED_OUTPUT_FIELDS = ("key", "window_start", "window_end", "final")


def caller() -> str:
    """``file.py:line`` of the first frame outside this package: where the user declared."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_API_DIR):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "<unknown>"
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"


def fail(where: str, message: str) -> NoReturn:
    """Raise the one-line declaration error for ``where``."""
    raise DeclarationError(f"{where}: {message}")


def _callable(where: str, operator: str, fn: Any) -> None:
    if not callable(fn):
        fail(where, f".{operator}(fn) needs a function, got {fn!r}")


def _field(where: str, what: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        fail(where, f"{what} must be a field name (a non-empty string), got {value!r}")


def _arity(where: str, what: str, fn: Any, count: int, shape: str) -> None:
    """Fail unless ``fn`` can be called with ``count`` positional arguments."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: it will tell at runtime
        return
    try:
        signature.bind(*range(count))
    except TypeError:
        fail(where, f"{what} must take {count} arguments, {shape}; got {fn!r}{signature}")


def _ms(where: str, what: str, value: Any, minimum: int = 0) -> None:
    if type(value) is not int or value < minimum:
        fail(where, f"{what} must be an integer number of ms >= {minimum}, got {value!r}")


class Chains:
    """An app's chains of operators: the pipelines ended with ``.to(...)``, and the points
    where a chain was started or continued and not continued since (dangling if they stay)."""

    def __init__(self) -> None:
        self.pipelines: list[nodes.PipelineDecl] = []
        self._open: dict[int, tuple[_Node, str]] = {}

    def opened(self, node: _Node, where: str) -> None:
        """``node`` was declared at ``where``; it dangles until continued."""
        self._open[id(node)] = (node, where)

    def continued(self, node: _Node) -> None:
        """An operator (or ``.to``) was chained onto ``node``."""
        self._open.pop(id(node), None)

    def ended(self, pipeline: nodes.PipelineDecl) -> None:
        """A chain reached ``.to(...)``: one more pipeline."""
        self.pipelines.append(pipeline)

    def dangling(self) -> list[str]:
        """Where chains were started or continued and then never led to a ``.to(...)``."""
        return [where for _, where in self._open.values()]


@dataclass(frozen=True)
class Head:
    """What ``app.stream(...)`` fixed: the source and how to read key and event time."""

    chains: Chains
    source: nodes.TopicDecl
    key: str | None
    timestamp: str | None
    name: str | None
    changelog: str | None
    where: str


class _Node:
    """A point in a chain; tracks whether the user continued it (dangling chains are errors)."""

    def __init__(self, head: Head, ops: tuple[nodes.Op, ...], where: str) -> None:
        self._head = head
        self._ops = ops
        self._where = where
        self._ended = False  # ended with .to(...)
        self._joined_at: str | None = None  # the other side of a .join_stream declared there
        head.chains.opened(self, where)

    def _continue(self) -> tuple[nodes.Op, ...]:
        self._head.chains.continued(self)
        return self._ops

    def _register(self, topic: Topic | str, emit: str, where: str) -> None:
        if isinstance(topic, Topic):
            name = topic.name
        elif isinstance(topic, str) and topic:
            name = topic
        else:
            fail(where, f".to(topic) needs a topic name or app.topic(...), got {topic!r}")
        if emit not in EMIT_MODES:
            fail(where, f".to(..., emit={emit!r}): emit must be one of {', '.join(EMIT_MODES)}")
        ops = (*self._continue(), nodes.To(where=where, topic=name, emit=emit))
        self._ended = True
        head = self._head
        head.chains.ended(
            nodes.PipelineDecl(
                name=head.name or name,
                source=head.source,
                key=head.key,
                timestamp=head.timestamp,
                ops=ops,
                where=head.where,
                changelog=head.changelog,
            )
        )


class Stream(_Node):
    """A stream of JSON objects: chain operators, end with ``.to(topic)`` or a window."""

    def _then(self, op: nodes.Op) -> Stream:
        return Stream(self._head, (*self._continue(), op), op.where)

    def filter(self, fn: Callable[[dict[str, Any]], Any]) -> Stream:
        """Keep the events for which ``fn(value)`` is true."""
        where = caller()
        _callable(where, "filter", fn)
        return self._then(nodes.Filter(where=where, fn=fn))

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Stream:
        """Replace each value by ``fn(value)``, which must return a dict."""
        where = caller()
        _callable(where, "map", fn)
        return self._then(nodes.Map(where=where, fn=fn))

    def flat_map(self, fn: Callable[[dict[str, Any]], Any]) -> Stream:
        """Replace each value by the values (dicts) of the iterable ``fn(value)``."""
        where = caller()
        _callable(where, "flat_map", fn)
        return self._then(nodes.FlatMap(where=where, fn=fn))

    def map_batch(self, fn: Callable[[list[dict[str, Any]]], Any]) -> Stream:
        """``fn(values)`` per batch: a list of values in, a list out (``None`` drops one).

        ``fn`` may be ``async def``: it is awaited once per batch, never once per event. An
        output list as long as the input keeps each event's key and event time; a list of
        another length is re-keyed from each value's key and timestamp fields.
        """
        where = caller()
        _callable(where, "map_batch", fn)
        is_async = inspect.iscoroutinefunction(fn)
        return self._then(nodes.MapBatch(where=where, fn=fn, is_async=is_async))

    def dedupe(self, field: str, horizon_ms: int = 3_600_000) -> Stream:
        """Drop an event whose ``field`` an accepted event had within ``horizon_ms`` of
        event time (stream time minus its event time), as the reference pipeline does."""
        where = caller()
        _field(where, ".dedupe(field)", field)
        _ms(where, ".dedupe(horizon_ms)", horizon_ms)
        return self._then(nodes.Dedupe(where=where, field=field, horizon_ms=horizon_ms))

    def join(self, table: Table, on: str, into: str, how: str = "left") -> Stream:
        """``value[into]`` = ``table``'s current value for the key ``value[on]``, or None;
        ``how="inner"`` drops (and counts) the events without a match."""
        where = caller()
        if not isinstance(table, Table):
            fail(where, f".join(table) needs app.table(...), got {table!r}")
        _field(where, ".join(on)", on)
        _field(where, ".join(into)", into)
        if how not in ("left", "inner"):
            fail(where, f".join(how={how!r}): how must be 'left' or 'inner'")
        op = nodes.Join(where=where, table=table.decl, on=on, into=into, how=how)
        return self._then(op)

    def enrich(
        self,
        fn: Callable[[list[Any]], Any],
        key: str,
        into: str,
        ttl_ms: int = 60_000,
        max_entries: int = 100_000,
        attempts: int = 3,
    ) -> Stream:
        """``value[into]`` = ``(await fn(keys))[value[key]]``, one call per batch for the
        distinct keys not in a TTL cache of ``max_entries``; a call that fails ``attempts``
        times dead-letters its events (stage ``enrich``)."""
        where = caller()
        _callable(where, "enrich", fn)
        _field(where, ".enrich(key)", key)
        _field(where, ".enrich(into)", into)
        _ms(where, ".enrich(ttl_ms)", ttl_ms)
        if type(max_entries) is not int or max_entries < 1:
            fail(where, f".enrich(max_entries) must be an integer >= 1, got {max_entries!r}")
        if type(attempts) is not int or attempts < 1:
            fail(where, f".enrich(attempts) must be an integer >= 1, got {attempts!r}")
        op = nodes.Enrich(
            where=where,
            fn=fn,
            key=key,
            into=into,
            ttl_ms=ttl_ms,
            max_entries=max_entries,
            attempts=attempts,
            is_async=inspect.iscoroutinefunction(fn),
        )
        return self._then(op)

    def process(
        self,
        fn: Callable[[dict[str, Any], Any], Any],
        on_timer: Callable[[str, Any, int], Any] | None = None,
        ttl_ms: int | None = None,
    ) -> Stream:
        """Your own stateful processor: ``fn(value, state)`` per event, in offset order, with
        ``state`` the event's key's state (``get``, ``set``, ``delete``, ``clear``,
        ``timer``, ``cancel``); ``on_timer(key, state, at_ms)`` when stream time reaches a
        timer. Each returns ``None``, a dict or a list of dicts to emit; a call's state and
        timer changes apply only when it returns. ``ttl_ms``: a key no call touched for that
        much stream time is forgotten, timers included."""
        where = caller()
        _callable(where, "process", fn)
        _arity(where, ".process(fn)", fn, 2, "fn(value, state)")
        if on_timer is not None:
            if not callable(on_timer):
                fail(where, f".process(on_timer=...) needs a function, got {on_timer!r}")
            _arity(where, ".process(on_timer=...)", on_timer, 3, "on_timer(key, state, at_ms)")
        if ttl_ms is not None and (type(ttl_ms) is not int or ttl_ms < 1):
            fail(where, f".process(ttl_ms) must be a positive integer of ms, got {ttl_ms!r}")
        return self._then(nodes.Process(where=where, fn=fn, on_timer=on_timer, ttl_ms=ttl_ms))

    def join_stream(
        self,
        other: Stream,
        within_ms: int,
        into: str,
        how: str = "inner",
        grace_ms: int = 0,
    ) -> Stream:
        """Pair this stream's events with ``other``'s: for every two accepted events (one of
        each side) with the same key and event times at most ``within_ms`` apart, one record,
        this stream's value with ``value[into]`` = ``other``'s, with the later event time;
        emitted when its second event is processed. ``how="left"`` also emits each of this
        stream's events that found no partner, once, with ``value[into] = None``, when stream
        time passes ``ts + within_ms + grace_ms``. An event is late when ``ts + grace_ms <
        stream time`` (per partition, over both sides): it goes to its topic's ``.late``.
        Both sides must be co-partitioned (same key, same partition count)."""
        where = caller()
        if not isinstance(other, Stream) or isinstance(other, AggregatedStream):
            fail(where, f".join_stream(other) needs a stream from app.stream(...), got {other!r}")
        if other._head.chains is not self._head.chains:
            fail(
                where,
                ".join_stream(other): other is a stream of another app; declare it "
                "with this app's app.stream(...)",
            )
        if other is self or (other._head is self._head and other._ops == self._ops):
            fail(where, ".join_stream(other): a stream cannot be joined with itself")
        if other._ended:
            fail(
                where,
                ".join_stream(other): other already ends with .to(...); join a stream "
                "that goes on, e.g. the app.stream(...) before its .to",
            )
        if other._joined_at is not None:
            fail(
                where,
                f".join_stream(other): other is already joined at {other._joined_at}; "
                "declare another app.stream(...) of its topic to join it again",
            )
        for op in other._ops:
            if not isinstance(
                op, nodes.Filter | nodes.Map | nodes.FlatMap | nodes.Join | nodes.GroupBy
            ):
                fail(
                    where,
                    f".join_stream(other): other may only have stateless operators "
                    f"(filter, map, flat_map, join) and group_by; .{op.stage}() at {op.where} "
                    "is not one (put it after the join)",
                )
        _ms(where, ".join_stream(within_ms)", within_ms)
        _field(where, ".join_stream(into)", into)
        if how not in ("inner", "left"):
            fail(where, f".join_stream(how={how!r}): how must be 'inner' or 'left'")
        _ms(where, ".join_stream(grace_ms)", grace_ms)
        head = other._head
        side = nodes.StreamSide(
            source=head.source,
            key=head.key,
            timestamp=head.timestamp,
            ops=other._continue(),
            where=head.where,
        )
        other._joined_at = where
        op = nodes.JoinStream(
            where=where, other=side, within_ms=within_ms, into=into, how=how, grace_ms=grace_ms
        )
        return self._then(op)

    def group_by(self, by: str | Callable[[dict[str, Any]], Any]) -> Stream:
        """Re-key by the field ``by`` (or ``by(value)``) through a repartition topic; events
        keep their event time."""
        where = caller()
        if not callable(by):
            _field(where, ".group_by(by)", by)
        return self._then(nodes.GroupBy(where=where, by=by))

    def window(
        self, spec: WindowSpec, grace_ms: int = 0, late_topic: str | None = None
    ) -> WindowedStream:
        """Event-time windows (``tumbling``, ``hopping``, ``session`` or ``sliding``); follow with
        ``.aggregate(...)``. Late events go to ``late_topic`` (``<input>.late``)."""
        where = caller()
        if not isinstance(spec, Hopping | Session | Sliding):
            fail(
                where,
                ".window(spec) needs tumbling(...), hopping(...), session(...) or sliding(...), "
                f"got {spec!r}",
            )
        _ms(where, ".window(grace_ms)", grace_ms)
        if late_topic is not None and (not isinstance(late_topic, str) or not late_topic):
            fail(where, f".window(late_topic) must be a topic name, got {late_topic!r}")
        op = nodes.Window(where=where, spec=spec, grace_ms=grace_ms, late_topic=late_topic)
        return WindowedStream(self._head, (*self._continue(), op), where)

    def to(self, topic: Topic | str, emit: str = "final") -> None:
        """Write each value to ``topic`` with the stream's key: the end of the pipeline."""
        where = caller()
        if emit != "final":
            fail(where, ".to(emit=...) applies directly after .window(...).aggregate(...) only")
        self._register(topic, emit, where)


class WindowedStream(_Node):
    """A windowed stream: the next step is ``.aggregate(...)``."""

    def aggregate(self, **named: Any) -> AggregatedStream:
        """Named aggregations per (key, window): built-ins or custom aggregators."""
        where = caller()
        if not named:
            fail(where, ".aggregate() needs at least one aggregation, e.g. count=Count()")
        window = self._ops[-1]
        assert isinstance(window, nodes.Window)
        sessions = isinstance(window.spec, Session)
        for name, aggregation in named.items():
            if name in RESERVED_OUTPUT_FIELDS:
                fail(
                    where,
                    f".aggregate({name}=...): {name!r} is a field of every output "
                    "record; pick another name",
                )
            if isinstance(aggregation, type) and issubclass(aggregation, Builtin):
                fail(
                    where,
                    f".aggregate({name}={aggregation.__name__}): call it, e.g. "
                    f"{aggregation.__name__}({'' if aggregation.__name__ == 'Count' else 'field'})",
                )
            if not is_builtin(aggregation):
                try:
                    check_custom(name, aggregation, sessions=sessions)
                except DeclarationError as exc:
                    fail(where, str(exc))
        op = nodes.Aggregate(where=where, named=tuple(named.items()))
        return AggregatedStream(self._head, (*self._continue(), op), where)

    def to(self, topic: Topic | str, emit: str = "final") -> NoReturn:
        """Not allowed: a window needs ``.aggregate(...)`` first."""
        fail(
            caller(),
            ".window(...) has no .aggregate(...) before .to(...); add one, e.g. "
            ".aggregate(count=Count())",
        )

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("_"):
            raise AttributeError(name)
        fail(caller(), f".window(...) must be followed by .aggregate(...), not .{name}(...)")


class AggregatedStream(Stream):
    """Windowed aggregates: ``.to(topic, emit=...)`` writes them (finals, or also updates);
    any other operator sees each final record (``{"key", "window_start", "window_end",
    <names>..., "final": true}``) with the aggregation key and event time ``window_end - 1``.
    """

    def to(self, topic: Topic | str, emit: str = "final") -> None:
        """Write each window's aggregates to ``topic``: finals, or also updates."""
        self._register(topic, emit, caller())
