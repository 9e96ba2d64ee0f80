"""Deterministic generator of realistic input messages, including the awkward ones.

Besides well-formed events it produces exact duplicates, late events and invalid messages in
requested proportions, so every path of the pipeline (dedupe, late handling, dead-letter queue)
gets exercised. The same arguments always give byte-identical output.
"""

from __future__ import annotations

import itertools
import random
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from math import log
from typing import Any, Final, NamedTuple, TypeVar

import orjson

from streams.errors import StreamsError
from streams.validation import EVENT_TYPES, MONEY_TYPES, REQUIRED

GOOD: Final = "good"
DUPLICATE: Final = "duplicate"
LATE: Final = "late"
BAD: Final = "bad"
KINDS: Final = (GOOD, DUPLICATE, LATE, BAD)

# 2025-01-01T00:00:00Z: a fixed default so that output depends on the arguments alone.
DEFAULT_START_TS: Final = 1_735_689_600_000
# Late events are 10 to 15 minutes behind the generator's clock: past any sensible
# window + grace, which are a minute or so each by default.
LATE_BY_MS: Final = 600_000
LATE_SPREAD_MS: Final = 300_000
# On-time events trail the clock by an exponentially distributed delay: mostly a few hundred
# ms, sometimes seconds, never more than this (well inside the default 10 s grace), and
# never before the start time.
MEAN_DELAY_MS: Final = 500
MAX_DELAY_MS: Final = 5_000
# Duplicates repeat one of the most recent on-time events, as a retrying producer would.
DUPLICATE_POOL: Final = 1024
MAX_SEED: Final = 2**64 - 1

_TYPE_WEIGHTS = (0.70, 0.85, 0.95, 1.0)  # cumulative: page_view, add_to_cart, purchase, refund
_CURRENCIES = ("EUR", "USD", "GBP", "JPY")
_MONEY = frozenset(MONEY_TYPES)

T = TypeVar("T")


class GeneratedMessage(NamedTuple):
    """One message and what it was generated as (one of :data:`KINDS`)."""

    kind: str
    key: bytes | None
    value: bytes


def generate_events(
    count: int,
    *,
    users: int = 10_000,
    seed: int = 0,
    dup_ratio: float = 0.0,
    late_ratio: float = 0.0,
    bad_ratio: float = 0.0,
    start_ts: int | None = None,
    rate: float | None = None,
    zipf_s: float = 1.1,
) -> Iterator[tuple[bytes | None, bytes]]:
    """``count`` messages as ``(key, value)`` pairs; see :func:`generate_messages`."""
    messages = generate_messages(
        count,
        users=users,
        seed=seed,
        dup_ratio=dup_ratio,
        late_ratio=late_ratio,
        bad_ratio=bad_ratio,
        start_ts=start_ts,
        rate=rate,
        zipf_s=zipf_s,
    )
    return ((message.key, message.value) for message in messages)


def generate_messages(
    count: int,
    *,
    users: int = 10_000,
    seed: int = 0,
    dup_ratio: float = 0.0,
    late_ratio: float = 0.0,
    bad_ratio: float = 0.0,
    start_ts: int | None = None,
    rate: float | None = None,
    zipf_s: float = 1.1,
) -> Iterator[GeneratedMessage]:
    """``count`` messages, each tagged with its kind.

    Users ``user-1`` .. ``user-<users>`` are picked with Zipf exponent ``zipf_s`` (``user-1``
    most often). Types are 70% page_view, 15% add_to_cart, 10% purchase, 5% refund; money
    events carry a 2-decimal ``amount`` and usually a ``currency``. Event ids are
    ``s<seed>-<index>``, so runs with the same seed repeat ids (and the pipeline will drop
    them as duplicates): use a new seed for a new run into the same topic.

    The generator's clock starts at ``start_ts`` (default :data:`DEFAULT_START_TS`) and
    advances ``1000 / rate`` ms per message (1 ms without a rate). Each message is, with the
    given probabilities, a byte-identical copy of a recent good event (key included), a late
    event 10-15 minutes behind the clock, or an invalid message of one of many sorts;
    otherwise it is a good event up to 5 s behind the clock (never before the start). The key
    is the user id of the event, or of the event a bad message was made from.

    Bad arguments raise :class:`StreamsError` at the call, before any message is made.
    """
    _check_arguments(count, users, seed, dup_ratio, late_ratio, bad_ratio, start_ts, rate, zipf_s)
    return _generate(
        count,
        users=users,
        seed=seed,
        dup_ratio=dup_ratio,
        late_ratio=late_ratio,
        bad_ratio=bad_ratio,
        start_ts=start_ts,
        rate=rate,
        zipf_s=zipf_s,
    )


