"""The ``codec`` bench scenario: what decoding and encoding cost per record, in process.

No broker: the bench's events (the generator with the bench's seed and start, so the first
``events`` of its input) are decoded and the reference pipeline's aggregate records of them
encoded, each way timed alone, in the worker's chunks (:data:`DECODE_CHUNK`) with the
collector off as the worker has it while decoding. Each figure is the best of ``repeats``
runs, in µs per record:

- ``json_decode_us``: orjson and the reference schema's validation, as the worker decodes a
  JSON topic (:class:`~streams.core.decode.TopicDecoder` on ``schemas/event/v1.json``).
- ``avro_decode_us``: the same events Avro-encoded in the wire format
  (:mod:`streams.bench.avro_app`'s schema), decoded as the worker decodes a ``format="avro"``
  topic (:class:`~streams.core.formats.FormatDecoder`, its schema id learnt beforehand).
- ``avro_encode_us``: the aggregate records as the compiled loop hands them to the collector
  (JSON bytes) framed in Avro (:meth:`FormatEncoder.encode <streams.core.formats.FormatEncoder>`),
  as the worker writes a ``format="avro"`` output: a cost on top of the JSON bytes.
- ``json_encode_us``: the same records as JSON bytes, as the compiled loop writes them
  (:func:`streams.core.jsonbytes.dumps`: orjson, then a copy of the bytes' own size), what a
  JSON output costs. Not bare ``orjson.dumps``: its bytes each hold a 4 KB buffer, so keeping
  20k of them alive costs a page fault each (~2.5 µs a record here), which the worker avoids.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

from streams.bench.avro_app import AGGREGATE_AVSC, EVENT_AVSC, WINDOW_MS
from streams.core.decode import TopicDecoder
from streams.core.formats import EncodeError, FormatDecoder, FormatEncoder
from streams.core.jsonbytes import dumps
from streams.generator import generate_messages
from streams.registry import MemoryRegistry
from streams.runtime.formats import encoder_for
from streams.runtime.processing import DECODE_CHUNK
from streams.schemas import schema_path

# The bench's input (streams.bench.runner publishes the same).
INPUT_SEED = 1
INPUT_START_TS = 1_700_000_000_000
MAX_BYTES = 1_048_576


def compact(value: bytes) -> bytes:
    """A copy of ``value`` of its own size: the generator's values come from ``orjson.dumps``,
    whose bytes each keep a 4 KB buffer (see :mod:`streams.core.jsonbytes`); a consumer's
    records do not, and a page per value would make decoding them slower than the worker's."""
    return b"".join((value, b""))


def avro_copy(values: Sequence[bytes], encoder: FormatEncoder) -> tuple[list[bytes], int]:
    """``values`` (JSON events) in ``encoder``'s wire format, and how many could not be encoded:
    those are kept as they are (the Avro decoder dead-letters them, as the JSON one does)."""
    out = []
    unencodable = 0
    encode = encoder.encode
    for value in values:
        try:
            out.append(encode(value))
        except EncodeError:
            out.append(value)
            unencodable += 1
    return out, unencodable


def aggregates(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reference pipeline's final records of ``events``: count, sum, min and max of
    ``amount`` per user per tumbling window (duplicates by ``event_id`` dropped; no grace
    cut-off, the bench's input has no late events)."""
    seen: set[str] = set()
    windows: dict[tuple[str, int], list[Any]] = {}
    for event in events:
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        start = event["ts"] - event["ts"] % WINDOW_MS
        acc = windows.setdefault((event["user_id"], start), [0, 0.0, None, None])
        acc[0] += 1
        amount = event.get("amount")
        if amount is not None:
            acc[1] += amount
            acc[2] = amount if acc[2] is None else min(acc[2], amount)
            acc[3] = amount if acc[3] is None else max(acc[3], amount)
    return [
        {
            "key": key,
            "window_start": start,
            "window_end": start + WINDOW_MS,
            "count": count,
            "sum": total,
            "min": low,
            "max": high,
            "final": True,
        }
        for (key, start), (count, total, low, high) in windows.items()
    ]


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """The shortest of ``repeats`` runs of ``run``, in seconds, the collector off in each."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        finally:
            gc.enable()
    return best


def _in_chunks(decode: Callable[[Sequence[bytes]], Any], values: Sequence[bytes]) -> int:
    valid = 0
    for lo in range(0, len(values), DECODE_CHUNK):
        valid += len(decode(values[lo : lo + DECODE_CHUNK])[1])
    return valid


def measure_codecs(events: int, users: int = 100_000, repeats: int = 5) -> dict[str, Any]:
    """µs per record of each way (the module's docstring), and what they were measured on."""
    if events < 1 or repeats < 1:
        raise ValueError("codec needs at least one event and one repeat")
    started = time.perf_counter()
    values = [
        compact(m.value)
        for m in generate_messages(events, users=users, seed=INPUT_SEED, start_ts=INPUT_START_TS)
    ]
    registry = MemoryRegistry()
    avro, unencodable = avro_copy(values, encoder_for("events", "avro", EVENT_AVSC, registry))
    json_decoder = TopicDecoder("events", schema_path("event", 1), MAX_BYTES)
    avro_decoder = FormatDecoder("events", "avro", registry, MAX_BYTES)
    avro_decoder.learn(avro_decoder.unknown(avro))
    json_valid = _in_chunks(json_decoder.decode, values)
    avro_valid = _in_chunks(avro_decoder.decode, avro)
    records = aggregates(json_decoder.decode(values)[1])
    as_json = [dumps(r) for r in records]
    output = encoder_for("aggregates", "avro", AGGREGATE_AVSC, registry)
    as_avro = [output.encode(v) for v in as_json]  # every record fits: raises otherwise
    encode = output.encode
    json_decode = best_of(repeats, lambda: _in_chunks(json_decoder.decode, values))
    avro_decode = best_of(repeats, lambda: _in_chunks(avro_decoder.decode, avro))
    avro_encode = best_of(repeats, lambda: [encode(v) for v in as_json])
    json_encode = best_of(repeats, lambda: [dumps(r) for r in records])
    n, m = len(values), len(records)
    return {
        "events": n,
        "seconds": time.perf_counter() - started,
        "bytes": 0,
        "repeats": repeats,
        "json_valid": json_valid,
        "avro_valid": avro_valid,
        "avro_unencodable": unencodable,
        "json_bytes_per_event": round(sum(map(len, values)) / n, 1),
        "avro_bytes_per_event": round(sum(map(len, avro)) / n, 1),
        "json_decode_us": round(json_decode * 1e6 / n, 3),
        "avro_decode_us": round(avro_decode * 1e6 / n, 3),
        "aggregates": m,
        "json_bytes_per_aggregate": round(sum(map(len, as_json)) / m, 1) if m else 0,
        "avro_bytes_per_aggregate": round(sum(map(len, as_avro)) / m, 1) if m else 0,
        "avro_encode_us": round(avro_encode * 1e6 / m, 3) if m else 0,
        "json_encode_us": round(json_encode * 1e6 / m, 3) if m else 0,
    }
