"""What ``.process`` can cost at best in Python: the engine against the thinnest loop.

Feeds the ``pipeline-process`` bench app's events (:mod:`streams.bench.process_app`, the
bench's own generator, seed and users) into four loops on one partition, no broker, and
reports the CPU-µs per event of each (best of ``--rounds``, the loops interleaved in every
round so that the machine's drift falls on all of them):

* ``decode``: orjson over the chunk, nothing else (every pipeline pays it);
* ``functions``: the app's ``burst`` and ``quiet`` once per event each, on a ``state``
  that is a plain dict of JSON bytes: the user's code and nothing of the framework's;
* ``thinnest``: the least any ``.process`` runtime in Python does for this app: per event
  the key's dict, ``burst``, its timer pushed on a heap of ``(at_ms, key)``, every due
  timer popped and ``quiet`` called, a set of each key's timers (for its changelog
  record), and per chunk one changelog value per changed key, its timers in it (none for
  a key with more than the engine keeps in a record: it writes buckets of them). No
  atomicity (a raise would leave half a call's changes), no check of what the functions
  pass or return, no dead letters, no TTL, no cancel or clear of timers, no timer
  records of their own, keys never forgotten: it is not a runtime, it is a floor;
* ``engine``: the compiled segment, as the worker runs it (decode, the ``.process``
  operator, the changelog drained per chunk).

    python bench/process_floor.py [--events 200000] [--chunk 5000] [--rounds 3] [--json]

The gap between ``engine`` and ``thinnest`` is the most that any Python implementation of
the contract could take off the worker's CPU per event (decision 0015, addendum of
2026-12-07, second part).
"""

from __future__ import annotations

import argparse
import gc
import heapq
import time
from collections.abc import Callable
from typing import Any

import orjson

from streams.bench.codec import INPUT_SEED, INPUT_START_TS, compact
from streams.bench.process_app import build, burst, quiet
from streams.core.process import INLINE_TIMERS
from streams.generator import generate_messages

_loads = orjson.loads
_dumps = orjson.dumps


class _Record:
    """What the compiled loop reads of a fetched record."""

    __slots__ = ("key", "offset", "timestamp", "value")

    def __init__(self, offset: int, key: bytes | None, value: bytes) -> None:
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp = INPUT_START_TS


class _DictState:
    """``state`` as a plain dict of JSON bytes, timers in a list: no staging, no checks."""

    __slots__ = ("timers", "values")

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.timers: list[int] = []

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None else _loads(value)

    def set(self, name: str, value: Any) -> None:
        self.values[name] = _dumps(value)

    def timer(self, at_ms: int) -> None:
        self.timers.append(at_ms)

    def clear(self) -> None:
        self.values.clear()


def _chunks(values: list[bytes], size: int) -> list[list[bytes]]:
    return [values[begin : begin + size] for begin in range(0, len(values), size)]


def decode_only(chunks: list[list[bytes]]) -> tuple[float, int]:
    started = time.process_time()
    for chunk in chunks:
        list(map(_loads, chunk))
    return time.process_time() - started, 0


def functions(chunks: list[list[bytes]]) -> tuple[float, int]:
    keys: dict[str, dict[str, bytes]] = {}
    state = _DictState()
    emitted = 0
    started = time.process_time()
    for chunk in chunks:
        for event in map(_loads, chunk):
            key = event["user_id"]
            values = keys.get(key)
            if values is None:
                values = keys[key] = {}
            state.values = values
            if burst(event, state) is not None:
                emitted += 1
            quiet(key, state, event["ts"])
    return time.process_time() - started, emitted


def _record(values: dict[str, bytes], timers: set[int]) -> bytes:
    """A key's changelog value; a key with more timers than the engine keeps in its record
    writes none (the engine writes the buckets they changed: more, not less)."""
    inline = _dumps(sorted(timers)) if len(timers) <= INLINE_TIMERS else b"1"
    return b'{"s":{%b},"t":%b}' % (b",".join(values.values()), inline)