def _generate(
    count: int,
    *,
    users: int,
    seed: int,
    dup_ratio: float,
    late_ratio: float,
    bad_ratio: float,
    start_ts: int | None,
    rate: float | None,
    zipf_s: float,
) -> Iterator[GeneratedMessage]:
    rng = random.Random(seed)
    uniform = rng.random
    cumulative = list(itertools.accumulate(1.0 / rank**zipf_s for rank in range(1, users + 1)))
    total = cumulative[-1]
    base = DEFAULT_START_TS if start_ts is None else start_ts
    step = 1.0 if rate is None else 1000.0 / rate
    bad_below = bad_ratio
    dup_below = bad_below + dup_ratio
    late_below = dup_below + late_ratio
    pool: list[GeneratedMessage] = []
    good_count = 0

    def event(index: int, now: int, late: bool = False) -> dict[str, Any]:
        if late:
            ts = max(0, now - LATE_BY_MS - int(uniform() * LATE_SPREAD_MS))
        else:
            # Inlined expovariate: this runs for nearly every message.
            delay = int(-MEAN_DELAY_MS * log(1.0 - uniform()))
            ts = max(base, now - (delay if delay < MAX_DELAY_MS else MAX_DELAY_MS))
        user = bisect_left(cumulative, uniform() * total) + 1
        kind = EVENT_TYPES[bisect_left(_TYPE_WEIGHTS, uniform())]
        out: dict[str, Any] = {
            "event_id": f"s{seed}-{index}",
            "type": kind,
            "user_id": f"user-{user}",
            "ts": ts,
        }
        if kind in _MONEY:
            out["amount"] = round(rng.lognormvariate(3.0, 1.0), 2)
            if uniform() < 0.9:
                out["currency"] = _CURRENCIES[int(uniform() * len(_CURRENCIES))]
        if uniform() < 0.8:
            if kind == "page_view":
                out["props"] = {"page": f"/p/{int(uniform() * 1000)}"}
            elif kind == "add_to_cart":
                out["props"] = {
                    "sku": f"SKU-{int(uniform() * 5000)}",
                    "qty": 1 + int(uniform() * 3),
                }
            else:
                out["props"] = {"items": 1 + int(uniform() * 5)}
        return out

    for index in range(count):
        now = base + int(index * step)
        draw = uniform()
        if draw < bad_below:
            fields = event(index, now)
            key = fields["user_id"].encode()
            yield GeneratedMessage(
                BAD, key, _BREAKERS[int(uniform() * len(_BREAKERS))](rng, fields)
            )
        elif dup_below <= draw < late_below:
            fields = event(index, now, late=True)
            yield GeneratedMessage(LATE, fields["user_id"].encode(), orjson.dumps(fields))
        elif draw < dup_below and pool:
            original = pool[int(uniform() * len(pool))]
            yield GeneratedMessage(DUPLICATE, original.key, original.value)
        else:
            # Also the fallback for a duplicate drawn before there is anything to repeat.
            fields = event(index, now)
            message = GeneratedMessage(GOOD, fields["user_id"].encode(), orjson.dumps(fields))
            if good_count < DUPLICATE_POOL:
                pool.append(message)
            else:
                pool[good_count % DUPLICATE_POOL] = message
            good_count += 1
            yield message


