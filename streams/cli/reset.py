"""``streams reset APP``: start an app's state over, for when its declaration changed.

For every stateful pipeline of the app (or those named with ``--pipeline``), it writes the
current declaration's fingerprints into each changelog partition: a worker replaying the
changelog then starts those operators empty and keeps what comes after (decision 0009).
With ``--from-beginning`` the pipelines' stream time and input position are forgotten too
and the consumer group's offsets of their inputs are set to the beginning, so the whole
input is processed again. The app's workers must be stopped first.
"""

from __future__ import annotations

import asyncio

import click

from streams.apps.selection import plan_for
from streams.broker.admin import admin_client, start_client, topic_partitions
from streams.config import KafkaSettings, Settings
from streams.core import changelog as keys
from streams.core.segment import FINGERPRINT_TAG, STAGE_TIME_TAG
from streams.errors import ConfigError
from streams.publish import make_producer
from streams.topology.plan import Segment


@click.command(name="reset")
@click.argument("app", required=False)
@click.option("--pipeline", "pipelines", multiple=True, help="Only this pipeline (repeatable).")
@click.option(
    "--from-beginning", is_flag=True, help="Also reprocess the inputs from their beginning."
)
def command(app: str | None, pipelines: tuple[str, ...], from_beginning: bool) -> None:
    """Start the state of APP's pipelines afresh (default APP: STREAMS_APP, else the
    reference pipeline). Stop the app's workers first."""
    planned, settings = plan_for(Settings.from_env(), app)
    known = {s.pipeline for s in planned.segments}
    unknown = sorted(set(pipelines) - known)
    if unknown:
        raise ConfigError(
            f"app {planned.app_id!r} has no pipeline {', '.join(map(repr, unknown))}; "
            f"it has {', '.join(sorted(known))}"
        )
    chosen = [
        s
        for s in planned.segments
        if s.changelog is not None and (not pipelines or s.pipeline in pipelines)
    ]
    done = asyncio.run(_reset(settings, planned.app_id, chosen, from_beginning))
    for line in done:
        click.echo(line)


async def _reset(
    settings: Settings, group: str, segments: list[Segment], from_beginning: bool
) -> list[str]:
    kafka = settings.kafka
    await _require_no_members(kafka, group)
    lines = []
    producer = make_producer(kafka, client_id=f"{group}-reset")
    await start_client(producer, kafka)
    try:
        for segment in segments:
            assert segment.changelog is not None
            partitions = await topic_partitions(kafka, segment.changelog)
            records: list[tuple[bytes, bytes | None]] = [
                (FINGERPRINT_TAG + store.tag, store.fingerprint.encode())
                for store in segment.stores
            ]
            if from_beginning:
                records += [(keys.TIME_KEY, None), (keys.POSITION_KEY, None)]
                records += [(STAGE_TIME_TAG + b"%d" % stage, None) for stage in range(16)]
            for partition in partitions:
                for key, value in records:
                    await producer.send(segment.changelog, value, key=key, partition=partition)
            await producer.flush()
            lines.append(
                f"reset  {segment.name}  ({segment.changelog}, {len(partitions)} partitions)"
            )
    finally:
        await producer.stop()
    if from_beginning:
        inputs = sorted({s.input for s in segments})
        await _rewind(kafka, group, inputs)
        lines.append(f"rewound group {group} to the beginning of {', '.join(inputs)}")
    return lines


async def _require_no_members(kafka: KafkaSettings, group: str) -> None:
    async with admin_client(kafka) as admin:
        described = await admin.describe_consumer_groups([group])
    for info in described:
        for item in getattr(info, "groups", []):
            members = item[5] if len(item) > 5 else []
            if members:
                raise ConfigError(
                    f"group {group!r} has {len(members)} running workers; stop them before "
                    "resetting its state"
                )


async def _rewind(kafka: KafkaSettings, group: str, topics: list[str]) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await start_client(consumer, kafka)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in await topic_partitions(kafka, t)]
        consumer.assign(tps)
        beginnings = await consumer.beginning_offsets(tps)
        await consumer.commit({tp: offset for tp, offset in beginnings.items()})
    finally:
        await consumer.stop()
