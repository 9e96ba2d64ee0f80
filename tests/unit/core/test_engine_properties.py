"""Property tests: the compiled engine equals the plain interpreter on random pipelines.

Random declarations (filters, maps, flat maps, dedupes, joins, batch steps, enrichment,
group_by, tumbling, hopping, session and sliding windows with every aggregation, custom ones
included) run over random records: out-of-order event times, repeated ids, bad keys and
timestamps, random chunking and idle ticks. The vocabulary is a fuzzer of user code too:
functions that raise (``sys.exit`` included), that change their input before raising,
that return what they may not (a list from a map, a set inside a value, an object whose
truth raises), and custom aggregators whose ``add`` changes the accumulator in place and
then raises, returns a set, or whose ``result`` or ``merge`` raises. The engine's finals,
dead letters (stage and declaring line per record), dead letters of no record (windows
whose result failed), late records and counts must be the interpreter's; and a task
rebuilt from its changelog (compacted or not) at a random point must carry on exactly as
the original would have.
"""

from __future__ import annotations

import asyncio
from collections import namedtuple
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import (
    App,
    Count,
    CountDistinct,
    First,
    Last,
    Max,
    Mean,
    Min,
    Sum,
    hopping,
    session,
    sliding,
    tumbling,
)
from streams.core.compile import compile_segment
from streams.core.interpreter import Batch, Tick, interpret, same_value
from streams.core.outcome import Outcome, resolve_origin
from streams.core.segment import Call, CallGen, CallResult, SegmentTask
from streams.core.spill import KeyValueStore
from streams.topology.plan import Segment, plan

Record = namedtuple("Record", "offset key value timestamp headers")
TABLE = {"s0": {"region": "eu"}, "s1": {"region": "us"}, "3": {"region": "num"}}


class Collect:
    """A custom aggregator: the sorted list of distinct ``n`` values (merge for sessions);
    raises on n == 13 to exercise the aggregate dead letters."""

    def initial(self) -> list[int]:
        return []

    def add(self, acc: list[int], value: dict[str, Any]) -> list[int]:
        n = value.get("n")
        if n == 13:
            raise ValueError("thirteen")
        if isinstance(n, int) and n not in acc:
            return sorted([*acc, n])
        return acc

    def result(self, acc: list[int]) -> list[int]:
        return acc

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        return sorted(set(a) | set(b))


