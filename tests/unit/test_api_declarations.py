"""Bad declarations fail at start with one line naming the problem and the fix.

Each case is a small app file run with ``streams worker`` exactly as a user would: the
worker must exit with code 2 before it touches Kafka (no broker is running for these), and
print one ``error:`` line that points at the declaring line where it can.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streams import App, Count, Sum, session, tumbling
from streams.errors import DeclarationError
from streams.topology.plan import plan

HEAD = "from streams import App, Count, Sum, Min, Max, First, tumbling, hopping, session\n"

CASES = {
    "unknown field type in the schema": (
        """
        import json, pathlib
        schema = pathlib.Path(__file__).with_name("bad.json")
        schema.write_text(json.dumps({"type": "object",
                                      "properties": {"n": {"type": "strng"}}}))
        app = App("a")
        app.stream(app.topic("in", schema=str(schema)), key="k").to("out")
        """,
        "is not a valid JSON Schema",
    ),
    "a window without an aggregate": (
        """
        app = App("a")
        app.stream(app.topic("in"), key="k").window(tumbling(1000)).to("out")
        """,
        "app.py:4: .window(...) has no .aggregate(...) before .to(...)",
    ),
    "a window left dangling": (
        """
        app = App("a")
        app.stream(app.topic("in"), key="k").window(tumbling(1000))
        """,
        "app.py:4: this stream never reaches a .to(topic)",
    ),
    "a custom aggregator without merge under session windows": (
        """
        class Top:
            def initial(self): return []
            def add(self, acc, v): return acc
            def result(self, acc): return acc
        app = App("a")
        (app.stream(app.topic("in"), key="k").window(session(10))
            .aggregate(top=Top()).to("out"))
        """,
        "has no merge() method (session windows merge sessions)",
    ),
    "a schema file that does not exist": (
        """
        app = App("a")
        app.stream(app.topic("in", schema="schemas/nope/v1.json"), key="k").to("out")
        """,
        "schema file 'schemas/nope/v1.json' does not exist",
    ),
    "two pipelines writing one output": (
        """
        app = App("a")
        app.stream(app.topic("in"), key="k").to("out")
        app.stream(app.topic("other"), key="k").to("out")
        """,
        "app.py:5: two pipelines write 'out' (the other at app.py:4)",
    ),
    "a window with no key": (
        """
        app = App("a")
        app.stream(app.topic("in")).window(tumbling(10)).aggregate(n=Count()).to("out")
        """,
        ".window() needs a key to aggregate by",
    ),
    "an aggregation named like an output field": (
        """
        app = App("a")
        app.stream(app.topic("in"), key="k").window(tumbling(10)).aggregate(key=Count()).to("o")
        """,
        "'key' is a field of every output record",
    ),
    "an import error in the app": (
        """
        import no_such_module_anywhere
        """,
        "failed to import: ModuleNotFoundError",
    ),
    "no app at all": ("x = 1\n", "defines no streams App"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_declaration_is_one_line(case: str, tmp_path: Path) -> None:
    source, expected = CASES[case]
    app_file = tmp_path / "app.py"
    app_file.write_text(HEAD + textwrap.dedent(source))
    done = subprocess.run(
        [sys.executable, "-m", "streams", "worker", str(app_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        # Nothing listens here: a declaration error must come before any connection.
        env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines
    assert expected in lines[0]


def test_an_app_module_that_is_not_there() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams", "worker", "no_such_app_module:app"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: app 'no_such_app_module:app': no module")


def test_reused_prefixes_branch_into_two_pipelines() -> None:
    app = App("branch")
    base = app.stream(app.topic("in"), key="k").filter(lambda v: True)
    base.to("one")
    base.map(lambda v: v).to("two")
    planned = plan(app.decl)
    assert [s.name for s in planned.segments] == ["one", "two"]
    assert [len(s.ops) for s in planned.segments] == [1, 2]


def test_names_and_topics_of_the_plan() -> None:
    app = App("shop")
    orders = app.topic("orders", dlq="orders-errors")
    products = app.table("products")
    (
        app.stream(orders, key="customer_id", timestamp="ts")
        .join(products, on="sku", into="product")
        .group_by("region")
        .window(tumbling(60_000), grace_ms=5_000, late_topic="orders-late")
        .aggregate(revenue=Sum("amount"), orders=Count())
        .to("revenue-per-region")
    )
    planned = plan(app.decl, "shop-prod")
    first, second = planned.segments
    assert first.repartition == "shop-prod-revenue-per-region-repartition"
    assert first.changelog is None  # stateless before the group_by
    assert second.input == first.repartition
    assert second.changelog == "shop-prod-revenue-per-region-1-changelog"
    assert second.key_from_message
    roles = {t.name: t.role for t in planned.topics}
    assert roles == {
        "orders": "input",
        "orders-errors": "dlq",
        "orders-late": "late",
        "shop-prod-revenue-per-region-repartition": "repartition",
        "revenue-per-region": "output",
        "shop-prod-revenue-per-region-1-changelog": "changelog",
        "products": "table",
    }
    assert planned.topic(first.repartition).partitions_like == "orders"
    assert planned.inputs == ("orders", "shop-prod-revenue-per-region-repartition")


def test_fingerprints_change_with_what_state_depends_on() -> None:
    def fingerprint(size: int, grace: int, key: str = "k") -> str:
        app = App("fp")
        (
            app.stream(app.topic("in"), key=key)
            .window(tumbling(size), grace_ms=grace)
            .aggregate(n=Count())
            .to("out")
        )
        return plan(app.decl).segments[0].stores[0].fingerprint

    base = fingerprint(60_000, 0)
    assert fingerprint(60_000, 0) == base
    assert fingerprint(10_000, 0) != base
    assert fingerprint(60_000, 5) != base
    assert fingerprint(60_000, 0, key="other") != base


def test_arguments_are_checked_where_declared() -> None:
    app = App("args")
    stream = app.stream(app.topic("in"), key="k")
    with pytest.raises(DeclarationError, match=r"test_api_declarations\.py:\d+: \.filter"):
        stream.filter("not a function")  # type: ignore[arg-type]
    with pytest.raises(DeclarationError, match="horizon_ms"):
        stream.dedupe("id", horizon_ms=-1)
    with pytest.raises(DeclarationError, match="session gap"):
        stream.window(session(0))
    with pytest.raises(DeclarationError, match="emit"):
        stream.window(tumbling(5)).aggregate(n=Count()).to("o", emit="sometimes")
