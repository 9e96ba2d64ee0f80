"""STREAMS_STORE / STREAMS_STATE_DIR, and the RocksDB store's directories and locks."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from streams.config import DEFAULT_STATE_DIR, Settings
from streams.errors import ConfigError
from streams.state.rocks import RocksStore, open_store


def test_memory_is_the_default_store() -> None:
    settings = Settings.from_env({})
    assert settings.store == "memory"
    assert settings.state_dir == DEFAULT_STATE_DIR
    assert settings.open_store("aggregates/events-0") is None


def test_unknown_store_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="STREAMS_STORE='lmdb' is not one of memory, rocksdb"):
        Settings.from_env({"STREAMS_STORE": "lmdb"})


def test_rocksdb_without_rocksdict_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "rocksdict" else real(name)
    )
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"STREAMS_STORE": "rocksdb"})
    assert str(raised.value) == (
        "STREAMS_STORE=rocksdb needs the rocksdict package: pip install 'streams[rocksdb]'"
    )


def test_rocksdb_store_is_opened_per_task_under_the_state_dir(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"STREAMS_STORE": "rocksdb", "STREAMS_STATE_DIR": str(tmp_path), "STREAMS_APP_ID": "app"}
    )
    store = settings.open_store("aggregates/events-3")
    assert isinstance(store, RocksStore)
    assert store.path.parent == tmp_path / "app" / "aggregates" / "events-3"
    store.close()


def test_each_adoption_gets_a_new_empty_database(tmp_path: Path) -> None:
    first = open_store(tmp_path, "app", 0)
    first.write([], {b"k": b"v"})
    second = open_store(tmp_path, "app", 0)
    assert second.path != first.path
    assert second.get_many([b"k"]) == [None]
    # The first one is still open (its lock is held): the second adoption left it alone.
    assert first.get_many([b"k"]) == [b"v"]
    first.close()
    second.close()


def test_close_deletes_the_database_and_its_lock(tmp_path: Path) -> None:
    store = open_store(tmp_path, "app", 0)
    store.write([], {b"k": b"v"})
    store.close()
    assert list((tmp_path / "app" / "0").iterdir()) == []
    with pytest.raises(Exception, match="closed"):
        store.get_many([b"k"])


def test_dropped_store_deletes_its_database(tmp_path: Path) -> None:
    store = open_store(tmp_path, "app", 0)
    path = store.path
    del store
    assert not path.exists()


def test_databases_of_dead_processes_are_removed_on_adoption(tmp_path: Path) -> None:
    """A lock nobody holds marks a database whose process is gone (SIGKILL, crash)."""
    root = tmp_path / "app" / "0"
    root.mkdir(parents=True)
    (root / "4242-dead.lock").touch()
    (root / "4242-dead").mkdir()
    (root / "4242-dead" / "000001.sst").write_bytes(b"stale")
    live = open_store(tmp_path, "app", 0)
    assert sorted(path.name for path in root.iterdir()) == sorted(
        [live.path.name, f"{live.path.name}.lock"]
    )
    live.close()


def test_a_state_dir_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"STREAMS_STATE_DIR=.*point it at a writable directory"):
        open_store(blocker, "app", 0)


def test_ranges_are_deleted_before_changes_are_applied(tmp_path: Path) -> None:
    store = open_store(tmp_path, "app", 0)
    store.write([], {b"a1": b"1", b"a2": b"2", b"b1": b"3"})
    store.write([(b"a", b"b")], {b"a2": b"new", b"b1": None})
    assert store.get_many([b"a1", b"a2", b"b1"]) == [None, b"new", None]
    assert list(store.scan(b"a", b"c")) == [(b"a2", b"new")]
    store.close()
    assert os.listdir(tmp_path / "app" / "0") == []


def test_a_scan_keeps_its_upper_bound_alive(tmp_path: Path) -> None:
    """rocksdict's iterator reads its bound from the bytes object it got: a bound made for
    the call (freed once the call returns) used to end the scan at a key that reused its
    memory."""
    store = open_store(tmp_path, "app", 0)
    store.write([], {b"sdc%d" % n: b"1" for n in range(1, 5)})
    prefix = b"sd"
    # Not inside the assert: pytest's rewriting keeps the bound alive there.
    counts = [sum(1 for _ in store.scan(prefix, prefix[:-1] + b"e")) for _ in range(5)]
    assert counts == [4] * 5
    store.close()
