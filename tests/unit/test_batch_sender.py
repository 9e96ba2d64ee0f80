"""The batched producer's own parts, no broker: the partitioner against aiokafka's (the Java
client's) murmur2, and ``BatchSender.extend`` against record-by-record ``append``."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2 as reference_murmur2
from aiokafka.producer.message_accumulator import BatchBuilder, MessageBatch
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.broker.batches import Acked, BatchSender, fields, murmur2, partition_for
from tests.unit.runtime.fakes import FakeProducer


@given(st.binary(max_size=80))
@settings(max_examples=2_000)
def test_murmur2_is_the_java_clients(data: bytes) -> None:
    assert murmur2(data) == reference_murmur2(data)


def test_known_partitions() -> None:
    # The Java client's DefaultPartitioner puts these keys here (murmur2 & 0x7fffffff % n).
    for key in (b"", b"a", b"user-1", b"user-12345", "ü-ключ".encode()):
        expected = (reference_murmur2(key) & 0x7FFFFFFF) % 6
        assert partition_for(key, 6) == expected


@pytest.fixture
def producer() -> AIOKafkaProducer:
    # Never started: batches are only built, not sent.
    async def make() -> AIOKafkaProducer:
        return AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=4096)

    return asyncio.new_event_loop().run_until_complete(make())


def _built(sender: BatchSender) -> list[tuple[str, int, bytes, int]]:
    full = [(t, p, bytes(b._build()), len(kept)) for t, p, b, kept in sender._full]
    opened = [
        (t, p, bytes(b._build()), len(kept)) for (t, p), (b, kept) in sorted(sender._open.items())
    ]
    return full + opened


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.one_of(st.none(), st.binary(max_size=30)),
            st.one_of(st.none(), st.binary(max_size=600)),
        ),
        max_size=120,
    )
)
@settings(max_examples=150, deadline=None)
def test_extend_builds_the_batches_append_builds(records: list) -> None:
    async def make() -> AIOKafkaProducer:
        return AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=2048)

    producer = asyncio.new_event_loop().run_until_complete(make())
    one = BatchSender(producer, retain=True)
    bulk = BatchSender(producer, retain=True)
    for partition, key, value in records:
        one.append("t", partition, key, value, timestamp_ms=7)
    for partition in range(3):
        mine = [(key, value, 7) for p, key, value in records if p == partition]
        half = len(mine) // 2  # two calls: the second goes on where the first stopped
        bulk.extend("t", partition, mine[:half], timestamps=True)
        bulk.extend("t", partition, mine[half:], timestamps=True)
    for sender in (one, bulk):
        counts = [b.record_count() for *_, b, _ in sender._full]
        counts += [b.record_count() for b, _ in sender._open.values()]
        assert sum(counts) == len(records)  # what send_all and the broker's offsets go by
    # Batches fill and split alike; per partition the same bytes in the same order.
    by_partition = {p: [b for t, q, b, _ in _built(one) if q == p] for p in range(3)}
    assert by_partition == {p: [b for t, q, b, _ in _built(bulk) if q == p] for p in range(3)}
    assert one.records == bulk.records == len(records)
    # What a resend after a failure replays: every record, in order per partition.
    for partition in range(3):
        expected = [(k, v, 7, []) for p, k, v in records if p == partition]
        assert [fields(r) for t, p, r in one.unacked() if p == partition] == expected
        assert [fields(r) for t, p, r in bulk.unacked() if p == partition] == expected


def test_extend_without_timestamps_keeps_pairs(producer: AIOKafkaProducer) -> None:
    sender = BatchSender(producer)
    pairs = [(b"k%d" % i, b"v" * 100) for i in range(200)]
    sender.extend("changelog", 4, pairs)
    assert sender.records == 200
    assert len(sender._full) >= 1  # 200 records of ~110 bytes overflow 4 KB batches
    kept = [record for *_, batch_kept in sender._full for record in batch_kept]
    kept += sender._open[("changelog", 4)][1]
    assert [fields(r)[:2] for r in kept] == pairs
    assert all(fields(r)[2] is None for r in kept)


async def test_acknowledgements_note_where_each_partitions_records_end() -> None:
    """Batches acknowledged while waiting for room count too, not only those of the flush."""
    producer = FakeProducer()
    sender = BatchSender(producer, max_pending=1)  # type: ignore[arg-type]
    for n in range(3):
        sender.append("log", 0, b"k%d" % n, b"v")
        await sender.send_all()  # one batch each; the second waits for the first
    sender.extend("log", 1, [(b"a", b"1"), (b"b", None)])
    await sender.flush()
    assert sender.acked == {
        ("log", 0): Acked(3, (b"k2", b"v", None, [])),
        ("log", 1): Acked(2, (b"b", None)),
    }


async def test_a_flush_sends_its_batches_without_the_producers_linger() -> None:
    class Producer:
        """Keeps what is sent; a batch as aiokafka's accumulator would hold it."""

        def __init__(self) -> None:
            self.queued: list[MessageBatch] = []

        def create_batch(self) -> BatchBuilder:
            return BatchBuilder(1 << 16, 0, is_transactional=False)

        async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
            self.queued.append(MessageBatch(TopicPartition(topic, partition), batch, 30, 0.005))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

    producer = Producer()
    sender = BatchSender(producer)  # type: ignore[arg-type]
    sender.append("out", 0, b"k", b"v")
    sender.extend("out", 1, [(b"k", b"v")])
    await sender.flush()
    assert len(producer.queued) == 2
    # Ready to send now: an open batch would wait 5 ms for more records first.
    assert [batch.remaining_linger() for batch in producer.queued] == [None, None]


