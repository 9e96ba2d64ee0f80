"""The built-in aggregations of ``.aggregate(...)``, and what a custom aggregator must offer.

Each built-in is a small declaration (a kind and a field); the core turns them into inline
code. A custom aggregator is any object with ``initial()``, ``add(acc, value)`` and
``result(acc)`` (and ``merge(acc1, acc2)`` for session windows): ``add`` and ``merge`` return
the new accumulator (returning ``None`` means "changed ``acc`` in place"), and the
accumulator must survive a JSON round trip, because it lives in the changelog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from streams.errors import DeclarationError


@dataclass(frozen=True)
class Builtin:
    """A built-in aggregation over ``field`` (``None`` for :class:`Count`)."""

    field: str | None = None
    kind: ClassVar[str] = ""

    def describe(self) -> str:
        """How the declaration reads, for messages and fingerprints."""
        return f"{type(self).__name__}({'' if self.field is None else repr(self.field)})"


class _OverField(Builtin):
    """A built-in that reads one field of each event."""

    def __init__(self, field: str) -> None:
        if not isinstance(field, str) or not field:
            raise DeclarationError(
                f"{type(self).__name__}(field) needs a field name, got {field!r}"
            )
        object.__setattr__(self, "field", field)


@dataclass(frozen=True, init=False)
class Count(Builtin):
    """Number of events in the window."""

    kind: ClassVar[str] = "count"

    def __init__(self) -> None:
        object.__setattr__(self, "field", None)


@dataclass(frozen=True, init=False)
class Sum(_OverField):
    """Sum of ``field`` as a float; events without it (or with null) add 0."""

    kind: ClassVar[str] = "sum"


@dataclass(frozen=True, init=False)
class Mean(_OverField):
    """Mean of ``field`` over the events where it is present and not null; null if none."""

    kind: ClassVar[str] = "mean"


@dataclass(frozen=True, init=False)
class Min(_OverField):
    """Smallest ``field`` (a number, as a float) over the events that have it; null if none."""

    kind: ClassVar[str] = "min"


@dataclass(frozen=True, init=False)
class Max(_OverField):
    """Largest ``field`` (a number, as a float) over the events that have it; null if none."""

    kind: ClassVar[str] = "max"


@dataclass(frozen=True, init=False)
class First(_OverField):
    """``field`` of the earliest event by event time (ties: lowest offset); null if none."""

    kind: ClassVar[str] = "first"


@dataclass(frozen=True, init=False)
class Last(_OverField):
    """``field`` of the latest event by event time (ties: highest offset); null if none."""

    kind: ClassVar[str] = "last"


@dataclass(frozen=True, init=False)
class CountDistinct(_OverField):
    """Exact number of distinct values of ``field`` (where present and not null)."""

    kind: ClassVar[str] = "count_distinct"


BUILTINS: tuple[type[Builtin], ...] = (Count, Sum, Mean, Min, Max, First, Last, CountDistinct)


def is_builtin(aggregation: object) -> bool:
    """True for the built-ins above, False for a custom aggregator."""
    return isinstance(aggregation, Builtin)


def describe(aggregation: object) -> str:
    """A stable text for a built-in or custom aggregation (fingerprints, messages)."""
    if isinstance(aggregation, Builtin):
        return aggregation.describe()
    cls = type(aggregation)
    return f"custom {cls.__module__}.{cls.__qualname__}"


def check_custom(name: str, aggregator: Any, *, sessions: bool) -> None:
    """Raise :class:`DeclarationError` unless ``aggregator`` can be used as a custom one."""
    needed = ["initial", "add", "result"] + (["merge"] if sessions else [])
    missing = [method for method in needed if not callable(getattr(aggregator, method, None))]
    if missing:
        why = " (session windows merge sessions)" if "merge" in missing else ""
        raise DeclarationError(
            f"aggregation {name}={describe(aggregator)} has no {', '.join(missing)}() "
            f"method{why}; a custom aggregator needs {', '.join(needed)}()"
        )
    try:
        initial = aggregator.initial()
    except Exception as exc:
        raise DeclarationError(f"aggregation {name}: initial() raised {exc!r}") from None
    try:
        orjson.dumps(initial)
    except TypeError:
        raise DeclarationError(
            f"aggregation {name}: initial() returned {initial!r}, which is not JSON; "
            "the accumulator lives in the changelog: use lists, dicts, numbers and strings"
        ) from None
