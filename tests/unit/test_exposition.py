"""The supervisor's one ``/metrics``: worker processes' expositions (real ``WorkerMetrics``
registries) merged without double counting."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.runtime.metrics import WorkerMetrics
from streams.worker.exposition import Exposition


def _worker(consumed: int, assigned: int, lag: dict[int, int], tables: int = 7) -> str:
    """The exposition of one worker process."""
    metrics = WorkerMetrics()
    metrics.declare(["orders"], ["orders"], ["orders.dlq"])
    metrics.consumed.labels("orders").inc(consumed)
    metrics.assigned.set(assigned)
    metrics.batch_seconds.observe(0.02)
    metrics.batch_seconds.observe(3.0)
    metrics.table_records.labels("products").set(tables)
    metrics.ready.set_function(lambda: 1.0)
    for partition, records in lag.items():
        metrics.lag.labels("orders", str(partition)).set(records)
    return generate_latest(metrics.registry).decode()


def _samples(exposition: Exposition) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What a Prometheus scrape of the merged exposition reads, by sample and labels."""
    registry = CollectorRegistry()
    registry.register(exposition)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _merged(*workers: str) -> Exposition:
    exposition = Exposition(served={"streams_worker_ready"})
    for slot, text in enumerate(workers):
        exposition.update(slot, text)
    return exposition


def test_counters_histograms_and_shared_gauges_are_summed() -> None:
    samples = _samples(_merged(_worker(100, 2, {0: 5}), _worker(30, 1, {1: 0})))
    assert samples[("streams_events_consumed_total", (("topic", "orders"),))] == 130
    assert samples[("streams_assigned_partitions", ())] == 3
    assert samples[("streams_batch_processing_seconds_count", ())] == 4
    assert samples[("streams_batch_processing_seconds_sum", ())] == 6.04
    assert samples[("streams_batch_processing_seconds_bucket", (("le", "0.025"),))] == 2
    assert samples[("streams_batch_processing_seconds_bucket", (("le", "+Inf"),))] == 4
    # Creation times are not summed, and readiness is the supervisor's own.
    assert not [key for key in samples if key[0].endswith("_created")]
    assert not [key for key in samples if key[0] == "streams_worker_ready"]


def test_gauges_a_sum_would_make_wrong_get_a_process_label() -> None:
    samples = _samples(_merged(_worker(1, 1, {0: 5}), _worker(1, 1, {0: 9, 1: 2})))
    lag = {k: v for k, v in samples.items() if k[0] == "streams_consumer_lag_records"}
    # Partition 0 moving between two processes: both reports, neither summed.
    assert lag == {
        (
            "streams_consumer_lag_records",
            (("partition", "0"), ("process", "0"), ("topic", "orders")),
        ): 5,
        (
            "streams_consumer_lag_records",
            (("partition", "0"), ("process", "1"), ("topic", "orders")),
        ): 9,
        (
            "streams_consumer_lag_records",
            (("partition", "1"), ("process", "1"), ("topic", "orders")),
        ): 2,
    }
    tables = {k: v for k, v in samples.items() if k[0] == "streams_table_records"}
    assert list(tables.values()) == [7, 7]  # each process holds the whole table


def test_a_dead_process_keeps_its_counts_and_drops_its_gauges() -> None:
    exposition = _merged(_worker(100, 2, {0: 5}), _worker(30, 2, {1: 0}))
    exposition.forget(0)
    # Its replacement starts from zero; the sums go on from where they were.
    exposition.update(0, _worker(4, 1, {0: 1}))
    samples = _samples(exposition)
    assert samples[("streams_events_consumed_total", (("topic", "orders"),))] == 134
    assert samples[("streams_batch_processing_seconds_count", ())] == 6
    assert samples[("streams_assigned_partitions", ())] == 3
    assert samples[("streams_table_records", (("process", "0"), ("topic", "products")))] == 7
    lag = [k for k in samples if k[0] == "streams_consumer_lag_records"]
    assert len(lag) == 2


def test_a_process_that_died_for_good_still_counts() -> None:
    exposition = _merged(_worker(100, 2, {0: 5}), _worker(30, 2, {1: 0}))
    exposition.forget(1)
    exposition.forget(1)  # forgetting twice carries nothing twice
    samples = _samples(exposition)
    assert samples[("streams_events_consumed_total", (("topic", "orders"),))] == 130
    assert samples[("streams_assigned_partitions", ())] == 2
