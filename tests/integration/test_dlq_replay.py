"""Dead-letter replay: exact bytes back to the source, and no loops for repeat failures."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streams.broker.admin import TopicSpec, ensure_topics
from streams.broker.reading import read_topic
from streams.dlq import HEADER_REPLAYS, ReplayFilter, header_map, replay
from tests.conftest import PipelineRun

pytestmark = pytest.mark.integration


def _count(records: dict[int, list]) -> int:
    return sum(len(r) for r in records.values())


async def test_replay_round_trip_without_loops(
    pipeline_run: Callable[..., PipelineRun], unique_name: Callable[[str], str]
) -> None:
    run = pipeline_run(partitions=2)
    await run.create_topics()
    kinds = await run.publish(3_000, seed=31, bad_ratio=0.05)
    run.start_worker(exit_when_idle=2).finish()
    letters = await read_topic(run.kafka, run.dlq)
    bad = kinds["bad"]
    assert _count(letters) == bad > 50

    dry = await replay(run.kafka, run.dlq, dry_run=True)
    assert (dry.replayed, dry.by_destination) == (bad, {run.input: bad})
    assert _count(await read_topic(run.kafka, run.input)) == 3_000

    # Replay a filtered subset elsewhere: exact key and bytes, counter header set.
    side = unique_name("fixed")
    await ensure_topics(run.kafka, [TopicSpec(side, 1)])
    first = await replay(
        run.kafka,
        run.dlq,
        to_topic=side,
        selection=ReplayFilter(matches=(("error.stage", "validate"),)),
        from_beginning=True,
    )
    assert first.replayed == bad
    copied = (await read_topic(run.kafka, side))[0]
    originals = sorted((r.key or b"", r.value) for recs in letters.values() for r in recs)
    assert sorted((r.key or b"", r.value) for r in copied) == originals
    assert all(header_map(r.headers)[HEADER_REPLAYS] == "1" for r in copied)

    # Back to the source: the worker rejects them again, with the counter carried over...
    back = await replay(run.kafka, run.dlq, from_beginning=True)
    assert back.replayed == bad
    run.start_worker(exit_when_idle=2).finish()
    again = await read_topic(run.kafka, run.dlq)
    assert _count(again) == 2 * bad
    counters = [header_map(r.headers).get(HEADER_REPLAYS) for recs in again.values() for r in recs]
    assert counters.count("1") == bad

    # ...and a later replay neither re-sends what was scanned nor the repeat failures.
    later = await replay(run.kafka, run.dlq)
    assert later.replayed == 0
    assert later.skipped_looping == bad
    everything = await replay(run.kafka, run.dlq, from_beginning=True, dry_run=True)
    assert (everything.replayed, everything.skipped_looping) == (bad, bad)
    assert (await run.verify()).exact()
