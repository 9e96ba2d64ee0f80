"""1M live (key, window) aggregates: worker RSS, and restart-to-processing time.

Publishes N events with N distinct user ids inside one hour-long window (nothing closes),
runs a worker until it has consumed them all and reports its peak RSS; then starts a second
worker on the same group and reports how long it takes from process start to consuming again
(group join + changelog restore), and the changelog records it replayed.

    python bench/state_1m.py [--events 1000000] [--store memory|rocksdb] [--no-local-state]

With RocksDB the restarted worker takes up the killed one's stores from their checkpoints and
replays only the changelog after them (decision 0017); ``--no-local-state`` deletes the
checkpoints first, so it rebuilds the stores from the whole changelog, as before.

``--core`` needs no broker: it feeds the same events straight into the reference app's
compiled segment on one partition (:class:`~streams.core.segment.SegmentTask`, batches of
``--batch``, changelog drained after each like the worker does) and reports the events/s of
decoding and processing alone, the RSS the state adds, then the records/s of replaying the
changelog into a new task and the time to close every window. Run it once per store; each
run is its own process, so RSS figures do not mix.

    python bench/state_1m.py --core --store rocksdb [--events 1000000] [--batch 5000]

``--core --app process`` does the same for the ``pipeline-process`` app
(:mod:`streams.bench.process_app`): N keys with one small list and one timer each; the
"close" is then an idle advance past every timer, which forgets each key.
"""

from __future__ import annotations

import argparse
import gc
import marshal
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import orjson

from streams.bench.probe import status_mb
from streams.bench.state import BASE_TS, event, measure_state
from streams.config import KafkaSettings


class _Record:
    """What the compiled loop reads of a fetched record."""

    __slots__ = ("key", "offset", "timestamp", "value")

    def __init__(self, offset: int, key: bytes, value: bytes) -> None:
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp = BASE_TS


def core(events: int, batch: int, store_kind: str, app: str = "reference") -> dict[str, Any]:
    """The state alone: N keys through the app's compiled segment on one partition, no
    broker, no worker."""
    from streams.apps.reference import build
    from streams.bench import process_app
    from streams.config import Settings
    from streams.core.segment import SegmentTask, run_sync
    from streams.runtime.processing import compile_plan
    from streams.topology.plan import plan

    hour = 3_600_000
    pid = os.getpid()
    gc.set_threshold(50_000, 50, 1_000)  # as the worker sets it
    with tempfile.TemporaryDirectory(prefix="state1m-") as scratch:
        settings = Settings(
            store=store_kind,
            state_dir=scratch,
            app_id="state1m",
            window_size_ms=hour,
            window_step_ms=hour,
            idle_timeout_ms=hour,
        )
        declared = (
            build(settings) if app == "reference" else process_app.build("state1m", "in", "out")
        )
        decoders, compiled = compile_plan(
            plan(declared.decl), settings.max_message_bytes, spilled=store_kind == "rocksdb"
        )
        [(topic, [segment])] = compiled.items()
        decoder = decoders[topic]

        def new_task(name: str) -> SegmentTask:
            store = settings.open_store(name) if segment.spilled else None
            return SegmentTask(segment, idle_timeout_ms=hour, store=store)

        task = new_task("first")
        task.finish_restore()
        log_path = os.path.join(scratch, "changelog.marshal")
        baseline = status_mb(pid, "VmRSS")
        busy = 0.0
        with open(log_path, "wb") as log:
            for begin in range(0, events, batch):
                chunk = [
                    _Record(i, f"u{i}".encode(), orjson.dumps(event(i)))
                    for i in range(begin, min(begin + batch, events))
                ]
                started = time.perf_counter()
                idxs, vals, failures = decoder.decode([r.value for r in chunk])
                assert not failures
                run_sync(task.process(chunk, idxs, vals, BASE_TS))
                task.note_position(begin + len(chunk))
                records = task.drain_changelog()
                busy += time.perf_counter() - started
                marshal.dump(records, log)
        gc.collect()
        after = status_mb(pid, "VmRSS")
        held = task.open_windows if app == "reference" else task.process_keys
        figures: dict[str, Any] = {
            "app": app,
            "store": store_kind,
            "events": events,
            "batch": batch,
            "keys_held": held,
            "timers_pending": task.timers_pending,
            "dedupe_ids": task.dedupe_size,
            "process_events_per_s": round(events / busy),
            "rss_mb_before": round(baseline, 1),
            "rss_mb_after": round(after, 1),
            "rss_mb_state": round(after - baseline, 1),
            "peak_rss_mb": round(status_mb(pid, "VmHWM"), 1),
        }
        del task
        gc.collect()

        restored = new_task("restored")
        applied = 0
        started = time.perf_counter()
        for records in _read_batches(log_path):
            for key, value in records:
                restored.apply_changelog(key, value)
            applied += len(records)
        restored.finish_restore()
        restored.drain_changelog()
        assert (restored.open_windows if app == "reference" else restored.process_keys) == events
        restore_s = time.perf_counter() - started
        figures["changelog_records"] = applied
        figures["restore_records_per_s"] = round(applied / restore_s)
        figures["restore_s"] = round(restore_s, 2)
        figures["rss_mb_after_restore"] = round(status_mb(pid, "VmRSS"), 1)

        started = time.perf_counter()
        finals = run_sync(restored.tick(BASE_TS + 10 * hour, caught_up=True))
        if not finals.outputs and not finals.timers_fired:  # the first tick after a restore
            finals = run_sync(restored.tick(BASE_TS + 20 * hour, caught_up=True))  # notes activity
        figures["close_all_s"] = round(time.perf_counter() - started, 2)
        if app == "reference":
            assert len(finals.outputs) == events, len(finals.outputs)
        else:
            assert finals.timers_fired == events, finals.timers_fired
            assert restored.process_keys == 0, restored.process_keys
        return figures


def _read_batches(path: str) -> Iterator[list[tuple[bytes, bytes | None]]]:
    with open(path, "rb") as log:
        while True:
            try:
                yield marshal.load(log)
            except EOFError:
                return


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--store", choices=("memory", "rocksdb"), default="memory")
    parser.add_argument("--core", action="store_true", help="the processor alone, no broker")
    parser.add_argument("--batch", type=int, default=5_000, help="events per batch (--core)")
    parser.add_argument(
        "--app", choices=("reference", "process"), default="reference", help="with --core"
    )
    parser.add_argument(
        "--no-local-state",
        action="store_true",
        help="restart without the RocksDB stores' checkpoints (a full replay)",
    )
    args = parser.parse_args()
    if args.core:
        print(orjson.dumps(core(args.events, args.batch, args.store, args.app)).decode())
        return
    figures = measure_state(
        KafkaSettings.from_env(), args.events, args.store, local_state=not args.no_local_state
    )
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
