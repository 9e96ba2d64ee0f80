"""``streams demo``: a Faust agent with a changelog-backed table (the first pipeline stage)."""

from __future__ import annotations

import click
import orjson

from streams import demo
from streams.config import Settings


@click.command(name="demo")
@click.option("--app-id", default="streams-demo", show_default=True, help="Faust app id / group.")
@click.option("--topic", default=None, help="Input topic (default: STREAMS_INPUT_TOPIC).")
@click.option("--count", default=100, show_default=True, help="Stop after this many events.")
@click.option("--timeout", default=120.0, show_default=True, help="Give up after seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the final table as JSON.")
def command(app_id: str, topic: str | None, count: int, timeout: float, as_json: bool) -> None:
    """Consume events with a Faust agent that counts them per type in a Faust table."""
    settings = Settings.from_env()
    result = demo.run(
        settings,
        app_id=app_id,
        topic_name=topic or settings.input_topic,
        count=count,
        timeout_s=timeout,
        every=max(1, count // 5),
    )
    if as_json:
        summary: dict[str, object] = {"consumed": result.consumed, "table": result.table}
        if result.consumed < count:
            summary["offsets"] = {str(p): sorted(o) for p, o in sorted(result.offsets.items())}
        click.echo(orjson.dumps(summary).decode())
    else:
        click.echo(f"agent consumed {result.consumed} events; table event_types = {result.table}")
    if result.consumed < count:
        raise SystemExit(1)
