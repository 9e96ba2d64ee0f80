"""``TestDriver``: run an app with no broker, as Kafka Streams' ``TopologyTestDriver`` does.

Feed records to an app's topics (with keys, timestamps and partitions), move the wall clock,
and read what every topic received: outputs, dead letters, late records, repartition and
changelog topics. The driver runs the same compiled segments and the same record collector
as a real worker, so the records are the ones a worker would write; only Kafka is replaced
by in-memory topics (partitioned by the murmur2 of the key, like Kafka's producers).

    from streams.testing import TestDriver

    driver = TestDriver(app)
    driver.send("orders", {"order_id": "o1", "customer_id": "c1", "ts": 1_000, ...})
    driver.advance(60_000)                   # idle partitions close their windows
    assert driver.values("revenue-per-customer") == [...]

Each :meth:`send` is one fetched batch; :meth:`send_many` sends several records as one.

User code that raises (or returns what it may not) dead-letters its event, as in a worker.
``TestDriver(app, raise_errors=True)`` also raises the first such exception from the call
that met it (``send``, ``advance``, ...), unchained, with a traceback that runs through the
generated loop's lines to the user's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import TopicPartition

from streams.api.app import App
from streams.broker.batches import Headers, partition_for
from streams.config import Settings
from streams.core.failures import Site
from streams.core.formats import FormatDecoder, FormatEncoder
from streams.core.process import ProcessState
from streams.core.segment import SegmentTask
from streams.dlq import header_map
from streams.errors import StreamsError
from streams.registry import MemoryRegistry
from streams.runtime.calls import drive
from streams.runtime.collector import Collector
from streams.runtime.formats import encoder_for, register_outputs
from streams.runtime.health import RunStats
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.processing import compile_plan, run_partition
from streams.runtime.tables import apply_records
from streams.runtime.tasks import PartitionTask
from streams.runtime.topics import TopicLayout
from streams.topology.nodes import Process
from streams.topology.plan import plan

T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """A record as a topic holds it: ``value`` decoded from JSON (raw bytes if it is not)."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: Any
    timestamp: int
    headers: dict[str, str] = field(default_factory=dict)
    raw_key: bytes | None = None
    raw_value: bytes | None = None


