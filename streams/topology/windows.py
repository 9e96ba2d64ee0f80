"""Window specifications: tumbling, hopping, session and sliding windows, as plain values."""

from __future__ import annotations

from dataclasses import dataclass

from streams.errors import DeclarationError


@dataclass(frozen=True)
class Hopping:
    """Windows of ``size_ms`` starting every ``step_ms``, aligned to the epoch.

    ``step_ms == size_ms`` is a tumbling window: ``window_start = ts - ts % size``.
    """

    size_ms: int
    step_ms: int

    def __post_init__(self) -> None:
        _whole("window size", self.size_ms, 1)
        _whole("window step", self.step_ms, 1)
        if self.step_ms > self.size_ms:
            raise DeclarationError(
                f"hopping window step {self.step_ms} ms is larger than its size "
                f"{self.size_ms} ms; use a step between 1 ms and the size"
            )

    @property
    def kind(self) -> str:
        """``tumbling`` or ``hopping``."""
        return "tumbling" if self.step_ms == self.size_ms else "hopping"

    def describe(self) -> str:
        """How the declaration reads, for messages and fingerprints."""
        if self.kind == "tumbling":
            return f"tumbling({self.size_ms})"
        return f"hopping({self.size_ms}, {self.step_ms})"


@dataclass(frozen=True)
class Session:
    """Per key, events less than ``gap_ms`` apart in event time form one session."""

    gap_ms: int

    def __post_init__(self) -> None:
        _whole("session gap", self.gap_ms, 1)

    kind = "session"

    def describe(self) -> str:
        """How the declaration reads, for messages and fingerprints."""
        return f"session({self.gap_ms})"


@dataclass(frozen=True)
class Sliding:
    """Per key, one window for each distinct event time ``t`` of an accepted event: the key's
    events in ``(t - size_ms, t]`` (decision 0018)."""

    size_ms: int

    def __post_init__(self) -> None:
        _whole("sliding window size", self.size_ms, 1)

    kind = "sliding"

    def describe(self) -> str:
        """How the declaration reads, for messages and fingerprints."""
        return f"sliding({self.size_ms})"


WindowSpec = Hopping | Session | Sliding


def _whole(what: str, value: object, minimum: int) -> None:
    if type(value) is not int or value < minimum:
        raise DeclarationError(
            f"{what} must be an integer number of ms >= {minimum}, got {value!r}"
        )
