"""Each rule of the partition processor, at its edges."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.core import CoreConfig
from streams.errors import ConfigError
from tests.unit.core.engine import BatchOutcome, PartitionProcessor
from tests.unit.core.events import TUMBLING, event

HOPPING = CoreConfig(
    window_size_ms=10, window_step_ms=5, grace_ms=0, idle_timeout_ms=30, dedupe_horizon_ms=100
)


def final(
    user_id: str,
    start: int,
    size: int,
    count: int,
    total: float = 0.0,
    low: float | None = None,
    high: float | None = None,
    *,
    is_final: bool = True,
) -> dict[str, Any]:
    return {
        "key": user_id,
        "window_start": start,
        "window_end": start + size,
        "count": count,
        "sum": total,
        "min": low,
        "max": high,
        "final": is_final,
    }


class Feed:
    """Numbers batches like the shell does (seq = first offset) and ticks the wall clock."""

    def __init__(self, config: CoreConfig) -> None:
        self.processor = PartitionProcessor(config)
        self.offset = 0
        self.now = 1_000

    def batch(self, *events: dict[str, Any]) -> BatchOutcome:
        outcome = self.processor.process(list(events), self.now, self.offset)
        self.offset += len(events)
        return outcome


def test_ts_zero_is_a_real_stream_time() -> None:
    feed = Feed(TUMBLING)
    outcome = feed.batch(event("a", 0))
    assert outcome.accepted == 1
    assert feed.processor.stream_time == 0
    assert feed.processor.open_windows == 1


def test_no_stream_time_before_the_first_accepted_event() -> None:
    processor = PartitionProcessor(TUMBLING)
    assert processor.stream_time is None
    assert processor.open_windows == 0
    assert processor.dedupe_size == 0


def test_window_closes_exactly_when_stream_time_reaches_end_plus_grace() -> None:
    feed = Feed(TUMBLING)
    assert feed.batch(event("a", 0, amount=2), event("b", 14)).emitted == []
    outcome = feed.batch(event("c", 15))
    assert outcome.emitted == [final("u", 0, 10, 1, 2.0, 2.0, 2.0)]
    assert feed.processor.open_windows == 1  # only [10, 20) is left


def test_event_is_late_exactly_at_end_plus_grace() -> None:
    feed = Feed(TUMBLING)
    feed.batch(event("a", 14))
    assert feed.batch(event("b", 0)).late == []  # 0 + 10 + 5 > 14
    feed.batch(event("c", 15))
    outcome = feed.batch(event("d", 9), event("e", 10))
    assert outcome.late == [0]
    assert outcome.accepted == 1


def test_late_events_neither_advance_stream_time_nor_count_for_dedupe() -> None:
    feed = Feed(TUMBLING)
    feed.batch(event("a", 30))
    outcome = feed.batch(event("late", 1), event("late", 31))
    assert outcome.late == [0]
    assert outcome.duplicates == []
    assert outcome.accepted == 1
    assert feed.processor.stream_time == 31


def test_event_later_in_the_same_batch_sees_the_window_closed() -> None:
    feed = Feed(TUMBLING)
    outcome = feed.batch(event("a", 0), event("b", 15), event("c", 5))
    assert outcome.emitted == [final("u", 0, 10, 1)]
    assert outcome.late == [2]


def test_duplicate_is_neither_aggregated_nor_advances_stream_time() -> None:
    feed = Feed(TUMBLING)
    outcome = feed.batch(event("a", 0, amount=1), event("a", 0, amount=1), event("a", 50))
    assert outcome.duplicates == [1, 2]
    assert feed.processor.stream_time == 0
    assert feed.processor.tick(10**9, caught_up=True) == [final("u", 0, 10, 1, 1.0, 1.0, 1.0)]


def test_dedupe_horizon_is_measured_against_stream_time_before_the_event() -> None:
    feed = Feed(TUMBLING)
    feed.batch(event("a", 0), event("b", 99))
    assert feed.batch(event("a", 99)).duplicates == [0]  # 0 + 100 > 99
    feed.batch(event("c", 100))
    outcome = feed.batch(event("a", 100))  # 0 + 100 > 100 is false
    assert outcome.duplicates == []
    assert outcome.accepted == 1
    # Accepted again at 100, the id is a duplicate until stream time reaches 200.
    feed.batch(event("d", 199))
    assert feed.batch(event("a", 199)).duplicates == [0]


def test_expired_ids_are_forgotten() -> None:
    feed = Feed(TUMBLING)
    feed.batch(event("a", 0), event("b", 1))
    feed.batch(event("c", 50))
    assert feed.processor.dedupe_size == 3
    feed.batch(event("d", 101))  # the first batch's newest id (1) expires at 101
    assert feed.processor.dedupe_size == 2


def test_hopping_event_goes_only_into_its_open_windows() -> None:
    feed = Feed(HOPPING)
    # ts 7 lies in [0, 10) and [5, 15); at stream time 10 only [5, 15) is open.
    outcome = feed.batch(event("a", 1), event("b", 10), event("c", 7, amount=3))
    assert outcome.late == []
    assert outcome.emitted == [final("u", -5, 10, 1), final("u", 0, 10, 1)]
    outcome = feed.batch(event("d", 4), event("e", 15))
    assert outcome.late == [0]  # [-5, 5) and [0, 10) are both closed
    assert outcome.emitted == [final("u", 5, 10, 2, 3.0, 3.0, 3.0)]


def test_hopping_windows_hold_ts_at_their_boundaries() -> None:
    feed = Feed(HOPPING)
    feed.batch(event("a", 10, amount=1))
    finals = feed.processor.tick(10**9, caught_up=True)
    assert [(r["window_start"], r["window_end"]) for r in finals] == [(5, 15), (10, 20)]


def test_amounts_absent_int_and_float() -> None:
    feed = Feed(TUMBLING)
    feed.batch(
        event("a", 1),
        event("b", 2, amount=5),
        event("c", 3, amount=0.5),
        event("d", 4),
        event("e", 5, amount=7),
        event("f", 1, user_id="nobody-pays"),
    )
    finals = feed.batch(event("g", 20)).emitted
    assert finals == [
        final("nobody-pays", 0, 10, 1),
        final("u", 0, 10, 5, 12.5, 0.5, 7.0),
    ]
    for record in finals:
        assert isinstance(record["sum"], float)
    assert isinstance(finals[1]["min"], float)
    assert isinstance(finals[1]["max"], float)


def test_finals_ordered_by_window_end_then_user_id() -> None:
    feed = Feed(CoreConfig(window_size_ms=10, window_step_ms=10, grace_ms=100))
    feed.batch(
        event("a", 25, "zed"), event("b", 3, "bob"), event("c", 17, "al"), event("d", 5, "al")
    )
    finals = feed.batch(event("e", 500, "x")).emitted
    assert [(r["window_start"], r["key"]) for r in finals] == [
        (0, "al"),
        (0, "bob"),
        (10, "al"),
        (20, "zed"),
    ]


def test_window_is_emitted_once_then_forgotten() -> None:
    feed = Feed(TUMBLING)
    feed.batch(event("a", 0))
    assert len(feed.batch(event("b", 15)).emitted) == 1
    assert feed.batch(event("c", 16)).emitted == []
    assert feed.processor.tick(10**9, caught_up=True) == [final("u", 10, 10, 2)]
    assert feed.processor.open_windows == 0


def test_batch_outcome_indices() -> None:
    feed = Feed(TUMBLING)
    outcome = feed.batch(event("a", 40), event("a", 41), event("b", 1), event("c", 42))
    assert outcome.duplicates == [1]
    assert outcome.late == [2]
    assert outcome.accepted == 2


def test_empty_batch_only_records_activity() -> None:
    feed = Feed(TUMBLING)
    outcome = feed.batch()
    assert (outcome.emitted, outcome.late, outcome.duplicates, outcome.accepted) == ([], [], [], 0)
    assert feed.processor.stream_time is None


class TestIdle:
    def test_not_caught_up_does_nothing(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0))
        assert feed.processor.tick(feed.now + 10**6, caught_up=False) == []
        assert feed.processor.stream_time == 0
        assert feed.processor.drain_changelog()[-1][0] == b"t"  # from the batch, not the tick
        assert feed.processor.tick(feed.now + 10**6, caught_up=False) == []
        assert feed.processor.drain_changelog() == []

    def test_advances_only_once_the_timeout_has_passed(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0))
        assert feed.processor.tick(feed.now + 29, caught_up=True) == []
        assert feed.processor.stream_time == 0
        assert feed.processor.tick(feed.now + 30, caught_up=True) == [final("u", 0, 10, 1)]
        assert feed.processor.stream_time == feed.now + 30

    def test_follows_the_wall_clock_from_a_stream_time_ahead_of_it(self) -> None:
        feed = Feed(TUMBLING)
        feed.now = 1_000
        feed.batch(event("a", 5_000))
        feed.processor.tick(1_030, caught_up=True)
        assert feed.processor.stream_time == 5_030
        feed.processor.tick(1_100, caught_up=True)
        assert feed.processor.stream_time == 5_100

    def test_never_goes_backwards(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 5_000))
        feed.processor.tick(feed.now + 100, caught_up=True)
        assert feed.processor.stream_time == 5_100
        feed.processor.tick(feed.now + 50, caught_up=True)
        assert feed.processor.stream_time == 5_100

    def test_without_stream_time_moves_to_now(self) -> None:
        feed = Feed(TUMBLING)
        feed.processor.touch(1_000)
        assert feed.processor.tick(1_030, caught_up=True) == []
        assert feed.processor.stream_time == 1_030

    def test_touch_restarts_the_idle_timer(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0))
        feed.processor.touch(feed.now + 20)
        assert feed.processor.tick(feed.now + 30, caught_up=True) == []
        assert feed.processor.stream_time == 0
        assert feed.processor.tick(feed.now + 50, caught_up=True) == [final("u", 0, 10, 1)]

    def test_first_tick_of_an_unused_processor_starts_the_timer(self) -> None:
        processor = PartitionProcessor(TUMBLING)
        assert processor.tick(5_000, caught_up=True) == []
        assert processor.stream_time is None
        processor.tick(5_029, caught_up=True)
        assert processor.stream_time is None
        processor.tick(5_030, caught_up=True)
        assert processor.stream_time == 5_030

    def test_makes_later_events_late(self) -> None:
        feed = Feed(TUMBLING)
        feed.now = 1_000
        feed.batch(event("a", 0))
        feed.processor.tick(1_030, caught_up=True)
        feed.now = 1_031
        assert feed.batch(event("b", 1_010)).late == [0]  # [1010, 1020) + 5 <= 1030
        assert feed.batch(event("c", 1_020)).late == []

    def test_expires_dedupe_ids(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0))
        feed.processor.tick(feed.now + 30, caught_up=True)  # stream time 1030 > 0 + 100
        assert feed.processor.dedupe_size == 0


class TestUpdates:
    config = CoreConfig(
        window_size_ms=10, window_step_ms=10, grace_ms=5, dedupe_horizon_ms=100, emit_updates=True
    )

    def test_finals_then_updates_of_changed_open_windows(self) -> None:
        feed = Feed(self.config)
        outcome = feed.batch(event("a", 0, "v", 1), event("b", 1, "u", 2))
        assert outcome.emitted == [
            final("u", 0, 10, 1, 2.0, 2.0, 2.0, is_final=False),
            final("v", 0, 10, 1, 1.0, 1.0, 1.0, is_final=False),
        ]
        outcome = feed.batch(event("c", 12, "v", 4), event("d", 15, "u"), event("e", 16, "v"))
        assert outcome.emitted == [
            final("u", 0, 10, 1, 2.0, 2.0, 2.0),
            final("v", 0, 10, 1, 1.0, 1.0, 1.0),
            final("u", 10, 10, 1, is_final=False),
            final("v", 10, 10, 2, 4.0, 4.0, 4.0, is_final=False),
        ]

    def test_unchanged_windows_get_no_update(self) -> None:
        feed = Feed(self.config)
        feed.batch(event("a", 0, "u"), event("b", 0, "v"))
        outcome = feed.batch(event("c", 1, "v"))
        assert outcome.emitted == [final("v", 0, 10, 2, is_final=False)]

    def test_window_closed_within_the_batch_gets_no_update(self) -> None:
        feed = Feed(self.config)
        outcome = feed.batch(event("a", 0), event("b", 20))
        assert outcome.emitted == [final("u", 0, 10, 1), final("u", 20, 10, 1, is_final=False)]

    def test_idle_tick_emits_only_finals(self) -> None:
        feed = Feed(self.config)
        feed.batch(event("a", 0))
        assert feed.processor.tick(10**9, caught_up=True) == [final("u", 0, 10, 1)]


class TestChangelog:
    def test_batch_writes_aggregates_one_dedupe_record_and_time(self) -> None:
        feed = Feed(TUMBLING)
        feed.now = 777
        feed.batch(event("a", 3, "u", 1), event("b", 4, "u"), event("c", 12, "v", 2.5))
        records = dict(feed.processor.drain_changelog())
        assert records == {
            b"w0:u": b"[2,1.0,1.0,1.0]",
            b"w10:v": b"[1,2.5,2.5,2.5]",
            b"d0": orjson.dumps({"a": 3, "b": 4, "c": 12}),
            b"t": b"[12,777,12]",
        }
        assert feed.processor.drain_changelog() == []

    def test_closing_writes_tombstones(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0, "u"), event("b", 0, "v"))
        feed.processor.drain_changelog()
        feed.batch(event("c", 15, "w"))
        records = feed.processor.drain_changelog()
        assert [r for r in records if r[0].startswith(b"w0:")] == [(b"w0:u", None), (b"w0:v", None)]
        assert (b"w10:w", b"[1,0.0,null,null]") in records

    def test_input_position_is_written_and_restored(self) -> None:
        feed = Feed(TUMBLING)
        assert feed.processor.position is None
        feed.batch(event("a", 0, "u"))
        feed.processor.note_position(41)
        feed.processor.note_position(42)
        records = feed.processor.drain_changelog()
        assert [r for r in records if r[0] == b"o"] == [(b"o", b"41"), (b"o", b"42")]
        restored = PartitionProcessor(TUMBLING)
        for key, value in records:
            restored.apply_changelog(key, value)
        assert restored.position == feed.processor.position == 42
        # Compaction keeps the last record of the key, which is the latest position.
        last = PartitionProcessor(TUMBLING)
        last.apply_changelog(*[r for r in records if r[0] == b"o"][-1])
        assert last.position == 42

    def test_aggregate_changed_by_several_batches_is_written_once_per_drain(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0, "u", 1.0))
        feed.batch(event("b", 1, "u", 2.0))
        feed.batch(event("c", 2, "u", 4.0))
        records = feed.processor.drain_changelog()
        assert [r for r in records if r[0].startswith(b"w")] == [(b"w0:u", b"[3,7.0,1.0,4.0]")]

    def test_aggregate_of_a_window_closed_before_the_drain_gets_only_its_tombstone(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0, "u"))
        feed.batch(event("b", 15, "v"))  # closes window 0
        records = feed.processor.drain_changelog()
        assert [r for r in records if r[0] == b"w0:u"] == [(b"w0:u", None)]

    def test_expired_batch_record_is_tombstoned(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0))
        feed.batch(event("b", 100))
        assert (b"d0", None) in feed.processor.drain_changelog()

    def test_batch_without_accepted_events_writes_no_dedupe_record(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0))
        feed.processor.drain_changelog()
        feed.batch(event("a", 0))
        assert [key for key, _ in feed.processor.drain_changelog()] == [b"t"]

    def test_ids_expired_on_arrival_are_not_kept(self) -> None:
        feed = Feed(CoreConfig(window_size_ms=10, window_step_ms=10, dedupe_horizon_ms=0))
        feed.batch(event("a", 0), event("a", 0))
        assert feed.processor.dedupe_size == 0
        assert [key for key, _ in feed.processor.drain_changelog()] == [b"w0:u", b"t"]

    def test_touch_and_tick_write_time(self) -> None:
        processor = PartitionProcessor(TUMBLING)
        processor.touch(500)
        assert processor.drain_changelog() == [(b"t", b"[null,500,null]")]
        processor.tick(530, caught_up=True)
        assert processor.drain_changelog() == [(b"t", b"[530,500,null]")]

    def test_restore_continues_where_the_original_stopped(self) -> None:
        original = Feed(TUMBLING)
        original.batch(event("a", 0, "u", 1), event("b", 3, "v"))
        original.batch(event("c", 12, "u", 2))
        restored = PartitionProcessor(TUMBLING)
        for key, value in original.processor.drain_changelog():
            restored.apply_changelog(key, value)
        assert restored.stream_time == 12
        assert restored.open_windows == 3
        assert restored.dedupe_size == 3
        follow_up = [event("a", 13), event("d", 15, "v", 9)]
        expected = original.processor.process(follow_up, 2_000, 3)
        outcome = restored.process(follow_up, 2_000, 3)
        assert outcome == expected
        assert outcome.duplicates == [0]
        assert outcome.emitted == [final("u", 0, 10, 1, 1.0, 1.0, 1.0), final("v", 0, 10, 1)]

    def test_replayed_batch_after_restore_keeps_its_dedupe_record(self) -> None:
        original = Feed(TUMBLING)
        batch = [event("a", 0), event("b", 1)]
        original.processor.process(batch, 1_000, 0)
        restored = PartitionProcessor(TUMBLING)
        for key, value in original.processor.drain_changelog():
            restored.apply_changelog(key, value)
        assert restored.process(batch, 1_001, 0).duplicates == [0, 1]
        assert [key for key, _ in restored.drain_changelog()] == [b"t"]
        assert restored.dedupe_size == 2

    def test_overflowed_sum_survives_a_restore(self) -> None:
        feed = Feed(TUMBLING)
        feed.batch(event("a", 0, amount=1.7e308), event("b", 1, amount=1.7e308))
        restored = PartitionProcessor(TUMBLING)
        for key, value in feed.processor.drain_changelog():
            restored.apply_changelog(key, value)
        restored._ready()
        assert restored._windows.by_start[0]["u"][1] == float("inf")
        (record,) = restored.tick(10**9, caught_up=True)
        assert record["sum"] is None  # JSON has no infinity: orjson writes null
        assert record["max"] == 1.7e308

    def test_time_tombstone_resets_the_clock(self) -> None:
        processor = PartitionProcessor(TUMBLING)
        processor.apply_changelog(b"t", b"[12,777,12]")
        assert processor.stream_time == 12
        processor.apply_changelog(b"t", None)
        assert processor.stream_time is None

    def test_keys_of_another_version_are_ignored(self) -> None:
        processor = PartitionProcessor(TUMBLING)
        processor.apply_changelog(b"z-from-a-newer-version", b"1")
        assert processor.stream_time is None
        assert processor.open_windows == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"window_size_ms": 0}, "window size"),
        ({"window_size_ms": 10, "window_step_ms": 11}, "window step"),
        ({"window_step_ms": 0}, "window step"),
        ({"grace_ms": -1}, "grace"),
        ({"idle_timeout_ms": 0}, "idle timeout"),
        ({"dedupe_horizon_ms": -1}, "dedupe horizon"),
    ],
)
def test_config_is_checked(fields: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CoreConfig(**fields)  # type: ignore[arg-type]
