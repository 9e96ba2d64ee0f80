"""JSON encoding for state and output: orjson, with a fallback for integers beyond 64 bits.

Event schema v1 allows any integer ``ts >= 0``, and orjson decodes integers beyond 64 bits (as
integral floats, which validation turns back into ``int``); orjson cannot *encode* them. Such an
event is valid and must not crash the worker, so the rare record that carries one is written by
the standard library instead. The common case pays nothing: the fallback runs only after
orjson refused.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_orjson_dumps = orjson.dumps
_join = b"".join
_EMPTY = b""


def dumps(value: Any) -> bytes:
    """Compact JSON bytes of ``value`` (non-finite floats become ``null``, as orjson does),
    in an object of their own size.

    orjson (3.12 and later) returns bytes that keep the whole buffer it wrote into, at least
    4 KB, whatever their length (ijl/orjson; Home Assistant measured the same). A 30-byte
    changelog value then holds 4 KB for as long as it waits for its acknowledgement: at ~50k
    records in flight that was 150 MB of the worker's peak RSS with a million keys
    (docs/BENCHMARKS.md). A two-part join copies (a one-part join would return the same
    object); the hot paths that call orjson directly do the same.
    """
    try:
        return _join((_orjson_dumps(value), _EMPTY))
    except TypeError:
        return json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value
