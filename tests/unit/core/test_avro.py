"""AvroCodec (streams.core.avro): the JSON mapping table both ways, write->read round trips,
the strict checker's refusals, damaged payloads and reader-schema resolution."""

from __future__ import annotations

import base64
import datetime
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.avro import AvroCodec, AvroMismatch


def zigzag(n: int) -> bytes:
    """Avro's int/long encoding, written out independently of fastavro."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def one(type_: Any, **extra: Any) -> dict[str, Any]:
    """A record of one field ``x`` of ``type_``."""
    return {"type": "record", "name": "R", "fields": [{"name": "x", "type": type_, **extra}]}


def codec(type_: Any) -> AvroCodec:
    return AvroCodec(one(type_))


def read_fails(c: AvroCodec, payload: bytes) -> bool:
    try:
        c.read(payload)
    except Exception:
        return True
    return False


# -- the mapping table, one logical type at a time, both directions ------------------------


def test_bytes_are_base64_with_padding() -> None:
    c = codec("bytes")
    payload = zigzag(1) + b"\xff"
    assert c.read(payload) == {"x": "/w=="}
    assert c.write({"x": "/w=="}) == payload
    assert c.write({"x": "AAEC/w=="}) == zigzag(4) + b"\x00\x01\x02\xff"
    assert c.read(c.write({"x": ""})) == {"x": ""}


def test_bytes_that_are_not_base64_do_not_fit() -> None:
    with pytest.raises(AvroMismatch, match="base64"):
        codec("bytes").write({"x": "not base64!"})


def test_fixed_is_base64_with_padding() -> None:
    c = codec({"type": "fixed", "name": "Hash", "size": 4})
    payload = b"\xde\xad\xbe\xef"
    assert c.read(payload) == {"x": base64.b64encode(payload).decode()}
    assert c.read(payload) == {"x": "3q2+7w=="}
    assert c.write({"x": "3q2+7w=="}) == payload


def test_fixed_of_the_wrong_size_does_not_fit() -> None:
    with pytest.raises(AvroMismatch):
        codec({"type": "fixed", "name": "Hash", "size": 4}).write({"x": "AAE="})


def test_date_is_an_iso_day() -> None:
    c = codec({"type": "int", "logicalType": "date"})
    days = (datetime.date(2024, 2, 29) - datetime.date(1970, 1, 1)).days
    assert c.read(zigzag(days)) == {"x": "2024-02-29"}
    assert c.read(zigzag(0)) == {"x": "1970-01-01"}
    assert c.read(zigzag(-1)) == {"x": "1969-12-31"}
    assert c.write({"x": "2024-02-29"}) == zigzag(days)
    assert c.write({"x": days}) == zigzag(days)  # a day count is written too


def test_a_string_that_is_not_a_date_does_not_fit() -> None:
    with pytest.raises(AvroMismatch, match="YYYY-MM-DD"):
        codec({"type": "int", "logicalType": "date"}).write({"x": "2024-02-30"})


def test_decimal_is_a_float() -> None:
    c = codec({"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 2})
    # 1234 unscaled, scale 2: 12.34; two's complement big-endian bytes 0x04d2.
    payload = zigzag(2) + b"\x04\xd2"
    value = c.read(payload)
    assert value == {"x": 12.34}
    assert type(value["x"]) is float
    assert c.write({"x": 12.34}) == payload
    assert c.write({"x": "12.34"}) == payload  # a string too
    assert c.read(c.write({"x": -0.5})) == {"x": -0.5}
    assert c.read(c.write({"x": 7})) == {"x": 7.0}


def test_a_decimal_that_is_not_a_number_does_not_fit() -> None:
    c = codec({"type": "bytes", "logicalType": "decimal", "precision": 8, "scale": 2})
    with pytest.raises(AvroMismatch, match="decimal"):
        c.write({"x": "twelve"})


@pytest.mark.parametrize(
    ("logical", "base", "value"),
    [
        ("timestamp-millis", "long", 1_700_000_000_123),
        ("timestamp-micros", "long", 1_700_000_000_123_456),
        ("local-timestamp-millis", "long", 1_700_000_000_123),
        ("local-timestamp-micros", "long", 1_700_000_000_123_456),
        ("time-millis", "int", 13 * 3_600_000 + 5),
        ("time-micros", "long", 13 * 3_600_000_000 + 5),
    ],
)
def test_times_are_integers_as_on_the_wire(logical: str, base: str, value: int) -> None:
    c = codec({"type": base, "logicalType": logical})
    assert c.read(zigzag(value)) == {"x": value}
    assert type(c.read(zigzag(value))["x"]) is int
    assert c.write({"x": value}) == zigzag(value)


def test_timestamp_millis_is_not_written_from_a_string() -> None:
    with pytest.raises(AvroMismatch):
        codec({"type": "long", "logicalType": "timestamp-millis"}).write({"x": "2024-01-01"})


def test_uuid_is_a_string() -> None:
    c = codec({"type": "string", "logicalType": "uuid"})
    text = "6f1c1b4e-8a4d-4c4e-9d3a-2b1c0e9f7a11"
    payload = zigzag(len(text)) + text.encode()
    assert c.read(payload) == {"x": text}
    assert type(c.read(payload)["x"]) is str
    assert c.write({"x": text}) == payload


def test_enum_is_its_symbol() -> None:
    c = codec({"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"]})
    assert c.read(zigzag(1)) == {"x": "PAID"}
    assert c.write({"x": "SHIPPED"}) == zigzag(2)
    with pytest.raises(AvroMismatch, match="symbols"):
        c.write({"x": "LOST"})


def test_union_is_the_branch_value_without_a_wrapper() -> None:
    c = codec(["null", "long", "string"])
    assert c.read(zigzag(0)) == {"x": None}
    assert c.read(zigzag(1) + zigzag(42)) == {"x": 42}
    assert c.read(zigzag(2) + zigzag(2) + b"hi") == {"x": "hi"}
    assert c.write({"x": None}) == zigzag(0)
    assert c.write({"x": 42}) == zigzag(1) + zigzag(42)
    assert c.write({"x": "hi"}) == zigzag(2) + zigzag(2) + b"hi"


def test_bytes_in_a_union_are_base64_both_ways() -> None:
    c = codec(["null", "bytes"])
    assert c.read(zigzag(1) + zigzag(2) + b"\x00\x01") == {"x": "AAE="}
    assert c.write({"x": "AAE="}) == zigzag(1) + zigzag(2) + b"\x00\x01"


def test_records_and_maps_are_objects_and_arrays_are_arrays() -> None:
    c = codec(
        {
            "type": "map",
            "values": {
                "type": "record",
                "name": "Point",
                "fields": [{"name": "xs", "type": {"type": "array", "items": "int"}}],
            },
        }
    )
    payload = c.write({"x": {"a": {"xs": [1, -2]}}})
    assert payload == (
        zigzag(1) + zigzag(1) + b"a" + zigzag(2) + zigzag(1) + zigzag(-2) + zigzag(0) + zigzag(0)
    )
    assert c.read(payload) == {"x": {"a": {"xs": [1, -2]}}}


def test_a_primitive_schema_reads_and_writes_plain_values() -> None:
    c = AvroCodec("string")
    assert c.write("abc") == zigzag(3) + b"abc"
    assert c.read(zigzag(3) + b"abc") == "abc"


def test_floats_are_32_bit() -> None:
    c = codec("float")
    payload = c.write({"x": 0.1})
    assert payload == struct.pack("<f", 0.1)
    assert c.read(payload) == {"x": struct.unpack("<f", struct.pack("<f", 0.1))[0]}


# -- write -> read round trips over a rich schema ------------------------------------------

RICH = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "paid", "type": "boolean"},
        {"name": "price", "type": "double"},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "raw", "type": "bytes"},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
        {"name": "ref", "type": ["null", "long", "string"]},
        {
            "name": "lines",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Line",
                    "fields": [
                        {"name": "sku", "type": "string"},
                        {"name": "qty", "type": "int"},
                        {"name": "blob", "type": ["null", "bytes"]},
                    ],
                },
            },
        },
        {"name": "attrs", "type": {"type": "map", "values": "double"}},
        {
            "name": "customer",
            "type": {
                "type": "record",
                "name": "Customer",
                "fields": [
                    {"name": "name", "type": "string"},
                    {"name": "tags", "type": {"type": "array", "items": "string"}},
                    {"name": "status", "type": "Status"},
                ],
            },
        },
    ],
}

LONGS = st.integers(-(2**63), 2**63 - 1)
INTS = st.integers(-(2**31), 2**31 - 1)
DOUBLES = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=12)
STATUS = st.sampled_from(["NEW", "PAID"])


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


LINES = st.fixed_dictionaries(
    {
        "sku": TEXT,
        "qty": INTS,
        "blob": st.one_of(st.none(), st.binary(max_size=8).map(b64)),
    }
)
ORDERS = st.fixed_dictionaries(
    {
        "id": LONGS,
        "paid": st.booleans(),
        "price": DOUBLES,
        "status": STATUS,
        "raw": st.binary(max_size=16).map(b64),
        "hash": st.binary(min_size=4, max_size=4).map(b64),
        "ref": st.one_of(st.none(), LONGS, TEXT),
        "lines": st.lists(LINES, max_size=3),
        "attrs": st.dictionaries(TEXT, DOUBLES, max_size=3),
        "customer": st.fixed_dictionaries(
            {"name": TEXT, "tags": st.lists(TEXT, max_size=3), "status": STATUS}
        ),
    }
)
RICH_CODEC = AvroCodec(RICH)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(order=ORDERS)
def test_what_is_written_reads_back_the_same(order: dict[str, Any]) -> None:
    assert RICH_CODEC.read(RICH_CODEC.write(order)) == order


@settings(max_examples=50, deadline=None, derandomize=True)
@given(order=ORDERS, extra=st.dictionaries(st.text(min_size=1).map(lambda s: "_" + s), LONGS))
def test_fields_the_schema_does_not_name_are_left_out(
    order: dict[str, Any], extra: dict[str, int]
) -> None:
    assert RICH_CODEC.read(RICH_CODEC.write({**order, **extra})) == order


# -- what does not fit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "value", "reason"),
    [
        ("long", 1.5, "expected an integer"),
        ("long", True, "got a boolean"),
        ("int", True, "got a boolean"),
        ("boolean", 3, "expected a boolean"),
        ("boolean", 0, "expected a boolean"),
        ("int", "5", "got a string"),
        ("long", "5", "got a string"),
        ("int", 2**31, "out of range"),
        ("int", -(2**31) - 1, "out of range"),
        ("long", 2**63, "out of range"),
        ("double", True, "got a boolean"),
        ("float", "1.0", "got a string"),
        ("string", 5, "expected a string"),
        ("null", 0, "expected null"),
        ({"type": "array", "items": "long"}, [1, 1.5], r"\[1\]"),
        ({"type": "map", "values": "long"}, {"a": True}, "'a'"),
        ({"type": "array", "items": "long"}, {"a": 1}, "expected an array"),
    ],
)
def test_a_wrong_type_does_not_fit(type_: Any, value: Any, reason: str) -> None:
    with pytest.raises(AvroMismatch, match=reason) as caught:
        codec(type_).write({"x": value})
    assert str(caught.value).startswith("R.x: ")


@pytest.mark.parametrize(
    ("type_", "value"),
    [
        (["null", "long"], 1.5),
        (["null", "long"], True),
        (["null", "long"], 2**63),
        (["null", "int"], 2**31),
        (["null", "boolean"], 3),
        (["null", "string"], 5),
        (["null", "double"], True),
    ],
)
def test_a_wrong_type_in_a_union_does_not_fit(type_: Any, value: Any) -> None:
    with pytest.raises(AvroMismatch):
        codec(type_).write({"x": value})


def test_a_missing_field_takes_its_default() -> None:
    c = AvroCodec(
        {
            "type": "record",
            "name": "R",
            "fields": [
                {"name": "id", "type": "long"},
                {"name": "n", "type": "long", "default": 7},
                {"name": "note", "type": ["null", "string"], "default": None},
                {"name": "status", "type": {"type": "enum", "name": "S", "symbols": ["A", "B"]}},
            ],
        }
    )
    assert c.read(c.write({"id": 1, "status": "B"})) == {
        "id": 1,
        "n": 7,
        "note": None,
        "status": "B",
    }


def test_a_missing_field_without_default_does_not_fit() -> None:
    c = AvroCodec(
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"}],
        }
    )
    with pytest.raises(AvroMismatch, match=r"R\.name: missing"):
        c.write({"id": 1})


def test_a_value_that_is_not_an_object_does_not_fit_a_record() -> None:
    with pytest.raises(AvroMismatch, match="expected an object"):
        codec("long").write([1])


def test_a_nested_mismatch_names_its_path() -> None:
    order = {
        "id": 1,
        "paid": True,
        "price": 1.0,
        "status": "NEW",
        "raw": "",
        "hash": "AAAAAA==",
        "ref": None,
        "lines": [],
        "attrs": {},
        "customer": {"name": "n", "tags": ["a", 2], "status": "NEW"},
    }
    with pytest.raises(AvroMismatch, match=r"customer.*tags.*\[1\].*expected a string"):
        RICH_CODEC.write(order)


# -- damaged payloads ----------------------------------------------------------------------


def test_a_truncated_payload_raises() -> None:
    c = AvroCodec(
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "id", "type": "long"}, {"name": "s", "type": "string"}],
        }
    )
    payload = c.write({"id": 300, "s": "hello"})
    for cut in range(len(payload)):
        assert read_fails(c, payload[:cut]), payload[:cut]


def test_trailing_bytes_raise() -> None:
    c = codec("long")
    payload = c.write({"x": 5})
    with pytest.raises(ValueError, match="1 bytes left after the value"):
        c.read(payload + b"\x00")
    with pytest.raises(ValueError, match="3 bytes left"):
        c.read(payload + b"abc")


# -- reader schemas ------------------------------------------------------------------------

WRITER = {
    "type": "record",
    "name": "User",
    "fields": [
        {"name": "id", "type": "int"},
        {"name": "name", "type": "string"},
        {"name": "legacy", "type": "string"},
    ],
}
READER = {
    "type": "record",
    "name": "User",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "email", "type": ["null", "string"], "default": None},
        {"name": "level", "type": "int", "default": 3},
    ],
}


def test_a_reader_schema_drops_writer_fields_and_fills_its_defaults() -> None:
    payload = AvroCodec(WRITER).write({"id": 9, "name": "ann", "legacy": "x"})
    assert AvroCodec(WRITER, READER).read(payload) == {
        "id": 9,
        "name": "ann",
        "email": None,
        "level": 3,
    }


def test_a_reader_schema_still_maps_bytes_it_reads() -> None:
    writer = one("bytes")
    reader = one("bytes")
    reader["fields"].append({"name": "n", "type": "long", "default": 0})
    payload = AvroCodec(writer).write({"x": "AAE="})
    assert AvroCodec(writer, reader).read(payload) == {"x": "AAE=", "n": 0}


def test_a_reader_schema_that_cannot_read_the_writer_raises_on_read() -> None:
    reader = {"type": "record", "name": "User", "fields": [{"name": "missing", "type": "long"}]}
    payload = AvroCodec(WRITER).write({"id": 9, "name": "ann", "legacy": "x"})
    assert read_fails(AvroCodec(WRITER, reader), payload)


# -- faults found while these tests were written (each failed before its fix) -----------

NODE = {
    "type": "record",
    "name": "Node",
    "fields": [{"name": "v", "type": "long"}, {"name": "next", "type": ["null", "Node"]}],
}


def test_a_recursive_schema_gets_a_codec() -> None:
    # _preparer follows the named reference "Node" back into the record it is building and
    # recurses until RecursionError: AvroCodec(NODE) raises in its constructor.
    try:
        c = AvroCodec(NODE)
    except RecursionError:
        pytest.fail("AvroCodec(recursive schema) raises RecursionError (_preparer recursion)")
    value = {"v": 1, "next": {"v": 2, "next": None}}
    assert c.read(c.write(value)) == value


def test_a_record_declared_in_a_union_is_still_checked_where_named_later() -> None:
    # _checker returns _accept for a union without registering the names declared in its
    # branches, so a later field naming "Inner" is not checked at all and fastavro's writer
    # coerces: 1.5 is written as the long 1, True as 1.
    inner = {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}]}
    c = AvroCodec(
        {
            "type": "record",
            "name": "Outer",
            "fields": [{"name": "a", "type": ["null", inner]}, {"name": "b", "type": "Inner"}],
        }
    )
    for wrong in (1.5, True):
        try:
            written = c.read(c.write({"a": None, "b": {"x": wrong}}))
        except AvroMismatch:
            continue
        pytest.fail(f"{wrong!r} for a long was accepted and read back as {written}")


@pytest.mark.parametrize(
    ("type_", "default", "expected"),
    [
        ("bytes", "\u0000\u0001", "AAE="),
        ({"type": "fixed", "name": "Two", "size": 2}, "\u0000\u0001", "AAE="),
    ],
)
def test_a_missing_bytes_field_takes_its_default(type_: Any, default: str, expected: str) -> None:
    # Avro gives a bytes/fixed default as a string of code points 0-255; fastavro's writer
    # gets that str and fails ("a bytes-like object is required"), so the codec refuses a
    # value that only leaves out a field with a default.
    c = AvroCodec(
        {
            "type": "record",
            "name": "R",
            "fields": [
                {"name": "id", "type": "long"},
                {"name": "b", "type": type_, "default": default},
            ],
        }
    )
    try:
        payload = c.write({"id": 1})
    except AvroMismatch as exc:
        pytest.fail(f"a missing field with a default does not fit: {exc}")
    assert c.read(payload) == {"id": 1, "b": expected}


@pytest.mark.parametrize(
    ("type_", "default", "expected"),
    [
        ("bytes", "\u0000\u0001", "AAE="),
        ({"type": "int", "logicalType": "date"}, 19000, "2022-01-08"),
    ],
)
def test_a_reader_default_follows_the_mapping_table(
    type_: Any, default: Any, expected: str
) -> None:
    # fastavro hands a reader-only field its JSON default untouched (the str "\x00\x01" for
    # bytes, the int 19000 for a date), and _to_json only converts bytes/date objects, so
    # the value breaks the table (bytes -> base64, date -> "YYYY-MM-DD").
    writer = one("long")
    reader = one("long")
    reader["fields"].append({"name": "n", "type": type_, "default": default})
    payload = AvroCodec(writer).write({"x": 1})
    assert AvroCodec(writer, reader).read(payload) == {"x": 1, "n": expected}


def test_a_fixed_referenced_by_its_full_name_is_prepared() -> None:
    # A named type declared without "namespace" inside a record of namespace "ns" is
    # "ns.F" (it inherits the enclosing namespace), but _named registers only "F": a later
    # field naming "ns.F" gets no preparer, its base64 is not decoded and a valid value
    # does not fit ("data of length 4 does not match schema size").
    fixed = {"type": "fixed", "name": "F", "size": 2}
    c = AvroCodec(
        {
            "type": "record",
            "name": "R",
            "namespace": "ns",
            "fields": [{"name": "a", "type": fixed}, {"name": "b", "type": "ns.F"}],
        }
    )
    try:
        assert c.read(c.write({"a": "AAE=", "b": "AAI="})) == {"a": "AAE=", "b": "AAI="}
    except AvroMismatch as exc:
        pytest.fail(f"a valid value for the fixed ns.F does not fit: {exc}")


def test_a_record_referenced_by_its_full_name_is_checked() -> None:
    # As above for the checker: "ns.I" is not resolved, the field is not checked, and
    # fastavro's writer writes 1.5 for a long as 1.
    inner = {"type": "record", "name": "I", "fields": [{"name": "x", "type": "long"}]}
    c = AvroCodec(
        {
            "type": "record",
            "name": "R",
            "namespace": "ns",
            "fields": [{"name": "a", "type": inner}, {"name": "b", "type": "ns.I"}],
        }
    )
    with pytest.raises(AvroMismatch, match="expected an integer"):
        c.write({"a": {"x": 1}, "b": {"x": 1.5}})


def test_a_decimal_fixed_referenced_by_name_takes_numbers() -> None:
    # _preparer returns the decimal preparer before registering the fixed's name, so a
    # later field of type "D" gets no preparer and fastavro is handed the float itself.
    dec = {
        "type": "fixed",
        "name": "D",
        "size": 8,
        "logicalType": "decimal",
        "precision": 10,
        "scale": 2,
    }
    c = AvroCodec(
        {
            "type": "record",
            "name": "R",
            "fields": [{"name": "a", "type": dec}, {"name": "b", "type": "D"}],
        }
    )
    try:
        assert c.read(c.write({"a": 12.5, "b": 1.25})) == {"a": 12.5, "b": 1.25}
    except AvroMismatch as exc:
        pytest.fail(f"a number for the decimal D does not fit: {exc}")
