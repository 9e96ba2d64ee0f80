"""The supervisor's one ``/metrics``: its worker processes' expositions, scraped and merged.

Each worker process of ``streams worker --processes N`` serves its own registry on a private
port; the supervisor scrapes them and serves one exposition (docs/decisions/0016):

- counters and histograms are summed over the processes. A process that dies keeps its
  share: its last scraped values are carried into the sums, so a restart never makes a sum go
  backwards (which Prometheus would read as a counter reset, and count the survivors again);
- gauges are summed (partitions assigned, events buffered, open windows: the processes share
  the work), except those a sum would make wrong, which keep one series per process under a
  ``process`` label (its slot, 0 to N-1): the lag of a partition (two processes may report one
  partition while it moves between them) and table records (every process holds the whole
  table).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

PROCESS_LABEL = "process"
PER_PROCESS = frozenset(
    {"streams_consumer_lag_records", "streams_consumer_lag_seconds", "streams_table_records"}
)
# Families whose samples only ever grow (until their process restarts).
_CUMULATIVE = frozenset({"counter", "histogram", "summary"})

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]


@dataclass
class Family:
    """One metric family of one exposition: its samples by (sample name, labels)."""

    name: str
    type: str
    documentation: str
    samples: dict[SampleKey, float] = field(default_factory=dict)


def parse(text: str) -> dict[str, Family]:
    """The families of a text exposition, by name, without the ``<name>_created`` gauges of
    counters and histograms (creation times: nothing to sum)."""
    families: dict[str, Family] = {}
    for metric in text_string_to_metric_families(text):
        family = Family(metric.name, metric.type, metric.documentation)
        for sample in metric.samples:
            family.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        families[metric.name] = family
    for name in [n for n in families if n.endswith("_created")]:
        stem = families.get(name.removesuffix("_created"))
        if stem is not None and stem.type in _CUMULATIVE:
            del families[name]
    return families


class Exposition:
    """The merged metrics of the worker processes; a prometheus_client collector.

    ``served`` names families the supervisor serves itself (they are left out here).
    """

    def __init__(self, served: Iterable[str] = ()) -> None:
        self._served = frozenset(served)
        self._live: dict[int, dict[str, Family]] = {}
        self._carried: dict[str, Family] = {}

    def update(self, slot: int, text: str) -> None:
        """A fresh scrape of the process in ``slot``."""
        self._live[slot] = parse(text)

    def forget(self, slot: int) -> None:
        """The process in ``slot`` ended: its counters and histograms stay in the sums at
        their last scraped values; its gauges go."""
        for family in self._live.pop(slot, {}).values():
            if family.type in _CUMULATIVE:
                _add(self._carried, family, family.samples)

    def families(self) -> dict[str, Family]:
        """Every family, merged."""
        merged: dict[str, Family] = {}
        for slot in sorted(self._live):
            for family in self._live[slot].values():
                if family.type in _CUMULATIVE or family.name not in PER_PROCESS:
                    _add(merged, family, family.samples)
                else:
                    _add(merged, family, _labelled(family.samples, slot))
        for family in self._carried.values():
            _add(merged, family, family.samples)
        return {name: f for name, f in merged.items() if name not in self._served}

    def collect(self) -> Iterator[Metric]:
        """The merged families as prometheus_client metrics."""
        for family in self.families().values():
            metric = Metric(family.name, family.documentation, family.type)
            for (name, labels), value in family.samples.items():
                metric.add_sample(name, dict(labels), value)
            yield metric


def _add(into: dict[str, Family], family: Family, samples: dict[SampleKey, float]) -> None:
    merged = into.get(family.name)
    if merged is None:
        merged = into[family.name] = Family(family.name, family.type, family.documentation)
    for key, value in samples.items():
        merged.samples[key] = merged.samples.get(key, 0.0) + value


def _labelled(samples: dict[SampleKey, float], slot: int) -> dict[SampleKey, float]:
    return {
        (name, tuple(sorted((*labels, (PROCESS_LABEL, str(slot)))))): value
        for (name, labels), value in samples.items()
    }