def thinnest(chunks: list[list[bytes]]) -> tuple[float, int]:
    keys: dict[str, dict[str, bytes]] = {}
    pending: dict[str, set[int]] = {}  # a key's timers: what its changelog record must hold
    heap: list[tuple[int, str]] = []
    push, pop = heapq.heappush, heapq.heappop
    state = _DictState()
    emitted: list[Any] = []
    changelog: list[tuple[bytes, bytes]] = []
    stream_time = 0
    started = time.process_time()
    for chunk in chunks:
        changed: dict[str, None] = {}
        for event in map(_loads, chunk):
            key = event["user_id"]
            values = keys.get(key)
            if values is None:
                values = keys[key] = {}
                pending[key] = set()
            state.values = values
            state.timers = []
            returned = burst(event, state)
            if returned is not None:
                emitted.append(returned)
            if state.timers:
                timers = pending[key]
                for at in state.timers:
                    if at not in timers:
                        timers.add(at)
                        push(heap, (at, key))
            changed[key] = None
            ts = event["ts"]
            if ts > stream_time:
                stream_time = ts
            while heap and heap[0][0] <= stream_time:
                at, due = pop(heap)
                pending[due].discard(at)
                state.values = keys[due]
                quiet(due, state, at)
                changed[due] = None
        changelog = [(key.encode(), _record(keys[key], pending[key])) for key in changed]
    del changelog
    return time.process_time() - started, len(emitted)


def engine(records: list[list[_Record]]) -> tuple[float, int]:
    from streams.config import Settings
    from streams.core.segment import SegmentTask, run_sync
    from streams.runtime.processing import compile_plan
    from streams.topology.plan import plan

    settings = Settings(app_id="floor")
    declared = build("floor", "in", "out")
    decoders, compiled = compile_plan(
        plan(declared.decl), settings.max_message_bytes, spilled=False
    )
    [(topic, [segment])] = compiled.items()
    decoder = decoders[topic]
    task = SegmentTask(segment, idle_timeout_ms=3_600_000, store=None)
    task.finish_restore()
    emitted = 0
    started = time.process_time()
    for chunk in records:
        idxs, vals, failures = decoder.decode([record.value for record in chunk])
        assert not failures, failures
        emitted += len(run_sync(task.process(chunk, idxs, vals, INPUT_START_TS)).outputs)
        task.note_position(chunk[-1].offset + 1)
        task.drain_changelog()
    return time.process_time() - started, emitted


def measure(events: int, users: int, chunk: int, rounds: int) -> dict[str, Any]:
    """Each loop's best CPU-µs per event over ``rounds`` interleaved rounds, and what it
    emitted (the thinnest loop and the engine emit the same alerts: the same work, or the
    figures would not compare; ``functions`` calls ``quiet`` at each event's time, not a
    minute later, so an out-of-order event can find another state there)."""
    generated = generate_messages(events, users=users, seed=INPUT_SEED, start_ts=INPUT_START_TS)
    messages = [(m.key, compact(m.value)) for m in generated]
    chunks = _chunks([value for _, value in messages], chunk)
    fetched = [_Record(offset, key, value) for offset, (key, value) in enumerate(messages)]
    records = [fetched[begin : begin + chunk] for begin in range(0, len(fetched), chunk)]
    loops: dict[str, Callable[[], tuple[float, int]]] = {
        "decode": lambda: decode_only(chunks),
        "functions": lambda: functions(chunks),
        "thinnest": lambda: thinnest(chunks),
        "engine": lambda: engine(records),
    }
    gc.set_threshold(50_000, 50, 1_000)  # as the worker sets it
    best = dict.fromkeys(loops, float("inf"))
    emitted: dict[str, int] = {}
    for _ in range(rounds):
        for name, loop in loops.items():
            gc.collect()
            seconds, emitted[name] = loop()
            best[name] = min(best[name], seconds)
    us = {name: round(seconds / events * 1e6, 2) for name, seconds in best.items()}
    return {
        "events": events,
        "users": users,
        "chunk": chunk,
        "rounds": rounds,
        "cpu_us_per_event": us,
        "engine_over_thinnest_us": round(us["engine"] - us["thinnest"], 2),
        "emitted": emitted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.events, args.users, args.chunk, args.rounds)
    emitted = figures["emitted"]
    if emitted["thinnest"] != emitted["engine"]:
        raise SystemExit(f"the thinnest loop and the engine emitted other alerts: {emitted}")
    if args.json:
        print(orjson.dumps(figures).decode())
        return
    for name, value in figures["cpu_us_per_event"].items():
        print(f"{name:>10}: {value:6.2f} CPU-µs per event")
    print(f"engine - thinnest: {figures['engine_over_thinnest_us']} CPU-µs per event")
    print(f"alerts emitted by each: {emitted['engine']:,}")


if __name__ == "__main__":
    main()
