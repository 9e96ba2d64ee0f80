"""The lag exporter: polls consumer groups and serves kafka-lag-exporter's metrics.

Metric names and labels are kafka-lag-exporter's, so its dashboards and alerts work as they
are (its ``cluster_name`` label is left out: one exporter watches one cluster):

- ``kafka_consumergroup_group_lag{group,topic,partition,member_host,consumer_id,client_id}``
- ``kafka_consumergroup_group_lag_seconds{...same}`` (partitions with an estimate only)
- ``kafka_consumergroup_group_offset{...same}``
- ``kafka_consumergroup_group_max_lag{group}``, ``..._max_lag_seconds{group}``,
  ``..._sum_lag{group}``, ``kafka_consumergroup_group_topic_sum_lag{group,topic}``
- ``kafka_partition_latest_offset{topic,partition}``

plus ``kafka_consumergroup_group_status{group,status}`` (1 for the current status, 0 for the
others, see :mod:`streams.lag.status`), ``kafka_consumergroup_group_members{group}`` and the
exporter's own ``streams_lag_exporter_*`` metrics. Partitions nobody owns carry ``unknown``
in the member labels, as in kafka-lag-exporter.

Series are built at scrape time from the latest poll, so a partition that changes owner or a
group that disappears leaves no stale series behind. A failed poll clears them: the series
disappear (and ``streams_lag_exporter_poll_errors_total`` counts) rather than show old values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from streams.config import KafkaSettings
from streams.errors import StreamsError
from streams.lag.collect import LagCollector
from streams.lag.monitor import GroupReport, LagMonitor
from streams.lag.snapshot import PartitionId
from streams.lag.status import STATUSES

log = logging.getLogger(__name__)

PARTITION_LABELS = ("group", "topic", "partition", "member_host", "consumer_id", "client_id")
UNKNOWN = "unknown"


class LagMetrics:
    """A prometheus-client collector over the latest reports (swapped whole, read at scrape)."""

    def __init__(self) -> None:
        self._reports: Sequence[GroupReport] = ()
        self._log_end: Mapping[PartitionId, int] = {}

    def update(self, reports: Sequence[GroupReport], log_end: Mapping[PartitionId, int]) -> None:
        """Publish a poll's results (one assignment each: scrapes run in another thread)."""
        self._reports, self._log_end = tuple(reports), dict(log_end)

    def clear(self) -> None:
        """Drop every series (after a failed poll)."""
        self.update((), {})

    def collect(self) -> Iterator[Metric]:
        """Build every family from the current reports."""
        reports, log_end = self._reports, self._log_end
        lag = GaugeMetricFamily(
            "kafka_consumergroup_group_lag",
            "Group offset lag of a partition",
            labels=PARTITION_LABELS,
        )
        lag_s = GaugeMetricFamily(
            "kafka_consumergroup_group_lag_seconds",
            "Group time lag of a partition",
            labels=PARTITION_LABELS,
        )
        offset = GaugeMetricFamily(
            "kafka_consumergroup_group_offset",
            "Last group consumed offset of a partition",
            labels=PARTITION_LABELS,
        )
        max_lag = GaugeMetricFamily(
            "kafka_consumergroup_group_max_lag", "Max group offset lag", labels=["group"]
        )
        max_lag_s = GaugeMetricFamily(
            "kafka_consumergroup_group_max_lag_seconds", "Max group time lag", labels=["group"]
        )
        sum_lag = GaugeMetricFamily(
            "kafka_consumergroup_group_sum_lag", "Sum of group offset lag", labels=["group"]
        )
        topic_sum_lag = GaugeMetricFamily(
            "kafka_consumergroup_group_topic_sum_lag",
            "Sum of group offset lag across topic partitions",
            labels=["group", "topic"],
        )
        status = GaugeMetricFamily(
            "kafka_consumergroup_group_status",
            "1 for the group's current status (OK, WARNING, STALLED, STOPPED), else 0",
            labels=["group", "status"],
        )
        members = GaugeMetricFamily(
            "kafka_consumergroup_group_members", "Members of the group", labels=["group"]
        )
        for report in reports:
            g = report.group
            topic_lag: dict[str, int] = {}
            for p in report.partitions:
                if p.lag is None or p.committed is None:
                    continue
                labels = [
                    g,
                    p.topic,
                    str(p.partition),
                    p.host or UNKNOWN,
                    p.consumer_id or UNKNOWN,
                    p.client_id or UNKNOWN,
                ]
                lag.add_metric(labels, p.lag)
                offset.add_metric(labels, p.committed)
                if p.time_lag.seconds is not None:
                    lag_s.add_metric(labels, p.time_lag.seconds)
                topic_lag[p.topic] = topic_lag.get(p.topic, 0) + p.lag
            max_lag.add_metric([g], report.max_lag)
            sum_lag.add_metric([g], report.sum_lag)
            if report.max_time_lag is not None:
                max_lag_s.add_metric([g], report.max_time_lag)
            for topic, value in sorted(topic_lag.items()):
                topic_sum_lag.add_metric([g, topic], value)
            for s in STATUSES:
                status.add_metric([g, s.value], 1.0 if report.status is s else 0.0)
            members.add_metric([g], report.members)
        latest = GaugeMetricFamily(
            "kafka_partition_latest_offset",
            "Latest offset of a partition",
            labels=["topic", "partition"],
        )
        for head, end in sorted(log_end.items()):
            latest.add_metric([head.topic, str(head.partition)], end)
        yield from (lag, lag_s, offset, max_lag, max_lag_s, sum_lag, topic_sum_lag, status, members)
        yield latest


