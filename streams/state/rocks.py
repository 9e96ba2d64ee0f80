"""RocksDB (``rocksdict``) under a task's window and dedupe state: STREAMS_STORE=rocksdb.

Layout: ``<STREAMS_STATE_DIR>/<app id>/<segment>/<topic>-<partition>/`` is one task's
directory: ``rocksdb/`` (the database), ``.lock`` (held with ``flock`` while a worker has the
store open) and the task's checkpoint file (:mod:`streams.state.checkpoint`). The store
outlives its process: whoever adopts the task next opens it again, and the runtime decides
from the checkpoint whether to reuse it, replaying only the changelog after it, or to
:meth:`~RocksStore.wipe` it (:mod:`streams.runtime.localstate`, decision 0017).

When another live process holds a task's store (two workers sharing a state directory, in
the moment a partition moves between them), the adoption gets a temporary store instead,
``tmp/<pid>-<random>/`` beside its lock ``tmp/<pid>-<random>.lock``, deleted when closed;
those of a process that died are deleted by the next adoption of the task.

There is no write-ahead log: a crash loses what was written since the last memtable flush,
and the store on disk is the one of that flush. Whether that is exactly the store a
checkpoint describes is told by a stamp in the store: :meth:`~RocksStore.mark` writes one,
and the first write after it deletes it, in the same atomic write. So a store on disk still
carries the stamp of a checkpoint only when nothing written after that checkpoint survived.

Memory is bounded per process: one block cache and one memtable budget shared by every store.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from streams.errors import ConfigError
from streams.state import ROCKSDB_MISSING

try:
    from rocksdict import (
        BlockBasedOptions,
        Cache,
        Options,
        Rdict,
        ReadOptions,
        WriteBatch,
        WriteBufferManager,
        WriteOptions,
    )
except ImportError:  # pragma: no cover - depends on the environment
    raise ConfigError(ROCKSDB_MISSING) from None

log = logging.getLogger(__name__)

BLOCK_CACHE_BYTES = 64 << 20
MEMTABLES_BYTES = 64 << 20
# Keys from \x00 up are the runtime's (the core's start with a letter); this one holds the
# stamp of the checkpoint the store was last marked for.
STAMP_KEY = b"\x00stamp"
LOCK_FILE = ".lock"
DATABASE = "rocksdb"
TEMPORARY = "tmp"

_shared: tuple[Cache, WriteBufferManager] | None = None
# Task directory -> the store this process has open there (see open_store).
_open: weakref.WeakValueDictionary[Path, RocksStore] = weakref.WeakValueDictionary()


def _options() -> Options:
    global _shared
    if _shared is None:
        _shared = (Cache(BLOCK_CACHE_BYTES), WriteBufferManager(MEMTABLES_BYTES, False))
    cache, memtables = _shared
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    # Most lookups are for keys not held (new event ids, new users): bloom filters answer
    # them without a block read, and in the memtable without a skip-list search (measured:
    # 1.3-1.7 instead of 2.7-3.2 µs per key of a multi-get, at twice the write cost).
    table.set_bloom_filter(10, False)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_block_based_table_factory(table)
    options.set_memtable_whole_key_filtering(True)
    options.set_memtable_prefix_bloom_ratio(0.1)
    # One budget for every store's memtables; any one may use all of it.
    options.set_write_buffer_manager(memtables)
    options.set_write_buffer_size(MEMTABLES_BYTES)
    options.set_keep_log_file_num(1)
    return options


class _Handle:
    """What closing a store releases: its database and its lock (shared with the
    finalizer, which must not hold the store itself)."""

    def __init__(self, db: Rdict, lock_fd: int) -> None:
        self.db = db
        self.lock_fd = lock_fd


def _open_db(path: Path) -> Rdict:
    db = Rdict(str(path), _options())
    no_wal = WriteOptions()
    # Durability comes from the changelog, and a store is trusted only at a checkpoint,
    # which flushes it (rocksdict's stub types this property as a method).
    no_wal.disable_wal = True  # type: ignore[method-assign,assignment]
    db.set_write_options(no_wal)
    return db


class RocksStore:
    """One task's :class:`~streams.core.spill.KeyValueStore` in RocksDB.

    Open it with :func:`open_store`. ``persistent`` stores stay on disk when closed (or
    dropped); temporary ones are deleted. ``stamp`` is the token of the checkpoint the store
    was marked for when it was opened, if it still carries one.
    """

    def __init__(self, directory: Path, path: Path, lock_fd: int, *, persistent: bool) -> None:
        self.directory = directory
        self.path = path
        self.persistent = persistent
        db = _open_db(path)
        stamp = db.get(STAMP_KEY)
        self.stamp: str | None = None if stamp is None else bytes(stamp).decode()
        # True while the store on disk may carry a stamp the next write must delete.
        self._stamped = stamp is not None
        self._handle = _Handle(db, lock_fd)
        self._close = weakref.finalize(self, _dispose, self._handle, path, persistent)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self._handle.db.get(list(keys))  # type: ignore[return-value]

    def scan(self, begin: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        bounds = ReadOptions()
        bounds.set_iterate_upper_bound(end)
        # Raw mode: keys and values are bytes, which the stub's types do not say.
        items = self._handle.db.items(from_key=begin, read_opt=bounds)
        return _bounded(items, (bounds, end))  # type: ignore[arg-type]

    def write(
        self, deleted_ranges: Sequence[tuple[bytes, bytes]], changes: Mapping[bytes, bytes | None]
    ) -> None:
        batch = WriteBatch(raw_mode=True)
        if self._stamped:
            batch.delete(STAMP_KEY)
            self._stamped = False
        for begin, end in deleted_ranges:
            batch.delete_range(begin, end)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._handle.db.write(batch)

    def mark(self, token: str, changes: Mapping[bytes, bytes | None]) -> None:
        """Write ``changes`` and the stamp ``token`` in one atomic write: the store as it
        stands now is the one a checkpoint marked ``token`` describes."""
        self.write((), {**changes, STAMP_KEY: token.encode()})
        self._stamped = True

    def flush(self) -> None:
        """Write the memtables to disk: what a crash would leave is the store as it is now."""
        self._handle.db.flush(True)

    def wipe(self) -> None:
        """Delete everything: the database is replaced by an empty one."""
        self._handle.db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._handle.db = _open_db(self.path)
        self.stamp = None
        self._stamped = False

    def close(self) -> None:
        """Close the store (a temporary one is deleted); using it afterwards raises."""
        self._close()


def _bounded(
    items: Iterator[tuple[bytes, bytes]], bounds: tuple[ReadOptions, bytes]
) -> Iterator[tuple[bytes, bytes]]:
    """``items`` with its upper bound alive: rocksdict's iterator reads the bound from the
    bytes object it was given, not a copy, so a bound freed mid-scan (a temporary) ends the
    scan early, at whatever key reuses its memory (seen: 1 key of 4)."""
    yield from items
    del bounds


def _dispose(handle: _Handle, path: Path, persistent: bool) -> None:
    try:
        with contextlib.suppress(Exception):
            handle.db.close()
        if not persistent:
            shutil.rmtree(path, ignore_errors=True)
            path.with_name(f"{path.name}.lock").unlink(missing_ok=True)
    finally:
        os.close(handle.lock_fd)


def open_store(state_dir: str | os.PathLike[str], app_id: str, name: str) -> RocksStore:
    """The store of task ``name`` (``<segment>/<topic>-<partition>``) as its last owner left
    it, or a new empty one; a temporary store when another process has it open."""
    directory = Path(state_dir) / app_id / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # A store of this process still open here belongs to a task the worker dropped
        # without closing it (a failed commit's replay): nothing uses it any more.
        stale = _open.get(directory)
        if stale is not None:
            stale.close()
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            log.info("the store of %s is in use by another process: a temporary one", name)
            return _temporary(directory / TEMPORARY)
        try:
            store = _persistent(directory, fd)
        except BaseException:
            os.close(fd)
            raise
        _open[directory] = store
        return store
    except OSError as error:
        raise ConfigError(
            f"cannot create the RocksDB state of {name} under STREAMS_STATE_DIR="
            f"{state_dir}: {error}; point it at a writable directory"
        ) from None


def _persistent(directory: Path, lock_fd: int) -> RocksStore:
    path = directory / DATABASE
    try:
        return RocksStore(directory, path, lock_fd, persistent=True)
    except OSError:
        raise
    except Exception as exc:  # rocksdict raises plain Exceptions for a damaged database
        log.warning("the RocksDB store %s cannot be opened (%s); starting it over", path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return RocksStore(directory, path, lock_fd, persistent=True)


def _temporary(root: Path) -> RocksStore:
    root.mkdir(exist_ok=True)
    _remove_abandoned(root)
    while True:
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        lock_path = root / f"{name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Another process took it for abandoned in the instant before; try another.
            os.close(fd)
            continue
        break
    path = root / name
    try:
        path.mkdir()
        return RocksStore(root, path, fd, persistent=False)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        lock_path.unlink(missing_ok=True)
        os.close(fd)
        raise


def _remove_abandoned(root: Path) -> None:
    for lock_path in root.glob("*.lock"):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its store is open
            shutil.rmtree(root / lock_path.stem, ignore_errors=True)
            lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)
