"""The worker's Prometheus metrics: one registry per process, low-cardinality labels only.

Per-pipeline metrics carry a ``pipeline`` label (the pipeline's name; ``name#n`` for the
segment after the n-th ``group_by``); per-topic ones a ``topic`` label. Every labelled child a
worker will use is created at start, so dashboards and alerts see a zero before the first
event instead of no series at all.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
# Phases of a batch run from well under a millisecond (processing 40 events) to seconds.
_PHASE_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
# Where a batch's time goes, in order (streams_batch_phase_seconds).
BATCH_PHASES = ("fetch_wait", "process", "queue", "produce", "commit")
_CALL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
            "streams_events_invalid_total",
            "Messages that failed validation (not JSON, not an object, or against the topic's "
            "schema).",
            ["topic"],
            registry=r,
        )
        self.duplicates = Counter(
            "streams_events_duplicate_total",
            "Events dropped as duplicates.",
            ["pipeline"],
            registry=r,
        )
        self.late = Counter(
            "streams_events_late_total", "Events past window+grace.", ["pipeline"], registry=r
        )
        self.filtered = Counter(
            "streams_events_filtered_total",
            "Events a filter (or an inner join, or map_batch returning None) dropped.",
            ["pipeline"],
            registry=r,
        )
        self.failed = Counter(
            "streams_events_failed_total",
            "Events dead-lettered by the pipeline, by stage (key, timestamp, filter, map, "
            "flat_map, map_batch, dedupe, join, enrich, process, timer, aggregate, group_by, "
            "to, produce); aggregate includes windows whose custom result failed, timer the "
            "calls of on_timer that failed.",
            ["pipeline", "stage"],
            registry=r,
        )
        self.key_mismatches = Counter(
            "streams_events_key_mismatch_total",
            "Events whose message key differs from their key field (results split across "
            "partitions: re-key with group_by).",
            ["pipeline"],
            registry=r,
        )
        self.join_misses = Counter(
            "streams_join_misses_total",
            "Joined events whose key the table lacks.",
            ["pipeline"],
            registry=r,
        )
        self.emitted = Counter(
            "streams_results_emitted_total",
            "Records a pipeline wrote to its output (finals, updates, or values).",
            ["pipeline"],
            registry=r,
        )
        self.dlq_writes = Counter(
            "streams_dlq_writes_total",
            "Records written to a dead-letter topic.",
            ["topic"],
            registry=r,
        )
        self.enrich_hits = Counter(
            "streams_enrich_cache_hits_total",
            "Enrich keys found in the cache.",
            ["pipeline"],
            registry=r,
        )
        self.enrich_misses = Counter(
            "streams_enrich_cache_misses_total",
            "Enrich keys looked up by a call.",
            ["pipeline"],
            registry=r,
        )
        self.enrich_seconds = Histogram(
            "streams_enrich_call_seconds",
            "Time of one enrich call (all its attempts).",
            ["pipeline"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "streams_batch_processing_seconds",
            "Time to process one fetched batch, produce its output and commit.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_phase = Histogram(
            "streams_batch_phase_seconds",
            "Where each batch's time went, by phase: fetch_wait (the age of its oldest record "
            "when the poll loop took it: broker append or producer time), process (the loop "
            "running it through the tasks, changelog drain included), queue (processed until "
            "its commit starts: the previous batch's commit in flight), produce (its outputs "
            "sent until acknowledged: at_least_once sends them when the batch is processed, "
            "so this overlaps queue; exactly_once from its transaction's start), commit (its "
            "commit's start or its outputs' acknowledgement, the later, until committed: "
            "changelog and offsets; exactly_once: the transaction's end).",
            ["phase"],
            buckets=_PHASE_BUCKETS,
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
            "streams_buffered_events",
            "Events fetched and not yet committed (the batch in hand).",
            registry=r,
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
        self.restore_failures = Counter(
            "streams_recovery_failures_total",
            "State restores that failed and were retried.",
            registry=r,
        )
        self.local_stores = Counter(
            "streams_recovery_local_stores_total",
            "Adoptions of a task with a RocksDB store: reused from its checkpoint (only the "
            "changelog after it replayed), else why it was rebuilt from the whole changelog.",
            ["outcome"],
            registry=r,
        )
        self.checkpoints = Counter(
            "streams_state_checkpoints_total",
            "Checkpoints written of RocksDB stores (decision 0017).",
            registry=r,
        )
        self.kept_partitions = Counter(
            "streams_rebalance_kept_partitions_total",
            "Input partitions whose state a worker kept across a rebalance (no replay).",
            registry=r,
        )
        self.open_windows = Gauge(
            "streams_state_open_windows",
            "(key, window) aggregates held in state.",
            ["pipeline"],
            registry=r,
        )
        self.dedupe_ids = Gauge(
            "streams_state_dedupe_ids",
            "Event ids held for deduplication.",
            ["pipeline"],
            registry=r,
        )
        self.process_keys = Gauge(
            "streams_process_keys",
            "Keys holding .process state (values or timers).",
            ["pipeline"],
            registry=r,
        )
        self.timers_pending = Gauge(
            "streams_process_timers_pending",
            "Event-time timers of .process waiting for stream time to reach them.",
            ["pipeline"],
            registry=r,
        )
        self.timers_fired = Counter(
            "streams_process_timers_fired_total",
            "Timers of .process fired (on_timer called; its failures count in "
            'streams_events_failed_total{stage="timer"}).',
            ["pipeline"],
            registry=r,
        )
        self.commits = Counter("streams_commits_total", "Offset commits.", registry=r)
        self.commit_failures = Counter(
            "streams_commit_failures_total", "Offset commits that failed.", registry=r
        )
        self.transactions = Counter(
            "streams_transactions_total", "Kafka transactions by outcome.", ["result"], registry=r
        )
        self.poison = Counter(
            "streams_poison_outputs_total",
            "Output records the broker refused for good, sent to the dead-letter topic.",
            ["topic"],
            registry=r,
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
        self.table_records = Gauge(
            "streams_table_records",
            "Keys held of each table (app.table).",
            ["topic"],
            registry=r,
        )

    def declare(self, pipelines: Iterable[str], topics: Iterable[str], dlqs: Iterable[str]) -> None:
        """Create the children a worker of these pipelines and topics will use (at zero)."""
        for name in pipelines:
            for metric in (
                self.duplicates,
                self.late,
                self.filtered,
                self.key_mismatches,
                self.join_misses,
                self.emitted,
                self.open_windows,
                self.dedupe_ids,
                self.process_keys,
                self.timers_pending,
                self.timers_fired,
            ):
                metric.labels(name)
        for topic in topics:
            self.consumed.labels(topic)
            self.invalid.labels(topic)
        for topic in dlqs:
            self.dlq_writes.labels(topic)
        for since in ("event_time", "append"):
            self.emit_latency.labels(since)
        for phase in BATCH_PHASES:
            self.batch_phase.labels(phase)
