"""``streams explain APP`` with no broker: the text and the JSON document, what each operator
and stateful store reads as, ``--code``, and one line for a bad declaration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from streams.api.loading import load_app
from streams.broker.local import free_port
from streams.cli import main
from streams.cli.explain import NO_BROKER, NOT_CREATED, explain
from streams.runtime.processing import compile_plan
from streams.topology.plan import plan

REPO = Path(__file__).parents[2]
ORDERS = REPO / "examples" / "orders" / "app.py"


def _explain(*args: str) -> Result:
    # A port nothing listens on: no broker answers.
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "STREAMS_APP_ID": None,
        "STREAMS_GUARANTEE": None,
    }
    return CliRunner().invoke(main, ["explain", *args], env=env)


def _line_of(text: str) -> str:
    """``app.py:N`` of the first line of the orders example holding ``text``."""
    lines = ORDERS.read_text().splitlines()
    return f"app.py:{next(n for n, line in enumerate(lines, 1) if text in line)}"


def test_the_text_names_topics_segments_operators_and_state() -> None:
    result = _explain(str(ORDERS))
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    assert out[0] == "app orders-app: guarantee at_least_once"
    assert out[1].startswith("broker: cannot reach Kafka at 127.0.0.1:")
    topics = [line.split() for line in out[out.index("  topics") + 1 :][:5]]
    assert [(t[0], t[1], " ".join(t[2:])) for t in topics] == [
        ("input", "orders", NO_BROKER),
        ("output", "revenue-per-customer", NO_BROKER),
        ("dlq", "orders.dlq", NO_BROKER),
        ("late", "orders.late", NO_BROKER),
        ("changelog", "orders-app-revenue-per-customer-changelog", NO_BROKER),
    ]
    start = out.index("  segment revenue-per-customer: orders -> revenue-per-customer")
    assert out[start + 1] == "    key: field 'customer_id'; event time: field 'ts'"
    assert out[start + 2 : start + 8] == [
        f"    {_line_of('.dedupe(')}  dedupe('order_id', horizon_ms=3600000)",
        f"    {_line_of('.filter(')}  filter(<lambda>)",
        f"    {_line_of('.map(')}  map(<lambda>)",
        f"    {_line_of('.window(')}  window(tumbling(60000), grace_ms=10000)",
        f"    {_line_of('.aggregate(')}  aggregate(orders=Count(), revenue=Sum('net'), "
        "avg=Mean('net'), biggest=Max('net'), products=CountDistinct('sku'))",
        f"    {_line_of('.to(')}  to('revenue-per-customer', emit='final')",
    ]
    stores = plan(load_app(str(ORDERS)).decl).segments[0].stores
    assert out[start + 8 :] == [
        "    state, in changelog orders-app-revenue-per-customer-changelog",
        f"      dedupe ({_line_of('.dedupe(')}): tag 'd', fingerprint {stores[0].fingerprint}",
        f"      window ({_line_of('.window(')}): tag 'w', fingerprint {stores[1].fingerprint}",
    ]


def test_json_is_one_document_and_code_is_the_workers_loop() -> None:
    result = _explain(str(ORDERS), "--json", "--code")
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.output)
    assert doc["app"] == "orders-app"
    assert doc["broker"]["answered"] is False
    [pipeline] = doc["pipelines"]
    assert {t["state"] for t in pipeline["topics"]} == {NO_BROKER}
    assert {t["partitions"] for t in pipeline["topics"]} == {None}
    [segment] = pipeline["segments"]
    assert [op["operator"].split("(")[0] for op in segment["operators"]] == [
        "dedupe",
        "filter",
        "map",
        "window",
        "aggregate",
        "to",
    ]
    assert [(s["operator"], s["tag"]) for s in segment["state"]] == [
        ("dedupe", "d"),
        ("window", "w"),
    ]
    planned = plan(load_app(str(ORDERS)).decl)
    [[compiled]] = compile_plan(planned, 1_048_576)[1].values()
    assert segment["code"] == compiled.source


def test_created_topics_show_counts_and_the_rest_not_created(tmp_path: Path) -> None:
    app = tmp_path / "rekeyed.py"
    app.write_text(
        "from streams import App, Count, tumbling\n"
        "app = App('shop')\n"
        "products = app.table('products')\n"
        "(\n"
        "    app.stream('orders', key='customer_id')\n"
        "    .join(products, on='sku', into='product')\n"
        "    .group_by('region')\n"
        "    .window(tumbling(1000))\n"
        "    .aggregate(n=Count())\n"
        "    .to('per-region')\n"
        ")\n"
    )
    doc: dict[str, Any] = explain(
        plan(load_app(str(app)).decl), "exactly_once", {"orders": 6, "products": 1}, "answered"
    )
    [pipeline] = doc["pipelines"]
    assert [(t["name"], t["role"], t["partitions"], t["state"]) for t in pipeline["topics"]] == [
        ("orders", "input", 6, "created"),
        ("products", "table", 1, "created"),
        ("shop-per-region-repartition", "repartition", None, NOT_CREATED),
        ("orders.dlq", "dlq", None, NOT_CREATED),
        ("per-region", "output", None, NOT_CREATED),
        ("orders.late", "late", None, NOT_CREATED),
        ("shop-per-region-1-changelog", "changelog", None, NOT_CREATED),
    ]
    first, second = pipeline["segments"]
    assert (first["input"], first["output"]) == ("orders", "shop-per-region-repartition")
    assert first["operators"][-1] == {"where": "rekeyed.py:7", "operator": "group_by('region')"}
    assert (second["key"], second["timestamp"]) == ("message key", "record timestamp")
    assert second["state"][0]["changelog"] == "shop-per-region-1-changelog"


@pytest.mark.parametrize("app", ["dangling.py", "missing.py"])
def test_a_bad_declaration_is_one_line(tmp_path: Path, app: str) -> None:
    (tmp_path / "dangling.py").write_text(
        "from streams import App\napp = App('bad')\napp.stream('in', key='k').filter(bool)\n"
    )
    result = _explain(str(tmp_path / app))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
