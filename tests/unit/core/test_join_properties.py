"""Property tests of ``join_stream``: the compiled engine equals the plain interpreter.

Random joins (inner and left, random bounds and grace, each side with its own stateless
operators, some raising or returning what they may not) run over random fetches that bring
records of one side, the other, or both at once (taken in event-time order as far as both
have records), with disorder past the grace (late events) and idle ticks, followed by
nothing, a window, or a ``.process``; and with a restore from the changelog (compacted or
not) at a random point. Pairs, misses, dead letters of either side and of pairs, late
records of either side and fired timers must be the interpreter's.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import App, Count, Max, Sum, tumbling
from streams.core.interpreter import Batch, Tick
from streams.topology.plan import Segment, plan
from tests.unit.core.test_engine_properties import Engine, _check, run_to_end
from tests.unit.core.test_process_properties import make_fn, make_on_timer, programs

Record = namedtuple("Record", "offset key value timestamp headers")


def _n(value: dict[str, Any]) -> int:
    n = value.get("n")
    return n if isinstance(n, int) else 0


SIDE_OPS = {
    "filter": lambda s: s.filter(lambda v: _n(v) % 5 != 3),
    "map": lambda s: s.map(lambda v: {**v, "m": _n(v) * 2}),
    "map_raises": lambda s: s.map(lambda v: 1 // (_n(v) - 7) and v),
    "map_set": lambda s: s.map(lambda v: {**v, "bad": {1}} if _n(v) == 11 else v),
    "flat_map": lambda s: s.flat_map(
        lambda v: [v, {**v, "n": _n(v) + 1}] if _n(v) % 4 == 0 else [v]
    ),
}


@st.composite
def declarations(draw: st.DrawFn) -> Segment:
    app = App("joins")
    left = app.stream(app.topic("in"), key="k", timestamp="ts")
    right = app.stream(app.topic("in2"), key="k", timestamp="ts")
    for name in draw(st.lists(st.sampled_from(sorted(SIDE_OPS)), max_size=2)):
        left = SIDE_OPS[name](left)
    for name in draw(st.lists(st.sampled_from(sorted(SIDE_OPS)), max_size=2)):
        right = SIDE_OPS[name](right)
    joined = left.join_stream(
        right,
        within_ms=draw(st.integers(0, 12)),
        into="other",
        how=draw(st.sampled_from(["inner", "left"])),
        grace_ms=draw(st.integers(0, 6)),
    )
    tail = draw(st.sampled_from(["to", "map", "window", "process"]))
    if tail == "map":
        joined.map(lambda v: {**v, "both": v["other"] is not None}).to("out")
    elif tail == "window":
        named = {"n": Count(), "total": Sum("n"), "top": Max("m")}
        joined.window(
            tumbling(draw(st.integers(1, 15))), grace_ms=draw(st.integers(0, 5))
        ).aggregate(**named).to("out")
    elif tail == "process":
        on_timer = make_on_timer(draw(programs)) if draw(st.booleans()) else None
        joined.process(make_fn(draw(programs)), on_timer=on_timer).to("out")
    else:
        joined.to("out")
    (segment,) = [s for s in plan(app.decl).segments if s.right is not None]
    return segment


_value = st.fixed_dictionaries(
    {"k": st.sampled_from(["a", "b", "c"]), "n": st.integers(0, 12)},
)


@st.composite
def inputs(draw: st.DrawFn) -> list[Batch | Tick]:
    """Fetches of one side, the other, or both; event times drifting with disorder (some of
    it past any grace); bad keys and timestamps; idle ticks."""
    items: list[Batch | Tick] = []
    offset = 0
    now = 1_000
    drift = 0

    def records(count: int) -> list[Record]:
        nonlocal offset, drift
        out = []
        for _ in range(count):
            value = dict(draw(_value))
            drift += draw(st.integers(0, 5))
            value["ts"] = max(0, drift - draw(st.integers(0, 12)))
            bad = draw(st.integers(0, 25))
            if bad == 0:
                del value["k"]
            elif bad == 1:
                value["ts"] = "soon"
            key = value.get("k")
            out.append(
                Record(offset, None if key is None else key.encode(), orjson.dumps(value), 0, [])
            )
            offset += 1
        return out

    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 4)) == 0:
            now += draw(st.integers(0, 30))
            items.append(Tick(now, caught_up=draw(st.booleans())))
            continue
        sides = draw(st.sampled_from(["left", "right", "both"]))
        left = records(draw(st.integers(0, 6))) if sides != "right" else []
        right = records(draw(st.integers(0, 6))) if sides != "left" else []
        now += draw(st.integers(0, 9))
        items.append(Batch(now, left, right))
    return items


@settings(max_examples=400, deadline=None)
@given(declarations(), inputs())
def test_join_engine_equals_interpreter(segment: Segment, items: list[Batch | Tick]) -> None:
    engine = run_to_end(Engine(segment), items)
    _check(segment, items, engine)


@settings(max_examples=250, deadline=None)
@given(declarations(), inputs(), st.integers(0, 8), st.booleans())
def test_a_restored_join_carries_on_as_the_original(
    segment: Segment, items: list[Batch | Tick], cut: int, compacted: bool
) -> None:
    engine = run_to_end(Engine(segment), items, cut, compacted)
    _check(segment, items, engine)
