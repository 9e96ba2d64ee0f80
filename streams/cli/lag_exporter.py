"""``streams lag-exporter``: serve consumer lag as Prometheus metrics (kafka-lag-exporter names)."""

from __future__ import annotations

import asyncio
import logging
import re

import click

from streams.broker.local import port_in_use
from streams.config import KafkaSettings
from streams.errors import ConfigError


@click.command(name="lag-exporter")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=9308,
    show_default=True,
    envvar="STREAMS_LAG_EXPORTER_PORT",
    help="Port of /metrics [env STREAMS_LAG_EXPORTER_PORT].",
)
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    envvar="STREAMS_LAG_EXPORTER_INTERVAL",
    help="Seconds between polls [env STREAMS_LAG_EXPORTER_INTERVAL].",
)
@click.option(
    "--window",
    type=click.FloatRange(min=0.0),
    default=60.0,
    show_default=True,
    help="Seconds of polls the group status looks back over.",
)
@click.option(
    "--group-pattern",
    default=".*",
    show_default=True,
    envvar="STREAMS_LAG_EXPORTER_GROUP_PATTERN",
    help="Watch the groups whose whole name matches this regex "
    "[env STREAMS_LAG_EXPORTER_GROUP_PATTERN].",
)
def command(port: int, bind: str, interval: float, window: float, group_pattern: str) -> None:
    """Poll consumer groups and serve their lag on /metrics until SIGTERM or Ctrl-C.

    Each poll is a handful of batched admin requests (no consumer joins any group). Metric
    names are kafka-lag-exporter's (kafka_consumergroup_group_lag, ..._lag_seconds,
    ..._max_lag, ..._sum_lag, ..._offset, kafka_partition_latest_offset) plus
    kafka_consumergroup_group_status{group,status}.
    """
    from streams.lag.exporter import LagExporter, serve

    try:
        re.compile(group_pattern)
    except re.error as exc:
        raise ConfigError(f"--group-pattern {group_pattern!r} is not a regex: {exc}") from None
    if port_in_use(port):
        raise ConfigError(f"port {port} is already in use; pick another with --port")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Connection failures are reported once per poll by the exporter; aiokafka's own error
    # logs would repeat each one with a traceback.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    kafka = KafkaSettings.from_env()
    exporter = LagExporter(kafka, interval_s=interval, window_s=window, pattern=group_pattern)
    logging.getLogger("streams.lag").info(
        "serving /metrics on %s:%d; polling %s every %.1fs for groups matching %r",
        bind,
        port,
        kafka.bootstrap_servers,
        interval,
        group_pattern,
    )
    asyncio.run(serve(exporter, port=port, bind=bind))
