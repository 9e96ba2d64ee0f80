"""A task's checkpoint file: which changelog offset its RocksDB store reflects.

Kafka Streams' ``.checkpoint``, as one JSON document next to the store (decision 0017)::

    {"version": 1, "token": "5f0c…", "written_ms": 1764578400000,
     "changelog": {"topic": "app-orders-changelog", "partition": 3,
                   "offset": 120533, "last": "9b1e…"},
     "fingerprints": {"d": "{…}", "w": "{…}"}}

``offset`` is the first changelog offset the store does not reflect (a restore replays from
there), ``last`` a digest of the record just before it (:func:`digest`: the restore checks
that the changelog still holds that record there), ``token`` the stamp the store was marked
with when it was flushed for this checkpoint (:meth:`~streams.state.rocks.RocksStore.mark`),
``fingerprints`` those of the operators whose state the store holds.

A file is replaced whole or not at all (written aside, synced, renamed over the old one). A
missing, unreadable or foreign one reads as no checkpoint: the store is rebuilt from the
whole changelog, never trusted on a guess.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """What a store reflects: changelog ``topic``/``partition`` up to ``offset`` (exclusive),
    the record before it being the one of digest ``last``; marked with ``token``."""

    token: str
    topic: str
    partition: int
    offset: int
    last: str
    fingerprints: dict[str, str] = field(default_factory=dict)
    written_ms: int = 0


def digest(key: bytes | None, value: bytes | None) -> str:
    """A short digest of a changelog record's key and value (a tombstone differs from an
    empty value)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (key, value):
        if part is None:
            h.update(b"\x00")
        else:
            h.update(b"\x01%d:" % len(part))
            h.update(part)
    return h.hexdigest()


def write(path: Path, checkpoint: Checkpoint) -> None:
    """Replace the file at ``path`` with ``checkpoint``, atomically and durably."""
    document = {
        "version": VERSION,
        "token": checkpoint.token,
        "written_ms": checkpoint.written_ms,
        "changelog": {
            "topic": checkpoint.topic,
            "partition": checkpoint.partition,
            "offset": checkpoint.offset,
            "last": checkpoint.last,
        },
        "fingerprints": checkpoint.fingerprints,
    }
    aside = path.with_name(f"{path.name}.tmp")
    with aside.open("wb") as out:
        out.write(orjson.dumps(document))
        out.flush()
        os.fsync(out.fileno())
    os.replace(aside, path)
    # The rename itself survives a crash of the machine only once the directory is synced.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``; None when there is none, or one that cannot be read
    (logged: the store is then rebuilt)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("checkpoint %s cannot be read (%s); rebuilding the store", path, exc)
        return None
    try:
        return _parse(orjson.loads(raw))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("checkpoint %s is corrupt (%r); rebuilding the store", path, exc)
        return None


def remove(path: Path) -> None:
    """Delete the checkpoint at ``path``, if any."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _parse(document: Any) -> Checkpoint:
    if document["version"] != VERSION:
        raise ValueError(f"version {document['version']!r}, not {VERSION}")
    changelog = document["changelog"]
    fingerprints = document["fingerprints"]
    if not isinstance(fingerprints, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fingerprints.items()
    ):
        raise ValueError("fingerprints are not strings by tag")
    checkpoint = Checkpoint(
        token=_typed(document["token"], str),
        topic=_typed(changelog["topic"], str),
        partition=_typed(changelog["partition"], int),
        offset=_typed(changelog["offset"], int),
        last=_typed(changelog["last"], str),
        fingerprints=fingerprints,
        written_ms=_typed(document["written_ms"], int),
    )
    if checkpoint.offset < 1:
        raise ValueError(f"offset {checkpoint.offset}: a checkpoint follows a record")
    return checkpoint


def _typed(value: Any, kind: type) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not a {kind.__name__}")
    return value
