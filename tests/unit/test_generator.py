"""The event generator and ``streams generate``."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from streams.cli import main
from streams.errors import StreamsError
from streams.generator import (
    BAD,
    DEFAULT_START_TS,
    DUPLICATE,
    GOOD,
    KINDS,
    LATE,
    LATE_BY_MS,
    LATE_SPREAD_MS,
    MAX_DELAY_MS,
    GeneratedMessage,
    generate_events,
    generate_messages,
    paced,
)
from streams.validation import decode_event

MIXED: dict[str, Any] = {"dup_ratio": 0.05, "late_ratio": 0.05, "bad_ratio": 0.10}


@pytest.fixture(scope="module")
def mixed() -> list[GeneratedMessage]:
    return list(generate_messages(20_000, seed=11, **MIXED))


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    def digest(**kwargs: Any) -> str:
        sha = hashlib.sha256()
        for key, value in generate_events(3_000, **MIXED, **kwargs):
            sha.update(repr(key).encode() + value)
        return sha.hexdigest()

    assert digest(seed=1) == digest(seed=1)
    assert digest(seed=1) != digest(seed=2)
    assert digest(seed=1, rate=100) != digest(seed=1)


def test_events_are_pairs_of_the_tagged_messages() -> None:
    tagged = [(m.key, m.value) for m in generate_messages(500, seed=3, **MIXED)]
    assert list(generate_events(500, seed=3, **MIXED)) == tagged


def test_requested_fractions_are_met(mixed: list[GeneratedMessage]) -> None:
    counts = Counter(message.kind for message in mixed)
    assert set(counts) == set(KINDS)
    for kind, expected in [(DUPLICATE, 0.05), (LATE, 0.05), (BAD, 0.10), (GOOD, 0.80)]:
        assert abs(counts[kind] / len(mixed) - expected) <= 0.01, (kind, counts)


def test_validator_agrees_with_every_kind(mixed: list[GeneratedMessage]) -> None:
    for message in mixed:
        event, reason = decode_event(message.value)
        if message.kind == BAD:
            assert reason is not None, message.value[:200]
        else:
            assert reason is None, (reason, message)
            assert event is not None
            assert message.key == event["user_id"].encode()


def test_bad_messages_come_in_many_sorts(mixed: list[GeneratedMessage]) -> None:
    reasons: Counter[str] = Counter()
    for message in mixed:
        if message.kind == BAD:
            reason = decode_event(message.value)[1]
            assert reason is not None
            reasons[reason.split(":")[0].split(" (")[0]] += 1
    assert {
        "not valid JSON",
        "not a JSON object",
        "event_id",
        "type",
        "user_id",
        "ts",
        "amount",
        "currency",
        "props",
    } <= set(reasons)
    details = " ".join(decode_event(m.value)[1] or "" for m in mixed if m.kind == BAD)
    for symptom in ("UTF-8", "depth limit", "unexpected character", "infinity", "required"):
        assert symptom in details


def test_every_message_fits_on_one_json_line(mixed: list[GeneratedMessage]) -> None:
    for message in mixed:
        assert b"\n" not in message.value
        assert b"\r" not in message.value
        assert message.value.strip() == message.value != b""


def test_duplicates_repeat_an_earlier_good_message(mixed: list[GeneratedMessage]) -> None:
    seen: set[tuple[bytes | None, bytes]] = set()
    for message in mixed:
        if message.kind == DUPLICATE:
            assert (message.key, message.value) in seen
        elif message.kind == GOOD:
            seen.add((message.key, message.value))


def test_event_ids_are_unique_and_short(mixed: list[GeneratedMessage]) -> None:
    ids = [orjson.loads(m.value)["event_id"] for m in mixed if m.kind in (GOOD, LATE)]
    assert len(ids) == len(set(ids))
    assert max(map(len, ids)) <= 64
    assert ids[0] == "s11-0"


def test_event_time_follows_the_clock_with_small_disorder(mixed: list[GeneratedMessage]) -> None:
    for index, message in enumerate(mixed):
        if message.kind not in (GOOD, LATE):
            continue
        clock = DEFAULT_START_TS + index
        behind = clock - orjson.loads(message.value)["ts"]
        if message.kind == GOOD:
            assert 0 <= behind <= MAX_DELAY_MS
            assert orjson.loads(message.value)["ts"] >= DEFAULT_START_TS
        else:
            assert LATE_BY_MS <= behind <= LATE_BY_MS + LATE_SPREAD_MS
    times = [orjson.loads(m.value)["ts"] for m in mixed if m.kind == GOOD]
    assert 0 < sum(a > b for a, b in itertools.pairwise(times)) < len(times) / 2


def test_start_ts_and_rate_set_the_clock() -> None:
    messages = list(generate_messages(1_000, start_ts=10_000_000, rate=10))
    times = [orjson.loads(m.value)["ts"] for m in messages]
    assert min(times) >= 10_000_000
    assert 10_000_000 + 99_900 - MAX_DELAY_MS <= max(times) <= 10_000_000 + 99_900


def test_users_are_zipf_skewed_and_types_mixed(mixed: list[GeneratedMessage]) -> None:
    events = [orjson.loads(m.value) for m in mixed if m.kind == GOOD]
    users = Counter(event["user_id"] for event in events)
    top, second = users.most_common(2)
    assert top[0] == "user-1"
    assert top[1] > 1.5 * second[1]
    assert len(users) > 1_000
    types = Counter(event["type"] for event in events)
    for kind, share in [("page_view", 0.70), ("add_to_cart", 0.15), ("purchase", 0.10)]:
        assert abs(types[kind] / len(events) - share) < 0.02
    money = [event for event in events if event["type"] in ("purchase", "refund")]
    assert all(round(event["amount"], 2) == event["amount"] >= 0 for event in money)
    assert any("currency" in event for event in money)
    assert any("props" in event for event in events)


def test_few_users_and_uniform_choice() -> None:
    users = {orjson.loads(v)["user_id"] for _, v in generate_events(2_000, users=3, zipf_s=0)}
    assert users == {"user-1", "user-2", "user-3"}


def test_everything_can_be_bad_or_duplicated() -> None:
    assert {m.kind for m in generate_messages(200, bad_ratio=1.0)} == {BAD}
    kinds = [m.kind for m in generate_messages(200, dup_ratio=1.0)]
    # Nothing to duplicate before the first good event.
    assert kinds[0] == GOOD
    assert set(kinds[1:]) == {DUPLICATE}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": -1}, "count=-1 is negative"),
        ({"users": 0}, "users=0 is below 1"),
        ({"seed": -1}, "seed=-1 is outside"),
        ({"dup_ratio": 1.5}, "dup ratio 1.5 is outside 0..1"),
        ({"bad_ratio": 0.6, "late_ratio": 0.6}, "add up to 1.2, more than 1"),
        ({"start_ts": -5}, "start_ts=-5 is negative"),
        ({"rate": 0}, "rate=0 is not positive"),
        ({"zipf_s": -1}, "zipf_s=-1 is negative"),
    ],
)
def test_bad_arguments_fail_at_the_call(kwargs: dict[str, Any], message: str) -> None:
    arguments = {"count": 10, **kwargs}
    with pytest.raises(StreamsError, match=message):
        generate_messages(**arguments)


def test_paced_keeps_the_rate_and_catches_up() -> None:
    now = [0.0]
    sleeps: list[float] = []
    flushes = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    items = list(
        paced(
            range(5),
            rate=10,
            before_sleep=lambda: flushes.append(now[0]),
            clock=lambda: now[0],
            sleep=sleep,
        )
    )
    assert items == [0, 1, 2, 3, 4]
    assert sleeps == pytest.approx([0.1, 0.1, 0.1, 0.1])
    assert len(flushes) == 4

    now[0], sleeps[:] = 0.0, []
    stalled = paced(range(4), rate=10, clock=lambda: now[0], sleep=sleep)
    assert next(stalled) == 0
    now[0] = 1.0  # the consumer stalled for a second: no sleeping until back on schedule
    assert list(stalled) == [1, 2, 3]
    assert sleeps == []


# --- CLI ------------------------------------------------------------------------------------


def test_cli_writes_json_lines_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    args = ["generate", "--count", "2000", "--seed", "5", "--out", str(out)]
    ratios = ["--dup-ratio", "0.05", "--late-ratio", "0.05", "--bad-ratio", "0.1"]
    result = CliRunner().invoke(main, args + ratios)
    assert result.exit_code == 0, result.output
    expected = b"".join(
        value + b"\n"
        for _, value in generate_events(
            2000, seed=5, dup_ratio=0.05, late_ratio=0.05, bad_ratio=0.1
        )
    )
    assert out.read_bytes() == expected
    counts = Counter(m.kind for m in generate_messages(2000, seed=5, **MIXED))
    assert result.output.startswith(f"wrote 2,000 messages to {out} in ")
    assert result.output.rstrip().endswith(
        f"{counts[GOOD]:,} good, {counts[DUPLICATE]:,} duplicate, "
        f"{counts[LATE]:,} late, {counts[BAD]:,} bad"
    )


def test_cli_writes_to_stdout() -> None:
    result = CliRunner().invoke(main, ["generate", "-n", "3", "--out", "-", "--seed", "9"])
    assert result.exit_code == 0
    assert result.stdout_bytes == b"".join(v + b"\n" for _, v in generate_events(3, seed=9))


def test_cli_start_ts(tmp_path: Path) -> None:
    out = tmp_path / "e.jsonl"
    result = CliRunner().invoke(
        main, ["generate", "-n", "5", "--start-ts", "now", "--rate", "1000", "-o", str(out)]
    )
    assert result.exit_code == 0
    assert orjson.loads(out.read_bytes().splitlines()[0])["ts"] > DEFAULT_START_TS
    result = CliRunner().invoke(main, ["generate", "-n", "5", "--start-ts", "12", "-o", str(out)])
    assert result.exit_code == 0
    assert all(orjson.loads(line)["ts"] >= 12 for line in out.read_bytes().splitlines())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start-ts", "yesterday"], "'yesterday' is neither epoch milliseconds nor 'now'"),
        (["--start-ts", "-1"], "-1 is negative"),
        (["--bad-ratio", "2"], "2.0 is not in the range 0<=x<=1"),
        (["--rate", "0"], "0.0 is not in the range x>0"),
    ],
)
def test_cli_rejects_bad_options(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "never.jsonl"
    result = CliRunner().invoke(main, ["generate", "-n", "5", "-o", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


def test_cli_ratios_over_one_fail_before_touching_the_output(tmp_path: Path) -> None:
    out = tmp_path / "keep.jsonl"
    out.write_bytes(b"precious\n")
    ratios = ["--bad-ratio", "0.7", "--dup-ratio", "0.7"]
    result = CliRunner().invoke(main, ["generate", "-n", "5", "-o", str(out), *ratios])
    assert result.exit_code == 2
    assert (
        result.output == "error: dup + late + bad ratios add up to 1.4, more than 1; lower them\n"
    )
    assert out.read_bytes() == b"precious\n"


def test_cli_unwritable_output(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["generate", "-n", "5", "-o", str(tmp_path / "no" / "x")])
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot write ")
