"""``.process``: the user's stateful processor on one partition — per-key state, event-time
timers, a TTL — and the ``state`` object its functions get.

Values are kept as their JSON bytes (``state.set`` encodes, ``state.get`` decodes a fresh
copy), so a value is JSON when it is set, a caller can never change stored state behind the
operator's back, and the changelog record of a key is one orjson call over bytes already
made. A call's changes are staged in the :class:`State` and applied only when it returns
what it may (atomic per call); a raise, a bad return or a bad use of ``state`` leaves no
trace.

Timers live per key and in one heap per partition ordered by ``at_ms``: firing one costs
O(log n), whatever the number of keys. A heap entry is one int, ``at_ms`` and the generation
of the timer it was pushed for (the generation names its key in a dict): ints are no work
for the garbage collector, which would otherwise walk a tuple per pending timer once, and
its key once more per change, in a young collection. Cancelled or cleared timers stay in
the heap and are skipped when popped, and so is an entry whose timer was cleared and set
again (it has a newer one). A firing round fires every timer due at the operator's stream
time, in ``(at_ms, key)`` order (the keys of one ``at_ms`` are sorted when it fires); a
timer call may cancel or clear its key's timers at once, but a timer it sets (a cleared one
set again included) is pushed after the round, so it fires at the next event or idle tick:
a timer that re-arms itself cannot loop. With ``ttl_ms`` the keys are kept in order of
their last touch (stream time only grows, so that is also the order of expiry): each call
touches its key, and after each round the keys untouched for ``ttl_ms`` are forgotten,
timers included.

Changelog records (decision 0015): ``p<n>:<key>`` -> ``{"s": {name: value}, "t": [at_ms,
...], "u": last touch}`` (timers in order; ``u`` only with a TTL; a tombstone when the key
holds nothing). A key with more than ``INLINE_TIMERS`` timers has ``"T": 1`` instead of
``t``, and its timers in bucket records ``P<n>:<bucket>:<key>`` -> ``[at_ms, ...]`` (in
order), one per ``TIMER_BUCKET_MS`` of ``at_ms`` (``bucket = at_ms // TIMER_BUCKET_MS``), a
tombstone once empty, until it is down to ``INLINE_AGAIN``: a busy key with thousands of
pending timers rewrites the buckets a drain changed, not all of them. Timer records come
before key records in a drain. ``q<n>:`` -> the operator's ``[stream time, stream time at
the last activity]``.

With ``STREAMS_STORE=rocksdb`` the keys live in the task's store instead of ``keys``
(:mod:`streams.core.spilled_process`); the records are the same.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from streams.core.failures import USER_ERRORS, Site, reason
from streams.core.jsonbytes import dumps
from streams.core.outcome import Item, Outcome
from streams.core.streamtime import NO_TIME

_loads = orjson.loads
_DELETED = object()
_NO_VALUE = object()


_NAMES: dict[str, bytes] = {}
_dumps = orjson.dumps

# A heap entry: ``at_ms << _GEN_BITS | generation``. Generations count timers pushed, modulo
# 2**40: two pending timers share one only after a trillion pushes.
_GEN_BITS = 40
_GEN_MASK = (1 << _GEN_BITS) - 1
# A timer's change since the last drain: set (its record was never written, or was deleted),
# set again (after a change that deleted its record), gone.
# A key's timers are in its record up to this many; past it they go to records of their
# own, one per TIMER_BUCKET_MS of at_ms, until they are down to INLINE_AGAIN: a busy key
# rewrites the buckets a drain changed, not thousands of timers, nor a record per timer.
INLINE_TIMERS = 32
# The largest timer (a Kafka timestamp's range, int64): its changelog records are orjson's.
MAX_TIMER = 2**63 - 1
INLINE_AGAIN = 8
TIMER_BUCKET_MS = 1000


def _name(name: str) -> bytes:
    """``"name":`` as JSON bytes (a state holds few distinct names: kept once made)."""
    encoded = _NAMES.get(name)
    if encoded is None:
        encoded = orjson.dumps(name) + b":"
        if len(_NAMES) < 10_000:
            _NAMES[name] = encoded
    return encoded


class StateUseError(ValueError):
    """A function used ``state`` in a way it may not (a value that is not JSON, a timer that
    is not an integer >= 0, a timer with no ``on_timer``): the call fails whatever the
    function does with this exception."""


class KeyState:
    """What one key holds: values (name -> JSON bytes), pending timers (at_ms -> the
    generation of its heap entry), last touch, and whether its timers have records of
    their own (``split``: more than ``INLINE_TIMERS`` of them; ``buckets`` has them by
    ``at_ms // TIMER_BUCKET_MS``, a record each) or are in its record."""

    __slots__ = ("buckets", "split", "timers", "touched", "values")

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.timers: dict[int, int] = {}
        self.touched = NO_TIME
        self.split = False
        self.buckets: dict[int, set[int]] | None = None

    def __bool__(self) -> bool:
        return bool(self.values or self.timers)

    def encode(self, with_touch: bool) -> bytes:
        """The key's changelog value: the JSON of ``{"s": {name: value}, "t": [at_ms, ...],
        "u": touch}``, joined from the values' bytes; ``"T": 1`` instead of ``t`` when its
        timers have records of their own."""
        values = self.values
        if len(values) == 1:  # the common case: one join less
            [(name, value)] = values.items()
            body = _name(name) + value
        else:
            body = b",".join([_name(name) + v for name, v in values.items()])
        if self.split:
            timers = b',"T":1'
        elif self.timers:
            # In order: the same timers make the same bytes, however they came to be held.
            timers = b',"t":' + _dumps(sorted(self.timers))
        else:
            timers = b""
        if with_touch:
            return b'{"s":{%b}%b,"u":%d}' % (body, timers, self.touched)
        return b'{"s":{%b}%b}' % (body, timers)

    def decode(self, value: bytes) -> None:
        """Take a changelog value (see :meth:`encode`): a key whose timers are in its record
        has exactly those; a split key the ones its bucket records gave it."""
        record = _loads(value)
        self.values = {name: dumps(v) for name, v in record["s"].items()}
        self.touched = record.get("u", NO_TIME)
        self.split = "T" in record
        if self.split:  # exactly the timers of its bucket records (read before, or after)
            if self.buckets is None:
                self.buckets = {}
            self.timers = {at: 0 for ats in self.buckets.values() for at in ats}
        else:
            self.timers = dict.fromkeys(record.get("t", ()), 0)
            self.buckets = None


class State:
    """The state of one key for one call of ``fn`` or ``on_timer`` (see the module doc).

    ``get(name, default=None)``, ``set(name, value)``, ``delete(name)``, ``clear()`` (every
    name and timer of the key), ``timer(at_ms)`` (one timer per ``at_ms``), ``cancel(at_ms)``;
    ``key`` is the key.
    """

    __slots__ = ("_bad", "_cleared", "_held", "_key", "_timed", "_timers", "_writes")

    def __init__(self, timed: bool) -> None:
        self._timed = timed
        self._key: str | None = None
        self._held: KeyState | None = None
        self._writes: dict[str, Any] = {}
        self._timers: dict[int, bool] = {}  # at_ms -> set (True) or cancelled (False)
        self._cleared = False
        self._bad: str | None = None

    def _bind(self, key: str | None, held: KeyState | None) -> None:
        self._key = key
        self._held = held
        if self._writes:
            self._writes = {}
        if self._timers:
            self._timers = {}
        self._cleared = False
        self._bad = None

    @property
    def key(self) -> str | None:
        """The key this state belongs to."""
        return self._key

    def get(self, name: str, default: Any = None) -> Any:
        """The value of ``name`` (a fresh copy), or ``default``."""
        if self._writes:
            staged = self._writes.get(name, _NO_VALUE)
            if staged is not _NO_VALUE:
                return default if staged is _DELETED else _loads(staged)
        held = self._held
        if held is None or self._cleared:
            return default
        value = held.values.get(name)
        return default if value is None else _loads(value)

    def set(self, name: str, value: Any) -> None:
        """Set ``name`` to ``value``, which must be JSON (it lives in the changelog)."""
        if name.__class__ is not str:
            self._refuse(f"state.set(name, ...) needs a string name, got {name!r}")
        try:
            self._writes[name] = dumps(value)
        except USER_ERRORS as exc:
            self._refuse(
                f"state.set({name!r}, ...): the value is not JSON-serialisable ({reason(exc)})"
            )

    def delete(self, name: str) -> None:
        """Forget ``name``."""
        self._writes[name] = _DELETED

    def clear(self) -> None:
        """Forget every name and timer of the key."""
        self._cleared = True
        self._writes = {}
        self._timers = {}

    def timer(self, at_ms: int) -> None:
        """Call ``on_timer(key, state, at_ms)`` once stream time reaches ``at_ms``."""
        if at_ms.__class__ is not int or not 0 <= at_ms <= MAX_TIMER:
            self._refuse_time("timer", at_ms)
        if not self._timed:
            self._refuse(
                f"state.timer({at_ms}) in a .process without on_timer: declare "
                ".process(fn, on_timer=...) to use timers"
            )
        self._timers[at_ms] = True

    def cancel(self, at_ms: int) -> None:
        """Cancel the key's timer at ``at_ms`` (if any)."""
        if at_ms.__class__ is not int or not 0 <= at_ms <= MAX_TIMER:
            self._refuse_time("cancel", at_ms)
        self._timers[at_ms] = False

    def timers(self) -> list[int]:
        """The key's pending timers, as this call would leave them."""
        held = self._held
        pending: set[int] = set() if held is None or self._cleared else set(held.timers)
        for at, on in self._timers.items():
            if on:
                pending.add(at)
            else:
                pending.discard(at)
        return sorted(pending)

    def _refuse_time(self, what: str, at_ms: Any) -> None:
        """Refuse ``at_ms``, which the caller found is not a timer, saying why."""
        if at_ms.__class__ is not int or at_ms < 0:
            self._refuse(
                f"state.{what}({at_ms!r}): a timer is an integer >= 0 (epoch ms of event time)"
            )
        # Above a Kafka timestamp's range: it would not survive the changelog.
        self._refuse(f"state.{what}({at_ms!r}): a timer is at most 2**63 - 1 (epoch ms)")

    def _refuse(self, why: str) -> None:
        if self._bad is None:
            self._bad = why
        raise StateUseError(why)

    def __repr__(self) -> str:
        return f"State(key={self._key!r})"


def _touch_then_key(item: tuple[int, str, KeyState]) -> tuple[int, str]:
    return item[0], item[1]


def _not_emittable(what: str, returned: Any) -> str:
    return f"{what} must return None, a dict or a list of dicts, got {type(returned).__name__}"


def _emitted(returned: Any) -> list[Any] | None:
    """What a call returned, as the values to emit; None when it may not be emitted."""
    if returned is None:
        return []
    if returned.__class__ is dict or isinstance(returned, dict):
        return [returned]
    if isinstance(returned, list) and all(
        x.__class__ is dict or isinstance(x, dict) for x in returned
    ):
        return returned
    return None


class ProcessState:
    """One ``.process`` operator on one partition: its keys, timers, stream time and the
    keys changed since the last changelog drain."""

    def __init__(
        self,
        fn: Callable[..., Any],
        on_timer: Callable[..., Any] | None,
        ttl_ms: int | None,
        tag: bytes,
        site: Site,
        timer_site: Site,
    ) -> None:
        self.fn = fn
        self.on_timer = on_timer
        self.ttl_ms = ttl_ms
        self.tag = tag
        self.site = site
        self.timer_site = timer_site
        self.keys: dict[str, KeyState] = OrderedDict() if ttl_ms is not None else {}
        self.heap: list[int] = []  # at_ms << _GEN_BITS | generation
        self.timer_keys: dict[int, str] = {}  # generation -> key, for the entries in the heap
        self.generation = 0  # of the last timer pushed
        self.pending = 0  # timers held
        self.stream_time = NO_TIME
        self.at_last_activity = NO_TIME
        # Since the last drain: keys whose record changed; each timer bucket changed (of
        # split keys), as (key, bucket).
        self.changed: dict[str, None] = {}
        self.timer_changes: dict[tuple[str, int], None] = {}
        self.timer_tag = b"P" + tag[1:]
        self.state = State(on_timer is not None)

    def __len__(self) -> int:
        return len(self.keys)

    # -- a chunk's items ---------------------------------------------------------------

    def run(self, items: list[Item], out: Outcome) -> list[Item]:
        """Call ``fn`` for each item in order, firing due timers after each; returns what
        the calls emitted, in order (timers' values with their key and ``at_ms``)."""
        fn = self.fn
        state = self.state
        bind = state._bind
        get = self.keys.get
        commit = self._commit
        heap = self.heap
        ttl = self.ttl_ms is not None
        site = self.site
        dead = out.dead
        emitted: list[Item] = []
        append = emitted.append
        st = self.stream_time
        for i, v, k, t in items:
            if k is None:  # a repartitioned record that lost its key
                site.bad(dead, i, "the event has no key to keep state by")
                continue
            held = get(k)
            bind(k, held)
            try:
                returned = fn(v, state)
            except USER_ERRORS as exc:
                site.fail(dead, i, exc)
                continue
            if state._bad is not None:
                site.bad(dead, i, state._bad)
                continue
            if returned is not None:
                values = _emitted(returned)
                if values is None:
                    site.bad(dead, i, _not_emittable("process", returned))
                    continue
                for value in values:
                    append((i, value, k, t))
            if t > st:
                st = t
            commit(k, held, st, heap)
            if heap and heap[0] >> _GEN_BITS <= st:
                self._fire(st, emitted, out)
            if ttl:
                self._expire(st)
        self.stream_time = st
        return emitted

    def advance(self, target: int, out: Outcome) -> list[Item]:
        """Stream time moves to ``target`` (idle advance): fire what is due, expire."""
        emitted: list[Item] = []
        if target <= self.stream_time:
            return emitted
        self.stream_time = target
        if self.heap and self.heap[0] >> _GEN_BITS <= target:
            self._fire(target, emitted, out)
        if self.ttl_ms is not None:
            self._expire(target)
        return emitted

    # -- inside ------------------------------------------------------------------------

    def _commit(self, key: str, held: KeyState | None, st: int, heap: list[int]) -> None:
        """Apply the bound call's staged changes to ``key`` and touch it; timers it set go
        on ``heap``."""
        state = self.state
        writes = state._writes
        timers = state._timers
        cleared = state._cleared
        if held is None:
            if not writes and not timers:
                return  # nothing held, nothing to hold: no entry to touch
            held = self.keys[key] = KeyState()
        elif self.ttl_ms is not None:
            self.keys.move_to_end(key)  # type: ignore[attr-defined]
        elif not writes and not timers and not cleared:
            held.touched = st
            return  # a call that changed nothing
        held.touched = st
        if self.ttl_ms is not None or writes or cleared or (timers and not held.split):
            # its values changed, its timers (in its record), or its touch (decides expiry)
            self.changed[key] = None
        if cleared:
            held.values.clear()
            self._drop_timers(key, held)
        if writes:
            values = held.values
            for name, value in writes.items():
                if value is _DELETED:
                    values.pop(name, None)
                else:
                    values[name] = value
        if timers:
            mine = held.timers
            split = held.split
            for at, on in timers.items():
                if on:
                    if at not in mine:
                        generation = self.generation = (self.generation + 1) & _GEN_MASK
                        mine[at] = generation
                        self.pending += 1
                        self.timer_keys[generation] = key
                        heapq.heappush(heap, at << _GEN_BITS | generation)
                        if split:
                            self._timer_set(key, held, at)
                elif at in mine:
                    del mine[at]
                    self.pending -= 1
                    if split:
                        self._timer_gone(key, held, at)
            if split != (len(mine) > (INLINE_AGAIN if split else INLINE_TIMERS)):
                self._resplit(key, held)
        if not held.values and not held.timers:
            del self.keys[key]
            self.changed[key] = None

    def _timer_set(self, key: str, held: KeyState, at: int) -> None:
        """A split key's new timer, in its bucket."""
        assert held.buckets is not None
        bucket = at // TIMER_BUCKET_MS
        ats = held.buckets.get(bucket)
        if ats is None:
            held.buckets[bucket] = {at}
        else:
            ats.add(at)
        self.timer_changes[key, bucket] = None

    def _timer_gone(self, key: str, held: KeyState, at: int) -> None:
        """A split key's timer gone from its bucket."""
        assert held.buckets is not None
        bucket = at // TIMER_BUCKET_MS
        ats = held.buckets[bucket]
        ats.discard(at)
        if not ats:
            del held.buckets[bucket]
        self.timer_changes[key, bucket] = None

    def _unsplit(self, key: str, held: KeyState) -> None:
        """A split key's timers back in its record: its bucket records become tombstones."""
        assert held.buckets is not None
        for bucket in sorted(held.buckets):
            self.timer_changes[key, bucket] = None
        held.split = False
        held.buckets = None
        self.changed[key] = None

    def _resplit(self, key: str, held: KeyState) -> None:
        """Move a key's timers to bucket records of their own, or back into its record."""
        if held.split:
            self._unsplit(key, held)
            return
        held.split = True
        held.buckets = {}
        for at in sorted(held.timers):
            self._timer_set(key, held, at)
        self.changed[key] = None

    def _drop_timers(self, key: str, held: KeyState) -> None:
        if held.split:
            self._unsplit(key, held)
        self.changed[key] = None
        self.pending -= len(held.timers)
        held.timers.clear()

    def _fire(self, st: int, emitted: list[Item], out: Outcome) -> None:
        """Fire every timer due at ``st`` in ``(at_ms, key)`` order (one loop: a timer is
        as common as an event)."""
        on_timer = self.on_timer
        assert on_timer is not None
        heap = self.heap
        timer_keys = self.timer_keys
        keys = self.keys
        state = self.state
        bind = state._bind
        changed = self.changed
        ttl = self.ttl_ms is not None
        later: list[int] = []
        fired = 0
        pop = heapq.heappop
        due: list[tuple[str, int]] | tuple[tuple[str, int]]
        while heap:
            at = heap[0] >> _GEN_BITS
            if at > st:
                break
            generation = pop(heap) & _GEN_MASK
            if heap and heap[0] >> _GEN_BITS == at:  # more keys at this at_ms: in key order
                due = [(timer_keys.pop(generation), generation)]
                while heap and heap[0] >> _GEN_BITS == at:
                    generation = pop(heap) & _GEN_MASK
                    due.append((timer_keys.pop(generation), generation))
                due.sort()
            else:  # the common case: one timer at this at_ms
                due = ((timer_keys.pop(generation), generation),)
            for key, generation in due:
                held = keys.get(key)
                if held is None or held.timers.get(at) != generation:
                    continue  # cancelled, cleared or expired (or set again) since pushed
                del held.timers[at]
                fired += 1
                if held.split:
                    self._timer_gone(key, held, at)
                else:
                    changed[key] = None
                bind(key, held)
                try:
                    returned = on_timer(key, state, at)
                except USER_ERRORS as exc:
                    self._timer_failed(key, held, at, out, reason(exc), exc)
                    continue
                values = None if returned is None else _emitted(returned)
                if state._bad is not None:
                    self._timer_failed(key, held, at, out, state._bad, None)
                    continue
                if values is None and returned is not None:
                    failure = _not_emittable("on_timer", returned)
                    self._timer_failed(key, held, at, out, failure, None)
                    continue
                # Timers set now go in after the round (on the heap they could fire in it).
                if state._writes or state._timers or state._cleared or ttl:
                    self._commit(key, held, st, later)
                else:  # a call that changed nothing (its _commit, short)
                    held.touched = st
                if values:
                    origin = out.origin(key, b'{"timer_ms":%d}' % at)
                    for value in values:
                        emitted.append((origin, value, key, at))
                if not held.values and not held.timers and key in keys:
                    del keys[key]
                    changed[key] = None
        self.pending -= fired
        out.timers_fired += fired
        for entry in later:
            heapq.heappush(heap, entry)

    def _timer_failed(
        self,
        key: str,
        held: KeyState,
        at: int,
        out: Outcome,
        failure: str,
        error: BaseException | None,
    ) -> None:
        """A timer call raised or returned what it may not: its dead letter; none of its
        changes apply (the timer is gone)."""
        origin = out.origin(key, b'{"timer_ms":%d}' % at)
        if error is not None:
            self.timer_site.fail(out.dead, origin, error)
        else:
            self.timer_site.bad(out.dead, origin, failure)
        if not held:
            del self.keys[key]
            self.changed[key] = None

    def _expire(self, st: int) -> None:
        """Forget the keys no call touched for ``ttl_ms`` of stream time (their records in
        ``(touch, key)`` order: the same order whatever order of equal touches the keys are
        held in, after a restore or in a store)."""
        keys = self.keys
        assert self.ttl_ms is not None
        horizon = st - self.ttl_ms
        gone: list[tuple[int, str, KeyState]] = []
        while keys:
            key = next(iter(keys))
            held = keys[key]
            if held.touched > horizon:
                break
            keys.popitem(last=False)  # type: ignore[call-arg]
            gone.append((held.touched, key, held))
        if len(gone) > 1:
            gone.sort(key=_touch_then_key)
        for _, key, held in gone:
            self._drop_timers(key, held)
            self.changed[key] = None

    # -- changelog ---------------------------------------------------------------------

    def drain(self, records: list[tuple[bytes, bytes | None]]) -> None:
        """The changelog records of the keys and timers changed since the last drain: the
        timers' first, so that a key's record (the truth about its timers when they are in
        it) comes after the tombstones of the timer records it takes back."""
        if self.timer_changes:
            records.extend(self.bucket_records())
            self.timer_changes = {}
        tag = self.tag
        get = self.keys.get
        with_touch = self.ttl_ms is not None
        append = records.append
        for key in self.changed:
            held = get(key)
            append((tag + key.encode(), None if held is None else held.encode(with_touch)))
        self.changed = {}

    def bucket_records(self) -> list[tuple[bytes, bytes | None]]:
        """The changelog records of the timer buckets changed since the last drain (in the
        order they first changed)."""
        tag = self.timer_tag
        get = self.keys.get
        records: list[tuple[bytes, bytes | None]] = []
        for key, bucket in self.timer_changes:
            held = get(key)
            ats = None
            if held is not None and held.buckets is not None:
                ats = held.buckets.get(bucket)
            name = b"%b%d:%b" % (tag, bucket, key.encode())
            records.append((name, None if not ats else orjson.dumps(sorted(ats))))
        return records

    @property
    def dirty(self) -> bool:
        """True when changes wait for the next drain."""
        return bool(self.changed or self.timer_changes)

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Restore a key's record (its tag stripped off)."""
        name = key.decode()
        if value is None:
            self.keys.pop(name, None)
            return
        held = self.keys.get(name)
        if held is None:
            held = self.keys[name] = KeyState()
        held.decode(value)

    def apply_timer(self, key: bytes, value: bytes | None) -> None:
        """Restore a split key's timer bucket record (``<bucket>:<key>``, its tag stripped
        off): the bucket's timers become the record's."""
        bucket_text, _, raw = key.partition(b":")
        bucket, name = int(bucket_text), raw.decode()
        held = self.keys.get(name)
        if held is None:
            if value is None:
                return
            held = self.keys[name] = KeyState()
        if held.buckets is None:
            held.buckets = {}
        held.split = True
        for at in held.buckets.pop(bucket, ()):
            held.timers.pop(at, None)
        if value is not None:
            ats = _loads(value)
            held.buckets[bucket] = set(ats)
            for at in ats:
                held.timers[at] = 0  # generations are given at finish_restore
        if not held:
            del self.keys[name]

    def finish_restore(self) -> None:
        """After the last record: the timer heap, the count, the keys in touch order."""
        keys = self.keys
        if self.ttl_ms is not None:
            ordered = sorted(keys.items(), key=lambda item: item[1].touched)
            keys.clear()
            keys.update(ordered)
        heap = []
        timer_keys = self.timer_keys = {}
        for key, held in keys.items():
            for at in held.timers:
                generation = self.generation = (self.generation + 1) & _GEN_MASK
                held.timers[at] = generation
                timer_keys[generation] = key
                heap.append(at << _GEN_BITS | generation)
        heapq.heapify(heap)
        self.heap = heap
        self.pending = len(heap)
        self.changed = {}
        self.timer_changes = {}

    def clear(self) -> None:
        """Forget everything (a changed declaration starts afresh)."""
        self.keys.clear()
        self.heap = []
        self.timer_keys = {}
        self.pending = 0
        self.changed = {}
        self.timer_changes = {}
        self.stream_time = NO_TIME
        self.at_last_activity = NO_TIME

    def snapshot(self, key: str) -> dict[str, Any]:
        """A key's values, decoded (the test driver's ``state``)."""
        held = self.keys.get(key)
        return {} if held is None else {name: _loads(v) for name, v in held.values.items()}

    def timers_of(self, key: str) -> list[int]:
        """A key's pending timers."""
        held = self.keys.get(key)
        return [] if held is None else sorted(held.timers)