@dataclass(frozen=True)
class _Stored:
    """What an in-memory partition holds: the fields the runtime reads of a Kafka record."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: Headers


class _Topics:
    """In-memory topics: ``logs[topic][partition]`` is a list of records."""

    def __init__(self, partitions: Mapping[str, int]) -> None:
        self.partitions = dict(partitions)
        self.logs: dict[str, list[list[_Stored]]] = {
            name: [[] for _ in range(count)] for name, count in partitions.items()
        }
        self.clock = 0

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        *,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        log = self.logs[topic][partition]
        ts = self.clock if timestamp_ms is None else timestamp_ms
        log.append(_Stored(len(log), key, value, ts, list(headers or [])))

    def extend(
        self,
        topic: str,
        partition: int,
        records: Sequence[tuple[Any, ...]],
        *,
        timestamps: bool = False,
    ) -> None:
        for record in records:
            self.append(
                topic,
                partition,
                record[0],
                record[1],
                timestamp_ms=record[2] if timestamps else None,
            )

    def extend_whole(
        self, topic: str, partition: int, records: Sequence[tuple[Any, ...]], *, cap: int
    ) -> bool:
        """In memory, a write is always whole."""
        self.extend(topic, partition, records)
        return True

    def fits(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None
    ) -> bool:
        """No size limits in memory."""
        return True

    def room(self, topic: str) -> int:
        """No size limits in memory."""
        return 2**62


class TestDriver:
    """An app run in memory: ``partitions`` per topic it creates, wall clock at ``now_ms``.

    ``settings`` (default: the ``STREAMS_*`` environment's, unset ones at their defaults)
    supplies the idle timeout and the message size limit.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        app: App,
        *,
        partitions: int = 1,
        now_ms: int = 0,
        settings: Settings | None = None,
        raise_errors: bool = False,
    ) -> None:
        self.app = app
        self.raise_errors = raise_errors
        settings = settings or Settings()
        self.settings = dataclasses.replace(settings, app_id=app.name, partitions=partitions)
        self.plan = plan(app.decl, app.name)
        self.now_ms = now_ms
        counts = {t.name: partitions for t in self.plan.topics}
        self._topics = _Topics(counts)
        self._topics.clock = now_ms
        self.metrics = WorkerMetrics()
        self.stats = RunStats()
        # format="avro"/"json-schema" topics use a registry in memory: output schemas are
        # registered as a worker registers them, and sent values encoded with their topic's.
        self.registry = MemoryRegistry()
        self._writers: dict[tuple[str, str], FormatEncoder] = {}
        encoders = register_outputs(self.plan, self.registry) if self.plan.formats else {}
        self._collector = Collector(
            self.plan, TopicLayout(counts, {}), self.metrics, self.stats, encoders=encoders
        )
        self.tables: dict[str, dict[str, Any]] = {name: {} for name in self.plan.tables}
        self._decoders, self._compiled = compile_plan(
            self.plan, self.settings.max_message_bytes, schemas=self.registry
        )
        self._readers = {
            name: FormatDecoder(name, decl.format, self.registry, 1 << 62)
            for name, decl in self.plan.formats.items()
        }
        for site in self._sites():
            site.capture = raise_errors
        self._dlq_of_input = {segment.input: segment.dlq for segment in self.plan.segments}
        self._dlq_of_input.update(
            (s.right.input, s.right.dlq) for s in self.plan.segments if s.right is not None
        )
        # How far each input partition has been processed.
        self._consumed: dict[tuple[str, int], int] = {}
        self._tasks: dict[tuple[str, int], PartitionTask] = {}
        self._caches: dict[str, dict[int, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_tasks()

    # -- feeding -------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: Any,
        *,
        key: str | bytes | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
        headers: Mapping[str, str] | None = None,
        schema: str | os.PathLike[str] | None = None,
    ) -> None:
        """Publish one record and process it (one batch). ``value`` is JSON-encoded unless it
        is bytes (or None, a tombstone); ``timestamp`` defaults to the wall clock. On a
        ``format="avro"``/``"json-schema"`` topic it is encoded in the wire format with
        ``schema`` (a file), else the topic's declared schema, registered in memory."""
        self.send_many(
            topic,
            [value],
            key=key,
            timestamp=timestamp,
            partition=partition,
            headers=headers,
            schema=schema,
        )

    def send_many(
        self,
        topic: str,
        values: Iterable[Any],
        *,
        key: str | bytes | None = None,
        keys: Iterable[str | bytes | None] | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
        headers: Mapping[str, str] | None = None,
        schema: str | os.PathLike[str] | None = None,
    ) -> None:
        """Publish several records, then process them as one batch per partition."""
        self._require(topic)
        values = list(values)
        key_list = list(keys) if keys is not None else [key] * len(values)
        if len(key_list) != len(values):
            raise StreamsError(f"send_many: {len(values)} values but {len(key_list)} keys")
        for value, one_key in zip(values, key_list, strict=True):
            self.publish(
                topic,
                value,
                key=one_key,
                timestamp=timestamp,
                partition=partition,
                headers=headers,
                schema=schema,
            )
        self.process()

    def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: str | bytes | None = None,
        timestamp: int | None = None,
        partition: int | None = None,
        headers: Mapping[str, str] | None = None,
        schema: str | os.PathLike[str] | None = None,
    ) -> None:
        """Append a record without processing it yet (see :meth:`process`)."""
        self._require(topic)
        raw_key = key.encode() if isinstance(key, str) else key
        if value is None or isinstance(value, bytes):
            raw_value = value
        elif topic in self.plan.formats:
            raw_value = self._writer(topic, schema).encode_value(value)
        else:
            raw_value = orjson.dumps(value)
        parts = self._topics.partitions[topic]
        if partition is None:
            partition = 0 if raw_key is None else partition_for(raw_key, parts)
        elif not 0 <= partition < parts:
            raise StreamsError(f"topic {topic!r} has partitions 0..{parts - 1}, not {partition}")
        self._topics.append(
            topic,
            partition,
            raw_key,
            raw_value,
            timestamp_ms=self.now_ms if timestamp is None else timestamp,
            headers=[(k, v.encode()) for k, v in (headers or {}).items()],
        )
        if topic in self.tables:
            self._apply_table(topic, raw_key, raw_value)

    def _writer(self, topic: str, schema: str | os.PathLike[str] | None) -> FormatEncoder:
        """The encoder of values sent to a format topic: ``schema``, else the topic's own."""
        decl = self.plan.formats[topic]
        path = Path(schema) if schema is not None else decl.schema
        if path is None:
            raise StreamsError(
                f"topic {topic!r} is format={decl.format!r} and declares no schema: pass "
                "send(..., schema='file') to encode the value with, or send the wire bytes"
            )
        writer = self._writers.get((topic, str(path)))
        if writer is None:
            writer = encoder_for(topic, decl.format, path, self.registry)
            self._writers[(topic, str(path))] = writer
        return writer

    def put(self, table: str, key: str, value: Any) -> None:
        """Set a table's value for ``key`` (``None`` deletes it), as a compacted topic write."""
        if table not in self.tables:
            raise StreamsError(f"{table!r} is not a table of app {self.app.name!r}")
        self.publish(table, value, key=key)

    def process(self) -> None:
        """Process every published record not processed yet, repartition hops included."""
        self._run(self._drain())

    def advance(self, ms: int) -> None:
        """Move the wall clock ``ms`` forward; idle partitions advance their stream time
        (closing windows) as in a worker."""
        self.now_ms += ms
        self._topics.clock = self.now_ms
        self._run(self._tick())

    def restart(self) -> None:
        """Rebuild every task from its changelog, as a worker that took the partitions over
        (after a crash or a rebalance) would."""
        self._start_tasks()

    # -- reading -------------------------------------------------------------------------

    def records(self, topic: str) -> list[Record]:
        """Every record ``topic`` received, partition by partition, in offset order."""
        self._require(topic)
        out = []
        reader = self._readers.get(topic)
        for partition, log in enumerate(self._topics.logs[topic]):
            for stored in log:
                record = _record(topic, partition, stored)
                if reader is not None and stored.value is not None:
                    _, values, _ = reader.decode([stored.value])
                    if values:
                        record = dataclasses.replace(record, value=values[0])
                out.append(record)
        return out

    def values(self, topic: str) -> list[Any]:
        """The decoded values of :meth:`records`."""
        return [record.value for record in self.records(topic)]

    def finals(self, topic: str) -> list[dict[str, Any]]:
        """The final window records of an aggregate output (updates left out)."""
        return [v for v in self.values(topic) if isinstance(v, dict) and v.get("final") is True]

    def dead_letters(self, topic: str) -> list[Record]:
        """What went to ``topic``'s dead-letter topic (``<topic>.dlq`` unless declared)."""
        return self.records(self._decl_dlq(topic))

    def late(self, topic: str) -> list[Record]:
        """Late records of ``topic``'s events: those of its windows (``<topic>.late`` unless
        declared) and of its joins (``<topic>.late``)."""
        names = [
            s.late
            for s in self.plan.segments
            if s.late and (s.source is not None and s.source.name == topic)
        ]
        if f"{topic}.late" in self._topics.logs:
            names.append(f"{topic}.late")
        return [r for name in dict.fromkeys(names) for r in self.records(name)]

    def state(self, pipeline: str, key: str, *, operator: int = 0) -> dict[str, Any]:
        """The state a ``.process`` of ``pipeline`` holds for ``key`` (names to values; empty
        when it holds none): the pipeline's first ``.process`` unless ``operator`` says which
        (0, 1, ... in declaration order)."""
        state = self._process_state(pipeline, key, operator)
        return {} if state is None else state.snapshot(key)

    def timers(self, pipeline: str, key: str, *, operator: int = 0) -> list[int]:
        """The timers pending for ``key`` in a ``.process`` of ``pipeline`` (see :meth:`state`)."""
        state = self._process_state(pipeline, key, operator)
        return [] if state is None else state.timers_of(key)

    def _process_state(self, pipeline: str, key: str, operator: int) -> ProcessState | None:
        declared = [
            (segment.index, n)
            for segment in self.plan.segments
            if segment.pipeline == pipeline
            for n, _ in enumerate(
                op for op in (*segment.ops, *segment.post) if isinstance(op, Process)
            )
        ]
        if not declared:
            raise StreamsError(f"pipeline {pipeline!r} has no .process (or there is no such one)")
        if not 0 <= operator < len(declared):
            raise StreamsError(f"pipeline {pipeline!r} has .process 0..{len(declared) - 1}")
        index, n = declared[operator]
        for task in self._tasks.values():
            for segment in task.segments:
                if segment.segment.pipeline == pipeline and segment.segment.index == index:
                    state = segment.processes[n]
                    if key in state.keys:
                        return state
        return None

    @property
    def topics(self) -> list[str]:
        """Every topic of the app."""
        return list(self._topics.logs)

    # -- inside --------------------------------------------------------------------------

    def _require(self, topic: str) -> None:
        if topic not in self._topics.logs:
            raise StreamsError(
                f"topic {topic!r} is not one of app {self.app.name!r}'s: "
                f"{', '.join(sorted(self._topics.logs))}"
            )

    def _decl_dlq(self, topic: str) -> str:
        for segment in self.plan.segments:
            if segment.source is not None and segment.source.name == topic:
                return segment.dlq
        return f"{topic}.dlq"

    def _apply_table(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        apply_records(self.tables[topic], [_Stored(0, key, value, 0, [])])

    def _start_tasks(self) -> None:
        self._tasks = {}
        self._joined: dict[tuple[int, int], SegmentTask] = {}  # a join's, for both inputs
        for topic in self.plan.inputs:
            for partition in range(self._topics.partitions[topic]):
                self._tasks[(topic, partition)] = self._task(topic, partition)

    def _task(self, topic: str, partition: int) -> PartitionTask:
        segments = []
        for compiled in self._compiled[topic]:
            name = compiled.segment.name
            shared = self._joined.get((id(compiled), partition))
            if shared is not None:
                segments.append(shared)
                continue
            task = SegmentTask(
                compiled,
                idle_timeout_ms=self.settings.idle_timeout_ms,
                tables=self.tables,
                caches=self._caches.setdefault(name, {}),
            )
            changelog = compiled.segment.changelog
            if changelog is not None:
                for stored in self._topics.logs[changelog][partition]:
                    task.apply_changelog(stored.key or b"", stored.value)
            task.finish_restore(self.settings.on_state_change)
            if compiled.segment.right is not None:
                self._joined[(id(compiled), partition)] = task
            segments.append(task)
        task_of = PartitionTask(TopicPartition(topic, partition), self._decoders[topic], segments)
        positions = [s.position_of(topic) for s in segments]
        position = min((p for p in positions if p is not None), default=None)
        if position is not None and all(s.stateful for s in segments):
            self._consumed[(topic, partition)] = position
        else:
            self._consumed.setdefault((topic, partition), 0)
        return task_of

    async def _drain(self) -> None:
        """Process new records until no topic the app reads has any (repartition hops)."""
        while True:
            progressed = False
            for (topic, partition), task in self._tasks.items():
                log = self._topics.logs[topic][partition]
                start = self._consumed[(topic, partition)]
                if start >= len(log):
                    continue
                records = log[start:]
                self._consumed[(topic, partition)] = len(log)
                await run_partition(
                    task,
                    records,
                    self.now_ms,
                    self._collector,
                    self._topics,
                    self._topics,
                    self._dlq_of_input[topic],
                )
                progressed = True
            # A join takes what both its inputs brought, in event-time order.
            for segment, partition in self._joins():
                outcome = await drive(segment.drain_join(self.now_ms))
                tp = TopicPartition(segment.segment.input, partition)
                self._collector.outcome(self._topics, segment, tp, (), outcome, self.now_ms)
                self._collector.changelog(self._topics, segment, partition)
            if not progressed:
                return

    def _joins(self) -> list[tuple[SegmentTask, int]]:
        return [(segment, p) for (_, p), segment in self._joined.items()]

    async def _tick(self) -> None:
        for (topic, partition), task in self._tasks.items():
            tp = TopicPartition(topic, partition)
            for segment in task.segments:
                if segment.join is not None and topic != segment.segment.input:
                    continue  # a join's task ticks once, with its first input
                outcome = await drive(segment.tick(self.now_ms, caught_up=True))
                self._collector.outcome(self._topics, segment, tp, (), outcome, self.now_ms)
                self._collector.changelog(self._topics, segment, partition)
        await self._drain()

    def _sites(self) -> list[Site]:
        return [site for compiled in self._compiled.values() for c in compiled for site in c.sites]

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion, also from inside a running event loop (an async
        test): then on a private loop in a helper thread. With ``raise_errors``, then raise
        the first user exception it met."""
        try:
            asyncio.get_running_loop()
            running = True
        except RuntimeError:
            running = False
        # Outside the ``except`` above, so what escapes is not chained to its RuntimeError.
        if running:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                result = pool.submit(asyncio.run, coro).result()
        else:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
            result = self._loop.run_until_complete(coro)
        if self.raise_errors:
            captured = [exc for site in self._sites() if (exc := site.take_captured())]
            if captured:
                raise captured[0]
        return result

    def close(self) -> None:
        """Release the driver's event loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> TestDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _record(topic: str, partition: int, stored: _Stored) -> Record:
    value: Any = stored.value
    if value is not None:
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            value = stored.value
    key = None if stored.key is None else stored.key.decode("utf-8", "replace")
    return Record(
        topic,
        partition,
        stored.offset,
        key,
        value,
        stored.timestamp,
        header_map(stored.headers),
        stored.key,
        stored.value,
    )
