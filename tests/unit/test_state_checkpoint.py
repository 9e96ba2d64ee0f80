"""The checkpoint file: written whole or not at all, and anything that does not read as one
reads as no checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from streams.state import checkpoint
from streams.state.checkpoint import Checkpoint, digest

SAVED = Checkpoint(
    token="5f0c",
    topic="app-orders-changelog",
    partition=3,
    offset=120_533,
    last=digest(b"o", b"4200"),
    fingerprints={"d": '{"op":"dedupe"}', "w": '{"op":"window"}'},
    written_ms=1_764_578_400_000,
)


def test_a_checkpoint_reads_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    checkpoint.write(path, SAVED)
    assert checkpoint.read(path) == SAVED
    assert list(tmp_path.iterdir()) == [path]


def test_a_new_checkpoint_replaces_the_old_one_by_renaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new document is written aside and renamed over the old one: a write that fails
    (a crash, a full disk) before the rename leaves the old one whole."""
    path = tmp_path / "checkpoint.json"
    checkpoint.write(path, SAVED)

    def crash(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="no space"):
        checkpoint.write(path, Checkpoint("0000", "other", 0, 1, digest(b"t", None)))
    assert checkpoint.read(path) == SAVED
    monkeypatch.undo()
    newer = Checkpoint("9999", SAVED.topic, 3, 130_000, digest(b"o", b"5000"))
    checkpoint.write(path, newer)
    assert checkpoint.read(path) == newer


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"version": 1, "token": "5f0c", "changelog": {"topic": "t", "partit',  # cut short
        b"\x00\x00\x00\x00",
        b"[]",
        b'{"version": 2}',
        orjson.dumps(
            {
                "version": 1,
                "token": "5f0c",
                "written_ms": 1,
                "changelog": {"topic": "t", "partition": "3", "offset": 7, "last": "ab"},
                "fingerprints": {},
            }
        ),
        orjson.dumps(
            {
                "version": 1,
                "token": "5f0c",
                "written_ms": 1,
                "changelog": {"topic": "t", "partition": 3, "offset": 0, "last": "ab"},
                "fingerprints": {},
            }
        ),
        orjson.dumps(
            {
                "version": 1,
                "token": "5f0c",
                "written_ms": 1,
                "changelog": {"topic": "t", "partition": 3, "offset": 7, "last": "ab"},
                "fingerprints": {"w": 1},
            }
        ),
    ],
    ids=[
        "empty",
        "cut-short",
        "binary",
        "not-an-object",
        "another-version",
        "a-string-partition",
        "offset-0",
        "a-number-fingerprint",
    ],
)
def test_a_corrupt_checkpoint_reads_as_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_bytes(content)
    assert checkpoint.read(path) is None


def test_a_missing_checkpoint_reads_as_none_and_removing_it_twice_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    assert checkpoint.read(path) is None
    checkpoint.write(path, SAVED)
    checkpoint.remove(path)
    checkpoint.remove(path)
    assert checkpoint.read(path) is None


def test_the_digest_tells_records_apart() -> None:
    assert digest(b"o", b"") != digest(b"o", None)  # an empty value is no tombstone
    assert digest(b"ab", b"c") != digest(b"a", b"bc")
    assert digest(b"o", b"42") == digest(b"o", b"42")
