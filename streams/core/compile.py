"""Compile a planned segment into Python source: one tight loop per stage, no dispatch.

As fastjsonschema turns a schema into code, this turns a segment's operators into the body
of one ``for`` loop over a chunk of decoded events, ``exec``'d once at start: field names,
window sizes and aggregation slots are literals in the code, user functions are called
directly, and each operator's failure path (``continue`` after a dead letter) is inlined.
For the reference pipeline the loop is the hand-written core it replaced, statement for
statement. A segment with ``map_batch`` or ``enrich`` splits into stages at each of them:
the runtime calls those once per batch (awaiting them when they are ``async``) between the
generated loops.

Names the generated code uses: ``i`` (index of the record in the chunk), ``v`` (the event
value), ``k`` (its key), ``t`` (its event time), ``st`` (the segment's stream time) and
``sst`` (the stream time of a stage before a batch step, which only dedupe reads).
"""

from __future__ import annotations

import itertools
import json as _json
import linecache
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson as _orjson

from streams.core import aggregations, sweeps
from streams.core.aggregations import Layout
from streams.core.failures import USER_ERRORS, Site, Sites, reason
from streams.core.jsonbytes import dumps
from streams.core.sweeps import Aggregates
from streams.core.windows import NEVER
from streams.errors import DeclarationError
from streams.topology import nodes
from streams.topology.plan import Segment, window_tag
from streams.topology.windows import Hopping, Session, Sliding

__all__ = ["Compiled", "Guarantees", "canonical_key", "compile_segment", "reason"]

# The generated loops check the message key of one event in this many (see _key).
KEY_CHECK_EVERY = 16
_MISSING = object()
# Generated sources registered with linecache, numbered so that two compilations of one
# segment (tests, a driver beside a worker) never share a file name.
_SOURCES = itertools.count(1)


