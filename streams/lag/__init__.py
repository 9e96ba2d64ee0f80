"""Consumer lag monitoring: figures per partition, time lag, a status per group.

A pure core and a thin I/O shell, shared by ``streams lag`` and ``streams lag-exporter``:

- :mod:`~streams.lag.snapshot`: what one poll observed (groups, members, committed offsets,
  partition heads), plain values.
- :mod:`~streams.lag.timelag`: time lag interpolated from the history of each partition head
  (kafka-lag-exporter's method), with record timestamps or extrapolation for older offsets.
- :mod:`~streams.lag.status`: Burrow-style OK / WARNING / STALLED / STOPPED over a sliding
  window of samples.
- :mod:`~streams.lag.monitor`: snapshots in, per-group reports out (no I/O, no clock).
- :mod:`~streams.lag.collect`: the batched admin requests that make a snapshot; nothing joins
  a group.
- :mod:`~streams.lag.exporter`: kafka-lag-exporter's metric names over the reports.

Lag figures are those of Kafka's ``kafka-consumer-groups --describe``: committed offset, log
end offset (high watermark) and their difference, ``-`` where a partition has no commit.
"""
