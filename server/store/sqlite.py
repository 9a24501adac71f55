"""The SQLite state store: one database file, WAL, synchronous=FULL (a committed result
survives a crash or power loss), BEGIN IMMEDIATE for every write (claims and
compare-and-set transitions see no concurrent writer). The tables and their migrations
are shared with the PostgreSQL store (`tables.py`).

Calls are synchronous and short; the core runs them in a thread (asyncio.to_thread).
One connection, guarded by a lock.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from .tables import MIGRATIONS, SqlTables

__all__ = ["MIGRATIONS", "SqliteStore"]


class SqliteStore(SqlTables):
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self.migrate()

    @contextlib.contextmanager
    def _tx(self):
        """One write transaction, taken with BEGIN IMMEDIATE (the write lock up front)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
