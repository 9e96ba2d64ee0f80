"""Topics in Confluent's wire format: a zero byte, the schema's 4-byte id, then the value in
Avro binary (``format="avro"``) or JSON (``format="json-schema"``).

:class:`FormatDecoder` turns a chunk of message values into dicts as :class:`TopicDecoder`
does for JSON topics (same ``(indices, values, failures)``), looking each writer schema up
once per id through a :class:`SchemaSource` (the registry client, or the test driver's memory)
and keeping its codec. :class:`FormatEncoder` writes output values with the one schema
registered for the output topic. Nothing here talks to the network: the worker learns the
ids of a chunk (:meth:`FormatDecoder.unknown`, :meth:`FormatDecoder.learn`) off the event
loop before decoding it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from streams.core.avro import AvroCodec, AvroMismatch
from streams.core.compile import NONE, Guarantees
from streams.core.decode import (
    Decoded,
    TopicDecoder,
    compile_schema,
    load_schema,
    read_schema_file,
    unreadable_size,
)
from streams.errors import DeclarationError, UnknownSchemaError
from streams.topology.nodes import TopicDecl
from streams.validation import describe_value

log = logging.getLogger(__name__)

FORMATS = ("json", "avro", "json-schema")
REGISTRY_FORMATS = ("avro", "json-schema")
MAGIC = 0
HEADER_BYTES = 5
# The registry's name for each format's schemas.
SCHEMA_TYPES = {"avro": "AVRO", "json-schema": "JSON"}
# How long an id the registry did not know stays unknown before it is asked again.
UNKNOWN_ID_RETRY_S = 60.0


class SchemaSource(Protocol):
    """Where writer schemas come from: ``(schema_type, schema_text)`` of an id."""

    def schema(self, schema_id: int) -> tuple[str, str]:
        """Raises :class:`~streams.errors.UnknownSchemaError` for an id it does not hold."""
        ...


class Codec(Protocol):
    def read(self, payload: bytes) -> Any: ...

    def write(self, value: Any) -> bytes: ...


class EncodeError(ValueError):
    """An output value the topic's schema cannot hold; the message is the encoder's reason."""


def schema_id_of(raw: bytes) -> int | None:
    """The schema id of a wire-format value, or None when it is not one."""
    if len(raw) < HEADER_BYTES or raw[0] != MAGIC:
        return None
    return int.from_bytes(raw[1:HEADER_BYTES], "big")


def frame(schema_id: int, payload: bytes) -> bytes:
    """``payload`` behind the wire format's header."""
    return b"\x00" + schema_id.to_bytes(4, "big") + payload


class JsonSchemaCodec:
    """JSON values checked by a JSON Schema (draft-07, or 2020-12 as far as
    :func:`streams.core.decode.compile_schema` goes)."""

    def __init__(self, schema: dict[str, Any], source: str) -> None:
        self.schema = schema
        try:
            self._validate: Callable[[Any], Any] | None = compile_schema(schema, Path(source))
        except DeclarationError as exc:
            log.warning("%s: values are parsed but not validated (%s)", source, exc)
            self._validate = None
        props = schema.get("properties")
        self._named = frozenset(props) if isinstance(props, dict) else None

    def read(self, payload: bytes) -> Any:
        value = orjson.loads(payload)
        self._check(value)
        return value

    def write(self, value: Any) -> bytes:
        named = self._named
        if named is not None and value.__class__ is dict and not named.issuperset(value):
            value = {k: v for k, v in value.items() if k in named}
        self._check(value)
        return orjson.dumps(value)

    def _check(self, value: Any) -> None:
        if self._validate is None:
            return
        try:
            self._validate(value)
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc)
            raise EncodeError(" ".join(str(message).split())[:1000]) from None


def codec_for(schema_type: str, text: str, source: str, reader: Any = None) -> Codec:
    """The codec of a schema as the registry holds it (``AVRO`` or ``JSON``)."""
    data = orjson.loads(text)
    if schema_type == "JSON":
        if not isinstance(data, dict):
            raise ValueError("a JSON Schema must be an object")
        return JsonSchemaCodec(data, source)
    if schema_type == "AVRO":
        return AvroCodec(data, reader)
    raise ValueError(f"schema type {schema_type} is not supported (avro and json-schema are)")


