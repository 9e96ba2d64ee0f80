"""The repartition purge with a fake DeleteRecords: what it deletes, how often, in the
background, and that a failure only waits for the next interval."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from streams.runtime.purger import RepartitionPurger
from tests.unit.runtime.fakes import until

HOP = "app-pipeline-repartition"
R0, R1, INPUT = TopicPartition(HOP, 0), TopicPartition(HOP, 1), TopicPartition("events", 0)


class _Deletes:
    """Records each DeleteRecords call; fails while ``failing``, waits while ``held``."""

    def __init__(self) -> None:
        self.calls: list[dict[TopicPartition, int]] = []
        self.failing = False
        self.held = asyncio.Event()
        self.held.set()

    async def __call__(self, before: Mapping[TopicPartition, int]) -> None:
        self.calls.append(dict(before))
        await self.held.wait()
        if self.failing:
            raise KafkaConnectionError("the broker went away")


def _turns(purger: RepartitionPurger, deletes: _Deletes, calls: int) -> Callable[[], bool]:
    """A condition to wait for: ``calls`` purges made, with ``maybe_purge`` called on every
    check as the poll loop calls it on every turn."""

    def made() -> bool:
        purger.maybe_purge()
        return len(deletes.calls) >= calls

    return made


async def test_committed_repartition_offsets_are_purged_in_the_background() -> None:
    deletes = _Deletes()
    purger = RepartitionPurger([HOP], deletes, interval_s=0.0)
    purger.committed({R0: 120, R1: 40, INPUT: 500})  # the input is not ours to delete from
    deletes.held.clear()
    purger.maybe_purge()  # returns at once: the purge waits on the broker
    await until(lambda: len(deletes.calls) == 1, "a purge started")
    purger.committed({R0: 130})
    purger.maybe_purge()  # one purge at a time
    assert len(deletes.calls) == 1
    deletes.held.set()
    await until(_turns(purger, deletes, 2), "the next purge")  # of what is new since
    assert deletes.calls == [{R0: 120, R1: 40}, {R0: 130}]
    purger.maybe_purge()  # nothing new: nothing to do
    await purger.close()
    assert len(deletes.calls) == 2


async def test_a_purge_waits_for_its_interval_and_a_failed_one_is_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    deletes = _Deletes()
    deletes.failing = True
    purger = RepartitionPurger([HOP], deletes, interval_s=1.0)
    purger.committed({R0: 10})
    purger.maybe_purge()  # the interval counts from the start
    assert deletes.calls == []
    await until(_turns(purger, deletes, 1), "the first purge")
    await until(lambda: "deleting committed repartition records failed" in caplog.text, "logged")
    deletes.failing = False
    purger.maybe_purge()  # within the interval of the failed one
    assert len(deletes.calls) == 1
    await until(_turns(purger, deletes, 2), "the retry")
    assert deletes.calls == [{R0: 10}, {R0: 10}]
    await purger.close()


async def test_revoked_partitions_are_left_to_their_next_owner_and_never_means_never() -> None:
    deletes = _Deletes()
    purger = RepartitionPurger([HOP], deletes, interval_s=0.0)
    purger.committed({R0: 10, R1: 20})
    purger.forget({R1})
    purger.maybe_purge()
    await until(lambda: bool(deletes.calls), "a purge")
    assert deletes.calls == [{R0: 10}]
    await purger.close()

    never = RepartitionPurger([HOP], deletes, interval_s=None)
    never.committed({R0: 30})
    never.maybe_purge()
    await asyncio.sleep(0)  # a purge started would have run up to its call by now
    assert len(deletes.calls) == 1
