"""Every use of another library's private internals, and the start-up check that they exist.

Four measured speed-ups reach past a library's public API (docs/BENCHMARKS.md):

- aiokafka's fetcher hands out its parsed C records, taken batch by batch, instead of one
  ``ConsumerRecord`` per record (:func:`use_raw_records`, for the consumers that
  :class:`streams.broker.records.RawRecordsConsumer` makes);
- records go straight into the C builder of an aiokafka ``BatchBuilder``, and batches are
  sized below the producer's own size (:func:`raw_builder`, :func:`sized_batch`);
- prometheus-client takes many equal observations of a histogram in one step
  (:func:`observe_many`);
- aiokafka retries a transaction that the broker finds still busy with the one before it
  after 5 ms instead of 20 (:func:`quick_transaction_retry`);

and the lag collector sends requests through the admin client's own client
(:func:`admin_connection`). Such internals change without notice, so ``pyproject.toml``
bounds both libraries to the versions tested (:data:`SUPPORTED`), and :func:`check`, which
a worker runs first when it starts, fails with one line naming the library, its installed
version and the supported range when any of them is gone, instead of an ``AttributeError``
in the middle of the hot path. Nothing outside this module touches those internals.
"""

from __future__ import annotations

import inspect
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from importlib import import_module, metadata
from typing import Any

import aiokafka.errors as errors

from streams.errors import DependencyError

# The versions tested, as pyproject.toml bounds them (a unit test holds the two equal).
SUPPORTED = {"aiokafka": ">=0.14.0,<0.15", "prometheus-client": ">=0.20,<0.27"}


# -- the start-up check ---------------------------------------------------------------------

# (module, class or None, names): each class must have the names as attributes, or set them
# in its ``__init__`` (instance attributes, found among the names its code stores: checked
# without building an instance or starting a client); a module-level name has class None.
_AIOKAFKA: tuple[tuple[str, str | None, tuple[str, ...]], ...] = (
    ("aiokafka.consumer.fetcher", None, ("PartitionRecords", "FetchResult", "READ_COMMITTED")),
    (
        "aiokafka.consumer.fetcher",
        "PartitionRecords",
        (
            "_consumer_record",
            "_consume_aborted_up_to",
            "_contains_abort_marker",
            "_records",
            "_records_iterator",
            "_tp",
            "_check_crcs",
            "_isolation_level",
            "_aborted_producers",
            "_key_deserializer",
            "_value_deserializer",
            "next_fetch_offset",
        ),
    ),
    (
        "aiokafka.consumer.fetcher",
        "FetchResult",
        (
            "getall",
            "getone",
            "check_assignment",
            "_update_position",
            "_partition_records",
            "_topic_partition",
        ),
    ),
    ("aiokafka.producer.producer", "AIOKafkaProducer", ("_message_accumulator", "_txn_manager")),
    (
        "aiokafka.producer.message_accumulator",
        "MessageAccumulator",
        ("_batch_size", "_compression_type"),
    ),
    (
        "aiokafka.producer.message_accumulator",
        "BatchBuilder",
        ("_builder", "_relative_offset", "close"),
    ),
    ("aiokafka.admin.client", "AIOKafkaAdminClient", ("_client",)),
    ("aiokafka.producer.sender", None, ("BACKOFF_OVERRIDE",)),
)


def check() -> None:
    """Raise :class:`~streams.errors.DependencyError` (one line) when an installed library
    lacks an internal this module uses."""
    for library, missing in (
        ("aiokafka", _aiokafka_missing()),
        ("prometheus-client", _prometheus_missing()),
    ):
        if missing:
            raise DependencyError(
                f"{library} {_installed(library)} is installed, but streams supports "
                f"{library}{SUPPORTED[library]} (internals it relies on are gone: "
                f"{', '.join(missing)}); install a supported version: "
                f"pip install '{library}{SUPPORTED[library]}'"
            )


def _installed(library: str) -> str:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _aiokafka_missing() -> list[str]:
    missing: list[str] = []
    for module_name, class_name, names in _AIOKAFKA:
        try:
            module = import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        owner = module if class_name is None else getattr(module, class_name, None)
        if owner is None:
            missing.append(f"{module_name}.{class_name}")
            continue
        stored = () if class_name is None else _stored_names(owner)
        where = module_name if class_name is None else f"{module_name}.{class_name}"
        missing += [f"{where}.{n}" for n in names if not hasattr(owner, n) and n not in stored]
        if class_name == "BatchBuilder" and "is_transactional" not in _parameters(owner):
            missing.append(f"{where}(is_transactional=...)")
    return missing


def _parameters(cls: Any) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return ()


def _stored_names(cls: Any) -> tuple[str, ...]:
    init = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    return () if code is None else code.co_names


