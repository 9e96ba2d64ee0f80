"""A :class:`~streams.core.spill.KeyValueStore` in a dict, for property tests of the spilled
state: RocksDB's semantics (byte order, one atomic write of range deletes then puts and
deletes) at a dict's speed. Tests that need RocksDB itself open a
:class:`~streams.state.rocks.RocksStore`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence


class DictStore:
    """Byte keys and values in a dict; a scan sees the store as it was when it began."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.writes = 0

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self.data.get(key) for key in keys]

    def scan(self, begin: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted((k, v) for k, v in self.data.items() if begin <= k < end))

    def write(
        self, deleted_ranges: Sequence[tuple[bytes, bytes]], changes: Mapping[bytes, bytes | None]
    ) -> None:
        self.writes += 1
        data = self.data
        for begin, end in deleted_ranges:
            for key in [key for key in data if begin <= key < end]:
                del data[key]
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = bytes(value)
