"""Connections, transactions and migrations shared by every part of the store."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from breakglass.store.schema import MIGRATIONS

log = structlog.get_logger("breakglass.store")

_INCREMENTAL = 2  # PRAGMA auto_vacuum: 0 none, 1 full, 2 incremental
# Rows deleted per transaction while an older file is converted (nothing else writes yet).
CONVERT_PRUNE_BATCH = 50_000
CONVERT_CACHE_KIB = -65_536  # PRAGMA cache_size while converting: negative means KiB (64 MiB)


def loads(text: str | None) -> Any:
    """Decode a JSON column; an empty column is an empty dict."""
    return json.loads(text) if text else {}


def dumps(data: Any) -> str:
    """Encode a JSON column compactly (anything unusual as its str)."""
    return json.dumps(data, default=str, separators=(",", ":"))


class Database:
    """One SQLite file in WAL mode, one connection per thread, schema migrated on open."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        retention_seconds: float | None = None,
    ) -> None:
        """Open (create, convert, migrate) the file at ``path``.

        ``retention_seconds``, the readings retention: converting an older file first
        deletes the readings older than that, so the one ``VACUUM`` copies only the rest.
        """
        self.path = Path(path)
        self.clock = clock
        self._retention = retention_seconds
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._on_commit: list[Callable[[], None]] = []
        self._incremental_vacuum()
        self._migrate()

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every committed write, in the writing thread; it must not block.

        Live pages use it to wake their streams instead of polling the store.
        """
        self._on_commit.append(listener)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions are explicit (see _tx), never implicit.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed ledger row survives a power loss, not only a crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: writers are serialised, readers go on."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        for listener in self._on_commit:
            listener()

    def _migrate(self) -> None:
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path}: schema version {version} is newer than this breakglass "
                    f"understands ({len(MIGRATIONS)}); upgrade breakglass"
                )
            for n, script in enumerate(MIGRATIONS[version:], start=version + 1):
                # executescript() would commit on its own; statement by statement keeps
                # a migration and its version bump in one transaction.
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {n}")

    def _incremental_vacuum(self) -> None:
        """Put the file in ``auto_vacuum=INCREMENTAL`` mode, so pruned pages can be given back.

        The mode only takes effect on an empty file or after a ``VACUUM``: a new file is
        empty here (this runs before the first table is created); an older file is
        rewritten once, on the first start of a version that has this. ``VACUUM`` copies
        every row and blocks the start, so the readings past retention (most of an older
        file: nothing pruned them) are deleted first, in batches, and only the rest is
        copied; ``store_converting`` and ``store_converted`` log the sizes and the time.
        """
        conn = self._conn()
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            return
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'readings'").fetchone() is None:
            conn.execute("VACUUM")  # an empty file: nothing to copy
            return
        started, before = time.monotonic(), self._file_bytes()
        log.info(
            "store_converting",
            path=str(self.path),
            size_bytes=before,
            retention_seconds=self._retention,
            to="auto_vacuum=incremental",
        )
        pruned = 0
        # Nothing else runs yet: a larger page cache for the conversion (the default 2000
        # pages made each batch re-read the index it deletes from), the default after.
        cache = int(conn.execute("PRAGMA cache_size").fetchone()[0])
        conn.execute(f"PRAGMA cache_size = {CONVERT_CACHE_KIB}")
        try:
            if self._retention is not None:
                pruned = self._prune_for_conversion(self.clock() - self._retention)
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.execute(f"PRAGMA cache_size = {cache}")
        log.info(
            "store_converted",
            path=str(self.path),
            size_bytes=self._file_bytes(),
            size_bytes_before=before,
            readings_pruned=pruned,
            seconds=round(time.monotonic() - started, 3),
        )

    def _prune_for_conversion(self, older_than: float) -> int:
        """Delete readings taken before ``older_than`` from an older file, before its ``VACUUM``.

        Its rows are in time order by rowid (nothing pruned them), and the index on
        ``readings(at)`` comes with a later migration, so each batch walks the rowids
        from the front and stops at its ``LIMIT``: the old rows are read once in all.
        Nothing else writes yet, so batches are large and ``synchronous=NORMAL`` (no sync
        per commit, WAL-safe: a power loss can only undo deletions the next start redoes).
        """
        conn, total = self._conn(), 0
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            while True:
                with self._tx() as tx:
                    n = tx.execute(
                        "DELETE FROM readings WHERE id IN "
                        "(SELECT id FROM readings WHERE at < ? ORDER BY id LIMIT ?)",
                        (older_than, CONVERT_PRUNE_BATCH),
                    ).rowcount
                total += n
                if n < CONVERT_PRUNE_BATCH:
                    return total
        finally:
            conn.execute("PRAGMA synchronous=FULL")

    def _file_bytes(self) -> int:
        """The file's size on disk, its write-ahead log included."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(os.path.getsize(p) for p in (self.path, wal) if p.exists())

    def vacuum_free_pages(self, step: int = 1000) -> int:
        """Return free pages to the file system, ``step`` pages per transaction; how many."""
        conn, freed = self._conn(), 0
        while True:
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            if free == 0:
                return freed
            conn.execute(f"PRAGMA incremental_vacuum({min(free, int(step))})").fetchall()
            freed += min(free, int(step))

    def size_bytes(self) -> int:
        """Bytes the database's pages take (without the WAL)."""
        conn = self._conn()
        return int(conn.execute("PRAGMA page_count").fetchone()[0]) * int(
            conn.execute("PRAGMA page_size").fetchone()[0]
        )

    def schema_version(self) -> int:
        """The schema version this file is at."""
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close every connection this store opened."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def ping(self) -> bool:
        """True when the database answers a query."""
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True
