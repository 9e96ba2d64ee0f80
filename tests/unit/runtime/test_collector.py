"""Outputs the broker refused for good: the replay sends them to the dead-letter topic, and
the worker forgets them once it has."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError

from streams.broker.batches import Refused
from streams.core.outcome import Outcome
from streams.runtime.poison import ENTRY_OVERHEAD, KnownPoison
from tests.unit.runtime.fakes import INPUT, FakeLog, fake_worker

TP = TopicPartition(INPUT, 0)


class _Sink:
    """Records what the collector appends, per topic; everything fits."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[Any, ...]]] = {}

    def append(self, topic: str, partition: int, key: Any, value: Any, **_: Any) -> None:
        self.records.setdefault(topic, []).append((key, value))

    def extend(self, topic: str, partition: int, records: Any, *, timestamps: bool = False) -> None:
        self.records.setdefault(topic, []).extend((r[0], r[1]) for r in records)

    def extend_whole(self, topic: str, partition: int, records: Any, *, cap: int) -> bool:
        self.extend(topic, partition, records)
        return True

    def fits(self, topic: str, key: Any, value: Any, headers: Any) -> bool:
        return True

    def room(self, topic: str) -> int:
        return 1 << 30


async def test_a_replay_diverts_each_refused_output_once_then_forgets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = fake_worker(monkeypatch, FakeLog(), guarantee="at_least_once")
    collector = worker._collector
    assert collector is not None
    segment = worker.plan.segments[0]
    task: Any = SimpleNamespace(segment=segment)
    output, dlq = segment.output, segment.dlq
    denied = TopicAuthorizationFailedError()
    # The batch held the same output twice (identical events) and one other: all refused.
    refused = [(b"k", b"v", 1), (b"k", b"v", 1), (b"k2", b"v2", 1)]
    await worker._learn(Refused([(output, 0, refused, denied)]))

    def replay() -> _Sink:
        sink = _Sink()
        outputs: list[Any] = [
            (b"k", b"v", 1),
            (b"ok", b"fine", 1),
            (b"k", b"v", 1),
            (b"k2", b"v2", 1),
        ]
        collector.outcome(sink, task, TP, (), Outcome(outputs=outputs), 0)
        return sink

    first = replay()
    assert first.records[dlq] == refused_pairs(refused)
    assert first.records[output] == [(b"ok", b"fine")]
    # Nothing left to divert: the entries lived until the replay that needed them.
    assert not collector.known_poison
    # The same outputs from new input go to the broker again (which refuses them again if
    # it still must: learned again, replayed again).
    again = replay()
    assert dlq not in again.records


def refused_pairs(records: list[tuple[bytes, bytes, int]]) -> list[tuple[bytes, bytes]]:
    return [(key, value) for key, value, _ in records]


def test_entries_whose_replay_never_comes_are_bounded_oldest_first() -> None:
    poison = KnownPoison(max_bytes=10 * (ENTRY_OVERHEAD + 100))
    for n in range(1_000):
        poison.learn("out", b"%04d" % n, bytes(96), "denied")
    assert len(poison) == 10
    assert poison.bytes <= poison.max_bytes
    assert poison.divert("out", b"0999", bytes(96)) == "denied"
    assert poison.divert("out", b"0000", bytes(96)) is None
    # One entry larger than the whole budget is still kept: its replay is the next one.
    poison.learn("out", b"huge", bytes(poison.max_bytes), "too large")
    assert list(poison) == [("out", b"huge", bytes(poison.max_bytes))]
