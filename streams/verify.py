"""Audit a pipeline: recompute the expected finals from the input topic and compare.

The input is read from the beginning, per partition in offset order, validated and run through
the reference model (:mod:`streams.core.reference`), which closes every window at the end of
input. The output topic is read ``read_committed``. Each (key, window) must have exactly one
final record, equal to the recomputation; anything else is reported.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.broker.reading import read_topic
from streams.config import KafkaSettings, Settings
from streams.core.config import CoreConfig
from streams.core.reference import recompute_partition
from streams.validation import decode_event

WindowKey = tuple[str, int, int]
_SAMPLES = 20


@dataclass
class VerifyReport:
    """Differences between the output topic and the recomputation (samples kept short)."""

    input_messages: int = 0
    invalid: int = 0
    expected_late: int = 0
    expected_duplicates: int = 0
    expected_finals: int = 0
    output_finals: int = 0
    output_updates: int = 0
    missing: int = 0
    extra: int = 0
    duplicate_finals: int = 0
    wrong: int = 0
    unreadable: int = 0
    dlq_records: int | None = None
    late_records: int | None = None
    samples: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    def exact(self, *, allow_duplicates: bool = False) -> bool:
        """True when nothing is missing, extra, wrong or (unless allowed) duplicated."""
        dupes_ok = allow_duplicates or self.duplicate_finals == 0
        return not (self.missing or self.extra or self.wrong or self.unreadable) and dupes_ok

    def sample(self, kind: str, item: Any) -> None:
        """Keep a few examples of each kind of difference."""
        if len(self.samples[kind]) < _SAMPLES:
            self.samples[kind].append(item)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``exact`` included, duplicates not allowed)."""
        data = {k: v for k, v in self.__dict__.items() if k != "samples"}
        data["samples"] = dict(self.samples)
        data["exact"] = self.exact()
        return data


def _same(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    if expected["count"] != actual.get("count"):
        return False
    for name in ("min", "max", "sum"):
        want, got = expected[name], actual.get(name)
        if want is None or got is None:
            if want is not got:
                return False
        elif not math.isclose(want, got, rel_tol=1e-9, abs_tol=1e-6):
            return False
    return True


async def verify(
    kafka: KafkaSettings,
    *,
    input_topic: str,
    output_topic: str,
    config: CoreConfig,
    dlq_topic: str | None = None,
    late_topic: str | None = None,
    max_message_bytes: int = 1_048_576,
) -> VerifyReport:
    """Compare ``output_topic`` with a recomputation from ``input_topic``."""
    report = VerifyReport()
    expected: dict[WindowKey, list[dict[str, Any]]] = defaultdict(list)
    for records in (await read_topic(kafka, input_topic)).values():
        events = []
        for record in records:
            event, _ = decode_event(record.value, max_message_bytes)
            if event is not None:
                events.append(event)
            else:
                report.invalid += 1
        report.input_messages += len(records)
        result = recompute_partition(events, config)
        report.expected_late += len(result.late)
        report.expected_duplicates += len(result.duplicates)
        for final in result.finals:
            expected[(final["key"], final["window_start"], final["window_end"])].append(final)
    report.expected_finals = sum(len(v) for v in expected.values())

    actual: dict[WindowKey, list[dict[str, Any]]] = defaultdict(list)
    for records in (await read_topic(kafka, output_topic)).values():
        for record in records:
            try:
                value = orjson.loads(record.value)
                key: WindowKey = (value["key"], value["window_start"], value["window_end"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                report.unreadable += 1
                report.sample("unreadable", repr(record.value[:200]))
                continue
            if value.get("final") is True:
                actual[key].append(value)
            else:
                report.output_updates += 1
    report.output_finals = sum(len(v) for v in actual.values())

    for key, wants in expected.items():
        gots = actual.get(key, [])
        if not gots:
            report.missing += len(wants)
            report.sample("missing", wants[0])
            continue
        if len(gots) > len(wants):
            report.duplicate_finals += len(gots) - len(wants)
            report.sample("duplicate", gots[0])
        unmatched = list(wants)
        for got in gots:
            match = next((w for w in unmatched if _same(w, got)), None)
            if match is not None:
                unmatched.remove(match)
            elif not any(_same(w, got) for w in wants):
                report.wrong += 1
                report.sample("wrong", {"expected": wants[0], "actual": got})
        if len(gots) < len(wants):
            report.missing += len(wants) - len(gots)
    for key, gots in actual.items():
        if key not in expected:
            report.extra += len(gots)
            report.sample("extra", gots[0])

    if dlq_topic:
        report.dlq_records = _count(await read_topic(kafka, dlq_topic))
    if late_topic:
        report.late_records = _count(await read_topic(kafka, late_topic))
    return report


def _count(records: dict[int, list[Any]]) -> int:
    return sum(len(r) for r in records.values())


async def verify_pipeline(settings: Settings, **windows: int) -> VerifyReport:
    """:func:`verify` of a pipeline's own topics and settings (``windows`` overrides
    ``window_size_ms``, ``window_step_ms``, ``grace_ms`` or ``max_message_bytes``)."""
    config = CoreConfig(
        window_size_ms=windows.get("window_size_ms", settings.window_size_ms),
        window_step_ms=windows.get("window_step_ms", settings.window_step_ms),
        grace_ms=windows.get("grace_ms", settings.grace_ms),
        dedupe_horizon_ms=settings.dedupe_horizon_ms,
    )
    return await verify(
        settings.kafka,
        input_topic=settings.input_topic,
        output_topic=settings.output_topic,
        config=config,
        dlq_topic=settings.dlq_topic,
        late_topic=settings.late_topic,
        max_message_bytes=windows.get("max_message_bytes", settings.max_message_bytes),
    )
