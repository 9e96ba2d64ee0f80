"""Committing under exactly_once with fake producers: a failed transaction voids the
batches built after it, and nothing about them raises."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from streams.config import KafkaSettings, Settings
from streams.runtime import committer as committer_module
from streams.runtime.committer import ExactlyOnce
from streams.runtime.metrics import WorkerMetrics
from tests.unit.runtime.fakes import FakeConsumer, FakeLog, FakeProducer, make_producer

TP = TopicPartition("events", 0)


async def test_a_batch_built_after_a_failed_transaction_is_voided_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(committer_module, "make_producer", make_producer)
    monkeypatch.setattr(FakeProducer, "fail_transactions", False)
    settings = Settings(kafka=KafkaSettings(bootstrap_servers="fake:9092"), app_id="app")
    committer = ExactlyOnce(settings, FakeConsumer(FakeLog()), WorkerMetrics(), {})  # type: ignore[arg-type]
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
