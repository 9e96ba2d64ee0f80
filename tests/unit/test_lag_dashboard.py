"""The Grafana dashboard: well-formed, and every PromQL expression names real metrics.

:func:`dashboard_expressions` and :func:`alert_expressions` are shared with
tests/integration/test_prometheus.py, which runs each one against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from streams.config import KafkaSettings
from streams.lag.exporter import LagExporter, LagMetrics
from streams.runtime.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "streams.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# Values for the dashboard's variables when an expression is run outside Grafana.
VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$group": ".*"}
_METRIC = re.compile(r"\b(?:streams|kafka)_[a-z0-9_]+\b|\bup\b")


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))
    return out


def concrete(expr: str) -> str:
    """``expr`` with the dashboard's variables replaced by values Prometheus accepts."""
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable, variables filled in."""
    dashboard = load_dashboard()
    found = [
        (f"panel {panel['title']!r} {target['refId']}", concrete(target["expr"]))
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
            assert inner, variable["definition"]
            found.append((f"variable {variable['name']}", inner.group(1)))
    return found


def alert_expressions() -> list[tuple[str, str]]:
    """(alert name, PromQL) from alerts.yml, read line-wise (no YAML library needed)."""
    found: list[tuple[str, str]] = []
    name, folded = "", None  # lines of a folded (>-) expression being read
    for line in ALERTS.read_text().splitlines():
        stripped = line.strip()
        if folded is not None and re.match(r"(for|labels|annotations):", stripped):
            found.append((name, " ".join(folded)))
            folded = None
        elif folded is not None:
            folded.append(stripped)
        elif stripped.startswith("- alert:"):
            name = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("expr:"):
            rest = stripped.split(":", 1)[1].strip()
            if rest == ">-":
                folded = []
            else:
                found.append((name, rest))
    return found


def known_metrics() -> set[str]:
    """Every series name the worker and the lag exporter can export, plus ``up``."""
    names = {"up"}
    exporter = LagExporter(KafkaSettings())
    registries: list[CollectorRegistry] = [WorkerMetrics().registry, exporter.registry]
    families = [f for r in registries for f in r.collect()] + list(LagMetrics().collect())
    for family in families:
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
        }.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names


def test_every_panel_has_a_datasource_a_place_and_a_unique_id() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "streams-pipeline"
    panels = _panels(dashboard["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            assert panel.get("description"), panel["title"]


def test_the_dashboard_covers_what_operators_watch() -> None:
    exprs = " ".join(e for _, e in dashboard_expressions())
    for needle in (
        "rate(streams_events_consumed_total",
        "rate(streams_events_produced_total",
        "histogram_quantile(0.99, sum by (le, since) (rate(streams_emit_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(streams_batch_processing_seconds_bucket",
        "kafka_consumergroup_group_lag{",
        "kafka_consumergroup_group_lag_seconds{",
        "kafka_consumergroup_group_status{",
        "rate(streams_dlq_writes_total",
        "rate(streams_events_late_total",
        "increase(streams_rebalances_total",
        "streams_recovery_records_remaining",
    ):
        assert needle in exprs, needle


def test_every_expression_names_only_metrics_that_exist() -> None:
    known = known_metrics()
    expressions = dashboard_expressions() + alert_expressions()
    assert len(alert_expressions()) == ALERTS.read_text().count("- alert:")
    for where, expr in expressions:
        unknown = set(_METRIC.findall(expr)) - known
        assert not unknown, f"{where}: {expr} uses unknown metrics {unknown}"
        assert "$" not in expr, f"{where}: unfilled variable in {expr}"
