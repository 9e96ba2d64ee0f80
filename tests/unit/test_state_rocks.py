"""STREAMS_STORE / STREAMS_STATE_DIR, and the RocksDB store's directories, locks and stamp."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
import textwrap
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


def test_a_task_store_lives_under_a_stable_path_and_outlives_its_closing(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"STREAMS_STORE": "rocksdb", "STREAMS_STATE_DIR": str(tmp_path), "STREAMS_APP_ID": "app"}
    )
    store = settings.open_store("aggregates/events-3")
    assert isinstance(store, RocksStore)
    assert store.persistent
    assert store.directory == tmp_path / "app" / "aggregates" / "events-3"
    assert store.path == store.directory / "rocksdb"
    store.write([], {b"k": b"v"})
    store.close()
    with pytest.raises(Exception, match="closed"):
        store.get_many([b"k"])
    again = open_store(tmp_path, "app", "aggregates/events-3")
    assert again.get_many([b"k"]) == [b"v"]
    again.close()


def test_the_stamp_goes_with_the_first_write_after_a_mark(tmp_path: Path) -> None:
    store = open_store(tmp_path, "app", "t")
    assert store.stamp is None
    store.mark("t1", {b"a": b"1"})
    store.close()
    marked = open_store(tmp_path, "app", "t")
    assert marked.stamp == "t1"
    assert marked.get_many([b"a"]) == [b"1"]
    marked.write([], {b"b": b"2"})
    marked.close()
    written = open_store(tmp_path, "app", "t")
    assert written.stamp is None
    written.wipe()
    assert written.get_many([b"a", b"b"]) == [None, None]
    written.close()


_CRASH = textwrap.dedent(
    """
    import os, signal, sys
    from streams.state.rocks import open_store
    store = open_store(sys.argv[1], "app", "t")
    store.mark("t1", {b"a": b"1"})
    store.flush()
    store.write([], {b"b": b"2"})
    if sys.argv[2] == "flushed":
        store.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize(("after", "stamp", "b"), [("lost", "t1", None), ("flushed", None, b"2")])
def test_a_crash_leaves_the_stamp_only_if_nothing_after_it_reached_disk(
    tmp_path: Path, after: str, stamp: str | None, b: bytes | None
) -> None:
    """No write-ahead log: a SIGKILL leaves the store of the last flush. A write after the
    mark that reached disk took the stamp away with it."""
    done = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path), after], check=False)
    assert done.returncode == -9
    store = open_store(tmp_path, "app", "t")
    assert (store.stamp, store.get_many([b"a", b"b"])) == (stamp, [b"1", b])
    store.close()


def test_a_store_in_use_by_another_process_gives_a_temporary_one(tmp_path: Path) -> None:
    directory = tmp_path / "app" / "t"
    directory.mkdir(parents=True)
    held = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # another open file: to flock, another owner
    try:
        store = open_store(tmp_path, "app", "t")
        assert not store.persistent
        assert store.path.parent == directory / "tmp"
        store.write([], {b"k": b"v"})
        store.close()
        assert list((directory / "tmp").iterdir()) == []
    finally:
        os.close(held)


def test_opening_a_store_again_in_the_same_process_closes_the_stale_one(tmp_path: Path) -> None:
    """A task the worker dropped without closing it (a replay) leaves its store open."""
    stale = open_store(tmp_path, "app", "t")
    stale.write([], {b"k": b"v"})
    store = open_store(tmp_path, "app", "t")
    assert store.persistent
    assert store.get_many([b"k"]) == [b"v"]
    with pytest.raises(Exception, match="closed"):
        stale.get_many([b"k"])
    store.close()


def test_temporary_stores_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """A lock nobody holds marks a database whose process is gone (SIGKILL, crash)."""
    root = tmp_path / "app" / "t" / "tmp"
    root.mkdir(parents=True)
    (root / "4242-dead.lock").touch()
    (root / "4242-dead").mkdir()
    (root / "4242-dead" / "000001.sst").write_bytes(b"stale")
    held = os.open(tmp_path / "app" / "t" / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        live = open_store(tmp_path, "app", "t")
        assert sorted(path.name for path in root.iterdir()) == sorted(
            [live.path.name, f"{live.path.name}.lock"]
        )
        live.close()
    finally:
        os.close(held)


def test_a_damaged_database_is_started_over(tmp_path: Path) -> None:
    path = tmp_path / "app" / "t" / "rocksdb"
    path.mkdir(parents=True)
    (path / "CURRENT").write_text("MANIFEST-000404\n")  # names a manifest that is not there
    store = open_store(tmp_path, "app", "t")
    assert store.get_many([b"k"]) == [None]
    store.close()


def test_a_state_dir_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"STREAMS_STATE_DIR=.*point it at a writable directory"):
        open_store(blocker, "app", "t")


def test_ranges_are_deleted_before_changes_are_applied(tmp_path: Path) -> None:
    store = open_store(tmp_path, "app", "t")
    store.write([], {b"a1": b"1", b"a2": b"2", b"b1": b"3"})
    store.write([(b"a", b"b")], {b"a2": b"new", b"b1": None})
    assert store.get_many([b"a1", b"a2", b"b1"]) == [None, b"new", None]
    assert list(store.scan(b"a", b"c")) == [(b"a2", b"new")]
    store.close()


def test_a_scan_keeps_its_upper_bound_alive(tmp_path: Path) -> None:
    """rocksdict's iterator reads its bound from the bytes object it got: a bound made for
    the call (freed once the call returns) used to end the scan at a key that reused its
    memory."""
    store = open_store(tmp_path, "app", "t")
    store.write([], {b"sdc%d" % n: b"1" for n in range(1, 5)})
    prefix = b"sd"
    # Not inside the assert: pytest's rewriting keeps the bound alive there.
    counts = [sum(1 for _ in store.scan(prefix, prefix[:-1] + b"e")) for _ in range(5)]
    assert counts == [4] * 5
    store.close()


def test_a_worker_without_rocksdict_imports_and_runs_in_memory() -> None:
    """rocksdict is an extra (``streams[rocksdb]``): the worker, the CLI and the test driver
    import without it (an installed wheel without the extra once stopped at start)."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["rocksdict"] = None  # as if not installed
        import streams.cli.worker, streams.cli.verify, streams.cli.explain, streams.cli.bench
        import streams.runtime.worker, streams.testing
        from streams.config import Settings
        assert Settings.from_env({}).open_store("p/t-0") is None
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
