"""Committing with fake clients: under exactly_once a failed transaction voids the batches
built after it, and nothing about them raises; under both guarantees, the offsets
committed (and only those) are reported for the repartition purge."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from streams.broker.batches import Acked, BatchSender
from streams.config import KafkaSettings, Settings
from streams.runtime import committer as committer_module
from streams.runtime.committer import AtLeastOnce, ExactlyOnce
from streams.runtime.metrics import WorkerMetrics
from tests.unit.runtime.fakes import FakeConsumer, FakeLog, FakeProducer, make_producer

TP = TopicPartition("events", 0)


def _settings() -> Settings:
    return Settings(kafka=KafkaSettings(bootstrap_servers="fake:9092"), app_id="app")


def _ignore(offsets: Mapping[TopicPartition, int]) -> None:
    """Committed offsets, of no interest to the test."""


async def test_a_batch_built_after_a_failed_transaction_is_voided_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(committer_module, "make_producer", make_producer)
    monkeypatch.setattr(FakeProducer, "fail_transactions", False)
    committer = ExactlyOnce(_settings(), FakeConsumer(FakeLog()), WorkerMetrics(), {}, _ignore)  # type: ignore[arg-type]
    await committer.open({TP})
    failed_producer = committer.producers[TP]
    first = committer.batch()
    first.senders(TP)[0].append("out", 0, b"k", b"v1")

    FakeProducer.fail_transactions = True
    assert await committer.commit(first, {TP: 1}, lambda: False) == {TP}
    # The worker processes its next fetch while that commit runs: its batch is built on
    # state the failure voided. It must take records (the worker drops it when it settles
    # the failure, and replays), not raise KeyError.
    second = committer.batch()
    outputs, changelog = second.senders(TP)
    outputs.append("out", 0, b"k", b"v2")
    changelog.append("app-state-changelog", 0, b"w", b"{}")
    # Should it come to a commit, the partition is reported for replay and nothing is sent.
    assert await committer.commit(second, {TP: 2}, lambda: False) == {TP}
    assert failed_producer.sent == []

    # The replay opens the partition again: a new producer, and batches commit.
    FakeProducer.fail_transactions = False
    await committer.open({TP})
    third = committer.batch()
    third.senders(TP)[0].append("out", 0, b"k", b"v3")
    assert await committer.commit(third, {TP: 3}, lambda: False) == set()
    assert committer.producers[TP] is not failed_producer
    assert committer.producers[TP].sent == [("out", 0)]


async def test_offsets_committed_in_a_transaction_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(committer_module, "make_producer", make_producer)
    monkeypatch.setattr(FakeProducer, "fail_transactions", False)
    reported: list[Mapping[TopicPartition, int]] = []
    committer = ExactlyOnce(
        _settings(), FakeConsumer(FakeLog()), WorkerMetrics(), {}, reported.append
    )  # type: ignore[arg-type]
    await committer.open({TP})
    assert await committer.commit(committer.batch(), {TP: 7}, lambda: False) == set()
    assert reported == [{TP: 7}]
    FakeProducer.fail_transactions = True
    assert await committer.commit(committer.batch(), {TP: 9}, lambda: False) == {TP}
    assert reported == [{TP: 7}]


async def test_offsets_committed_at_least_once_are_reported() -> None:
    reported: list[Mapping[TopicPartition, int]] = []
    consumer = FakeConsumer(FakeLog())
    committer = AtLeastOnce(_settings(), consumer, WorkerMetrics(), {}, reported.append)  # type: ignore[arg-type]
    committer.producer = FakeProducer()  # type: ignore[assignment]
    batch = committer.batch()
    batch.senders(TP)[0].append("out", 0, b"k", b"v")
    assert await committer.commit(batch, {TP: 7}, lambda: False) == set()
    assert reported == [{TP: 7}] == consumer.commits
    consumer.refuse_commits = True  # not committed: nothing to purge below it
    batch = committer.batch()
    batch.senders(TP)[0].append("out", 0, b"k", b"v")
    assert await committer.commit(batch, {TP: 9}, lambda: False) == set()
    assert reported == [{TP: 7}]


async def test_both_guarantees_report_where_written_changelog_records_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the local stores' checkpoints go by: under at_least_once once the changelog is
    acknowledged, under exactly_once once the transaction is committed (and not when it
    failed); each partition's end offset and last record."""
    monkeypatch.setattr(committer_module, "make_producer", make_producer)
    monkeypatch.setattr(FakeProducer, "fail_transactions", False)
    written: list[dict[tuple[str, int], tuple[int, bytes]]] = []
    senders: list[BatchSender] = []

    def note(sender: BatchSender, acked: Mapping[tuple[str, int], Acked]) -> None:
        assert senders[-1] is sender  # the batch's changelog sender, whoever resent it
        written.append({slot: (done.end, done.last[0]) for slot, done in acked.items()})

    alo = AtLeastOnce(
        _settings(), FakeConsumer(FakeLog()), WorkerMetrics(), {}, _ignore, on_written=note
    )  # type: ignore[arg-type]
    await alo.start()
    batch = alo.batch()
    outputs, changelog = batch.senders(TP)
    senders.append(changelog)
    outputs.append("out", 0, b"k", b"v")
    changelog.extend("log", 0, [(b"w1", b"{}"), (b"o", b"1")])
    changelog.extend("log", 1, [(b"o", b"7")])
    assert await alo.commit(batch, {TP: 1}, lambda: False) == set()
    assert written == [{("log", 0): (2, b"o"), ("log", 1): (1, b"o")}]

    written.clear()
    eos = ExactlyOnce(
        _settings(), FakeConsumer(FakeLog()), WorkerMetrics(), {}, _ignore, on_written=note
    )  # type: ignore[arg-type]
    await eos.open({TP})
    batch = eos.batch()
    senders.append(batch.senders(TP)[1])
    batch.senders(TP)[1].extend("log", 0, [(b"w1", b"{}"), (b"w2", b"{}"), (b"o", b"2")])
    assert await eos.commit(batch, {TP: 2}, lambda: False) == set()
    assert written == [{("log", 0): (3, b"o")}]
    FakeProducer.fail_transactions = True
    batch = eos.batch()
    batch.senders(TP)[1].extend("log", 0, [(b"o", b"3")])
    assert await eos.commit(batch, {TP: 3}, lambda: False) == {TP}
    assert len(written) == 1


async def test_outputs_that_could_not_be_sent_before_the_commit_fail_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refusing(FakeProducer):
        async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
            raise KafkaTimeoutError()

    monkeypatch.setattr(committer_module, "make_producer", make_producer)
    consumer = FakeConsumer(FakeLog())
    consumer.assigned = {TP}
    committer = AtLeastOnce(_settings(), consumer, WorkerMetrics(), {}, _ignore)  # type: ignore[arg-type]
    committer.producer = Refusing()  # type: ignore[assignment]
    batch = committer.batch()
    batch.senders(TP)[0].append("out", 0, b"k", b"v")
    await committer.send(batch)  # the loop goes on; the commit reports it
    assert await committer.commit(batch, {TP: 1}, lambda: False) == {TP}
    assert consumer.commits == []
    assert not isinstance(committer.producer, Refusing)  # a new producer for the replay
