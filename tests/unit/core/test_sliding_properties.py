"""Property tests of sliding windows: the engine equals the interpreter, updates included.

The harness of ``test_engine_properties`` (random operators before the window, random
records with disorder, bad keys and timestamps, random chunking and idle ticks, custom
aggregators that raise or misbehave, restores from the changelog compacted or not at a
random point), on sliding windows only, with every aggregation. On top of the finals, the
update records (``"final": false``, per chunk) must be the interpreter's, which recomputes
each changed window from scratch after each batch.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import App, sliding
from streams.core.interpreter import Batch, Tick, interpret, same_value
from streams.core.outcome import Outcome
from streams.topology.plan import Segment, plan
from tests.unit.core.test_engine_properties import (
    AGGREGATIONS,
    OPS,
    TABLE,
    TABLE_HANDLE,
    Engine,
    _check,
    inputs,
    run_to_end,
)

# Operators whose events reach the window with their order and times unchanged but for
# drops: enough to vary what is accepted, late and dead before the window.
BEFORE = ["filter", "map", "flat_map", "dedupe_id", "hostile_map", "map_batch", "enrich"]


@st.composite
def sliding_declarations(draw: st.DrawFn) -> Segment:
    """A random pipeline ending in a sliding window."""
    app = App("prop")
    TABLE_HANDLE[:] = [app.table("products")]
    stream = app.stream(app.topic("in"), key="k", timestamp="ts")
    for name in draw(st.lists(st.sampled_from(BEFORE), max_size=2)):
        stream = OPS[name](stream)
    names = draw(
        st.lists(st.sampled_from(sorted(AGGREGATIONS)), min_size=1, max_size=5, unique=True)
    )
    (
        stream.window(sliding(draw(st.integers(1, 25))), grace_ms=draw(st.integers(0, 10)))
        .aggregate(**{name: AGGREGATIONS[name]() for name in names})
        .to("out", emit=draw(st.sampled_from(["final", "updates"])))
    )
    return plan(app.decl).segments[0]


class UpdatingEngine(Engine):
    """The harness's engine, keeping the update records too."""

    def __init__(self, segment: Segment) -> None:
        super().__init__(segment)
        self.updates: list[tuple[bytes | None, Any]] = []

    def _take(self, outcome: Outcome, base: int) -> None:
        super()._take(outcome, base)
        for key, value, _ in outcome.outputs:
            decoded = orjson.loads(value)
            if decoded.get("final") is False:
                self.updates.append((key, decoded))


def _check_updates(segment: Segment, items: list[Batch | Tick], engine: UpdatingEngine) -> None:
    expected = interpret(segment, items, tables={"products": TABLE}, idle_timeout_ms=7)
    assert len(engine.updates) == len(expected.updates), (engine.updates, expected.updates)
    for got, want in zip(engine.updates, expected.updates, strict=True):
        assert got[0] == want[0], (got, want)
        assert same_value(want[1], got[1]), (got, want)


@settings(max_examples=400, deadline=None)
@given(sliding_declarations(), inputs())
def test_sliding_engine_equals_interpreter(segment: Segment, items: list[Batch | Tick]) -> None:
    engine = run_to_end(UpdatingEngine(segment), items)
    _check(segment, items, engine)
    _check_updates(segment, items, engine)


@settings(max_examples=300, deadline=None)
@given(sliding_declarations(), inputs(), st.integers(0, 8), st.booleans())
def test_a_restored_sliding_task_carries_on_as_the_original(
    segment: Segment, items: list[Batch | Tick], cut: int, compacted: bool
) -> None:
    engine = run_to_end(UpdatingEngine(segment), items, cut, compacted)
    _check(segment, items, engine)
    _check_updates(segment, items, engine)
