"""The lag monitor and the exporter's metric families, fed with hand-made snapshots."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.lag.exporter import LagMetrics
from streams.lag.monitor import LagMonitor
from streams.lag.snapshot import GroupOffsets, Member, PartitionId, Snapshot
from streams.lag.status import Status
from streams.lag.timelag import Source

P0, P1, P2 = (PartitionId("events", p) for p in range(3))
ALICE = Member("c-1", "client-a", "10.0.0.1", (P0,))
BOB = Member("c-2", "client-b", "10.0.0.2", (P2,))


def snap(
    at: float,
    committed: dict[PartitionId, int],
    log_end: dict[PartitionId, int],
    members: tuple[Member, ...] = (ALICE,),
    group: str = "g",
) -> Snapshot:
    state = "Stable" if members else "Empty"
    return Snapshot(at, (GroupOffsets(group, state, members, committed),), log_end)


def test_report_has_the_describe_figures_owners_and_totals() -> None:
    monitor = LagMonitor(window_s=10)
    monitor.observe(snap(1.0, {P0: 90, P1: 40}, {P0: 100, P1: 40, P2: 7}, (ALICE, BOB)))
    (report,) = monitor.report()
    rows = {p.partition: p for p in report.partitions}
    assert (rows[0].committed, rows[0].log_end, rows[0].lag) == (90, 100, 10)
    assert (rows[0].consumer_id, rows[0].client_id, rows[0].host) == ("c-1", "client-a", "10.0.0.1")
    assert (rows[1].committed, rows[1].lag, rows[1].consumer_id) == (40, 0, None)
    # Owned but never committed: no lag, as kafka-consumer-groups prints "-".
    assert (rows[2].committed, rows[2].log_end, rows[2].lag, rows[2].consumer_id) == (
        None,
        7,
        None,
        "c-2",
    )
    assert (report.sum_lag, report.max_lag, report.members, report.state) == (10, 10, 2, "Stable")
    assert report.as_dict()["partitions"][0]["log_end_offset"] == 100


def test_status_follows_a_consumer_that_keeps_up_then_stalls_then_leaves() -> None:
    monitor = LagMonitor(window_s=2)
    at, head, committed = 0.0, 0, 0

    def step(*, consume: bool, members: tuple[Member, ...] = (ALICE,)) -> Status:
        nonlocal at, head, committed
        at, head = at + 1, head + 50
        if consume:
            committed = head
        monitor.observe(snap(at, {P0: committed}, {P0: head}, members))
        return monitor.report()[0].status

    assert [step(consume=True) for _ in range(4)] == [Status.OK] * 4
    stalled = [step(consume=False) for _ in range(4)]
    # Until the last zero-lag sample leaves the 2 s window the group still counts as OK.
    assert stalled[0] is Status.OK
    assert stalled[-1] is Status.STALLED
    assert step(consume=False, members=()) is Status.STOPPED


def test_status_warns_when_commits_move_but_lag_keeps_growing() -> None:
    monitor = LagMonitor(window_s=5)
    for i in range(1, 5):
        monitor.observe(snap(float(i), {P0: 100 * i}, {P0: 150 * i}))
    assert monitor.report()[0].status is Status.WARNING


def test_time_lag_is_interpolated_once_the_head_history_covers_the_committed_offset() -> None:
    monitor = LagMonitor()
    monitor.observe(snap(10.0, {P0: 0}, {P0: 100}))
    monitor.observe(snap(20.0, {P0: 150}, {P0: 200}))
    (row,) = monitor.report()[0].partitions
    assert row.time_lag.source is Source.INTERPOLATED
    assert row.time_lag.seconds == pytest.approx(5.0)


def test_a_committed_offset_before_the_history_asks_for_its_record_time_once() -> None:
    monitor = LagMonitor()
    monitor.observe(snap(100.0, {P0: 10, P1: 5}, {P0: 1000, P1: 5}))
    assert monitor.record_times_wanted() == {P0: [10]}  # P1 is caught up
    monitor.add_record_times({(P0, 10): 40.0})
    assert monitor.record_times_wanted() == {}
    (report,) = monitor.report()
    assert report.partitions[0].time_lag.source is Source.RECORD
    assert report.partitions[0].time_lag.seconds == pytest.approx(60.0)
    assert report.max_time_lag == pytest.approx(60.0)
    # Once the group moves on, the old record time is dropped and the new offset is wanted.
    monitor.observe(snap(101.0, {P0: 20, P1: 5}, {P0: 1000, P1: 5}))
    assert monitor.record_times_wanted() == {P0: [20]}
    assert monitor._record_times == {}


def test_every_group_sharing_a_partition_gets_its_record_time() -> None:
    monitor = LagMonitor()
    monitor.observe(
        Snapshot(
            1.0,
            (GroupOffsets("a", "Empty", (), {P0: 30}), GroupOffsets("b", "Empty", (), {P0: 20})),
            {P0: 100},
        )
    )
    assert monitor.record_times_wanted() == {P0: [20, 30]}
    monitor.add_record_times({(P0, 20): 0.5, (P0, 30): 0.75})
    reports = {r.group: r.partitions[0].time_lag for r in monitor.report()}
    assert reports["a"].seconds == pytest.approx(0.25)
    assert reports["b"].seconds == pytest.approx(0.5)


def test_groups_and_partitions_absent_from_a_snapshot_are_forgotten() -> None:
    monitor = LagMonitor()
    monitor.observe(snap(1.0, {P0: 1}, {P0: 5}, group="old"))
    monitor.observe(snap(2.0, {P1: 1}, {P1: 5}, group="new"))
    assert [r.group for r in monitor.report()] == ["new"]
    assert monitor._heads.keys() == {P1}
    assert monitor._samples.keys() == {"new"}


def scrape(metrics: LagMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {
        s.name: [(x.labels, x.value) for x in f.samples if x.name == s.name]
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_exporter_families_use_kafka_lag_exporter_names_and_labels() -> None:
    monitor = LagMonitor()
    monitor.observe(snap(1.0, {P0: 90, P1: 40}, {P0: 100, P1: 50, P2: 7}, (ALICE,)))
    metrics = LagMetrics()
    metrics.update(monitor.report(), {P0: 100, P1: 50, P2: 7})
    got = scrape(metrics)
    lag = {s[0]["partition"]: s for s in got["kafka_consumergroup_group_lag"]}
    assert lag["0"] == (
        {
            "group": "g",
            "topic": "events",
            "partition": "0",
            "member_host": "10.0.0.1",
            "consumer_id": "c-1",
            "client_id": "client-a",
        },
        10.0,
    )
    assert lag["1"][0]["consumer_id"] == "unknown"
    assert "2" not in lag  # never committed
    offsets = {s[0]["partition"]: s[1] for s in got["kafka_consumergroup_group_offset"]}
    assert offsets == {"0": 90.0, "1": 40.0}
    assert got["kafka_consumergroup_group_sum_lag"] == [({"group": "g"}, 20.0)]
    assert got["kafka_consumergroup_group_max_lag"] == [({"group": "g"}, 10.0)]
    assert got["kafka_consumergroup_group_topic_sum_lag"] == [
        ({"group": "g", "topic": "events"}, 20.0)
    ]
    status = {s[0]["status"]: s[1] for s in got["kafka_consumergroup_group_status"]}
    assert status == {"OK": 1.0, "WARNING": 0.0, "STALLED": 0.0, "STOPPED": 0.0}
    latest = {s[0]["partition"]: s[1] for s in got["kafka_partition_latest_offset"]}
    assert latest == {"0": 100.0, "1": 50.0, "2": 7.0}
    # One poll of history, no record times: these time lags are unknown and not exported.
    assert "kafka_consumergroup_group_lag_seconds" not in got


def test_cleared_metrics_have_no_series() -> None:
    metrics = LagMetrics()
    monitor = LagMonitor()
    monitor.observe(snap(1.0, {P0: 1}, {P0: 1}))
    metrics.update(monitor.report(), {P0: 1})
    metrics.clear()
    assert scrape(metrics) == {}