async def test_sends_given_up_on_report_no_unretrieved_error() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    futures: list[asyncio.Future[Any]] = []

    class Producer:
        def create_batch(self) -> BatchBuilder:
            return BatchBuilder(1 << 16, 0, is_transactional=False)

        async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
            futures.append(loop.create_future())
            return futures[-1]

    for abandon in (False, True):
        sender = BatchSender(Producer())  # type: ignore[arg-type]
        sender.append("out", 0, b"k", b"v")
        await sender.send_all()
        if abandon:
            sender.abandon()  # a batch voided before its flush
        futures.pop().set_exception(KafkaError("the producer died"))
        await asyncio.sleep(0)
        del sender
        gc.collect()
        assert len(reported) == (0 if abandon else 1)
        reported.clear()


def _batches(sender: BatchSender) -> list[tuple[str, int, int]]:
    """(topic, partition, records) of each batch queued or open, in order."""
    built = [(t, p, b.record_count()) for t, p, b, _ in sender._full]
    return built + [(t, p, b.record_count()) for (t, p), (b, _) in sender._open.items()]


def test_a_write_that_fits_the_topics_limit_is_one_batch_of_its_own(
    producer: AIOKafkaProducer,
) -> None:
    # 300 records of ~60 bytes: ~24 KB, past the producer's 4 KB batches, within the limit.
    records = [(b"key-%03d" % n, b"v" * 50) for n in range(300)]
    sender = BatchSender(producer, limits={"changelog": 1 << 20})
    sender.append("changelog", 0, b"before", b"x")  # an open batch: closed first, apart
    assert sender.extend_whole("changelog", 0, records, cap=1 << 20)
    sender.append("changelog", 0, b"after", b"x")  # and nothing joins the write's batch
    assert _batches(sender) == [("changelog", 0, 1), ("changelog", 0, 300), ("changelog", 0, 1)]
    written = [r.key for r in DefaultRecordBatch(bytes(sender._full[1][2]._build()))]
    assert written == [key for key, _ in records]


@pytest.mark.parametrize(("limits", "cap"), [({"changelog": 8_000}, 1 << 20), ({}, 1 << 20)])
def test_a_write_past_the_limit_or_to_a_topic_of_unknown_limit_goes_in_batches(
    producer: AIOKafkaProducer, limits: dict[str, int], cap: int
) -> None:
    records = [(b"key-%03d" % n, b"v" * 50) for n in range(300)]
    sender = BatchSender(producer, limits=limits)
    assert not sender.extend_whole("changelog", 0, records, cap=cap)
    batches = _batches(sender)
    assert len(batches) > 1
    assert sum(count for _, _, count in batches) == 300


def test_a_write_past_the_cap_goes_in_batches(producer: AIOKafkaProducer) -> None:
    records = [(b"key-%03d" % n, b"v" * 50) for n in range(300)]
    sender = BatchSender(producer, limits={"changelog": 1 << 20})
    assert not sender.extend_whole("changelog", 0, records, cap=10_000)
    assert len(_batches(sender)) > 1


def test_a_resend_after_a_failed_flush_keeps_a_whole_write_whole(
    producer: AIOKafkaProducer,
) -> None:
    records = [(b"key-%03d" % n, b"v" * 50) for n in range(300)]
    failed = BatchSender(producer, limits={"changelog": 1 << 20}, retain=True)
    failed.append("changelog", 1, b"alone", b"x")
    assert failed.extend_whole("changelog", 0, records, cap=1 << 20)
    again = BatchSender(producer, limits={"changelog": 1 << 20}, retain=True)
    again.resend_unacked(failed)
    assert sorted(_batches(again)) == [("changelog", 0, 300), ("changelog", 1, 1)]
    assert again.unacked() == failed.unacked()
