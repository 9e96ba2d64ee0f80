"""Property tests of ``.process`` and of operators after ``.aggregate``: the compiled engine
equals the plain interpreter.

Random ``.process`` functions are programs drawn from a small vocabulary of state reads,
writes, deletes, clears, timers (set and cancelled, some already due, some re-armed by the
timer itself, up to two dozen at once: a key's timers move to records of their own and
back), emits (none, one, a list) and misuses (a value JSON cannot hold, a timer
that is not a time, a return that is not a dict, a raise after changing state). They run
before a window, after an aggregation, or alone, with and without a TTL, over random
records in random chunks with idle ticks, and with a restore from the changelog (compacted
or not) at a random point. Outputs, dead letters (of records, and of timers and final
records), late events, duplicates and fired timers must be the interpreter's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams import App, Count, Max, Sum, hopping, session, tumbling
from streams.core import process
from streams.core.interpreter import Batch, Tick
from streams.topology.plan import Segment, plan
from tests.unit.core.test_engine_properties import (
    Engine,
    _check,
    flush_finals,
    inputs,
    run_to_end,
)

# One instruction of a process program: (opcode, argument).
Instruction = tuple[str, int]

OPCODES = [
    "count",  # c = get("c", 0) + 1; set("c", c)
    "append",  # keep the last three n in "l"
    "delete",  # delete "c"
    "clear_on",  # clear() when n % arg == 0
    "timer",  # timer(time + arg)
    "timer_past",  # timer(time - arg): already due
    "cancel",  # cancel(time + arg)
    "timer_many",  # timer(time + 1 .. time + 2 * arg): past 16 a key's timers get own records
    "cancel_many",  # cancel(time + 1 .. time + arg)
    "emit",  # emit the value with the count
    "emit_two",  # emit a list of two values
    "raise_on",  # raise when n == arg, after changing state
    "bad_set_on",  # set a value JSON cannot hold when n == arg
    "bad_timer_on",  # timer(-1) when n == arg
    "bad_return_on",  # return a number when n == arg
]


def _time(value: dict[str, Any]) -> int:
    """The event's time as the function can see it: ``ts``, or a final record's end."""
    for name in ("ts", "window_end"):
        found = value.get(name)
        if isinstance(found, int) and found >= 0:
            return found
    return 0


def _n(value: dict[str, Any]) -> int:
    n = value.get("n", value.get("count", 0))
    return n if isinstance(n, int) else 0


def make_fn(program: list[Instruction]) -> Any:
    """``fn(value, state)`` running ``program``."""

    def fn(value: dict[str, Any], state: Any) -> Any:
        n = _n(value)
        now = _time(value)
        emitted: Any = None
        for opcode, arg in program:
            if opcode == "count":
                state.set("c", state.get("c", 0) + 1)
            elif opcode == "append":
                state.set("l", [*state.get("l", []), n][-3:])
            elif opcode == "delete":
                state.delete("c")
            elif opcode == "clear_on" and n % (arg + 2) == 0:
                state.clear()
            elif opcode == "timer":
                state.timer(now + arg)
            elif opcode == "timer_past":
                state.timer(max(0, now - arg))
            elif opcode == "cancel":
                state.cancel(now + arg)
            elif opcode == "timer_many":
                for delay in range(1, 2 * arg + 1):
                    state.timer(now + delay)
            elif opcode == "cancel_many":
                for delay in range(1, arg + 1):
                    state.cancel(now + delay)
            elif opcode == "emit":
                emitted = {**value, "c": state.get("c"), "seen": state.get("l")}
            elif opcode == "emit_two":
                emitted = [{"k2": state.key, "n": n}, {"k2": state.key, "n": n + 1}]
            elif opcode == "raise_on" and n == arg:
                raise RuntimeError(f"n is {arg}")
            elif opcode == "bad_set_on" and n == arg:
                state.set("bad", {arg})
            elif opcode == "bad_timer_on" and n == arg:
                state.timer(-1)
            elif opcode == "bad_return_on" and n == arg:
                return 42
        return emitted

    fn.program = program  # type: ignore[attr-defined]  # shown when a case fails
    return fn


def make_on_timer(program: list[Instruction]) -> Any:
    """``on_timer(key, state, at_ms)``: reads state, may clear, re-arm (some at the same
    ``at_ms``: a loop if it fired in its own round), set a later timer, emit, or raise."""

    def on_timer(key: str, state: Any, at: int) -> Any:
        emitted: Any = None
        for opcode, arg in program:
            if opcode == "count":
                state.set("fired", state.get("fired", 0) + 1)
            elif opcode == "clear_on" and at % (arg + 2) == 0:
                state.clear()
            elif opcode in ("timer", "cancel"):
                state.timer(at + arg)  # arg may be 0: re-armed at the same time
            elif opcode == "timer_past":
                state.timer(at)
            elif opcode in ("emit", "emit_two"):
                emitted = {"key": key, "at": at, "c": state.get("c"), "fired": state.get("fired")}
            elif opcode == "raise_on" and at % 11 == arg % 11:
                raise ValueError("timer raised")
            elif opcode == "bad_return_on" and at % 7 == arg % 7:
                return "not a dict"
        return emitted

    on_timer.program = program  # type: ignore[attr-defined]
    return on_timer


programs = st.lists(st.tuples(st.sampled_from(OPCODES), st.integers(0, 12)), max_size=6)


@st.composite
def process_ops(draw: st.DrawFn) -> tuple[Any, Any, int | None]:
    fn = make_fn(draw(programs))
    on_timer = make_on_timer(draw(programs)) if draw(st.booleans()) else None
    ttl = draw(st.one_of(st.none(), st.integers(1, 40)))
    return fn, on_timer, ttl


AGGREGATIONS = {"n": lambda: Count(), "total": lambda: Sum("x"), "top": lambda: Max("n")}


@st.composite
def declarations(draw: st.DrawFn) -> Segment:
    """A pipeline with ``.process`` before a window, after an aggregation, or alone, with
    stateless operators and dedupes around it."""
    app = App("proc")
    stream = app.stream(app.topic("in"), key="k", timestamp="ts")
    shape = draw(st.sampled_from(["alone", "before_window", "after_aggregate", "both"]))
    if draw(st.booleans()):
        stream = stream.filter(lambda v: _n(v) % 5 != 3)
    if shape != "after_aggregate":
        stream = stream.process(*draw(process_ops()))
        if draw(st.booleans()):
            stream = stream.dedupe("n", horizon_ms=draw(st.integers(1, 20)))
    if shape == "alone":
        if draw(st.booleans()):
            stream = stream.map(lambda v: {**v, "m": 1})
        stream.to("out")
        return plan(app.decl).segments[0]
    size = draw(st.integers(1, 20))
    spec = draw(
        st.sampled_from(
            [tumbling(size), hopping(size, max(1, size // 2)), session(max(1, size // 3))]
        )
    )
    names = draw(st.lists(st.sampled_from(sorted(AGGREGATIONS)), min_size=1, unique=True))
    windowed = stream.window(spec, grace_ms=draw(st.integers(0, 8))).aggregate(
        **{name: AGGREGATIONS[name]() for name in names}
    )
    if shape == "before_window":
        windowed.to("out", emit=draw(st.sampled_from(["final", "updates"])))
        return plan(app.decl).segments[0]
    after: Any = windowed
    if draw(st.booleans()):
        after = after.filter(lambda w: w["window_end"] % 3 != 0)
    after = after.process(*draw(process_ops()))
    if draw(st.booleans()):
        after = after.dedupe("n", horizon_ms=draw(st.integers(1, 20)))
    if draw(st.booleans()):
        after = after.map(lambda w: {**w, "tag": "after"})
    tail = draw(st.sampled_from(["to", "group_by", "window"]))
    if tail == "to":
        after.to("out")
    elif tail == "group_by":
        after.group_by(lambda w: f"g{_n(w) % 2}").to("out")
    else:  # a second window: the first segment ends in a repartition keyed as it is
        after.window(tumbling(size)).aggregate(n=Count()).to("out")
    return plan(app.decl).segments[0]


@settings(max_examples=400, deadline=None)
@given(declarations(), inputs())
def test_process_engine_equals_interpreter(segment: Segment, items: list[Batch | Tick]) -> None:
    engine = run_to_end(Engine(segment), items)
    _check(segment, items, engine)


@settings(max_examples=250, deadline=None)
@given(declarations(), inputs(), st.integers(0, 8), st.booleans())
def test_a_restored_process_carries_on_as_the_original(
    segment: Segment, items: list[Batch | Tick], cut: int, compacted: bool
) -> None:
    _restored_run(segment, items, [cut], compacted)


@settings(max_examples=250, deadline=None)
@given(declarations(), inputs(), st.lists(st.integers(0, 8), max_size=3), st.booleans())
def test_timers_moving_between_a_keys_record_and_bucket_records_restore_exactly(
    segment: Segment, items: list[Batch | Tick], cuts: list[int], compacted: bool
) -> None:
    """With a key's timers in its record up to 2, in bucket records of 3 ms from 3 on and
    back at 1, keys move between both often: restores at random points carry on exactly."""
    with _timer_records(inline=2, again=1, bucket_ms=3):
        _restored_run(segment, items, cuts, compacted)


@contextmanager
def _timer_records(inline: int, again: int, bucket_ms: int) -> Iterator[None]:
    saved = (process.INLINE_TIMERS, process.INLINE_AGAIN, process.TIMER_BUCKET_MS)
    process.INLINE_TIMERS, process.INLINE_AGAIN, process.TIMER_BUCKET_MS = (
        inline,
        again,
        bucket_ms,
    )
    try:
        yield
    finally:
        process.INLINE_TIMERS, process.INLINE_AGAIN, process.TIMER_BUCKET_MS = saved


def _restored_run(
    segment: Segment, items: list[Batch | Tick], cuts: list[int], compacted: bool
) -> None:
    engine = Engine(segment)
    for position, item in enumerate(items):
        for cut in cuts:
            if position == cut:
                engine.restart(compacted)
        engine.feed(item)
    flush_finals(engine)
    _check(segment, items, engine)