def _prometheus_missing() -> list[str]:
    from prometheus_client import Histogram

    histogram = Histogram("streams_compat_check", "Never registered.", registry=None)
    missing = [
        f"Histogram.{name}"
        for name in ("_buckets", "_upper_bounds", "_sum")
        if not hasattr(histogram, name)
    ]
    if not missing and not all(hasattr(v, "inc") for v in (histogram._sum, *histogram._buckets)):
        missing.append("Histogram._buckets[i].inc")
    return missing


# -- aiokafka: raw records, batch by batch --------------------------------------------------


def keep_raw(data: bytes | None) -> bytes | None:
    """The deserializer that marks a consumer whose records :func:`use_raw_records` hands
    out raw: the fetcher passes it on to each fetch's ``PartitionRecords``, which the patched
    methods recognise by it. Where they are not installed it keeps the bytes as they are, so
    a marked consumer still works (with ``ConsumerRecord`` objects)."""
    return data


_originals: dict[str, Any] = {}


def use_raw_records() -> None:
    """Patch aiokafka's fetcher classes (once per process) so that consumers marked with
    :func:`keep_raw` yield parsed C records and ``getmany`` takes them batch by batch.
    Consumers without the mark go through aiokafka's own code, unchanged."""
    if _originals:
        return
    fetcher = import_module("aiokafka.consumer.fetcher")
    _originals.update(
        record=fetcher.PartitionRecords._consumer_record,
        getall=fetcher.FetchResult.getall,
        getone=fetcher.FetchResult.getone,
        read_committed=fetcher.READ_COMMITTED,
    )
    fetcher.PartitionRecords._consumer_record = _raw_record
    fetcher.FetchResult.getall = _getall
    fetcher.FetchResult.getone = _getone


def _raw_record(self: Any, tp: Any, record: Any) -> Any:
    if self._value_deserializer is keep_raw:
        return record
    return _originals["record"](self, tp, record)


def _record_lists(parts: Any) -> Iterator[tuple[list[Any], int]]:
    """Each record batch's records at or past the fetch offset, with the batch's next offset;
    skips what ``PartitionRecords._unpack_records`` skips (aborted transactions under
    read_committed, control batches), moving ``next_fetch_offset`` past them as it does."""
    records = parts._records
    read_committed = _originals["read_committed"]
    while records.has_next():
        batch = records.next_batch()
        if parts._check_crcs and not batch.validate_crc():
            raise errors.CorruptRecordException(f"Invalid CRC - {parts._tp}")
        if parts._isolation_level == read_committed and batch.producer_id is not None:
            parts._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and parts._contains_abort_marker(batch):
                parts._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in parts._aborted_producers:
                parts.next_fetch_offset = batch.next_offset
                continue
        if batch.is_control_batch:
            parts.next_fetch_offset = batch.next_offset
            continue
        got = list(batch)
        if got and got[0].offset < parts.next_fetch_offset:
            start = parts.next_fetch_offset  # a compressed message set fetched from before
            got = [record for record in got if record.offset >= start]
        yield got, batch.next_offset


class _Bulk:
    """What a ``PartitionRecords`` has left, taken in lists."""

    def __init__(self, parts: Any) -> None:
        self.batches = _record_lists(parts)
        self.left: list[Any] = []
        self.left_next = 0  # the next offset of the batch ``left`` comes from

    def take(self, parts: Any, limit: int | None) -> tuple[list[Any], bool]:
        """Up to ``limit`` records (all of them with None) and whether none are left."""
        out: list[Any] = []
        while True:
            left = self.left
            if left:
                room = len(left) if limit is None else limit - len(out)
                if room < len(left):
                    taken = left[:room]
                    self.left = left[room:]
                    out += taken
                    parts.next_fetch_offset = taken[-1].offset + 1
                    return out, False
                out += left
                self.left = []
                parts.next_fetch_offset = self.left_next
            if limit is not None and len(out) >= limit:
                return out, False
            nxt = next(self.batches, None)
            if nxt is None:
                return out, True
            self.left, self.left_next = nxt
            if not self.left:  # every record of the batch compacted away or fetched before
                parts.next_fetch_offset = self.left_next


def _getall(self: Any, max_records: int | None = None) -> list[Any]:
    bulk = _bulk_of(self)
    if bulk is None:
        return _originals["getall"](self, max_records)
    return _take(self, bulk, max_records)


def _getone(self: Any) -> Any:
    bulk = getattr(self, "_streams_bulk", None)
    if bulk is None:  # never taken in bulk: aiokafka's own path
        return _originals["getone"](self)
    taken = _take(self, bulk, 1)
    return taken[0] if taken else None


