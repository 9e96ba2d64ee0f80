"""``streams explain APP`` against a real broker: the partition counts of the topics that
exist, "not created" for the others, and none of them created by asking."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from streams.broker.admin import partition_counts
from streams.config import KafkaSettings

pytestmark = pytest.mark.integration


async def test_explain_shows_the_brokers_partition_counts(
    tmp_path: Path,
    project_env: dict[str, str],
    kafka_settings: KafkaSettings,
    create_topic: Callable[..., Awaitable[str]],
    unique_name: Callable[[str], str],
) -> None:
    source = await create_topic("explain-in", partitions=3)
    output = unique_name("explain-out")
    app = tmp_path / "explained.py"
    app.write_text(
        "from streams import App\n"
        f"app = App({unique_name('explain-app')!r})\n"
        f"app.stream({source!r}, key='k').dedupe('id').to({output!r})\n"
    )
    explaining = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams",
        "explain",
        str(app),
        "--json",
        env=project_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(explaining.communicate(), 60)
    assert explaining.returncode == 0, err.decode()
    doc = orjson.loads(out)
    assert doc["broker"]["answered"] is True
    [pipeline] = doc["pipelines"]
    topics = {t["name"]: (t["role"], t["partitions"], t["state"]) for t in pipeline["topics"]}
    assert topics.pop(source) == ("input", 3, "created")
    assert {state for _, _, state in topics.values()} == {"not created"}
    assert set(topics) >= {output, f"{source}.dlq"}
    assert await partition_counts(kafka_settings, topics) == {}
