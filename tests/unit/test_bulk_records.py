"""``getmany``'s batch-by-batch path (streams.compat, for a RawRecordsConsumer) against
aiokafka's own record-by-record one, on real record batches built by aiokafka's C builder:
the same records, the same positions, whatever ``max_records`` cuts, with a fetch offset
inside a batch, transactional batches and aborted transactions under read_committed."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import compat

TP = TopicPartition("t", 0)


class _State:
    def __init__(self, position: int) -> None:
        self.paused = False
        self.position = position

    def consumed_to(self, position: int) -> None:
        self.position = position


class _Assignment:
    """What ``FetchResult.check_assignment`` reads of a subscription's assignment."""

    active = True

    def __init__(self, position: int) -> None:
        self.state = _State(position)

    def state_value(self, tp: TopicPartition) -> _State:
        return self.state


def _buffer(batches: list[tuple[int, int, int]]) -> bytes:
    """Record batches ``(base offset, records, producer id or -1)``, back to back."""
    out = b""
    for base, count, producer in batches:
        builder = DefaultRecordBatchBuilder(
            2, 0, producer >= 0, producer, 0 if producer >= 0 else -1, 0, 1 << 20
        )
        for n in range(count):
            builder.append(n, 1_000 + n, b"k%d" % (base + n), b"v%d" % (base + n), [])
        raw = builder.build()
        raw[0:8] = base.to_bytes(8, "big")  # the base offset, as the broker assigns it
        out += bytes(raw)
    return out


def _partition_records(
    data: bytes, fetch_offset: int, aborted: list[tuple[int, int]], isolation: int, raw: bool
) -> Any:
    """What a consumer's fetcher makes of one fetch: a raw-records consumer's carries its
    deserializer mark (compat.keep_raw), a plain consumer's none."""
    mark = compat.keep_raw if raw else None
    return fetcher.PartitionRecords(
        TP, MemoryRecords(data), aborted, fetch_offset, mark, mark, True, isolation
    )


def _drain(
    data: bytes,
    fetch_offset: int,
    cuts: list[int],
    aborted: list[tuple[int, int]],
    isolation: int,
    raw: bool,
) -> tuple[list[tuple[int, bytes]], list[int]]:
    parts = _partition_records(data, fetch_offset, aborted, isolation, raw)
    assignment = _Assignment(fetch_offset)
    result = fetcher.FetchResult(TP, assignment=assignment, partition_records=parts, backoff=0)
    got: list[tuple[int, bytes]] = []
    positions: list[int] = []
    cut = iter(cuts)
    while result.has_more():
        records: list[Any] = result.getall(next(cut, None))
        got += [(r.offset, r.value) for r in records]
        positions.append(assignment.state.position)
    return got, positions


batch_lists = st.lists(
    st.tuples(st.integers(1, 30), st.sampled_from([-1, 7, 9])), min_size=1, max_size=6
)


@given(
    batch_lists,
    st.integers(0, 40),
    st.lists(st.integers(1, 50), max_size=12),
    st.sampled_from([0, 1]),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_bulk_getall_is_aiokafkas(
    shape: list[tuple[int, int]], skip: int, cuts: list[int], isolation: int, abort: bool
) -> None:
    batches, base = [], 0
    for count, producer in shape:
        batches.append((base, count, producer))
        base += count
    data = _buffer(batches)
    fetch_offset = min(skip, base - 1)
    aborted = [(7, 0)] if abort else []  # producer 7's transaction aborted from offset 0
    compat.use_raw_records()
    expected = _drain(data, fetch_offset, cuts, aborted, isolation, raw=False)
    actual = _drain(data, fetch_offset, cuts, aborted, isolation, raw=True)
    assert actual[0] == expected[0]
    assert actual[1] == expected[1]  # the position after each call: where a fetch resumes
    if abort and isolation == fetcher.READ_COMMITTED:
        assert all(int(v[1:]) >= 0 for _, v in actual[0])
        skipped = {o for b, c, p in batches if p == 7 for o in range(b, b + c)}
        assert not skipped & {o for o, _ in actual[0]}


def test_getone_after_bulk_goes_on_where_it_stopped() -> None:
    data = _buffer([(0, 5, -1), (5, 5, -1)])
    compat.use_raw_records()
    parts = _partition_records(data, 0, [], 0, raw=True)
    assignment = _Assignment(0)
    result = fetcher.FetchResult(TP, assignment=assignment, partition_records=parts, backoff=0)
    first = result.getall(3)
    rest = []
    while (record := result.getone()) is not None:
        rest.append(record)
    assert [r.offset for r in first] == [0, 1, 2]
    assert [r.offset for r in rest] == [3, 4, 5, 6, 7, 8, 9]
    assert assignment.state.position == 10


def test_a_drained_fetch_is_freed_without_a_collection() -> None:
    # The worker collects cycles rarely: a cycle through the fetched records kept every
    # fetched buffer alive until then (a 1M-key worker peaked 57 MB higher).
    data = _buffer([(0, 50, -1), (50, 50, -1)])
    compat.use_raw_records()
    gc.disable()
    try:
        parts = _partition_records(data, 0, [], 0, raw=True)
        alive = weakref.ref(parts)
        result = fetcher.FetchResult(
            TP, assignment=_Assignment(0), partition_records=parts, backoff=0
        )
        del parts
        taken = []
        while result.has_more():
            taken += result.getall(30)
        assert len(taken) == 100
        del result
        assert alive() is None
    finally:
        gc.enable()


def test_only_a_marked_consumers_records_are_raw() -> None:
    # The patch is process-wide; its effect is not: a plain consumer beside the worker's
    # (one in a user's enrich function, say) still gets ConsumerRecords, by getall and getone.
    compat.use_raw_records()
    data = _buffer([(0, 3, -1)])
    for raw in (False, True):
        results = [
            fetcher.FetchResult(
                TP,
                assignment=_Assignment(0),
                partition_records=_partition_records(data, 0, [], 0, raw),
                backoff=0,
            )
            for _ in range(2)
        ]
        records = [*results[0].getall(), results[1].getone()]
        assert [r.value for r in records] == [b"v0", b"v1", b"v2", b"v0"]
        assert all(isinstance(r, ConsumerRecord) != raw for r in records)