def paced(
    items: Iterable[T],
    rate: float,
    *,
    before_sleep: Callable[[], object] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[T]:
    """Yield ``items`` at ``rate`` per second on average, calling ``before_sleep`` before each
    pause (e.g. to flush output). After a stall it catches up rather than losing throughput.
    """
    start = clock()
    for index, item in enumerate(items):
        delay = start + index / rate - clock()
        if delay > 0:
            if before_sleep is not None:
                before_sleep()
            sleep(delay)
        yield item


def _check_arguments(
    count: int,
    users: int,
    seed: int,
    dup_ratio: float,
    late_ratio: float,
    bad_ratio: float,
    start_ts: int | None,
    rate: float | None,
    zipf_s: float,
) -> None:
    if count < 0:
        raise StreamsError(f"count={count} is negative; ask for 0 or more events")
    if users < 1:
        raise StreamsError(f"users={users} is below 1; ask for at least one user")
    if not 0 <= seed <= MAX_SEED:
        raise StreamsError(f"seed={seed} is outside 0..{MAX_SEED}; pick a seed in that range")
    for name, ratio in (("dup", dup_ratio), ("late", late_ratio), ("bad", bad_ratio)):
        if not 0.0 <= ratio <= 1.0:
            raise StreamsError(f"{name} ratio {ratio} is outside 0..1; give a fraction")
    if dup_ratio + late_ratio + bad_ratio > 1.0:
        raise StreamsError(
            f"dup + late + bad ratios add up to {dup_ratio + late_ratio + bad_ratio:g}, "
            "more than 1; lower them"
        )
    if start_ts is not None and start_ts < 0:
        raise StreamsError(f"start_ts={start_ts} is negative; give epoch milliseconds")
    if rate is not None and not rate > 0:
        raise StreamsError(f"rate={rate} is not positive; give events per second above 0")
    if not zipf_s >= 0:
        raise StreamsError(f"zipf_s={zipf_s} is negative; use 0 (uniform) or more (skewed)")


# Ways to break an event. Each takes the RNG and a good event's fields (which it may
# mutate) and returns message bytes that event schema v1 rejects, without any b"\n" so
# that JSON Lines output keeps one message per line.


def _truncated(rng: random.Random, fields: dict[str, Any]) -> bytes:
    # No proper prefix of a JSON object is a JSON document. The empty prefix is left out:
    # JSON Lines readers skip blank lines, so it would never reach the topic.
    value = orjson.dumps(fields)
    return value[: rng.randrange(1, len(value))]


def _not_utf8(rng: random.Random, fields: dict[str, Any]) -> bytes:
    # Latin-1 "é" and a lone continuation byte: both invalid UTF-8.
    return orjson.dumps(fields).replace(
        b'"user_id":"', rng.choice((b'"user_id":"caf\xe9', b'"user_id":"\x80')), 1
    )


def _not_an_object(rng: random.Random, fields: dict[str, Any]) -> bytes:
    return rng.choice(
        (b"[]", b"null", b"42", b"true", b'"page_view"', b"[" + orjson.dumps(fields) + b"]")
    )


def _missing_field(rng: random.Random, fields: dict[str, Any]) -> bytes:
    del fields[rng.choice(REQUIRED)]
    return orjson.dumps(fields)


def _wrong_type(rng: random.Random, fields: dict[str, Any]) -> bytes:
    name, value = rng.choice(
        (
            ("ts", str(fields["ts"])),
            ("ts", True),
            ("ts", fields["ts"] + 0.5),
            ("user_id", 12345),
            ("event_id", None),
            ("type", ["purchase"]),
            ("amount", "19.99"),
            ("amount", False),
            ("props", ["page", "/"]),
        )
    )
    fields[name] = value
    return orjson.dumps(fields)


def _negative_ts(rng: random.Random, fields: dict[str, Any]) -> bytes:
    fields["ts"] = -rng.randrange(1, 10**13)
    return orjson.dumps(fields)


def _unknown_type(rng: random.Random, fields: dict[str, Any]) -> bytes:
    fields["type"] = rng.choice(("click", "PageView", "", "purchase "))
    return orjson.dumps(fields)


def _money_without_amount(rng: random.Random, fields: dict[str, Any]) -> bytes:
    fields["type"] = rng.choice(MONEY_TYPES)
    fields.pop("amount", None)
    return orjson.dumps(fields)


def _negative_amount(rng: random.Random, fields: dict[str, Any]) -> bytes:
    # The extra cent keeps a tiny amount from rounding to -0.0, which is >= 0.
    fields["amount"] = -round(rng.lognormvariate(3.0, 1.0) + 0.01, 2)
    return orjson.dumps(fields)


def _bad_currency(rng: random.Random, fields: dict[str, Any]) -> bytes:
    fields["currency"] = rng.choice(("usd", "US", "EURO", "€€€", "", 978))
    return orjson.dumps(fields)


def _huge_string(rng: random.Random, fields: dict[str, Any]) -> bytes:
    if rng.random() < 0.5:
        fields["event_id"] = "e" * rng.randrange(65, 5_000)
    else:
        fields["user_id"] = "u" * rng.randrange(129, 50_000)
    return orjson.dumps(fields)


def _non_finite_number(rng: random.Random, fields: dict[str, Any]) -> bytes:
    # Literals JSON does not allow (or that overflow a double) but some encoders emit.
    literal = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"1e999"))
    return orjson.dumps(fields)[:-1] + b',"amount":' + literal + b"}"


def _deeply_nested(rng: random.Random, fields: dict[str, Any]) -> bytes:
    depth = rng.randrange(1_100, 3_000)
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    fields.pop("props", None)
    return orjson.dumps(fields)[:-1] + b',"props":' + nested + b"}"


_BREAKERS: tuple[Callable[[random.Random, dict[str, Any]], bytes], ...] = (
    _truncated,
    _not_utf8,
    _not_an_object,
    _missing_field,
    _wrong_type,
    _negative_ts,
    _unknown_type,
    _money_without_amount,
    _negative_amount,
    _bad_currency,
    _huge_string,
    _non_finite_number,
    _deeply_nested,
)
