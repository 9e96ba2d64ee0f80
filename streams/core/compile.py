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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams.core import aggregations
from streams.core.aggregations import Layout
from streams.core.jsonbytes import dumps
from streams.core.windows import NEVER
from streams.errors import DeclarationError
from streams.topology import nodes
from streams.topology.plan import Segment
from streams.topology.windows import Hopping, Session

_MAX_REASON = 1_000
# The generated loops check the message key of one event in this many (see _key).
KEY_CHECK_EVERY = 16
_MISSING = object()


def reason(exc: BaseException) -> str:
    """One line for a user function's exception: its type and message."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def canonical_key(value: Any) -> str:
    """A key for a value that is not a string: its JSON text (``5`` -> ``"5"``)."""
    return aggregations.orjson.dumps(value, option=aggregations.orjson.OPT_SORT_KEYS).decode()


def _not_dict(stage: str, value: Any) -> str:
    return f"{stage} must return a dict, got {type(value).__name__}"


def _not_json(exc: BaseException) -> str:
    return f"value is not JSON-serialisable ({reason(exc)})"


def _bad_key(field_name: str, value: Any) -> str:
    from streams.validation import _describe

    if value is None:
        return f"{field_name}: the key field is missing or null"
    return f"{field_name}: the key field must be a string (got {_describe(value)})"


def _bad_timestamp(field_name: str, value: Any) -> str:
    from streams.validation import _describe

    if value is None:
        return f"{field_name}: the timestamp field is missing or null"
    return f"{field_name}: the timestamp must be an integer >= 0, epoch ms (got {_describe(value)})"


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


@dataclass
class Stage:
    """A generated loop (``fn``), or a batch operator the runtime runs between two loops."""

    index: int
    fn: Callable[..., Any] | None = None
    op: nodes.MapBatch | nodes.Enrich | None = None
    dedupes: list[int] = field(default_factory=list)
    terminal: bool = False

    @property
    def has_clock(self) -> bool:
        """A non-terminal stage with a dedupe keeps its own stream time."""
        return not self.terminal and bool(self.dedupes)


@dataclass
class DedupeSpec:
    """One dedupe operator of the segment: its changelog tag, horizon and stage."""

    tag: bytes
    horizon_ms: int
    stage: int
    fingerprint: str


@dataclass
class Compiled:
    """A segment ready to run: its stages, the generated source, and what state it keeps."""

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
    size_ms: int = 0
    step_ms: int = 0
    gap_ms: int = 0
    grace_ms: int = 0
    session_first: Callable[..., Any] | None = None
    session_update: Callable[..., Any] | None = None
    session_merge: Callable[..., Any] | None = None
    spilled: bool = False

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
    segment: Segment, guarantees: Guarantees = NONE, *, spilled: bool = False
) -> Compiled:
    """Generate and ``exec`` the loops of ``segment``; ``guarantees`` come from its topic's
    validator (only the first segment reads the declared topic). ``spilled`` loops fetch
    what their dicts miss from the task's key-value store (STREAMS_STORE=rocksdb)."""
    return _Compiler(segment, guarantees if segment.index == 0 else NONE, spilled).build()


