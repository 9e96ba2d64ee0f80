"""The registry wire format (streams.core.formats): FormatDecoder's verdict on every kind of
value, schema lookups (once per id, unknown ids retried after a while), JSON Schema codecs
and FormatEncoder's errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from streams.core import formats
from streams.core.avro import AvroCodec
from streams.core.formats import (
    HEADER_BYTES,
    UNKNOWN_ID_RETRY_S,
    EncodeError,
    FormatDecoder,
    FormatEncoder,
    JsonSchemaCodec,
    codec_for,
    frame,
    schema_id_of,
)
from streams.errors import UnknownSchemaError
from streams.validation import TOMBSTONE

USER = {
    "type": "record",
    "name": "User",
    "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"}],
}
EVENT = {
    "type": "record",
    "name": "Event",
    "fields": [{"name": "kind", "type": "string"}, {"name": "at", "type": "long"}],
}
USER_JSON = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
    "required": ["id"],
}


class CountingSource:
    """A SchemaSource that counts how often each id is asked for."""

    def __init__(self, schemas: dict[int, tuple[str, Any]]) -> None:
        self.schemas = {
            sid: (kind, orjson.dumps(schema).decode()) for sid, (kind, schema) in schemas.items()
        }
        self.asked: Counter[int] = Counter()

    def schema(self, schema_id: int) -> tuple[str, str]:
        self.asked[schema_id] += 1
        try:
            return self.schemas[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"schema id {schema_id} is not in the registry") from None


def avro(schema_id: int, schema: Any, value: Any) -> bytes:
    return frame(schema_id, AvroCodec(schema).write(value))


def decoder(source: CountingSource, fmt: str = "avro", max_bytes: int = 1000) -> FormatDecoder:
    return FormatDecoder("users", fmt, source, max_bytes)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """formats' monotonic clock, set by the test (only formats' view of ``time`` changes)."""
    now = [1000.0]
    monkeypatch.setattr(formats, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


# -- the wire format -----------------------------------------------------------------------


def test_frame_and_schema_id_of() -> None:
    assert frame(7, b"abc") == b"\x00\x00\x00\x00\x07abc"
    assert frame(2**32 - 1, b"") == b"\x00\xff\xff\xff\xff"
    assert schema_id_of(frame(258, b"x")) == 258
    assert schema_id_of(frame(1, b"")) == 1
    assert schema_id_of(b"\x00\x00\x00\x01") is None
    assert schema_id_of(b"\x01\x00\x00\x00\x01") is None
    assert schema_id_of(b"") is None
    assert HEADER_BYTES == 5


# -- FormatDecoder: values that are not records --------------------------------------------


def test_a_good_value_decodes() -> None:
    source = CountingSource({1: ("AVRO", USER)})
    value = {"id": 3, "name": "ann"}
    assert decoder(source).decode([avro(1, USER, value)]) == ([0], [value], [])


def test_a_tombstone_is_a_failure() -> None:
    source = CountingSource({1: ("AVRO", USER)})
    assert decoder(source).decode([None]) == ([], [], [(0, TOMBSTONE)])
    assert source.asked == {}


def test_an_oversize_value_is_a_failure() -> None:
    source = CountingSource({1: ("AVRO", USER)})
    raw = avro(1, USER, {"id": 1, "name": "x" * 50})
    idxs, vals, failures = decoder(source, max_bytes=len(raw) - 1).decode([raw])
    assert (idxs, vals) == ([], [])
    assert failures == [(0, f"message of {len(raw)} bytes exceeds the {len(raw) - 1}-byte limit")]
    # Exactly at the limit is fine.
    assert decoder(source, max_bytes=len(raw)).decode([raw])[0] == [0]


def test_an_empty_value_is_a_failure() -> None:
    idxs, vals, failures = decoder(CountingSource({})).decode([b""])
    assert (idxs, vals) == ([], [])
    assert failures == [(0, "an empty value, not avro in the registry wire format")]


def test_a_first_byte_that_is_not_zero_is_a_failure() -> None:
    source = CountingSource({1: ("AVRO", USER)})
    idxs, _, failures = decoder(source).decode([b'{"id": 1}'])
    assert idxs == []
    [(index, why)] = failures
    assert index == 0
    assert why.startswith(f"first byte is {ord('{')}, not 0: not avro in the registry wire format")


@pytest.mark.parametrize("raw", [b"\x00", b"\x00\x00", b"\x00\x00\x00\x01"])
def test_a_value_shorter_than_the_header_is_a_failure(raw: bytes) -> None:
    source = CountingSource({1: ("AVRO", USER)})
    idxs, _, failures = decoder(source).decode([raw])
    assert idxs == []
    assert failures == [
        (0, f"truncated: {len(raw)} bytes, shorter than the wire format's 5-byte header")
    ]
    assert source.asked == {}


def test_a_value_that_does_not_decode_is_a_failure() -> None:
    source = CountingSource({1: ("AVRO", USER)})
    good = avro(1, USER, {"id": 1, "name": "hello"})
    idxs, _, failures = decoder(source).decode([good[:-2], good + b"\x00"])
    assert idxs == []
    assert [i for i, _ in failures] == [0, 1]
    for _, why in failures:
        assert why.startswith("does not decode as avro with schema id 1: ")
    assert "bytes left after the value" in failures[1][1]


def test_a_value_that_is_not_a_record_is_a_failure() -> None:
    source = CountingSource({4: ("AVRO", "string")})
    raw = frame(4, AvroCodec("string").write("hi"))
    assert decoder(source).decode([raw]) == (
        [],
        [],
        [(0, 'not an object (schema id 4 gives "hi")')],
    )


def test_failures_and_values_keep_their_positions() -> None:
    source = CountingSource({1: ("AVRO", USER)})
    a, b = {"id": 1, "name": "a"}, {"id": 2, "name": "b"}
    values = [None, avro(1, USER, a), b"", avro(1, USER, b), b"\x07"]
    idxs, vals, failures = decoder(source).decode(values)
    assert idxs == [1, 3]
    assert vals == [a, b]
    assert [i for i, _ in failures] == [0, 2, 4]


# -- FormatDecoder: schema lookups ---------------------------------------------------------


def test_each_id_is_looked_up_once_however_many_records_name_it() -> None:
    source = CountingSource({1: ("AVRO", USER)})
    d = decoder(source)
    chunk = [avro(1, USER, {"id": n, "name": str(n)}) for n in range(20)]
    assert d.decode(chunk)[0] == list(range(20))
    assert d.decode(chunk)[0] == list(range(20))
    assert source.asked == {1: 1}


def test_two_schema_ids_in_one_chunk() -> None:
    source = CountingSource({1: ("AVRO", USER), 2: ("AVRO", EVENT)})
    user, event = {"id": 1, "name": "a"}, {"kind": "click", "at": 5}
    chunk = [avro(1, USER, user), avro(2, EVENT, event), avro(1, USER, user)]
    d = decoder(source)
    assert d.unknown(chunk) == {1, 2}
    assert d.decode(chunk) == ([0, 1, 2], [user, event, user], [])
    assert source.asked == {1: 1, 2: 1}
    assert d.unknown(chunk) == set()


def test_learn_then_unknown_is_empty() -> None:
    source = CountingSource({1: ("AVRO", USER)})
    d = decoder(source)
    chunk = [avro(1, USER, {"id": 1, "name": "a"}), None, b"\x00\x00"]
    assert d.unknown(chunk) == {1}
    d.learn({1})
    assert d.unknown(chunk) == set()
    assert d.decode(chunk)[0] == [0]
    assert source.asked == {1: 1}


def test_an_unknown_id_is_a_failure_naming_it_and_is_asked_again_after_a_while(
    clock: list[float],
) -> None:
    source = CountingSource({})
    d = decoder(source)
    chunk = [frame(99, b"\x02"), frame(99, b"\x04")]
    idxs, _, failures = d.decode(chunk)
    assert idxs == []
    assert failures == [
        (0, "schema id 99 is not in the registry"),
        (1, "schema id 99 is not in the registry"),
    ]
    assert source.asked == {99: 1}
    # Within the retry window the id stays unknown without asking again.
    clock[0] += UNKNOWN_ID_RETRY_S - 1
    assert d.unknown(chunk) == set()
    assert [why for _, why in d.decode(chunk)[2]] == ["schema id 99 is not in the registry"] * 2
    assert source.asked == {99: 1}
    # Past the window it is asked again; once the registry holds it, it decodes.
    clock[0] += 2
    assert d.unknown(chunk) == {99}
    source.schemas[99] = ("AVRO", orjson.dumps(USER).decode())
    value = {"id": 5, "name": "e"}
    assert d.decode([avro(99, USER, value)]) == ([0], [value], [])
    assert source.asked == {99: 2}


def test_a_reader_schema_file_resolves_every_writer_schema(tmp_path: Path) -> None:
    reader = {
        "type": "record",
        "name": "User",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "tier", "type": "string", "default": "free"},
        ],
    }
    path = tmp_path / "user.avsc"
    path.write_bytes(orjson.dumps(reader))
    source = CountingSource({1: ("AVRO", USER)})
    d = FormatDecoder("users", "avro", source, 1000, reader=path)
    assert d.decode([avro(1, USER, {"id": 4, "name": "dropped"})]) == (
        [0],
        [{"id": 4, "tier": "free"}],
        [],
    )


def test_an_unusable_schema_is_a_failure_saying_why() -> None:
    source = CountingSource({3: ("PROTOBUF", "syntax = 'proto3';")})
    _, _, failures = decoder(source).decode([frame(3, b"\x00")])
    [(_, why)] = failures
    assert why.startswith("schema id 3 cannot be used for avro: ")
    assert "PROTOBUF" in why


def test_a_source_that_cannot_answer_raises_from_learn() -> None:
    class Down:
        def schema(self, schema_id: int) -> tuple[str, str]:
            raise ConnectionError("registry down")

    d = FormatDecoder("users", "avro", Down(), 1000)
    with pytest.raises(ConnectionError):
        d.learn({1})
    assert d.unknown([frame(1, b"")]) == {1}  # not remembered as unknown


# -- json-schema ---------------------------------------------------------------------------


def json_value(schema_id: int, value: Any) -> bytes:
    return frame(schema_id, orjson.dumps(value))


def test_json_schema_values_are_validated_against_the_writer_schema() -> None:
    source = CountingSource({5: ("JSON", USER_JSON)})
    d = decoder(source, fmt="json-schema")
    good = {"id": 1, "name": "a", "extra": True}
    idxs, vals, failures = d.decode(
        [json_value(5, good), json_value(5, {"id": "x"}), json_value(5, {"name": "a"})]
    )
    assert (idxs, vals) == ([0], [good])
    assert [i for i, _ in failures] == [1, 2]
    for _, why in failures:
        assert why.startswith("does not decode as json-schema with schema id 5: ")
    assert "id must be integer" in failures[0][1]
    assert "must contain ['id']" in failures[1][1]


def test_json_schema_payload_that_is_not_json_is_a_failure() -> None:
    source = CountingSource({5: ("JSON", USER_JSON)})
    _, _, failures = decoder(source, fmt="json-schema").decode([frame(5, b"{nope")])
    [(_, why)] = failures
    assert why.startswith("does not decode as json-schema with schema id 5: ")


def test_json_schema_array_value_is_not_an_object() -> None:
    source = CountingSource({5: ("JSON", {"type": "array"})})
    _, _, failures = decoder(source, fmt="json-schema").decode([json_value(5, [1, 2])])
    assert failures == [(0, "not an object (schema id 5 gives an array)")]


def test_json_schema_write_drops_top_level_fields_not_in_properties() -> None:
    c = JsonSchemaCodec(USER_JSON, "users.json")
    written = c.write({"id": 1, "extra": {"deep": 1}, "name": "n"})
    assert orjson.loads(written) == {"id": 1, "name": "n"}
    # Only the top level: nested objects are left as they are.
    nested = {
        "type": "object",
        "properties": {"inner": {"type": "object", "properties": {"a": {"type": "integer"}}}},
    }
    c2 = JsonSchemaCodec(nested, "nested.json")
    assert orjson.loads(c2.write({"inner": {"a": 1, "b": 2}, "x": 0})) == {
        "inner": {"a": 1, "b": 2}
    }


def test_json_schema_write_refuses_a_missing_required_field() -> None:
    c = JsonSchemaCodec(USER_JSON, "users.json")
    with pytest.raises(EncodeError, match=r"must contain \['id'\]"):
        c.write({"name": "n"})
    with pytest.raises(EncodeError, match="id must be integer"):
        c.write({"id": 1.5})


def test_codec_for_picks_the_codec_of_the_schema_type() -> None:
    assert isinstance(codec_for("AVRO", orjson.dumps(USER).decode(), "s"), AvroCodec)
    assert isinstance(codec_for("JSON", orjson.dumps(USER_JSON).decode(), "s"), JsonSchemaCodec)
    with pytest.raises(ValueError, match="must be an object"):
        codec_for("JSON", "[]", "s")
    with pytest.raises(ValueError, match="PROTOBUF is not supported"):
        codec_for("PROTOBUF", "{}", "s")


# -- FormatEncoder -------------------------------------------------------------------------


def test_encode_frames_the_value_with_the_schema_id() -> None:
    enc = FormatEncoder("users", "avro", 7, AvroCodec(USER))
    raw = enc.encode(b'{"id": 3, "name": "c", "dropped": 1}')
    assert raw[:HEADER_BYTES] == b"\x00\x00\x00\x00\x07"
    assert schema_id_of(raw) == 7
    assert AvroCodec(USER).read(raw[HEADER_BYTES:]) == {"id": 3, "name": "c"}
    assert enc.encode_value({"id": 3, "name": "c"}) == raw


def test_encode_of_a_value_missing_a_field_names_the_topic_and_field() -> None:
    enc = FormatEncoder("users", "avro", 7, AvroCodec(USER))
    with pytest.raises(EncodeError) as caught:
        enc.encode(b'{"id": 3}')
    message = str(caught.value)
    assert "users" in message
    assert "name" in message
    assert message == (
        "does not fit users's avro schema: User.name: missing, and the schema gives no default"
    )


def test_encode_of_a_wrong_type_is_an_encode_error() -> None:
    enc = FormatEncoder("users", "avro", 7, AvroCodec(USER))
    with pytest.raises(EncodeError, match=r"users's avro schema: User\.id: expected an integer"):
        enc.encode(b'{"id": 1.5, "name": "x"}')


def test_encode_json_schema_missing_required_field() -> None:
    enc = FormatEncoder("users", "json-schema", 8, JsonSchemaCodec(USER_JSON, "u.json"))
    with pytest.raises(EncodeError, match=r"users's json-schema schema: .*\['id'\]"):
        enc.encode(b'{"name": "x"}')
    raw = enc.encode(b'{"id": 1, "name": "x", "other": 2}')
    assert raw == frame(8, b'{"id":1,"name":"x"}')


def test_encode_of_bytes_that_are_not_json_is_an_encode_error() -> None:
    enc = FormatEncoder("users", "avro", 7, AvroCodec(USER))
    with pytest.raises(EncodeError, match="users's avro schema: JSONDecodeError"):
        enc.encode(b"not json")
