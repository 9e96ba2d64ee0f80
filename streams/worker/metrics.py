"""The worker's Prometheus metrics: one registry per process, low-cardinality labels only."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)


class WorkerMetrics:
    """Every metric a worker exports, registered in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "streams_events_consumed_total", "Messages consumed.", ["topic"], registry=r
        )
        self.produced = Counter(
            "streams_events_produced_total", "Records produced.", ["topic"], registry=r
        )
        self.invalid = Counter(
            "streams_events_invalid_total", "Messages that failed validation.", registry=r
        )
        self.duplicates = Counter(
            "streams_events_duplicate_total", "Events dropped as duplicates.", registry=r
        )
        self.late = Counter("streams_events_late_total", "Events past window+grace.", registry=r)
        self.dlq_writes = Counter(
            "streams_dlq_writes_total", "Records written to the dead-letter topic.", registry=r
        )
        self.batch_seconds = Histogram(
            "streams_batch_processing_seconds",
            "Time to process one fetched batch, produce its output and commit.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "streams_batch_size_events",
            "Messages per fetched batch.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.emit_latency = Histogram(
            "streams_emit_latency_seconds",
            "Delay until a result is produced: from window end (event_time) or from the "
            "broker append time of the newest input in its batch (append).",
            ["since"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.buffered = Gauge(
            "streams_buffered_events", "Events fetched and not yet committed.", registry=r
        )
        self.paused = Gauge(
            "streams_paused_partitions", "Input partitions paused by backpressure.", registry=r
        )
        self.assigned = Gauge(
            "streams_assigned_partitions", "Input partitions assigned to this worker.", registry=r
        )
        self.rebalances = Counter(
            "streams_rebalances_total", "Partition assignments received.", registry=r
        )
        self.restored = Counter(
            "streams_recovery_records_restored_total", "Changelog records replayed.", registry=r
        )
        self.restore_remaining = Gauge(
            "streams_recovery_records_remaining", "Changelog records left to replay.", registry=r
        )
        self.open_windows = Gauge(
            "streams_state_open_windows", "(key, window) aggregates held in state.", registry=r
        )
        self.dedupe_ids = Gauge(
            "streams_state_dedupe_ids", "Event ids held for deduplication.", registry=r
        )
        self.commits = Counter("streams_commits_total", "Offset commits.", registry=r)
        self.commit_failures = Counter(
            "streams_commit_failures_total", "Offset commits that failed.", registry=r
        )
        self.transactions = Counter(
            "streams_transactions_total", "Kafka transactions by outcome.", ["result"], registry=r
        )
        self.ready = Gauge(
            "streams_worker_ready", "1 when /health/ready answers 200, else 0.", registry=r
        )
        self.lag = Gauge(
            "streams_consumer_lag_records",
            "Per assigned partition: log end offset minus the next offset to process.",
            ["topic", "partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "streams_consumer_lag_seconds",
            "Per assigned partition: how long ago the next offset to process was the head "
            "(interpolated from samples of the head, as kafka-lag-exporter does).",
            ["topic", "partition"],
            registry=r,
        )


def observe_many(histogram: Any, amount: float, count: int) -> None:
    """``count`` observations of the same ``amount`` in one step (a labelled child).

    Finals of one window, emitted together, share their latency; observing them one by one
    cost a few percent of the hot path. Uses the client's bucket internals (prometheus_client
    is pinned), and falls back to single observations if those ever change.
    """
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None:
        for _ in range(count):
            histogram.observe(amount)
        return
    total.inc(amount * count)
    for i, bound in enumerate(bounds):
        if amount <= bound:
            buckets[i].inc(count)
            return