class LagExporter:
    """Polls every ``interval_s`` the groups matching ``pattern`` into its own registry."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        interval_s: float = 5.0,
        window_s: float = 60.0,
        pattern: str = ".*",
        history_points: int = 360,
    ) -> None:
        self.kafka = kafka
        self.interval_s = interval_s
        self.pattern = re.compile(pattern)
        self.monitor = LagMonitor(window_s=window_s, history_points=history_points)
        self.registry = CollectorRegistry()
        self.metrics = LagMetrics()
        self.registry.register(self.metrics)
        r = self.registry
        self.poll_seconds = Histogram(
            "streams_lag_exporter_poll_seconds",
            "Time to poll every watched group (admin requests, record timestamps).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.poll_errors = Counter(
            "streams_lag_exporter_poll_errors_total", "Polls that failed.", registry=r
        )
        self.groups = Gauge("streams_lag_exporter_groups", "Consumer groups watched.", registry=r)
        self.last_success = Gauge(
            "streams_lag_exporter_last_poll_success_timestamp_seconds",
            "Wall time of the last successful poll.",
            registry=r,
        )

    async def poll(self, collector: LagCollector) -> list[GroupReport]:
        """One poll: list, describe and read the groups, then publish the metrics."""
        started = time.perf_counter()
        names = await collector.list_groups(self.pattern)
        snapshot = await collector.snapshot(names)
        self.monitor.observe(snapshot)
        wanted = self.monitor.record_times_wanted()
        if wanted:
            timeout = max(0.5, min(3.0, self.interval_s / 2))
            self.monitor.add_record_times(await collector.record_times(wanted, timeout))
        reports = self.monitor.report()
        self.metrics.update(reports, snapshot.log_end)
        self.groups.set(len(reports))
        self.last_success.set(time.time())
        self.poll_seconds.observe(time.perf_counter() - started)
        return reports

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a failed poll is logged, counted and retried."""
        while not stop.is_set():
            try:
                async with LagCollector(self.kafka) as collector:
                    while not stop.is_set():
                        tick = time.monotonic()
                        await self.poll(collector)
                        await _wait(stop, tick + self.interval_s - time.monotonic())
            except StreamsError as exc:
                log.warning("lag poll failed: %s", exc)
                self._failed()
                await _wait(stop, self.interval_s)
            except Exception:
                # A long-running exporter keeps serving through a client bug or a broker
                # answer nobody foresaw; the traceback goes to the log once per failed poll.
                log.exception("lag poll failed unexpectedly")
                self._failed()
                await _wait(stop, self.interval_s)

    def _failed(self) -> None:
        self.poll_errors.inc()
        self.metrics.clear()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to ``seconds``, waking early when ``stop`` is set."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def serve(
    exporter: LagExporter, *, port: int, bind: str = "0.0.0.0", stop: asyncio.Event | None = None
) -> None:
    """Serve ``/metrics`` on ``bind:port`` and poll until ``stop`` (default: SIGINT/SIGTERM)."""
    server, thread = start_http_server(port, bind, registry=exporter.registry)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if stop is None else ()
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await exporter.run(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
