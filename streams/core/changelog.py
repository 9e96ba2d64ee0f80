"""How a partition's state is written to its compacted changelog topic and read back.

The topic is co-partitioned with the input, so keys only need to be unique within a partition.
Every value is compact JSON; ``None`` is a tombstone.

===================  =========================================================================
key                  value
===================  =========================================================================
``t``                ``[stream_time, last_activity, stream_time_at_last_activity]``, null: none
``w<start>:<user>``  one open aggregate ``[count, sum, min, max]`` of window ``start``
``d<seq>``           ``{event_id: ts}`` accepted in the batch the shell numbered ``seq``
``o``                the next input offset, as the shell reported it (a decimal number)
===================  =========================================================================

Records are written in the order the state changed; applying them in topic order, with or
without compaction, rebuilds the state.
"""

from __future__ import annotations

import math

import orjson

from streams.core.aggregate import Aggregate
from streams.core.jsonbytes import dumps

Record = tuple[bytes, bytes | None]

TIME_KEY = b"t"
POSITION_KEY = b"o"
WINDOW_TAG = b"w"
DEDUPE_TAG = b"d"

_dumps = dumps


def window_key_prefix(start: int) -> bytes:
    """What the keys of window ``start`` begin with; append the UTF-8 ``user_id``."""
    return b"w%d:" % start


def parse_window_key(key: bytes) -> tuple[int, str]:
    """``(start, user_id)`` of a window key."""
    start, _, user_id = key[1:].decode().partition(":")
    return int(start), user_id


def encode_aggregate(aggregate: Aggregate) -> bytes:
    """Value of a window key."""
    return _dumps(aggregate)


def decode_aggregate(value: bytes) -> Aggregate:
    """Inverse of :func:`encode_aggregate`."""
    aggregate: Aggregate = orjson.loads(value)
    # JSON has no infinity: a sum that overflowed is written as null, and a sum is never None.
    if aggregate[1] is None:
        aggregate[1] = math.inf
    return aggregate


def dedupe_key(seq: int) -> bytes:
    """Key of the ids accepted in batch ``seq``."""
    return b"d%d" % seq


def parse_dedupe_key(key: bytes) -> int:
    """``seq`` of a dedupe key."""
    return int(key[1:])


def encode_ids(ids: dict[str, int]) -> bytes:
    """Value of a dedupe key."""
    return _dumps(ids)


def decode_ids(value: bytes) -> dict[str, int]:
    """Inverse of :func:`encode_ids`."""
    ids: dict[str, int] = orjson.loads(value)
    return ids


def encode_time(
    stream_time: int | None, last_activity: int | None, at_last_activity: int | None
) -> bytes:
    """Value of the time key."""
    return _dumps([stream_time, last_activity, at_last_activity])


def decode_time(value: bytes) -> tuple[int | None, int | None, int | None]:
    """Inverse of :func:`encode_time`."""
    stream_time, last_activity, at_last_activity = orjson.loads(value)
    return stream_time, last_activity, at_last_activity
