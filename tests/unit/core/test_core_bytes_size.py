"""Output and changelog values take about their own length in memory, not orjson's buffer.

orjson 3.12 and later return bytes that keep the whole buffer they were written into (4 KB
and up) whatever their length. Values wait in batches for their acknowledgement, so a 30-byte
value holding 4 KB cost a 1M-key worker 150 MB of RSS (docs/BENCHMARKS.md). These tests
measure what the values hold with tracemalloc: they fail if the copy to size is dropped.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson

from streams.apps.reference import build
from streams.config import Settings
from streams.core.jsonbytes import dumps
from streams.core.segment import SegmentTask, run_sync
from streams.runtime.processing import compile_plan
from streams.topology.plan import plan

BASE_TS = 1_700_000_000_000
# A value of ~100 bytes in a right-sized object takes ~140; orjson's buffer takes 4,096.
BYTES_PER_VALUE = 512


def held_per_item(make: Callable[[], list[Any]]) -> float:
    """Bytes still allocated per item of what ``make`` returns, while it is alive."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        items = make()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert items
    return held / len(items)


class _Record:
    __slots__ = ("key", "offset", "timestamp", "value")

    def __init__(self, offset: int, key: bytes, value: bytes) -> None:
        self.offset, self.key, self.value, self.timestamp = offset, key, value, BASE_TS


def test_dumps_values_are_the_size_of_their_bytes() -> None:
    per_value = held_per_item(lambda: [dumps({"k": f"u{i}", "n": i}) for i in range(2_000)])
    assert per_value < BYTES_PER_VALUE, per_value


def test_the_reference_segments_changelog_and_finals_are_right_sized() -> None:
    settings = Settings(app_id="sizes")
    decoders, compiled = compile_plan(plan(build(settings).decl), settings.max_message_bytes)
    [(topic, [segment])] = compiled.items()
    task = SegmentTask(segment, idle_timeout_ms=settings.idle_timeout_ms)
    task.finish_restore()
    events: list[dict[str, Any]] = [
        {"event_id": f"e{i}", "type": "purchase", "user_id": f"u{i}", "ts": BASE_TS, "amount": 2.5}
        for i in range(2_000)
    ]
    chunk = [_Record(i, f"u{i}".encode(), orjson.dumps(e)) for i, e in enumerate(events)]
    idxs, vals, failures = decoders[topic].decode([r.value for r in chunk])
    assert not failures
    run_sync(task.process(chunk, idxs, vals, BASE_TS))
    task.note_position(len(chunk))

    changelog = held_per_item(task.drain_changelog)
    assert changelog < BYTES_PER_VALUE, changelog

    def finals() -> list[Any]:
        # Idle past every window's end: the 2,000 finals (and their tombstones) come out.
        outputs = run_sync(
            task.tick(BASE_TS + 10 * settings.window_size_ms, caught_up=True)
        ).outputs
        assert len(outputs) == len(events)
        return outputs

    per_final = held_per_item(finals)
    assert per_final < 2 * BYTES_PER_VALUE, per_final