class _Compiler:
    def __init__(self, segment: Segment, guarantees: Guarantees, spilled: bool) -> None:
        self.segment = segment
        self.guarantees = guarantees
        self.spilled = spilled
        self.ns: dict[str, Any] = {
            "_dumps": dumps,
            "_reason": reason,
            "_canonical_key": canonical_key,
            "_not_dict": _not_dict,
            "_not_json": _not_json,
            "_bad_key": _bad_key,
            "_bad_timestamp": _bad_timestamp,
            "_NEVER": NEVER,
            **aggregations.NAMESPACE,
        }
        self.names = itertools.count()
        self.dedupes: list[DedupeSpec] = []
        self.layout: Layout | None = None
        window = segment.window
        if window is not None:
            assert segment.aggregate is not None
            self.layout = aggregations.layout(segment.aggregate.named)
            self.ns.update(self.layout.namespace)
        self.sources: list[str] = []

    # -- stages ------------------------------------------------------------------------

    def build(self) -> Compiled:
        segment = self.segment
        groups: list[list[nodes.Op]] = [[]]
        batch_ops: list[nodes.MapBatch | nodes.Enrich] = []
        for op in segment.ops:
            if isinstance(op, nodes.MapBatch | nodes.Enrich):
                batch_ops.append(op)
                groups.append([])
            else:
                groups[-1].append(op)
        stages: list[Stage] = []
        dedupe_tags = iter(
            store.tag for store in segment.stores if isinstance(store.op, nodes.Dedupe)
        )
        fingerprints = {store.tag: store.fingerprint for store in segment.stores}
        guarantees = self.guarantees
        for number, ops in enumerate(groups):
            terminal = number == len(groups) - 1
            stage = Stage(index=len(stages), terminal=terminal)
            for op in ops:
                if isinstance(op, nodes.Dedupe):
                    tag = next(dedupe_tags)
                    stage.dedupes.append(len(self.dedupes))
                    self.dedupes.append(
                        DedupeSpec(tag, op.horizon_ms, stage.index, fingerprints[tag])
                    )
            stage.fn, guarantees = self._stage(stage, ops, guarantees, first=number == 0)
            stages.append(stage)
            if not terminal:
                batch = batch_ops[number]
                stages.append(Stage(index=len(stages), op=batch))
                guarantees = guarantees.without(
                    None if isinstance(batch, nodes.MapBatch) else frozenset({batch.into})
                )
        compiled = Compiled(
            spilled=self.spilled,
            segment=segment,
            stages=stages,
            source="\n\n".join(self.sources),
            dedupes=self.dedupes,
            layout=self.layout,
            record=None,
            encode=None,
            decode=None,
            window_tag=None,
            window_fingerprint=None,
        )
        if segment.window is not None:
            self._window_parts(compiled, fingerprints)
        return compiled

    def _exec(self, name: str, code: _Code) -> Callable[..., Any]:
        source = "\n".join(code.lines)
        self.sources.append(source)
        try:
            exec(
                compile(source, f"<streams pipeline {self.segment.name}: {name}>", "exec"), self.ns
            )
        except SyntaxError as exc:  # a bug of ours, never the user's: say where
            raise DeclarationError(
                f"generated code for {self.segment.name} is invalid: {exc}"
            ) from None
        fn: Callable[..., Any] = self.ns[name]
        return fn

    def _stage(
        self, stage: Stage, ops: list[nodes.Op], guarantees: Guarantees, *, first: bool
    ) -> tuple[Callable[..., Any], Guarantees]:
        segment = self.segment
        name = f"_stage{stage.index}"
        code = _Code()
        if first:
            code.add(f"def {name}(task, recs, idxs, vals, out, now, seq):")
        else:
            code.add(f"def {name}(task, recs, items, out, now, seq):")
        code.depth = 1
        code.add("dead = out.dead", "dups = out.duplicates", "nacc = nfilt = nmiss = nmis = 0")
        clock = "st" if stage.terminal else "sst"
        if stage.terminal:
            code.add("st = task.clock.stream_time")
        elif stage.has_clock:
            code.add(f"sst = task.stage_times.get({stage.index}, _NEVER_TIME)")
            self.ns["_NEVER_TIME"] = -(2**63)
        for d in stage.dedupes:
            code.add(f"seen{d} = task.dedupes[{d}].seen", f"acc{d} = {{}}")
            if self.spilled:
                code.add(f"dfetch{d} = task.dedupes[{d}].fetch")
        joins = [op for op in ops if isinstance(op, nodes.Join)]
        for j, join in enumerate(joins):
            code.add(f"tbl{j} = task.tables[{join.table.name!r}]")
        if not stage.terminal:
            code.add("nxt = []")
        elif segment.window is None:
            code.add("outs = out.outputs")
        else:
            self._window_prologue(code)
        if first:
            code.add("for i, v in zip(idxs, vals):")
            code.depth += 1
            self._source(code, guarantees)
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
                self._dedupe(code, op, d, clock, guarantees)
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
        if not stage.terminal:
            code.add("nxt.append((i, v, k, t))", *accept)
            if stage.has_clock:
                code.add("if t > sst:", "    sst = t")
        elif segment.window is None:
            self._emit_record(code, accept)
        elif isinstance(segment.window.spec, Session):
            self._session(code, accept, guarantees)
        else:
            self._hopping(code, accept, guarantees)
        code.depth = 1
        code.add(
            "out.accepted += nacc",
            "out.filtered += nfilt",
            "out.join_misses += nmiss",
            "out.key_mismatches += nmis",
        )
        for d in stage.dedupes:
            code.add(f"task.remember({d}, seq, acc{d}, {clock})")
        if stage.terminal:
            code.add("task.clock.stream_time = st")
            if segment.window is not None and not isinstance(segment.window.spec, Session):
                code.add("task.windows_changed(touched, out)")
        else:
            if stage.has_clock:
                code.add(f"task.stage_times[{stage.index}] = sst")
            code.add("return nxt")
        return self._exec(name, code), guarantees

    # -- the source: key and event time ----------------------------------------------

    def _source(self, code: _Code, guarantees: Guarantees) -> None:
        segment = self.segment
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
                code.add(
                    f"k = v.get({key!r})",
                    "if k.__class__ is not str:",
                    f"    dead.setdefault(i, ('key', _bad_key({key!r}, k)))",
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
            code.add(
                f"t = v.get({timestamp!r})",
                "if t.__class__ is not int or t < 0:",
                "    if t.__class__ is float and t >= 0 and t.is_integer():",
                "        t = int(t)",
                "    else:",
                f"        dead.setdefault(i, ('timestamp', _bad_timestamp({timestamp!r}, t)))",
                "        continue",
            )

    # -- stateless operators -------------------------------------------------------------

    def _fn(self, fn: Any) -> str:
        name = f"_f{next(self.names)}"
        self.ns[name] = fn
        return name

    def _filter(self, code: _Code, op: nodes.Filter) -> None:
        fn = self._fn(op.fn)
        code.add(
            "try:",
            f"    if not {fn}(v):",
            "        nfilt += 1",
            "        continue",
            "except Exception as exc:",
            "    dead.setdefault(i, ('filter', _reason(exc)))",
            "    continue",
        )

    def _map(self, code: _Code, op: nodes.Map) -> None:
        fn = self._fn(op.fn)
        code.add(
            "try:",
            f"    v = {fn}(v)",
            "except Exception as exc:",
            "    dead.setdefault(i, ('map', _reason(exc)))",
            "    continue",
            "if v.__class__ is not dict and not isinstance(v, dict):",
            "    dead.setdefault(i, ('map', _not_dict('map', v)))",
            "    continue",
        )

    def _flat_map(self, code: _Code, op: nodes.FlatMap) -> None:
        fn = self._fn(op.fn)
        children = f"c{next(self.names)}"
        code.add(
            "try:",
            f"    {children} = list({fn}(v))",
            "except Exception as exc:",
            "    dead.setdefault(i, ('flat_map', _reason(exc)))",
            "    continue",
            f"for v in {children}:",
        )
        code.depth += 1
        code.add(
            "if v.__class__ is not dict and not isinstance(v, dict):",
            "    dead.setdefault(i, ('flat_map', _not_dict('flat_map', v)))",
            "    continue",
        )

    def _dedupe(
        self, code: _Code, op: nodes.Dedupe, d: int, clock: str, guarantees: Guarantees
    ) -> None:
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
                f"if p{d} is not None and p{d} + {horizon} > {clock}:",
                "    dups.append(i)",
                "    continue",
            )
            return
        code.add(
            f"dk{d} = v.get({op.field!r})",
            f"if dk{d} is None:",
            f"    p{d} = None",
            "else:",
            f"    if dk{d}.__class__ is not str:",
            f"        dk{d} = _canonical_key(dk{d})",
            *("    " + line for line in lookup),
            f"    if p{d} is not None and p{d} + {horizon} > {clock}:",
            "        dups.append(i)",
            "        continue",
        )

    def _join(self, code: _Code, op: nodes.Join, j: int) -> None:
        code.add(
            f"jk = v.get({op.on!r})",
            "if jk is not None and jk.__class__ is not str:",
            "    jk = _canonical_key(jk)",
            f"jv = None if jk is None else tbl{j}.get(jk)",
            "if jv is None:",
            "    nmiss += 1",
        )
        if op.how == "inner":
            code.add("    continue")
        code.add(f"v[{op.into!r}] = jv")

    # -- terminals -----------------------------------------------------------------------

    def _emit_record(self, code: _Code, accept: list[str]) -> None:
        """A stateless end: the value to the output (with the stream's key) or, after
        ``group_by``, to the repartition topic with its new key and event time."""
        segment = self.segment
        group_by = segment.group_by
        stage = "to" if group_by is None else "group_by"
        if group_by is not None:
            if isinstance(group_by.by, str):
                code.add(f"nk = v.get({group_by.by!r})")
                missing = f"{group_by.by}: the group_by field is missing or null"
            else:
                fn = self._fn(group_by.by)
                code.add(
                    "try:",
                    f"    nk = {fn}(v)",
                    "except Exception as exc:",
                    "    dead.setdefault(i, ('group_by', _reason(exc)))",
                    "    continue",
                )
                missing = "the group_by function returned None"
            code.add(
                "if nk is None:",
                f"    dead.setdefault(i, ('group_by', {missing!r}))",
                "    continue",
                "if nk.__class__ is not str:",
                "    nk = _canonical_key(nk)",
            )
            key, timestamp = "nk.encode()", "t"
        elif segment.key is not None and not segment.key_from_message:
            key, timestamp = "k.encode()", "None"
        else:
            key, timestamp = "recs[i].key", "None"
        code.add(
            "try:",
            "    vb = _dumps(v)",
            "except Exception as exc:",
            f"    dead.setdefault(i, ({stage!r}, _not_json(exc)))",
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
            )
            return
        code.add(
            "by_start = store.by_start",
            "next_close = store.next_close",
            "touched = {}",
            "lanes = {}",
            "cached_start = _NEVER",
            "users = changed = None",
        )

    def _inputs(self, code: _Code, guarantees: Guarantees) -> None:
        assert self.layout is not None
        for var, field_name, kind in self.layout.inputs:
            checked = kind == aggregations.NUMBER and field_name in guarantees.numbers
            code.add(*aggregations.input_code(var, field_name, kind, checked))
        if self.layout.uses_offset:
            code.add("o = recs[i].offset")

    def _hopping(self, code: _Code, accept: list[str], guarantees: Guarantees) -> None:
        window = self.segment.window
        assert window is not None
        assert isinstance(window.spec, Hopping)
        assert self.layout is not None
        size, step = window.spec.size_ms, window.spec.step_ms
        reach = size + window.grace_ms
        lay = self.layout
        first = ", ".join(expr for slots in lay.aggregations for expr in slots.first)
        update = _merge_guards([slots.update for slots in _custom_first(lay)])
        # Hopping windows give a key many open windows made by different events: interning
        # lets them share one copy of the key string (tumbling gives one or two: not worth it).
        key = "_intern(k)" if step < size else "k"
        self.ns["_intern"] = __import__("sys").intern
        code.add(
            f"start = t - t % {step}",
            f"if start + {reach} <= st:",
            "    late[i] = None",
            "    continue",
        )
        self._inputs(code, guarantees)
        tumbling = step == size
        if not tumbling:
            code.add(
                f"floor = t - {size}",
                f"if st - {reach} > floor:",
                f"    floor = st - {reach}",
            )
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
            "    a = users.get(k)",
            *(["    if a is None:", "        a = store.fetch(start, k)"] if self.spilled else []),
            "    if a is None:",
            f"        users[{key}] = a = [{first}]",
            "    else:",
            *("        " + line for line in update),
            "    changed[k] = a",
            f"    start -= {step}",
        ]
        if tumbling:
            # One window per event (the late check above keeps it open): the walk's body once.
            walk = [line[4:] for line in walk[1:-1]]
        if lay.has_custom:
            code.add(
                "try:",
                *("    " + line for line in walk),
                "except Exception as exc:",
                "    dead.setdefault(i, ('aggregate', _reason(exc)))",
                "    continue",
            )
        else:
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

    def _session(self, code: _Code, accept: list[str], guarantees: Guarantees) -> None:
        window = self.segment.window
        assert window is not None
        assert self.layout is not None
        variables = [var for var, _, _ in self.layout.inputs]
        args = ", ".join(["v", "t", "o", *variables])
        code.add(f"if t + {window.grace_ms} < st:", "    late[i] = None", "    continue")
        self._inputs(code, guarantees)
        if not self.layout.uses_offset:
            code.add("o = 0")
        code.add(
            "try:",
            f"    store.add(k, t, lambda: sfirst({args}), lambda a: supdate(a, {args}), smerge)",
            "except Exception as exc:",
            "    dead.setdefault(i, ('aggregate', _reason(exc)))",
            "    continue",
            *accept,
            "nacc += 1",
            "if t > st:",
            "    st = t",
            "    if st >= store.next_close:",
            "        task.close_windows(st, out)",
        )

    # -- window parts the task uses ------------------------------------------------------

    def _window_parts(self, compiled: Compiled, fingerprints: dict[bytes, str]) -> None:
        window = self.segment.window
        lay = self.layout
        assert window is not None
        assert window.spec is not None
        assert lay is not None
        fields = ", ".join([f"{slots.name!r}: {slots.result}" for slots in lay.aggregations])
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
        tag = b"s" if isinstance(window.spec, Session) else b"w"
        compiled.window_tag = tag
        compiled.window_fingerprint = fingerprints[tag]
        if isinstance(window.spec, Session):
            compiled.gap_ms = window.spec.gap_ms
            variables = ", ".join(["v", "t", "o", *(var for var, _, _ in lay.inputs)])
            first = ", ".join(expr for slots in lay.aggregations for expr in slots.first)
            code = _Code()
            code.add(f"def _sfirst({variables}):", f"    return [{first}]")
            compiled.session_first = self._exec("_sfirst", code)
            code = _Code()
            code.add(
                f"def _supdate(a, {variables}):",
                *(
                    "    " + line
                    for line in _merge_guards([slots.update for slots in _custom_first(lay)])
                ),
                "    return a",
            )
            compiled.session_update = self._exec("_supdate", code)
            code = _Code()
            code.add(
                "def _smerge(a, c):",
                *("    " + line for slots in lay.aggregations for line in slots.merge),
                "    return a",
            )
            compiled.session_merge = self._exec("_smerge", code)
        else:
            compiled.size_ms = window.spec.size_ms
            compiled.step_ms = window.spec.step_ms


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
