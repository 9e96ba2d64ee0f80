"""Hostile input through a real worker: every message ends in exactly one place.

A seeded corpus of valid events and messages built to hurt (byte mutations, invalid UTF-8,
deep nesting, huge numbers, NaN/Infinity, duplicate keys, messages over the size limit) goes
through ``streams worker``. Each invalid message must be in the DLQ once, with the reason the
validator gives for it; each valid one must reach the core (``verify`` exact); the worker must
neither crash nor stall. The unit-level fuzzing is in tests/unit/test_fuzz_decode.py.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator

import orjson
import pytest

from streams.broker.reading import read_topic
from streams.dlq import header_map
from streams.publish import Publisher
from streams.validation import decode_event
from tests.conftest import PipelineRun

pytestmark = pytest.mark.integration

LIMIT = 8192
COUNT = 6000


def hostile_corpus(seed: int, count: int) -> Iterator[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    for i in range(count):
        event = {
            "event_id": f"e-{i}",
            "type": rng.choice(["page_view", "purchase", "refund", "add_to_cart"]),
            "user_id": f"user-{rng.randint(1, 50)}",
            "ts": 1_735_689_600_000 + i * 10,
            "amount": round(rng.uniform(0, 100), 2),
        }
        raw = orjson.dumps(event)
        attack = rng.randrange(12)
        if attack == 0:  # byte flips, inserts, deletions
            data = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(data))
                data[at] = rng.randrange(256)
            raw = bytes(data)
        elif attack == 1:  # invalid UTF-8 inside a string
            raw = raw.replace(b"user-", b"us\xff\xfeer-", 1)
        elif attack == 2:  # deep nesting
            depth = rng.choice([10, 500, 1100, 5000])
            raw = raw[:-1] + b',"props":' + b"[" * depth + b"]" * depth + b"}"
        elif attack == 3:  # huge numbers
            number = rng.choice([b"1e999", b"9" * 400, b"-1e400", b"1234567890" * 3])
            raw = raw[:-1] + b',"amount":' + number + b"}"
        elif attack == 4:  # NaN / Infinity tokens
            raw = raw[:-1] + b',"amount":' + rng.choice([b"NaN", b"Infinity", b"-Infinity"]) + b"}"
        elif attack == 5:  # duplicate keys: the last one wins
            raw = raw[:-1] + b',"type":' + rng.choice([b'"page_view"', b'"nope"', b"7"]) + b"}"
        elif attack == 6:  # over the size limit
            raw = raw[:-1] + b',"props":{"blob":"' + b"x" * rng.randint(LIMIT, 3 * LIMIT) + b'"}}'
        elif attack == 7:  # empty, whitespace, not an object
            raw = rng.choice([b"", b"   ", b"[]", b'"event"', b"null", b"{}"])
        yield event["user_id"].encode(), raw


async def test_every_hostile_message_ends_in_exactly_one_place(
    pipeline_run: Callable[..., PipelineRun],
) -> None:
    run = pipeline_run(partitions=3)
    await run.create_topics()
    corpus = list(hostile_corpus(seed=51, count=COUNT))
    async with Publisher(run.kafka) as publisher:
        await publisher.publish(run.input, corpus)
    expected_reasons = Counter(
        reason for _, raw in corpus if (reason := decode_event(raw, LIMIT)[1]) is not None
    )
    invalid = sum(expected_reasons.values())
    assert COUNT * 0.3 < invalid < COUNT * 0.8, "the corpus mixes valid and invalid messages"

    stats = run.start_worker(exit_when_idle=3, STREAMS_MAX_MESSAGE_BYTES=str(LIMIT)).finish()
    assert stats["consumed"] == COUNT
    assert stats["invalid"] == invalid

    dead = await read_topic(run.kafka, run.dlq)
    reasons = Counter(
        header_map(letter.headers)["error.message"] for part in dead.values() for letter in part
    )
    assert reasons == expected_reasons, "each invalid message is in the DLQ once, with its reason"
    assert any("exceeds the 8192-byte limit" in r for r in reasons)
    assert all("\n" not in r and len(r) < 400 for r in reasons)

    report = await run.verify(max_message_bytes=LIMIT)
    assert report.exact(), report.as_dict()
    assert report.invalid == invalid