class FormatDecoder:
    """Decodes a wire-format topic's values a chunk at a time; never raises on bad bytes."""

    stage = "decode"
    guarantees: Guarantees = NONE

    def __init__(
        self,
        topic: str,
        fmt: str,
        schemas: SchemaSource,
        max_bytes: int,
        reader: Path | None = None,
    ) -> None:
        self.topic = topic
        self.format = fmt
        self.max_bytes = max_bytes
        self._schemas = schemas
        self._reader = None if reader is None or fmt != "avro" else load_schema_data(reader)
        self._codecs: dict[int, Codec] = {}
        # id -> (monotonic time it was found unknown, why)
        self._unknown: dict[int, tuple[float, str]] = {}

    def unknown(self, values: Iterable[bytes | None]) -> set[int]:
        """The schema ids ``values`` name that this decoder has not looked up yet."""
        ids = {v[1:HEADER_BYTES] for v in values if v is not None and len(v) >= HEADER_BYTES}
        codecs = self._codecs
        unknown = self._unknown
        now = time.monotonic()
        out = set()
        for raw in ids:
            schema_id = int.from_bytes(raw, "big")
            if schema_id in codecs:
                continue
            seen = unknown.get(schema_id)
            if seen is None or now - seen[0] >= UNKNOWN_ID_RETRY_S:
                out.add(schema_id)
        return out

    def learn(self, ids: Iterable[int]) -> None:
        """Look ``ids`` up (blocking: the worker calls this in a thread). An id the source
        does not hold is remembered as unknown; a source that cannot answer raises."""
        for schema_id in ids:
            try:
                schema_type, text = self._schemas.schema(schema_id)
            except UnknownSchemaError as exc:
                self._unknown[schema_id] = (time.monotonic(), str(exc))
                continue
            try:
                self._codecs[schema_id] = codec_for(
                    schema_type, text, f"schema id {schema_id}", self._reader
                )
            except Exception as exc:
                self._unknown[schema_id] = (
                    time.monotonic(),
                    f"schema id {schema_id} cannot be used for {self.format}: {exc}",
                )
            else:
                self._unknown.pop(schema_id, None)

    def decode(self, values: Sequence[bytes | None]) -> Decoded:
        """``(indices, values, failures)`` of a chunk, ids looked up as needed."""
        missing = self.unknown(values)
        if missing:
            self.learn(missing)
        fast = self._decode_same_schema(values)
        if fast is not None:
            return fast
        codecs = self._codecs
        max_bytes = self.max_bytes
        idxs: list[int] = []
        vals: list[Any] = []
        failures: list[tuple[int, str]] = []
        for index, raw in enumerate(values):
            unreadable = unreadable_size(raw, max_bytes)
            if unreadable is not None:
                failures.append((index, unreadable))
                continue
            assert raw is not None
            if len(raw) < HEADER_BYTES or raw[0] != MAGIC:
                failures.append((index, _not_framed(raw, self.format)))
                continue
            schema_id = int.from_bytes(raw[1:HEADER_BYTES], "big")
            codec = codecs.get(schema_id)
            if codec is None:
                known = self._unknown.get(schema_id)
                why = known[1] if known else f"schema id {schema_id} is not in the registry"
                failures.append((index, why))
                continue
            try:
                value = codec.read(raw[HEADER_BYTES:])
            except Exception as exc:
                failures.append(
                    (index, f"does not decode as {self.format} with schema id {schema_id}: {exc}")
                )
                continue
            if value.__class__ is not dict:
                failures.append(
                    (index, f"not an object (schema id {schema_id} gives {describe_value(value)})")
                )
                continue
            idxs.append(index)
            vals.append(value)
        return idxs, vals, failures

    def _decode_same_schema(self, values: Sequence[bytes | None]) -> Decoded | None:
        """The common chunk: every value framed with one known schema id, each an object.
        None when it is not (the caller then looks at each value on its own)."""
        if not values:
            return None
        first = values[0]
        if first is None or len(first) < HEADER_BYTES or first[0] != MAGIC:
            return None
        codec = self._codecs.get(int.from_bytes(first[1:HEADER_BYTES], "big"))
        if codec is None:
            return None
        header = first[:HEADER_BYTES]
        max_bytes = self.max_bytes
        try:
            if not all(v[:HEADER_BYTES] == header and len(v) <= max_bytes for v in values):  # type: ignore[index, arg-type]
                return None
            read = codec.read
            decoded = [read(v[HEADER_BYTES:]) for v in values]  # type: ignore[index]
        except Exception:  # a tombstone, a value that does not decode: one by one
            return None
        if not all(v.__class__ is dict for v in decoded):
            return None
        return list(range(len(decoded))), decoded, []


