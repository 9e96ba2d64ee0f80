"""Hot-path decoding and validation of input messages against event schema v1.

Every message goes through :func:`decode_event` once, so the schema is hand-coded here rather
than run through a generic validator: it is several times faster than the fastjsonschema
compilation of ``schemas/event/v1.json``, which stays the reference (``streams.schemas``) and
which the unit tests check this module against on randomly generated events.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import orjson

MAX_MESSAGE_BYTES: Final = 1_048_576
EVENT_TYPES: Final = ("page_view", "add_to_cart", "purchase", "refund")
MONEY_TYPES: Final = ("purchase", "refund")
REQUIRED: Final = ("event_id", "type", "user_id", "ts")
TOMBSTONE: Final = "value is null (tombstone)"

_TYPES = frozenset(EVENT_TYPES)
_MONEY = frozenset(MONEY_TYPES)
# Module-level names for the hot path: each saves an attribute lookup per message.
_INF = math.inf
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

# (event, None) for a valid message, (None, reason) otherwise.
Decoded = tuple[dict[str, Any] | None, str | None]


def check_event(event: Any) -> str | None:
    """Check a decoded message against event schema v1: ``None`` if valid, else the reason.

    ``event`` must be what a JSON decoder produced (plain ``dict``/``list``/``str``/``int``/
    ``float``/``bool``/``None``). A valid event is normalised in place: a ``ts`` written as an
    integral number such as ``5.0`` (an integer in JSON Schema) becomes the ``int`` 5.
    Non-finite numbers, which JSON cannot express, are rejected.
    """
    # Exact type checks (``x.__class__``: an attribute load, cheaper than a call of
    # ``type``): they are the fastest, and they keep bool (an int subclass) out of
    # integer and number fields as JSON Schema requires. Required fields are read by
    # subscript, the cheapest lookup; a missing one lands in the KeyError handler.
    if event.__class__ is not dict:
        return f"not a JSON object (got {describe_value(event)})"
    try:
        value = event["event_id"]
        if value.__class__ is not str or not 0 < len(value) <= 64:
            return _reason(event, "event_id", "must be a string of 1 to 64 characters")
        kind = event["type"]
        if kind.__class__ is not str or kind not in _TYPES:
            return _reason(event, "type", f"must be one of {', '.join(EVENT_TYPES)}")
        value = event["user_id"]
        if value.__class__ is not str or not 0 < len(value) <= 128:
            return _reason(event, "user_id", "must be a string of 1 to 128 characters")
        value = event["ts"]
    except KeyError:
        missing = next(field for field in REQUIRED if field not in event)
        return f"{missing}: required field is missing"
    if value.__class__ is not int:
        if value.__class__ is float and value.is_integer() and value >= 0:
            event["ts"] = int(value)
        else:
            return _reason(event, "ts", "must be an integer >= 0")
    elif value < 0:
        return _reason(event, "ts", "must be an integer >= 0")
    if "amount" in event:
        value = event["amount"]
        if value.__class__ is float:
            if not 0.0 <= value < _INF:
                return _reason(event, "amount", "must be a number >= 0")
        elif value.__class__ is not int or value < 0:
            return _reason(event, "amount", "must be a number >= 0")
    elif kind in _MONEY:
        return f"amount: required when type is {kind}"
    if "currency" in event:
        value = event["currency"]
        if not (
            value.__class__ is str
            and len(value) == 3
            and value.isascii()
            and value.isalpha()
            and value.isupper()
        ):
            return _reason(event, "currency", "must be a 3-letter upper-case code like EUR")
    if "props" in event and event["props"].__class__ is not dict:
        return _reason(event, "props", "must be an object")
    return None


def decode_event(raw: bytes | None, max_bytes: int = MAX_MESSAGE_BYTES) -> Decoded:
    """Decode and validate one message value: ``(event, None)`` if valid, else ``(None, reason)``.

    Never raises, whatever the bytes. ``reason`` is one short line naming the field and rule.
    """
    if raw is None:
        return None, TOMBSTONE
    if len(raw) > max_bytes:
        return None, f"message of {len(raw)} bytes exceeds the {max_bytes}-byte limit"
    try:
        event = _loads(raw)
    except _JSONDecodeError as exc:
        return None, f"not valid JSON: {exc}"
    reason = check_event(event)
    if reason is None:
        return event, None
    return None, reason


def decode_batch(
    values: Sequence[bytes | None], max_bytes: int = MAX_MESSAGE_BYTES
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """:func:`decode_event` over a batch: ``(valid events, [(index, reason), ...])``.

    The valid events keep their order; each failure gives the index of its message in
    ``values`` and the same reason :func:`decode_event` gives. A batch where every message is
    a valid event (the common case) is decoded by C loops (``map`` over ``orjson.loads``)
    and one check per event, with no per-message call of :func:`decode_event`.
    """
    if not values:
        return [], []
    try:
        if max(map(len, values)) > max_bytes:  # type: ignore[arg-type]  # None: TypeError
            return _decode_each(values, max_bytes)
        events = list(map(_loads, values))  # type: ignore[arg-type]  # None: TypeError
    except (_JSONDecodeError, TypeError):
        return _decode_each(values, max_bytes)
    reasons = list(map(check_event, events))
    if reasons.count(None) == len(reasons):
        return events, []
    valid = [event for event, reason in zip(events, reasons, strict=True) if reason is None]
    failures = [(index, reason) for index, reason in enumerate(reasons) if reason is not None]
    return valid, failures


def _decode_each(
    values: Sequence[bytes | None], max_bytes: int
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    valid: list[dict[str, Any]] = []
    failures: list[tuple[int, str]] = []
    for index, raw in enumerate(values):
        event, reason = decode_event(raw, max_bytes)
        if event is not None:
            valid.append(event)
        else:
            failures.append((index, str(reason)))
    return valid, failures


def _reason(event: dict[str, Any], field: str, rule: str) -> str:
    return f"{field}: {rule} (got {describe_value(event[field])})"


def describe_value(value: Any) -> str:
    """A short description of a JSON value for an error message (never its full text):
    ``null``, ``true``, a short number or string as written, else its kind and size."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is int or type(value) is float:
        text = repr(value)
        return text if len(text) <= 24 else f"a {len(text)}-digit number"
    if type(value) is str:
        if len(value) <= 16:
            return orjson.dumps(value).decode()
        return f"a string of {len(value)} characters"
    if type(value) is list:
        return "an array"
    if type(value) is dict:
        return "an object"
    return type(value).__name__