def _bulk_of(result: Any) -> _Bulk | None:
    """The bulk state of a fetch result, made on first use; None when its records take
    aiokafka's own path (a consumer without the :func:`keep_raw` mark, or ``getone`` already
    started on them).

    It lives on the ``FetchResult``, never on its ``PartitionRecords``: a reference back
    would make a cycle that keeps each fetched buffer alive until a full collection, which
    the worker runs rarely (a 1M-key worker peaked 57 MB higher with one, from aiokafka's
    unstarted iterator).
    """
    bulk: _Bulk | None = getattr(result, "_streams_bulk", None)
    if bulk is not None:
        return bulk
    parts = result._partition_records
    if parts is None or parts._value_deserializer is not keep_raw:
        return None
    started = parts._records_iterator
    if started is None or inspect.getgeneratorstate(started) != inspect.GEN_CREATED:
        return None
    # aiokafka's own record iterator, never started, is a generator holding its
    # PartitionRecords: a cycle until it runs out, which it never does here.
    parts._records_iterator = iter(())
    started.close()
    bulk = result._streams_bulk = _Bulk(parts)
    return bulk


def _take(result: Any, bulk: _Bulk, limit: int | None) -> list[Any]:
    parts = result._partition_records
    if parts is None or not result.check_assignment(result._topic_partition):
        result._streams_bulk = None
        return []
    taken, exhausted = bulk.take(parts, limit)
    result._update_position()
    if exhausted:
        result._partition_records = None
        result._streams_bulk = None
    return taken


# -- aiokafka: the producer's batches -------------------------------------------------------


def batch_size(producer: Any) -> int:
    """The size of the batches ``producer.create_batch()`` makes (its ``max_batch_size``)."""
    return producer._message_accumulator._batch_size


def sized_batch(producer: Any, size: int) -> Any:
    """An empty ``BatchBuilder`` of at most ``size`` bytes, with ``producer``'s compression
    and transactional flag (what ``producer.create_batch()`` makes, smaller)."""
    from aiokafka.producer.message_accumulator import BatchBuilder

    txn = producer._txn_manager
    return BatchBuilder(
        size,
        producer._message_accumulator._compression_type,
        is_transactional=bool(txn is not None and txn.transactional_id is not None),
    )


def raw_builder(batch: Any) -> tuple[Any, int]:
    """A ``BatchBuilder``'s C builder and the count of records in it, to append to the
    builder directly (``builder.append(offset, timestamp, key, value, headers)``, the
    offset counting from that count); :func:`appended` then tells the batch the new count."""
    return batch._builder, batch._relative_offset


def appended(batch: Any, count: int) -> None:
    """The batch's C builder now holds ``count`` records (see :func:`raw_builder`)."""
    batch._relative_offset = count


# -- aiokafka: transactions ---------------------------------------------------------------

# A transaction's first AddPartitionsToTxn that the broker answers CONCURRENT_TRANSACTIONS
# (the producer's previous transaction is committed, its markers not all written yet) is
# retried after this long; aiokafka's own value is 20 ms (Kafka's KAFKA-5477).
TRANSACTION_RETRY_S = 0.005


def quick_transaction_retry() -> None:
    """Retry the first partitions of a transaction after :data:`TRANSACTION_RETRY_S` when
    the one before it is still completing. An exactly_once worker begins a task's next
    transaction as soon as the last one is committed, and the markers of that one take a
    few milliseconds: 20 ms per such retry was a fifth of its latency's tail (measured,
    docs/decisions/0019-latency.md)."""
    sender: Any = import_module("aiokafka.producer.sender")
    sender.BACKOFF_OVERRIDE = TRANSACTION_RETRY_S


# -- aiokafka: the admin client's connection ------------------------------------------------


def admin_connection(admin: Any) -> Any:
    """The started admin client's own ``AIOKafkaClient``: for requests (describe groups,
    metadata) the admin API has no method for."""
    return admin._client


# -- prometheus-client: histograms ----------------------------------------------------------


def observe_many(histogram: Any, observations: Iterable[tuple[float, int]]) -> None:
    """``count`` observations of each ``amount`` (a labelled child), one increment per
    bucket touched.

    Finals of one window, emitted together, share their latency; observing them one by one
    cost a few percent of the hot path. A sliding window's finals each have their own end
    (so their own latency) and fall in a few buckets: grouping them is what is cheap.
    """
    bounds = histogram._upper_bounds
    counts: dict[int, int] = {}
    total = 0.0
    for amount, count in observations:
        total += amount * count
        bucket = bisect_left(bounds, amount)  # the first bound >= amount (the last is +Inf)
        counts[bucket] = counts.get(bucket, 0) + count
    histogram._sum.inc(total)
    buckets = histogram._buckets
    for bucket, count in counts.items():
        buckets[bucket].inc(count)