def canonical_key(value: Any) -> str:
    """A key for a value that is not a string: its JSON text (``5`` -> ``"5"``); raises
    ``TypeError`` for a value JSON cannot hold."""
    try:
        return _orjson.dumps(value, option=_orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # an integer beyond 64 bits, or not JSON at all (then this raises too)
        return _json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _not_dict(stage: str, value: Any) -> str:
    return f"{stage} must return a dict, got {type(value).__name__}"


def _not_json(exc: BaseException) -> str:
    return f"value is not JSON-serialisable ({reason(exc)})"


def _bad_key(field_name: str, value: Any) -> str:
    from streams.validation import describe_value as _describe

    if value is None:
        return f"{field_name}: the key field is missing or null"
    return f"{field_name}: the key field must be a string (got {_describe(value)})"


def _bad_timestamp(field_name: str, value: Any) -> str:
    from streams.validation import describe_value as _describe

    if value is None:
        return f"{field_name}: the timestamp field is missing or null"
    return f"{field_name}: the timestamp must be an integer >= 0, epoch ms (got {_describe(value)})"


_SCALARS = frozenset({str, int, float, bool, type(None)})


def check_accumulator(acc: Any, name: str) -> None:
    """Raise ``TypeError`` naming the aggregation when ``acc`` is not JSON (it lives in the
    changelog)."""
    if acc.__class__ in _SCALARS:
        return
    try:
        dumps(acc)
    except Exception as exc:  # TypeError; ValueError for a circular one
        raise TypeError(
            f"the accumulator of {name!r} is not JSON-serialisable ({reason(exc)}); it lives "
            "in the changelog: keep lists, dicts, numbers and strings in it"
        ) from None


def snapshot(acc: Any) -> bytes | None:
    """What :func:`restore` needs to undo an in-place change to ``acc`` (None: it cannot
    change in place). JSON, as the changelog would keep it."""
    if acc.__class__ in _SCALARS:
        return None
    return dumps(acc)


def restore(undo: list[tuple[Any, int, bytes | None]]) -> None:
    """Put back the accumulators a failed event's ``add`` may have changed in place."""
    for holder, slot, saved in undo:
        if saved is not None:
            holder[slot] = _orjson.loads(saved)


def check_json(value: Any) -> None:
    """Raise ``TypeError`` when ``value`` (an aggregation's input) cannot be JSON."""
    if value.__class__ not in _SCALARS:
        dumps(value)


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON-shaped accumulator (as the changelog would restore it)."""
    if value.__class__ in _SCALARS:
        return value
    return _orjson.loads(dumps(value))


@dataclass(frozen=True)
class Guarantees:
    """What a topic's validator already ensures of every value it passes, so the loop need
    not check it again: fields present as strings, present as integers >= 0, and numbers
    when present."""

    strings: frozenset[str] = frozenset()
    ints: frozenset[str] = frozenset()
    numbers: frozenset[str] = frozenset()

    def without(self, fields: frozenset[str] | None) -> Guarantees:
        """What still holds after an operator that may change ``fields`` (None: any)."""
        if fields is None:
            return Guarantees()
        return Guarantees(self.strings - fields, self.ints - fields, self.numbers - fields)


NONE = Guarantees()


Barrier = nodes.MapBatch | nodes.Enrich | nodes.Process | nodes.JoinStream
BARRIERS = (nodes.MapBatch, nodes.Enrich, nodes.Process, nodes.JoinStream)


@dataclass(frozen=True)
class SourceSpec:
    """How a loop reading records finds each event's key and event time."""

    key: str | None
    timestamp: str | None
    key_from_message: bool
    where: str


@dataclass
class Stage:
    """A generated loop (``fn``), or a step the task runs between two loops (``op``): a
    batch call (``map_batch``, ``enrich``) or a ``.process``.

    A loop reads the chunk's records (``first``) or the items of the step before it, and
    ends (``end``) handing ``items`` on, in the segment's ``window``, or writing its output
    (``emit``). Its stream time (``clock``) is the task's (``main``: the window's, else the
    output's), its own (``own``: kept in ``task.stage_times``), or none. ``post`` marks the
    steps after the window, which its final records go through.
    """

    index: int
    fn: Callable[..., Any] | None = None
    op: Barrier | None = None
    dedupes: list[int] = field(default_factory=list)
    first: bool = False
    end: str = "items"
    clock: str | None = None
    post: bool = False
    site: Site | None = None
    process: int = -1  # which ProcessSpec a .process stage runs

    @property
    def terminal(self) -> bool:
        """The loop owning the task's main stream time (its idle advance closes windows)."""
        return self.clock == "main"


@dataclass
class ProcessSpec:
    """One ``.process`` of the segment: its changelog tag, sites and stage."""

    op: nodes.Process
    tag: bytes
    fingerprint: str
    stage: int
    site: Site
    timer_site: Site


@dataclass
class DedupeSpec:
    """One dedupe operator of the segment: its changelog tag, horizon and stage."""

    tag: bytes
    horizon_ms: int
    stage: int
    fingerprint: str


@dataclass
class Compiled:
    """A segment ready to run: its stages, the generated source, and what state it keeps.

    ``sites`` are its operators' user-code sites (failures counted and logged per operator);
    ``aggregate_site`` the aggregation's, which window closes report a failing ``result``
    to, with ``customs`` (name, slot) naming what a window's dead letter carries.
    """

    segment: Segment
    stages: list[Stage]
    source: str
    dedupes: list[DedupeSpec]
    layout: Layout | None
    record: Callable[..., dict[str, Any]] | None
    encode: Callable[[list[Any]], Any] | None
    decode: Callable[[Any], list[Any]] | None
    window_tag: bytes | None
    window_fingerprint: str | None
    sites: Sites
    size_ms: int = 0
    step_ms: int = 0
    gap_ms: int = 0
    grace_ms: int = 0
    session_first: Callable[..., Any] | None = None
    session_update: Callable[..., Any] | None = None
    session_merge: Callable[..., Any] | None = None
    session_copy: Callable[[list[Any]], list[Any]] | None = None
    spilled: bool = False
    aggregate_site: Site | None = None
    customs: list[tuple[str, int]] = field(default_factory=list)
    processes: list[ProcessSpec] = field(default_factory=list)
    # The first step of the chain the window's final records go through (None: none).
    post_start: int | None = None
    # With a join_stream: the loop reading the right side's records, and the join's stage.
    right: Stage | None = None
    join_stage: int | None = None
    # Sliding windows: their aggregations, which the window store computes (decision 0018).
    sliding: Aggregates | None = None

    @property
    def sessions(self) -> bool:
        """True for session windows."""
        return self.gap_ms > 0

    @property
    def windowed(self) -> bool:
        """True when the segment ends in a window."""
        return self.window_tag is not None


class _Code:
    """Lines of Python at an indentation depth."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def add(self, *lines: str) -> None:
        pad = "    " * self.depth
        self.lines.extend(pad + line for line in lines)


def compile_segment(
    segment: Segment,
    guarantees: Guarantees = NONE,
    *,
    spilled: bool = False,
    right_guarantees: Guarantees = NONE,
) -> Compiled:
    """Generate and ``exec`` the loops of ``segment``; ``guarantees`` come from its topic's
    validator (only a segment reading a declared topic has any), ``right_guarantees`` from
    a join's second topic's. ``spilled`` loops fetch what their dicts miss from the task's
    key-value store (STREAMS_STORE=rocksdb)."""
    compiler = _Compiler(segment, guarantees if segment.source is not None else NONE, spilled)
    right = segment.right
    if right is not None and right.source is not None:
        compiler.right_guarantees = right_guarantees
    return compiler.build()


def _identifier(text: str) -> str:
    """``app.py:12`` -> ``app_py_12``: a user function's name in the generated code."""
    return re.sub(r"\W", "_", text).strip("_") or "fn"


class _Compiler:
    def __init__(self, segment: Segment, guarantees: Guarantees, spilled: bool) -> None:
        self.segment = segment
        self.guarantees = guarantees
        self.spilled = spilled
        self.sites = Sites(segment.name)
        self.ns: dict[str, Any] = {
            "_dumps": dumps,
            "_reason": reason,
            "_canonical_key": canonical_key,
            "_not_dict": _not_dict,
            "_not_json": _not_json,
            "_bad_key": _bad_key,
            "_bad_timestamp": _bad_timestamp,
            "_check_acc": check_accumulator,
            "_check_json": check_json,
            "_snap": snapshot,
            "_restore": restore,
            "_NEVER": NEVER,
            "_USER_ERRORS": USER_ERRORS,
            **aggregations.NAMESPACE,
        }
        self.names = itertools.count()
        self.site_names: dict[int, str] = {}
        self.dedupes: list[DedupeSpec] = []
        self.layout: Layout | None = None
        window = segment.window
        if window is not None:
            assert segment.aggregate is not None
            self.layout = aggregations.layout(segment.aggregate.named)
            self.ns.update(self.layout.namespace)
        self.sources: list[str] = []
        self.right_guarantees = NONE

    # -- stages ------------------------------------------------------------------------

    def build(self) -> Compiled:
        segment = self.segment
        stages: list[Stage] = []
        tags = iter(store.tag for store in segment.stores)
        fingerprints = {store.tag: store.fingerprint for store in segment.stores}
        processes: list[ProcessSpec] = []
        guarantees = self.guarantees

        def loop(ops: list[nodes.Op], *, first: bool, end: str, post: bool) -> None:
            nonlocal guarantees
            stage = Stage(index=len(stages), first=first, end=end, post=post)
            for op in ops:
                if isinstance(op, nodes.Dedupe):
                    tag = next(tags)
                    stage.dedupes.append(len(self.dedupes))
                    self.dedupes.append(
                        DedupeSpec(tag, op.horizon_ms, stage.index, fingerprints[tag])
                    )
            if end == "window" or (end == "emit" and not post):
                stage.clock = "main"
            elif stage.dedupes or end == "emit":
                stage.clock = "own"
            stage.fn, guarantees = self._stage(stage, ops, guarantees)
            stages.append(stage)

        def barrier(op: Barrier, *, post: bool) -> None:
            nonlocal guarantees
            stage = Stage(index=len(stages), op=op, post=post)
            stage.site = self.sites.get(op.stage, op.where)
            if isinstance(op, nodes.JoinStream):
                join_stage.append(stage.index)
                next(tags)  # its store's (the segment's state knows it by JOIN_TAG)
            if isinstance(op, nodes.Process):
                tag = next(tags)
                stage.process = len(processes)
                processes.append(
                    ProcessSpec(
                        op,
                        tag,
                        fingerprints[tag],
                        stage.index,
                        stage.site,
                        self.sites.get("timer", op.where),
                    )
                )
            stages.append(stage)
            guarantees = (
                guarantees.without(frozenset({op.into})) if isinstance(op, nodes.Enrich) else NONE
            )

        join_stage: list[int] = []
        groups, barriers = _split(segment.ops)
        for number, ops in enumerate(groups):
            last = number == len(groups) - 1
            end = "items" if not last else ("window" if segment.window is not None else "emit")
            loop(ops, first=number == 0, end=end, post=False)
            if not last:
                barrier(barriers[number], post=False)
        post_start = None
        if segment.after_window:
            post_start = len(stages)
            guarantees = NONE
            groups, barriers = _split(segment.post)
            for number, ops in enumerate(groups):
                last = number == len(groups) - 1
                loop(ops, first=False, end="emit" if last else "items", post=True)
                if not last:
                    barrier(barriers[number], post=True)
        compiled = Compiled(
            spilled=self.spilled,
            segment=segment,
            stages=stages,
            source="",
            dedupes=self.dedupes,
            layout=self.layout,
            record=None,
            encode=None,
            decode=None,
            window_tag=None,
            window_fingerprint=None,
            sites=self.sites,
            processes=processes,
            post_start=post_start,
        )
        right = segment.right
        if right is not None:
            compiled.join_stage = join_stage[0]
            side = Stage(index=-1, first=True, end="items")
            source = SourceSpec(right.key, right.timestamp, right.key_from_message, right.where)
            side.fn, _ = self._stage(
                side, list(right.ops), self.right_guarantees, source=source, name="_right"
            )
            compiled.right = side
        if segment.window is not None:
            self._window_parts(compiled, fingerprints)
        compiled.source = "\n\n".join(self.sources)
        return compiled

    def _exec(self, name: str, code: _Code) -> Callable[..., Any]:
        """``exec`` one generated function, its source registered with ``linecache`` under
        a readable name, so tracebacks and debuggers through it show its lines."""
        source = "\n".join(code.lines) + "\n"
        self.sources.append(source.rstrip("\n"))
        filename = f"<streams pipeline {self.segment.name}: {name} #{next(_SOURCES)}>"
        try:
            code_object = compile(source, filename, "exec")
        except SyntaxError as exc:  # a bug of ours, never the user's: say where
            raise DeclarationError(
                f"generated code for {self.segment.name} is invalid: {exc}"
            ) from None
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(code_object, self.ns)
        fn: Callable[..., Any] = self.ns[name]
        return fn

    def _site(self, stage: str, where: str, *, logs: bool = True) -> str:
        """The name the generated code calls the :class:`Site` of ``stage`` at ``where`` by."""
        site = self.sites.get(stage, where, logs=logs)
        name = self.site_names.get(id(site))
        if name is None:
            name = self.site_names[id(site)] = f"_site_{_identifier(stage)}_{len(self.site_names)}"
            self.ns[name] = site
        return name

    def _stage(
        self,
        stage: Stage,
        ops: list[nodes.Op],
        guarantees: Guarantees,
        *,
        source: SourceSpec | None = None,
        name: str | None = None,
    ) -> tuple[Callable[..., Any], Guarantees]:
        segment = self.segment
        name = name or f"_stage{stage.index}"
        code = _Code()
        if stage.first:
            code.add(f"def {name}(task, recs, idxs, vals, out, now, seq):")
        else:
            code.add(f"def {name}(task, recs, items, out, now, seq):")
        code.depth = 1
        code.add("dead = out.dead", "dups = out.duplicates", "nacc = nfilt = nmiss = nmis = 0")
        if stage.clock == "main":
            code.add("st = task.clock.stream_time")
        elif stage.clock == "own":
            code.add(f"st = task.stage_times.get({stage.index}, _NEVER_TIME)")
            self.ns["_NEVER_TIME"] = -(2**63)
        for d in stage.dedupes:
            code.add(f"seen{d} = task.dedupes[{d}].seen", f"acc{d} = {{}}")
            if self.spilled:
                code.add(f"dfetch{d} = task.dedupes[{d}].fetch")
        joins = [op for op in ops if isinstance(op, nodes.Join)]
        for j, join in enumerate(joins):
            code.add(f"tbl{j} = task.tables[{join.table.name!r}]")
        if stage.end == "items":
            code.add("nxt = []")
        elif stage.end == "emit":
            code.add("outs = out.outputs")
        else:
            self._window_prologue(code)
        if stage.first:
            code.add("for i, v in zip(idxs, vals):")
            code.depth += 1
            self._source(code, guarantees, source or self._main_source())
        else:
            code.add("for i, v, k, t in items:")
            code.depth += 1
        accept: list[str] = []  # statements run when the event is accepted
        stage_dedupes = iter(stage.dedupes)
        join_index = 0
        for op in ops:
            if isinstance(op, nodes.Filter):
                self._filter(code, op)
            elif isinstance(op, nodes.Map):
                self._map(code, op)
                guarantees = NONE
            elif isinstance(op, nodes.FlatMap):
                self._flat_map(code, op)
                guarantees = NONE
            elif isinstance(op, nodes.Dedupe):
                d = next(stage_dedupes)
                self._dedupe(code, op, d, guarantees)
                present = "" if op.field in guarantees.strings else f"dk{d} is not None and "
                accept += [
                    f"if {present}(p{d} is None or t > p{d}):",
                    f"    seen{d}[dk{d}] = t",
                    f"    acc{d}[dk{d}] = t",
                ]
            elif isinstance(op, nodes.Join):
                self._join(code, op, join_index)
                join_index += 1
                guarantees = guarantees.without(frozenset({op.into}))
            else:
                raise AssertionError(f"not a stage operator: {op!r}")
        if stage.end == "items":
            code.add("nxt.append((i, v, k, t))", *accept)
            if stage.clock is not None:
                code.add("if t > st:", "    st = t")
        elif stage.end == "emit":
            self._emit_record(code, accept, first=stage.first)
        elif isinstance(segment.window.spec, Session):  # type: ignore[union-attr]
            self._session(code, accept, guarantees, first=stage.first)
        elif isinstance(segment.window.spec, Sliding):  # type: ignore[union-attr]
            self._sliding(code, accept, guarantees, first=stage.first)
        else:
            self._hopping(code, accept, guarantees, first=stage.first)
        code.depth = 1
        code.add(
            "out.accepted += nacc",
            "out.filtered += nfilt",
            "out.join_misses += nmiss",
            "out.key_mismatches += nmis",
        )
        for d in stage.dedupes:
            code.add(f"task.remember({d}, seq, acc{d}, st)")
        if stage.clock == "main":
            code.add("task.clock.stream_time = st")
        elif stage.clock == "own":
            code.add(f"task.stage_times[{stage.index}] = st")
        if stage.end == "window" and isinstance(segment.window.spec, Hopping):  # type: ignore[union-attr]
            code.add("task.windows_changed(touched, out)")
        if stage.end == "window" and isinstance(segment.window.spec, Sliding):  # type: ignore[union-attr]
            code.add("if st >= store.next_close:", "    task.close_windows(st, out)")
        if stage.end == "items":
            code.add("return nxt")
        return self._exec(name, code), guarantees

    # -- the source: key and event time ----------------------------------------------

    def _main_source(self) -> SourceSpec:
        segment = self.segment
        return SourceSpec(segment.key, segment.timestamp, segment.key_from_message, segment.where)

    def _source(self, code: _Code, guarantees: Guarantees, segment: SourceSpec) -> None:
        if segment.key_from_message:
            code.add(
                "rk = recs[i].key", "k = None if rk is None else rk.decode('utf-8', 'replace')"
            )
        elif segment.key is None:
            code.add("k = None")
        else:
            key = segment.key
            if key in guarantees.strings:
                code.add(f"k = v[{key!r}]")
            else:
                site = self._site("key", segment.where, logs=False)
                code.add(
                    f"k = v.get({key!r})",
                    "if k.__class__ is not str:",
                    f"    {site}.bad(dead, i, _bad_key({key!r}, k))",
                    "    continue",
                )
            # Producers should key messages by the key field; count those that do not. One
            # event in KEY_CHECK_EVERY is checked (its cost was a tenth of the loop's): a
            # producer keying by something else shows on nearly every event.
            code.add(
                f"if not i % {KEY_CHECK_EVERY} and recs[i].key != k.encode():",
                "    nmis += 1",
            )
        timestamp = segment.timestamp
        if segment.key_from_message or timestamp is None:
            code.add("t = recs[i].timestamp")
        elif timestamp in guarantees.ints:
            code.add(f"t = v[{timestamp!r}]")
        else:
            site = self._site("timestamp", segment.where, logs=False)
            code.add(
                f"t = v.get({timestamp!r})",
                "if t.__class__ is not int or t < 0:",
                "    if t.__class__ is float and t >= 0 and t.is_integer():",
                "        t = int(t)",
                "    else:",
                f"        {site}.bad(dead, i, _bad_timestamp({timestamp!r}, t))",
                "        continue",
            )

    # -- stateless operators -------------------------------------------------------------

    def _fn(self, fn: Any, op: nodes.Op) -> str:
        """Bind a user function in the generated code under its operator and line, e.g.
        ``map_at_app_py_12``, which is what tracebacks and debuggers show."""
        name = f"{_identifier(op.stage)}_at_{_identifier(op.where)}"
        if name in self.ns:
            name += f"_{next(self.names)}"
        self.ns[name] = fn
        return name

    def _filter(self, code: _Code, op: nodes.Filter) -> None:
        fn = self._fn(op.fn, op)
        site = self._site(op.stage, op.where)
        code.add(
            "try:",
            f"    if not {fn}(v):",
            "        nfilt += 1",
            "        continue",
            "except _USER_ERRORS as exc:",
            f"    {site}.fail(dead, i, exc)",
            "    continue",
        )

    def _map(self, code: _Code, op: nodes.Map) -> None:
        fn = self._fn(op.fn, op)
        site = self._site(op.stage, op.where)
        code.add(
            "try:",
            f"    v = {fn}(v)",
            "except _USER_ERRORS as exc:",
            f"    {site}.fail(dead, i, exc)",
            "    continue",
            "if v.__class__ is not dict and not isinstance(v, dict):",
            f"    {site}.bad(dead, i, _not_dict('map', v))",
            "    continue",
        )

    def _flat_map(self, code: _Code, op: nodes.FlatMap) -> None:
        fn = self._fn(op.fn, op)
        site = self._site(op.stage, op.where)
        children = f"c{next(self.names)}"
        code.add(
            "try:",
            f"    {children} = list({fn}(v))",
            "except _USER_ERRORS as exc:",
            f"    {site}.fail(dead, i, exc)",
            "    continue",
            f"for v in {children}:",
        )
        code.depth += 1
        code.add(
            "if v.__class__ is not dict and not isinstance(v, dict):",
            f"    {site}.bad(dead, i, _not_dict('flat_map', v))",
            "    continue",
        )

    def _keyed(self, var: str, site: str) -> list[str]:
        """Turn ``var`` (not None) into its key text; a value JSON cannot hold (a map put it
        there) dead-letters the event."""
        return [
            f"if {var}.__class__ is not str:",
            "    try:",
            f"        {var} = _canonical_key({var})",
            "    except _USER_ERRORS as exc:",
            f"        {site}.fail(dead, i, exc)",
            "        continue",
        ]

    def _dedupe(self, code: _Code, op: nodes.Dedupe, d: int, guarantees: Guarantees) -> None:
        horizon = op.horizon_ms
        lookup = [f"p{d} = seen{d}.get(dk{d})"]
        if self.spilled:
            lookup = [
                f"p{d} = seen{d}.get(dk{d}, _MISSING)",
                f"if p{d} is _MISSING:",
                f"    p{d} = dfetch{d}(dk{d})",
            ]
            self.ns["_MISSING"] = _MISSING
        if op.field in guarantees.strings:
            code.add(
                f"dk{d} = v[{op.field!r}]",
                *lookup,
                f"if p{d} is not None and p{d} + {horizon} > st:",
                "    dups.append(i)",
                "    continue",
            )
            return
        site = self._site(op.stage, op.where)
        code.add(
            f"dk{d} = v.get({op.field!r})",
            f"if dk{d} is None:",
            f"    p{d} = None",
            "else:",
            *("    " + line for line in self._keyed(f"dk{d}", site)),
            *("    " + line for line in lookup),
            f"    if p{d} is not None and p{d} + {horizon} > st:",
            "        dups.append(i)",
            "        continue",
        )

    def _join(self, code: _Code, op: nodes.Join, j: int) -> None:
        site = self._site(op.stage, op.where)
        code.add(
            f"jk = v.get({op.on!r})",
            "if jk is not None:",
            *("    " + line for line in self._keyed("jk", site)),
            f"jv = None if jk is None else tbl{j}.get(jk)",
            "if jv is None:",
            "    nmiss += 1",
        )
        if op.how == "inner":
            code.add("    continue")
        code.add(f"v[{op.into!r}] = jv")

    # -- terminals -----------------------------------------------------------------------

    def _emit_record(self, code: _Code, accept: list[str], *, first: bool) -> None:
        """A stateless end: the value to the output (with the stream's key) or, after
        ``group_by``, to the repartition topic with its new key and event time."""
        segment = self.segment
        group_by = segment.group_by
        end: nodes.Op = group_by if group_by is not None else segment.sink  # type: ignore[assignment]
        site = self._site(end.stage, end.where)
        if group_by is not None and group_by.keep_key:
            code.add("nk = k")
            key, timestamp = "nk.encode()", "t"
        elif group_by is not None:
            if isinstance(group_by.by, str):
                code.add(f"nk = v.get({group_by.by!r})")
                missing = f"{group_by.by}: the group_by field is missing or null"
            else:
                fn = self._fn(group_by.by, group_by)
                code.add(
                    "try:",
                    f"    nk = {fn}(v)",
                    "except _USER_ERRORS as exc:",
                    f"    {site}.fail(dead, i, exc)",
                    "    continue",
                )
                missing = "the group_by function returned None"
            code.add(
                "if nk is None:",
                f"    {site}.bad(dead, i, {missing!r})",
                "    continue",
                *self._keyed("nk", site),
            )
            key, timestamp = "nk.encode()", "t"
        elif segment.key is not None and not segment.key_from_message:
            key, timestamp = "k.encode()", "None"
        elif first:
            key, timestamp = "recs[i].key", "None"
        else:
            # The record's own key bytes; an event no record made (a window's final, a
            # timer's value) has its key as text.
            key, timestamp = (
                "(recs[i].key if i >= 0 else None if k is None else k.encode())",
                "None",
            )
        code.add(
            "try:",
            "    vb = _dumps(v)",
            "except _USER_ERRORS as exc:",
            f"    {site}.bad(dead, i, _not_json(exc))",
            "    continue",
            f"outs.append(({key}, vb, {timestamp}))",
            *accept,
            "nacc += 1",
            "if t > st:",
            "    st = t",
        )

    def _window_prologue(self, code: _Code) -> None:
        code.add("late = out.late", "store = task.windows")
        assert self.segment.window is not None
        if isinstance(self.segment.window.spec, Session):
            code.add(
                "sfirst = task.session_first",
                "supdate = task.session_update",
                "smerge = task.session_merge",
                "scopy = task.session_copy",
            )
            return
        if isinstance(self.segment.window.spec, Sliding):
            assert self.layout is not None
            code.add("sadd = store.add_custom" if self.layout.has_custom else "sadd = store.add")
            return
        code.add(
            "by_start = store.by_start",
            "next_close = store.next_close",
            "touched = {}",
            "lanes = {}",
            "cached_start = _NEVER",
            "users = changed = None",
        )

    def _aggregate_site(self) -> str:
        aggregate = self.segment.aggregate
        assert aggregate is not None
        return self._site(aggregate.stage, aggregate.where)

    def _inputs(
        self, code: _Code, guarantees: Guarantees, *, first: bool, offsets: bool = True
    ) -> None:
        assert self.layout is not None
        site = self._aggregate_site()
        for var, field_name, kind in self.layout.inputs:
            checked = kind == aggregations.NUMBER and field_name in guarantees.numbers
            code.add(*aggregations.input_code(var, field_name, kind, checked, site))
        if offsets and self.layout.uses_offset:
            # An event no record made (a timer's value) comes after every record it follows.
            code.add("o = recs[i].offset" if first else "o = recs[i].offset if i >= 0 else _LAST")
            self.ns["_LAST"] = 2**62

    def _late(self, *, first: bool) -> list[str]:
        """A late event goes unchanged to the late topic: its record, or (an event no record
        made) its key and value."""
        if first:
            return ["late[i] = None", "continue"]
        return [
            "if i >= 0:",
            "    late[i] = None",
            "else:",
            "    out.late_derived.append((k, v))",
            "continue",
        ]

    def _custom_phase(self, code: _Code, step: int, tumbling: bool) -> None:
        """Custom aggregators first, for every window of the event, before anything changes:
        their new accumulators (checked to be JSON) go to ``cvals``; if ``initial``/``add``
        raises in any window, the in-place changes already made are undone and the event is
        a dead letter that changed no window (decision 0014)."""
        assert self.layout is not None
        customs = [slots for slots in self.layout.aggregations if slots.custom is not None]
        site = self._aggregate_site()
        names = [f"cx{j}" for j in range(len(customs))]
        fresh: list[str] = []
        held: list[str] = []
        for j, slots in enumerate(customs):
            index = slots.custom_index
            b = slots.base
            fresh += [
                f"{names[j]} = _cadd{index}(_cinit{index}(), v)",
                f"_check_acc({names[j]}, {slots.name!r})",
            ]
            held += [
                f"x = a[{b}]",
                f"undo.append((a, {b}, _snap(x)))",
                f"{names[j]} = _cadd{index}(x, v)",
                f"_check_acc({names[j]}, {slots.name!r})",
            ]
        lookup = [
            "u = by_start.get(s)",
            "a = None if u is None else u.get(k)",
        ]
        if self.spilled:
            lookup += ["if a is None and u is not None:", "    a = store.fetch(s, k)"]
        body = [
            *lookup,
            "if a is None:",
            *("    " + line for line in fresh),
            "else:",
            *("    " + line for line in held),
            f"cvals.append(({', '.join(names)},))",
        ]
        code.add("cvals = []", "undo = []", "try:")
        if tumbling:
            code.add("    s = start", *("    " + line for line in body))
        else:
            code.add(
                "    s = start",
                "    while s > floor:",
                *("        " + line for line in body),
                f"        s -= {step}",
            )
        code.add(
            "except _USER_ERRORS as exc:",
            "    _restore(undo)",
            f"    {site}.fail(dead, i, exc)",
            "    continue",
        )

    def _hopping(
        self, code: _Code, accept: list[str], guarantees: Guarantees, *, first: bool
    ) -> None:
        window = self.segment.window
        assert window is not None
        assert isinstance(window.spec, Hopping)
        assert self.layout is not None
        size, step = window.spec.size_ms, window.spec.step_ms
        reach = size + window.grace_ms
        lay = self.layout
        custom = lay.has_custom
        # With custom aggregators their accumulators were computed first (_custom_phase):
        # the walk only stores them, so nothing in it can raise.
        initial = ", ".join(
            f"cv[{slots.custom_slot}]" if custom and slots.custom is not None else expr
            for slots in lay.aggregations
            for expr in slots.first
        )
        update = _merge_guards(
            [
                [f"a[{slots.base}] = cv[{slots.custom_slot}]"]
                if slots.custom is not None
                else slots.update
                for slots in _custom_first(lay)
            ]
        )
        # Hopping windows give a key many open windows made by different events: interning
        # lets them share one copy of the key string (tumbling gives one or two: not worth it).
        key = "_intern(k)" if step < size else "k"
        self.ns["_intern"] = __import__("sys").intern
        code.add(
            f"start = t - t % {step}",
            f"if start + {reach} <= st:",
            *("    " + line for line in self._late(first=first)),
        )
        self._inputs(code, guarantees, first=first)
        tumbling = step == size
        if not tumbling:
            code.add(
                f"floor = t - {size}",
                f"if st - {reach} > floor:",
                f"    floor = st - {reach}",
            )
        if custom:
            self._custom_phase(code, step, tumbling)
            code.add("cvi = 0")
        walk = [
            "while start > floor:",
            "    if start != cached_start:",
            "        cached_start = start",
            "        lane = lanes.get(start)",
            "        if lane is None:",
            "            users = by_start.get(start)",
            "            if users is None:",
            "                users = store.open(start)",
            "                next_close = store.next_close",
            "            fresh = {}",
            "            touched[start] = fresh",
            "            lanes[start] = lane = (users, fresh)",
            "        users, changed = lane",
            *(["    cv = cvals[cvi]", "    cvi += 1"] if custom else []),
            "    a = users.get(k)",
            *(["    if a is None:", "        a = store.fetch(start, k)"] if self.spilled else []),
            "    if a is None:",
            f"        users[{key}] = a = [{initial}]",
            "    else:",
            *("        " + line for line in update),
            "    changed[k] = a",
            f"    start -= {step}",
        ]
        if tumbling:
            # One window per event (the late check above keeps it open): the walk's body once.
            walk = [line[4:] for line in walk[1:-1]]
        code.add(*walk)
        code.add(
            *accept,
            "nacc += 1",
            "if t > st:",
            "    st = t",
            "    if st >= next_close:",
            "        task.close_windows(st, out)",
            "        next_close = store.next_close",
        )

    def _session(
        self, code: _Code, accept: list[str], guarantees: Guarantees, *, first: bool
    ) -> None:
        window = self.segment.window
        assert window is not None
        assert self.layout is not None
        variables = [var for var, _, _ in self.layout.inputs]
        args = ", ".join(["v", "t", "o", *variables])
        site = self._aggregate_site()
        code.add(
            f"if t + {window.grace_ms} < st:", *("    " + line for line in self._late(first=first))
        )
        self._inputs(code, guarantees, first=first)
        if not self.layout.uses_offset:
            code.add("o = 0")
        add = f"store.add(k, t, lambda: sfirst({args}), lambda a: supdate(a, {args}), smerge"
        add += ", scopy)" if self.layout.has_custom else ")"
        if self.layout.has_custom:
            code.add(
                "try:",
                f"    {add}",
                "except _USER_ERRORS as exc:",
                f"    {site}.fail(dead, i, exc)",
                "    continue",
            )
        else:
            code.add(add)
        code.add(
            *accept,
            "nacc += 1",
            "if t > st:",
            "    st = t",
            "    if st >= store.next_close:",
            "        task.close_windows(st, out)",
        )

    def _sliding(
        self, code: _Code, accept: list[str], guarantees: Guarantees, *, first: bool
    ) -> None:
        """An event is late when its own window (ending at ``t + 1``) is closed; otherwise
        the store keeps it with its inputs (decision 0018). Arrival order is the store's
        order: no offsets."""
        window = self.segment.window
        assert window is not None
        assert self.layout is not None
        code.add(
            f"if t + {1 + window.grace_ms} <= st:",
            *("    " + line for line in self._late(first=first)),
        )
        self._inputs(code, guarantees, first=first, offsets=False)
        variables = [var for var, _, _ in self.layout.inputs]
        inputs = f"({', '.join(variables)}{',' if len(variables) == 1 else ''})"
        if self.layout.has_custom:
            code.add(
                "try:",
                f"    sadd(k, t, {inputs}, v)",
                "except _USER_ERRORS as exc:",
                f"    {self._aggregate_site()}.fail(dead, i, exc)",
                "    continue",
            )
        else:
            code.add(f"sadd(k, t, {inputs})")
        # Windows close at the end of the chunk (see _stage): no event of the chunk that is
        # not late can reach a window its stream time closes, so when they close within the
        # chunk changes nothing but the cost.
        code.add(*accept, "nacc += 1", "if t > st:", "    st = t")

    # -- window parts the task uses ------------------------------------------------------

    def _window_parts(self, compiled: Compiled, fingerprints: dict[bytes, str]) -> None:
        window = self.segment.window
        lay = self.layout
        assert window is not None
        assert window.spec is not None
        assert lay is not None
        sliding = isinstance(window.spec, Sliding)

        def result(slots: aggregations.Slots) -> str:
            # A sliding window's store hands over its built-ins' values, computed already.
            return f"a[{slots.base}]" if sliding and slots.custom is None else slots.result

        fields = ", ".join([f"{slots.name!r}: {result(slots)}" for slots in lay.aggregations])
        code = _Code()
        code.add(
            "def _record(k, s, e, a, final):",
            f"    return {{'key': k, 'window_start': s, 'window_end': e, {fields}, "
            "'final': final}",
        )
        compiled.record = self._exec("_record", code)
        compiled.encode = aggregations.encoder(lay)
        compiled.decode = aggregations.decoder(lay)
        compiled.grace_ms = window.grace_ms
        compiled.aggregate_site = self.sites.get(
            self.segment.aggregate.stage,  # type: ignore[union-attr]
            self.segment.aggregate.where,  # type: ignore[union-attr]
        )
        compiled.customs = [
            (slots.name, slots.base) for slots in lay.aggregations if slots.custom is not None
        ]
        tag = window_tag(window.spec)
        compiled.window_tag = tag
        compiled.window_fingerprint = fingerprints[tag]
        if isinstance(window.spec, Session):
            self._session_parts(compiled, window.spec.gap_ms, lay)
        elif isinstance(window.spec, Sliding):
            compiled.size_ms = window.spec.size_ms
            compiled.sliding = self._sliding_parts(window.spec.size_ms, lay)
        else:
            compiled.size_ms = window.spec.size_ms
            compiled.step_ms = window.spec.step_ms

    def _sliding_parts(self, size_ms: int, lay: Layout) -> Aggregates:
        """The sliding window's aggregations, its sweep generated (:mod:`.sweeps`)."""
        aggregate = self.segment.aggregate
        assert aggregate is not None
        found = sweeps.aggregates(aggregate.named, lay)
        self.ns.update(sweeps.NAMESPACE)
        new, sweep, close = sweeps.sources(found, size_ms)
        for name, lines in (("_new", new), ("_sweep", sweep), ("_close", close)):
            code = _Code()
            code.add(*lines)
            setattr(found, name[1:], self._exec(name, code))
        return found

    def _session_parts(self, compiled: Compiled, gap_ms: int, lay: Layout) -> None:
        compiled.gap_ms = gap_ms
        variables = ", ".join(["v", "t", "o", *(var for var, _, _ in lay.inputs)])

        def checked(slots: aggregations.Slots, lines: list[str]) -> list[str]:
            # A custom accumulator is checked to be JSON right after each call that made it.
            if slots.custom is None:
                return lines
            return [*lines, f"_check_acc(a[{slots.base}], {slots.name!r})"]

        customs = [slots for slots in lay.aggregations if slots.custom is not None]
        first = ", ".join(
            f"c{slots.custom_slot}" if slots.custom is not None else expr
            for slots in lay.aggregations
            for expr in slots.first
        )
        code = _Code()
        code.add(f"def _sfirst({variables}):")
        for slots in customs:
            code.add(
                f"    c{slots.custom_slot} = {slots.first[0]}",
                f"    _check_acc(c{slots.custom_slot}, {slots.name!r})",
            )
        code.add(f"    return [{first}]")
        compiled.session_first = self._exec("_sfirst", code)
        code = _Code()
        code.add(
            f"def _supdate(a, {variables}):",
            *(
                "    " + line
                for line in _merge_guards(
                    [checked(slots, slots.update) for slots in _custom_first(lay)]
                )
            ),
            "    return a",
        )
        compiled.session_update = self._exec("_supdate", code)
        code = _Code()
        code.add(
            "def _smerge(a, c):",
            *("    " + line for slots in lay.aggregations for line in checked(slots, slots.merge)),
            "    return a",
        )
        compiled.session_merge = self._exec("_smerge", code)
        if lay.has_custom:
            # Sessions with custom aggregators change copies, kept only if every call
            # succeeds (decision 0014); sets of CountDistinct are copied as sets.
            copies = ", ".join(
                (
                    f"set(a[{slots.base}])"
                    if slots.holds_set
                    else f"_copy_json(a[{slots.base}])"
                    if slots.custom is not None
                    else ", ".join(f"a[{slots.base + n}]" for n in range(slots.size))
                )
                for slots in lay.aggregations
            )
            self.ns["_copy_json"] = copy_json
            code = _Code()
            code.add("def _scopy(a):", f"    return [{copies}]")
            compiled.session_copy = self._exec("_scopy", code)


def _split(ops: tuple[nodes.Op, ...]) -> tuple[list[list[nodes.Op]], list[Barrier]]:
    """Operators in groups a generated loop runs, and the steps between them."""
    groups: list[list[nodes.Op]] = [[]]
    barriers: list[Barrier] = []
    for op in ops:
        if isinstance(op, BARRIERS):
            barriers.append(op)
            groups.append([])
        else:
            groups[-1].append(op)
    return groups, barriers


def _merge_guards(blocks: list[list[str]]) -> list[str]:
    """Concatenate update blocks, sharing one ``if x is not None:`` between consecutive
    blocks guarded by the same test (Sum, Min and Max of one field read one input)."""
    lines: list[str] = []
    guard = None
    for block in blocks:
        if (
            block
            and block[0].startswith("if ")
            and block[0].endswith(" is not None:")
            and block[0] == guard
        ):
            lines.extend(block[1:])
            continue
        lines.extend(block)
        guard = block[0] if block and block[0].endswith(" is not None:") else None
    return lines


def _custom_first(lay: Layout) -> list[aggregations.Slots]:
    """Aggregations in update order: a custom aggregator's add may raise, so it runs before
    the built-ins change anything."""
    return sorted(lay.aggregations, key=lambda slots: slots.custom is None)