Decoder = TopicDecoder | FormatDecoder


def input_decoder(
    topic: str, source: TopicDecl | None, max_bytes: int, schemas: SchemaSource | None
) -> Decoder:
    """The decoder of a segment's input: JSON, or a registry format's (with ``schemas``)."""
    if source is None:
        return TopicDecoder(topic, None, max_bytes)
    if source.format == "json":
        return TopicDecoder(source.name, source.schema, max_bytes)
    if schemas is None:
        raise ValueError(f"topic {topic!r} is format={source.format!r}: a registry is needed")
    return FormatDecoder(topic, source.format, schemas, max_bytes, reader=source.schema)


def _not_framed(raw: bytes, fmt: str) -> str:
    if not raw:
        return f"an empty value, not {fmt} in the registry wire format"
    if raw[0] != MAGIC:
        return (
            f"first byte is {raw[0]}, not 0: not {fmt} in the registry wire format "
            "(zero byte, 4-byte schema id, payload)"
        )
    return f"truncated: {len(raw)} bytes, shorter than the wire format's 5-byte header"


class FormatEncoder:
    """Writes an output topic's values (JSON bytes from the compiled loop) in the wire format
    with the schema registered for the topic."""

    def __init__(self, topic: str, fmt: str, schema_id: int, codec: Codec) -> None:
        self.topic = topic
        self.format = fmt
        self.schema_id = schema_id
        self._header = frame(schema_id, b"")
        self._codec = codec

    def encode(self, value: bytes) -> bytes:
        """The framed value; raises :class:`EncodeError` with the encoder's reason."""
        try:
            payload = self._codec.write(orjson.loads(value))
        except (AvroMismatch, EncodeError) as exc:
            raise EncodeError(f"does not fit {self.topic}'s {self.format} schema: {exc}") from None
        except Exception as exc:  # anything else the codec trips over: the same verdict
            raise EncodeError(
                f"does not fit {self.topic}'s {self.format} schema: {type(exc).__name__}: {exc}"
            ) from None
        return self._header + payload

    def encode_value(self, value: Any) -> bytes:
        """A value (not yet JSON) framed: what ``streams publish`` and the driver write."""
        return self.encode(orjson.dumps(value))


def value_reader(schemas: SchemaSource) -> Callable[[bytes], Any]:
    """A function reading a value in the wire format (any registry format, by its schema id)
    or else as JSON; raises ValueError on what it cannot read."""
    decoder = FormatDecoder("any topic", "the registry's", schemas, 1 << 62)

    def read(raw: bytes) -> Any:
        if not raw or raw[0] != MAGIC:
            return orjson.loads(raw)
        _, values, failures = decoder.decode([raw])
        if failures:
            raise ValueError(failures[0][1])
        return values[0]

    return read


def load_schema_data(path: Path) -> Any:
    """A schema file's JSON (an ``.avsc`` may hold a record, a union or a name)."""
    if path.suffix == ".json":
        return load_schema(path)
    return read_schema_file(path)


def schema_text(fmt: str, path: Path) -> str:
    """What is registered for an output topic's schema file: its JSON, compact."""
    data = load_schema_data(path)
    check_schema(fmt, data, str(path))
    return orjson.dumps(data).decode()


def check_schema(fmt: str, data: Any, source: str) -> None:
    """Raise DeclarationError unless ``data`` is a schema ``fmt`` can use."""
    if fmt == "avro":
        try:
            AvroCodec(data)
        except Exception as exc:
            raise DeclarationError(f"{source} is not a valid Avro schema: {exc}") from None
    elif fmt == "json-schema":
        if not isinstance(data, dict):
            raise DeclarationError(f"{source} does not hold a JSON Schema object; fix the file")
        compile_schema(data, Path(source))
