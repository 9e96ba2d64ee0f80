"""A schema registry in memory: the test driver's (no server), with Confluent's id rules."""

from __future__ import annotations

import threading

from streams.errors import UnknownSchemaError


class MemoryRegistry:
    """Ids from 1 up; registering the same schema (type and text) again gives its id back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[int, tuple[str, str]] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self.subjects: dict[str, list[int]] = {}

    def schema(self, schema_id: int) -> tuple[str, str]:
        """``(schema_type, text)`` registered as ``schema_id``."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"schema id {schema_id} is not in the registry") from None

    def register(self, subject: str, schema_type: str, text: str) -> int:
        """The id of ``text`` under ``subject`` (registered now unless it is already)."""
        with self._lock:
            key = (schema_type, text)
            schema_id = self._ids.get(key)
            if schema_id is None:
                schema_id = self._ids[key] = len(self._by_id) + 1
                self._by_id[schema_id] = key
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id

    def check(self) -> None:
        """Always reachable."""
