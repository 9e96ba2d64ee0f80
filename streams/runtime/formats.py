"""The schema registry in a run: the client of a plan with ``format="avro"``/``"json-schema"``
topics, its output schemas registered at start, and writer schemas learnt off the event loop.

A worker makes one :class:`~streams.registry.RegistryClient` (one lookup per schema id per
process, cached); the test driver passes a :class:`~streams.registry.MemoryRegistry`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

from streams.config import RegistrySettings
from streams.core.formats import SCHEMA_TYPES, FormatDecoder, FormatEncoder, codec_for, schema_text
from streams.errors import SchemaRegistryError
from streams.registry import RegistryClient
from streams.topology.plan import Plan

log = logging.getLogger(__name__)

# Waits between attempts at learning a chunk's schema ids while the registry does not answer.
LEARN_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


class Registry(Protocol):
    def schema(self, schema_id: int) -> tuple[str, str]: ...

    def register(self, subject: str, schema_type: str, text: str) -> int: ...

    def check(self) -> None: ...


def registry_for(plan: Plan, settings: RegistrySettings) -> RegistryClient | None:
    """The registry client of ``plan``, or None when no topic of it needs one; a plan that
    does with no ``STREAMS_SCHEMA_REGISTRY_URL`` raises ConfigError."""
    if not plan.formats:
        return None
    topic = next(iter(plan.formats.values()))
    return RegistryClient.from_settings(
        settings, what=f"topic {topic.name!r} (format={topic.format!r})"
    )


def subject_of(topic: str) -> str:
    """Confluent's TopicNameStrategy: a topic's values are registered under ``<topic>-value``."""
    return f"{topic}-value"


def register_outputs(plan: Plan, registry: Registry) -> dict[str, FormatEncoder]:
    """Register every format output's schema under its subject (blocking) and return the
    topics' encoders. A registry that does not answer or refuses a schema raises
    :class:`SchemaRegistryError` (one line: the subject and the rule)."""
    registry.check()
    outputs = {s.sink.topic for s in plan.segments if s.sink is not None}
    encoders: dict[str, FormatEncoder] = {}
    for name, decl in plan.formats.items():
        if name not in outputs or decl.schema is None:
            continue
        encoders[name] = encoder = encoder_for(name, decl.format, decl.schema, registry)
        log.info(
            "topic %s: values written as %s with schema id %d (subject %s)",
            name,
            decl.format,
            encoder.schema_id,
            subject_of(name),
        )
    return encoders


def encoder_for(topic: str, fmt: str, schema: Path, registry: Registry) -> FormatEncoder:
    """The encoder of ``topic``'s values with the schema file ``schema``, registered under
    the topic's subject (blocking)."""
    schema_type = SCHEMA_TYPES[fmt]
    text = schema_text(fmt, schema)
    schema_id = registry.register(subject_of(topic), schema_type, text)
    return FormatEncoder(topic, fmt, schema_id, codec_for(schema_type, text, str(schema)))


async def learn_ids(decoder: FormatDecoder, values: Collection[bytes | None]) -> None:
    """Look up the schema ids of ``values`` that ``decoder`` does not know yet, in a thread.
    While the registry does not answer, wait and ask again (processing waits, lag grows,
    nothing is dead-lettered for it): a stop cancels the wait."""
    missing = decoder.unknown(values)
    if not missing:
        return
    attempt = 0
    while True:
        try:
            await asyncio.to_thread(decoder.learn, missing)
            return
        except SchemaRegistryError as exc:
            wait = LEARN_BACKOFF_S[min(attempt, len(LEARN_BACKOFF_S) - 1)]
            log.warning("topic %s: %s; retrying in %.0f s", decoder.topic, exc, wait)
            attempt += 1
            await asyncio.sleep(wait)
