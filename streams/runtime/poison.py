"""Outputs the broker refused for good, remembered until the replay that diverts them.

When the broker refuses a batch of outputs for good (an ACL, an invalid record), the worker
replays the batch from its last written state and the replay sends each record refused
that way to its pipeline's dead-letter topic instead (decision 0010). :class:`KnownPoison`
is what the replay looks them up in: each entry counts how many times the refused batch
held the record and diverts that many, then is gone. An entry whose replay never comes (its
partition moved to another worker, or the replay produced something else) stays until the
byte budget pushes it out, oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass

# Key and value bytes the entries may hold in all; a backstop, not a working limit: the
# entries of one refused batch are diverted by its replay, then dropped.
MAX_BYTES = 64 * 1024 * 1024
# What an entry costs besides its key and value (the tuple, the list, the dict slot).
ENTRY_OVERHEAD = 200

PoisonKey = tuple[str, bytes | None, bytes | None]


@dataclass(slots=True)
class Entry:
    """Why the broker refused an output, and how many more of it the replay diverts."""

    reason: str
    left: int


class KnownPoison(dict[PoisonKey, Entry]):
    """``(topic, key, value)`` of each output refused for good → its :class:`Entry`.

    A dict, so that the hot path's ``if poison:`` costs what it did while it is empty.
    """

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.bytes = 0

    def learn(self, topic: str, key: bytes | None, value: bytes | None, reason: str) -> None:
        """The broker refused this output for good (once more, if it is known already)."""
        entry = self.get((topic, key, value))
        if entry is not None:
            entry.left += 1
            return
        self[(topic, key, value)] = Entry(reason, 1)
        self.bytes += _size(key, value)
        while self.bytes > self.max_bytes and len(self) > 1:
            # The newest entry stays whatever it weighs: its replay is the next one.
            oldest = next(iter(self))
            del self[oldest]
            self.bytes -= _size(oldest[1], oldest[2])

    def divert(self, topic: str, key: bytes | None, value: bytes | None) -> str | None:
        """The broker's reason if this output is poison (one fewer left to divert), else
        None."""
        entry = self.get((topic, key, value))
        if entry is None:
            return None
        entry.left -= 1
        if not entry.left:
            del self[(topic, key, value)]
            self.bytes -= _size(key, value)
        return entry.reason


def _size(key: bytes | None, value: bytes | None) -> int:
    return ENTRY_OVERHEAD + len(key or b"") + len(value or b"")