class Hostile:
    """A custom aggregator that breaks every rule: ``add`` changes the accumulator in place
    and then raises (n == 11) or returns a set (n == 10); ``result`` raises on a window of
    one event; ``merge`` raises when the merged sessions held more than six events."""

    def initial(self) -> dict[str, Any]:
        return {"seen": []}

    def add(self, acc: dict[str, Any], value: dict[str, Any]) -> Any:
        n = value.get("n")
        acc["seen"].append(n if isinstance(n, int) else -1)
        if n == 11:
            raise KeyError("eleven, after changing the accumulator")
        if n == 10:
            return {n}
        return None  # changed in place

    def result(self, acc: dict[str, Any]) -> int:
        return 100 // (len(acc["seen"]) - 1)

    def merge(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        a["seen"].extend(b["seen"])
        if len(a["seen"]) > 6:
            raise OverflowError("too many to merge")
        return a


class _Unbool:
    def __bool__(self) -> bool:
        raise ValueError("no truth in me")


def _hostile_map(v: dict[str, Any]) -> Any:
    n = v.get("n") or 0
    if n == 15:
        raise SystemExit("a user function called sys.exit()")
    if n == 14:
        v["mangled"] = True
        raise RuntimeError("fourteen, after changing its input")
    if n == 12:
        return [v]
    if n == 3:
        return {**v, "n": {3}}  # a set: not JSON
    return v


def _hostile_filter(v: dict[str, Any]) -> Any:
    return _Unbool() if (v.get("n") or 0) == 2 else True


def _hostile_flat_map(v: dict[str, Any]) -> Any:
    n = v.get("n") or 0
    if n == 1:
        return 5  # not iterable
    if n == 8:
        return [v, "not a dict"]
    return [v]


def _lookup_list(keys: list[Any]) -> Any:
    return list(keys)  # not a dict


def _regroup(v: dict[str, Any]) -> Any:
    n = v.get("n") or 0
    if n == 4:
        raise ZeroDivisionError("group_by divides by zero")
    if n == 5:
        return None
    if n == 6:
        return {6}  # not a key JSON can hold
    return n % 3 if n % 2 else f"g{n % 3}"


def _double(v: dict[str, Any]) -> dict[str, Any]:
    if v.get("n") == 7:
        raise RuntimeError("seven")
    return {**v, "n": (v.get("n") or 0) * 2 % 17}


def _split(v: dict[str, Any]) -> list[dict[str, Any]]:
    n = v.get("n") or 0
    if n % 5 == 4:
        return []
    return [v, {**v, "n": n + 1, "id": f"{v.get('id')}-b"}] if n % 3 == 0 else [v]


def _batch(values: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    # Never raises: a raising map_batch dead-letters its whole batch, which the interpreter
    # (one event at a time) cannot model.
    return [None if _n(v) % 6 == 5 else {**v, "tag": "b"} for v in values]


def _n(v: dict[str, Any]) -> int:
    n = v.get("n")
    return n if isinstance(n, int) else 0


async def _abatch(values: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    return _batch(values)


def _lookup(keys: list[Any]) -> dict[Any, Any]:
    return {k: {"score": len(str(k))} for k in keys if k != "s0"}


def _down(keys: list[Any]) -> dict[Any, Any]:
    raise ConnectionError("the service is down")


async def _alookup(keys: list[Any]) -> dict[Any, Any]:
    return _lookup(keys)


OPS: dict[str, Callable[[Any], Any]] = {
    "filter": lambda s: s.filter(lambda v: (v.get("n") or 0) % 4 != 1),
    "filter_raises": lambda s: s.filter(lambda v: 1 // ((v.get("n") or 0) - 9) >= -100),
    "map": lambda s: s.map(_double),
    "flat_map": lambda s: s.flat_map(_split),
    "dedupe_id": lambda s: s.dedupe("id", horizon_ms=25),
    "dedupe_n": lambda s: s.dedupe("n", horizon_ms=8),
    "join": lambda s: s.join(TABLE_HANDLE[0], on="sku", into="product"),
    "join_inner": lambda s: s.join(TABLE_HANDLE[0], on="sku", into="product", how="inner"),
    "map_batch": lambda s: s.map_batch(_batch),
    "map_batch_async": lambda s: s.map_batch(_abatch),
    "enrich": lambda s: s.enrich(_lookup, key="sku", into="extra", attempts=2),
    "enrich_async": lambda s: s.enrich(_alookup, key="sku", into="extra", ttl_ms=5),
    "enrich_down": lambda s: s.enrich(_down, key="sku", into="extra", attempts=2),
    "enrich_list": lambda s: s.enrich(_lookup_list, key="sku", into="extra", attempts=1),
    "hostile_map": lambda s: s.map(_hostile_map),
    "hostile_filter": lambda s: s.filter(_hostile_filter),
    "hostile_flat_map": lambda s: s.flat_map(_hostile_flat_map),
}
TABLE_HANDLE: list[Any] = []

AGGREGATIONS = {
    "count": lambda: Count(),
    "sum": lambda: Sum("x"),
    "mean": lambda: Mean("x"),
    "min": lambda: Min("x"),
    "max": lambda: Max("x"),
    "first": lambda: First("n"),
    "last": lambda: Last("n"),
    "distinct": lambda: CountDistinct("n"),
    "collect": lambda: Collect(),
    "hostile": lambda: Hostile(),
}


@st.composite
def declarations(draw: st.DrawFn) -> tuple[Segment, bool]:
    """A random one-segment pipeline; returns its segment and whether it is windowed."""
    app = App("prop")
    TABLE_HANDLE[:] = [app.table("products")]
    stream = app.stream(app.topic("in"), key="k", timestamp="ts")
    for name in draw(st.lists(st.sampled_from(sorted(OPS)), max_size=4)):
        stream = OPS[name](stream)
    kind = draw(st.sampled_from(["tumbling", "hopping", "session", "sliding", "none", "group_by"]))
    if kind == "none":
        stream.to("out")
        return plan(app.decl).segments[0], False
    if kind == "group_by":
        by = draw(st.sampled_from(["sku", _regroup]))
        stream.group_by(by).to("out")
        return plan(app.decl).segments[0], False
    size = draw(st.integers(1, 20))
    spec = {
        "tumbling": lambda: tumbling(size),
        "hopping": lambda: hopping(size, draw(st.integers(1, size))),
        "session": lambda: session(draw(st.integers(1, 12))),
        "sliding": lambda: sliding(size),
    }[kind]()
    names = draw(
        st.lists(st.sampled_from(sorted(AGGREGATIONS)), min_size=1, max_size=5, unique=True)
    )
    emit = draw(st.sampled_from(["final", "updates"]))
    (
        stream.window(spec, grace_ms=draw(st.integers(0, 10)))
        .aggregate(**{name: AGGREGATIONS[name]() for name in names})
        .to("out", emit=emit)
    )
    return plan(app.decl).segments[0], True


_value = st.fixed_dictionaries(
    {
        "k": st.sampled_from(["a", "b", "c"]),
        "id": st.sampled_from([f"e{i}" for i in range(8)]),
        "n": st.integers(0, 16),
        "sku": st.sampled_from(["s0", "s1", "s2", 3, None]),
    },
    optional={
        "x": st.one_of(
            st.none(), st.integers(0, 50), st.floats(0, 100, allow_nan=False), st.just("oops")
        ),
    },
)


@st.composite
def inputs(draw: st.DrawFn) -> list[Batch | Tick]:
    """Batches of records (event times drifting forward with disorder) and idle ticks."""
    items: list[Batch | Tick] = []
    offset = 0
    now = 1_000
    drift = 0
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 4)) == 0:
            now += draw(st.integers(0, 60))
            items.append(Tick(now, caught_up=draw(st.booleans())))
            continue
        records = []
        for _ in range(draw(st.integers(0, 8))):
            value = dict(draw(_value))
            drift += draw(st.integers(0, 6))
            value["ts"] = max(0, drift - draw(st.integers(0, 15)))
            bad = draw(st.integers(0, 20))
            if bad == 0:
                del value["k"]
            elif bad == 1:
                value["ts"] = -1
            elif bad == 2:
                value["ts"] = float(value["ts"])
            key = value.get("k")
            records.append(
                Record(offset, None if key is None else key.encode(), orjson.dumps(value), 0, [])
            )
            offset += 1
        now += draw(st.integers(0, 9))
        items.append(Batch(now, records))
    return items


def drive(gen: CallGen) -> Outcome:
    """What the runtime does: answer the task's calls (async ones awaited)."""
    try:
        call = next(gen)
        while True:
            call = gen.send(_answer(call))
    except StopIteration as stop:
        outcome: Outcome = stop.value
        return outcome


def _answer(call: Call) -> CallResult:
    error: BaseException | None = None
    for _ in range(call.attempts):
        try:
            value = asyncio.run(call.fn(call.arg)) if call.is_async else call.fn(call.arg)
            return CallResult(value)
        except Exception as exc:
            error = exc
    return CallResult(None, error)


class Engine:
    """A segment task fed like the runtime feeds it, recording what it produced; with
    ``stores`` (a new empty key-value store per call), its state in a store (a new one at
    each restart), as with ``STREAMS_STORE=rocksdb``."""

    def __init__(
        self,
        segment: Segment,
        stores: Callable[[], KeyValueStore] | None = None,
        *,
        task: SegmentTask | None = None,
    ) -> None:
        self.stores = stores
        if task is None:
            self.compiled = compile_segment(segment, spilled=stores is not None)
            self.task = self._new()
        else:  # a task restored already (from a store kept on disk, say)
            self.compiled = task.compiled
            self.task = task
        self.changelog: list[tuple[bytes, bytes | None]] = []
        self.finals: list[Any] = []
        self.dead: dict[int, tuple[str, str]] = {}
        self.derived: list[tuple[bytes | None, Any, str, str]] = []
        self.late_derived: list[tuple[str | None, Any]] = []
        self.derived_duplicates = 0
        self.timers_fired = 0
        self.late: list[int] = []
        self.late_join: list[int] = []
        self.counts = {"accepted": 0, "filtered": 0, "join_misses": 0}
        self.duplicates: list[int] = []
        self.seen = 0
        self.index_of: dict[int, int] = {}  # record offset -> index over all batches

    def _new(self) -> SegmentTask:
        task = self._task()
        task.finish_restore()
        return task

    def _task(self) -> SegmentTask:
        store = None if self.stores is None else self.stores()
        return SegmentTask(
            self.compiled, idle_timeout_ms=7, tables={"products": TABLE}, store=store
        )

    def feed(self, item: Batch | Tick) -> None:
        if isinstance(item, Tick):
            self._take(drive(self.task.tick(item.now_ms, item.caught_up)), 0)
        else:
            records = list(item.records)
            values = [orjson.loads(r.value) for r in records]
            self._index(records)
            outcome = drive(self.task.process(records, range(len(values)), values, item.now_ms))
            self._take(outcome, self.seen)
            self.seen += len(records)
            if records:
                self.task.note_position(records[-1].offset + 1)
            right = list(item.right)
            if right:  # a join's second input in the same fetch
                self._index(right)
                values = [orjson.loads(r.value) for r in right]
                outcome = self.task.process_right(right, range(len(values)), values, item.now_ms)
                self._take(outcome, self.seen)
                self.seen += len(right)
            if self.task.join is not None:
                self._take(drive(self.task.drain_join(item.now_ms)), 0)
        self.changelog.extend(self.task.drain_changelog())

    def _index(self, records: list[Any]) -> None:
        for n, record in enumerate(records):
            self.index_of[record.offset] = self.seen + n

    def _take(self, outcome: Outcome, base: int) -> None:
        for key, value, ts in outcome.outputs:
            decoded = orjson.loads(value)
            if isinstance(decoded, dict) and decoded.get("final") is False:
                continue
            self.finals.append((key, decoded, ts))
        for index, (stage, _, where) in outcome.dead.items():
            if index >= 0:
                self.dead[base + index] = (stage, where)
            else:
                key, made = resolve_origin(outcome.origins[-1 - index])
                self.derived.append((key, orjson.loads(made), stage, where))
        self.late.extend(base + index for index in outcome.late)
        self.late_join.extend(self.index_of[offset] for _, _, offset, _, _ in outcome.late_raw)
        self.late_derived.extend(outcome.late_derived)
        self.duplicates.extend(base + index for index in outcome.duplicates if index >= 0)
        self.derived_duplicates += sum(1 for index in outcome.duplicates if index < 0)
        self.timers_fired += outcome.timers_fired
        for name in self.counts:
            self.counts[name] += getattr(outcome, name)

    def restart(self, compacted: bool) -> None:
        """A new task from the changelog so far (as after a crash or a rebalance)."""
        records = self.changelog
        if compacted:
            last = {key: i for i, (key, _) in enumerate(records)}
            records = [r for i, r in enumerate(records) if last[r[0]] == i and r[1] is not None]
        task = self._task()
        for key, value in records:
            task.apply_changelog(key, value)
        task.finish_restore()
        self.task = task


def flush_finals(engine: Engine) -> None:
    """Close every open window, as the interpreter does at the end of input."""
    engine._take(drive(engine.task.flush_windows()), 0)


def run_to_end(
    engine: Engine, items: list[Batch | Tick], cut: int | None = None, compacted: bool = False
) -> Engine:
    """Feed ``engine`` every item (restarting it from its changelog, ``compacted`` or not,
    before item ``cut``), then close every window."""
    for position, item in enumerate(items):
        if position == cut:
            engine.restart(compacted)
        engine.feed(item)
    flush_finals(engine)
    return engine


def _check(segment: Segment, items: list[Batch | Tick], engine: Engine) -> None:
    expected = interpret(segment, items, tables={"products": TABLE}, idle_timeout_ms=7)
    assert len(engine.finals) == len(expected.outputs), (engine.finals, expected.outputs)
    for got, want in zip(engine.finals, expected.outputs, strict=True):
        assert got[0] == want[0], (got, want)
        assert got[2] == want[2], (got, want)
        assert same_value(want[1], got[1]), (got, want)
    assert engine.dead == {i: (stage, where) for i, (stage, _, where) in expected.dead.items()}
    # Dead letters of no input record: as multisets (stages reorder them).
    assert sorted(map(_canon, engine.derived)) == sorted(map(_canon, expected.derived))
    assert sorted(map(_canon, engine.late_derived)) == sorted(map(_canon, expected.late_derived))
    assert engine.derived_duplicates == expected.derived_duplicates
    assert engine.timers_fired == expected.timers_fired
    assert engine.late == expected.late
    assert engine.late_join == expected.late_join
    assert sorted(engine.duplicates) == sorted(expected.duplicates)  # stages reorder them
    assert engine.counts["accepted"] == expected.accepted
    assert engine.counts["filtered"] == expected.filtered
    assert engine.counts["join_misses"] == expected.join_misses


def _canon(item: tuple[Any, ...]) -> str:
    """A comparable text of a dead letter or late event of no input record: keys as text,
    floats to 9 digits (a session's merged sum may add in another order)."""

    def plain(x: Any) -> Any:
        if isinstance(x, bytes):
            return x.decode()
        if isinstance(x, float):
            return float(f"{x:.9g}")
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        return x

    return orjson.dumps(plain(item), option=orjson.OPT_SORT_KEYS).decode()


def _where(segment: Segment, stage: str) -> str:
    return next(op.where for op in segment.ops if op.stage == stage)


@settings(max_examples=400, deadline=None)
@given(declarations(), inputs())
def test_engine_equals_interpreter(
    declared: tuple[Segment, bool], items: list[Batch | Tick]
) -> None:
    segment, _ = declared
    _check(segment, items, run_to_end(Engine(segment), items))


@settings(max_examples=200, deadline=None)
@given(declarations(), inputs(), st.integers(0, 8), st.booleans())
def test_a_restored_task_carries_on_as_the_original(
    declared: tuple[Segment, bool], items: list[Batch | Tick], cut: int, compacted: bool
) -> None:
    segment, _ = declared
    _check(segment, items, run_to_end(Engine(segment), items, cut, compacted))


def test_a_record_whose_children_fail_in_two_stages_is_dead_with_the_earlier_stage() -> None:
    """Found by the property above: ``flat_map`` gives a record two children; the second
    fails in ``map`` (before the ``enrich`` barrier), the first later, in ``aggregate`` (an
    ``x`` Max cannot take). The engine runs the chunk stage by stage, so ``map`` fails first;
    the interpreter, depth first, reached ``aggregate`` first and once said so."""
    app = App("prop")
    (
        app.stream(app.topic("in"), key="k", timestamp="ts")
        .flat_map(_split)
        .map(_double)
        .enrich(_lookup, key="sku", into="extra", attempts=2)
        .window(tumbling(1))
        .aggregate(collect=Collect(), max=Max("x"))
        .to("out")
    )
    segment = plan(app.decl).segments[0]
    value = {"k": "a", "id": "e0", "n": 6, "sku": "s0", "x": "oops", "ts": 0}
    items: list[Batch | Tick] = [Batch(1_000, [Record(0, b"a", orjson.dumps(value), 0, [])])]
    engine = Engine(segment)
    for item in items:
        engine.feed(item)
    flush_finals(engine)
    assert engine.dead == {0: ("map", _where(segment, "map"))}
    _check(segment, items, engine)
