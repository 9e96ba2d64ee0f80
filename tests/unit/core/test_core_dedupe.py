"""The dedupe store on its own: per-batch records, expiry, replays and restores."""

from __future__ import annotations

import orjson

from streams.core.dedupe import Deduplicator

HORIZON = 100


def test_batch_record_holds_its_ids_and_their_ts() -> None:
    dedupe = Deduplicator(HORIZON)
    dedupe.seen.update({"a": 5, "b": 7})
    records = dedupe.remember(42, {"a": 5, "b": 7}, stream_time=7)
    assert records == [(b"d42", orjson.dumps({"a": 5, "b": 7}))]
    assert len(dedupe) == 2


def test_batch_is_forgotten_once_its_newest_id_expires() -> None:
    dedupe = Deduplicator(HORIZON)
    dedupe.seen.update({"a": 5, "b": 7})
    dedupe.remember(0, {"a": 5, "b": 7}, stream_time=7)
    assert dedupe.purge(106) == []
    assert dedupe.purge(107) == [(b"d0", None)]
    assert len(dedupe) == 0


def test_id_accepted_again_outlives_its_first_batch() -> None:
    dedupe = Deduplicator(HORIZON)
    dedupe.seen["a"] = 5
    dedupe.remember(0, {"a": 5}, stream_time=5)
    dedupe.seen["a"] = 105
    assert dedupe.remember(1, {"a": 105}, stream_time=105) == [
        (b"d1", b'{"a":105}'),
        (b"d0", None),
    ]
    assert dedupe.seen == {"a": 105}


def test_replayed_seq_merges_keeping_the_largest_ts() -> None:
    dedupe = Deduplicator(HORIZON)
    dedupe.remember(0, {"a": 50, "b": 10}, stream_time=50)
    records = dedupe.remember(0, {"a": 20, "c": 30}, stream_time=50)
    assert records == [(b"d0", orjson.dumps({"a": 50, "b": 10, "c": 30}))]


def test_replayed_seq_of_a_live_batch_is_kept_even_if_the_new_ids_are_expired() -> None:
    dedupe = Deduplicator(HORIZON)
    dedupe.seen.update({"a": 150, "b": 10})
    dedupe.remember(0, {"a": 150}, stream_time=150)
    records = dedupe.remember(0, {"b": 10}, stream_time=150)
    assert records == [(b"d0", orjson.dumps({"a": 150, "b": 10}))]
    assert dedupe.purge(249) == []
    assert dedupe.purge(250) == [(b"d0", None)]
    assert dedupe.seen == {}


def test_restore_takes_the_largest_ts_of_an_id_across_batches() -> None:
    dedupe = Deduplicator(HORIZON)
    dedupe.apply(7, {"a": 120})
    dedupe.apply(3, {"a": 10, "b": 12})
    dedupe.apply(9, {"c": 1})
    dedupe.apply(9, None)
    dedupe.ensure_index()
    assert dedupe.seen == {"a": 120, "b": 12}
    assert dedupe.purge(112) == [(b"d3", None)]
    assert dedupe.seen == {"a": 120}


def test_restore_replaces_the_ids_in_place() -> None:
    dedupe = Deduplicator(HORIZON)
    seen = dedupe.seen
    dedupe.apply(1, {"a": 1})
    dedupe.ensure_index()
    assert seen == {"a": 1}


def test_replayed_seq_of_an_expired_batch_is_tombstoned() -> None:
    dedupe = Deduplicator(HORIZON)
    dedupe.apply(0, {"a": 10})
    dedupe.ensure_index()
    dedupe.seen["b"] = 5
    assert dedupe.remember(0, {"b": 5}, stream_time=200) == [(b"d0", None)]
    assert dedupe.seen == {}
