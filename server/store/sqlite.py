"""The SQLite state store: one database file, WAL, synchronous=FULL (a committed result
survives a crash or power loss), BEGIN IMMEDIATE for every write (claims and
compare-and-set transitions see no concurrent writer), schema migrations recorded in a
`schema_version` table. The SQL is kept to what PostgreSQL also accepts (placeholders
aside), so the PostgreSQL store can reuse the schema.

Calls are synchronous and short; the core runs them in a thread (asyncio.to_thread).
One connection, guarded by a lock.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from dataclasses import asdict, fields
from pathlib import Path
from typing import Iterator

from .base import ACTIVE, BatchRecord, FileRecord, LineResult
from .sqlite_responses import MIGRATION as RESPONSES_MIGRATION, ResponseTables

# Each entry moves the schema one version up; never edit a released entry, append one.
MIGRATIONS = [
    """
    CREATE TABLE files (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        status TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX files_owner ON files (owner, seq);
    CREATE TABLE batches (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        status TEXT NOT NULL,
        metadata TEXT NOT NULL,
        errors TEXT NOT NULL,
        model TEXT NOT NULL,
        output_file_id TEXT NOT NULL,
        error_file_id TEXT NOT NULL,
        in_progress_at BIGINT, finalizing_at BIGINT, completed_at BIGINT, failed_at BIGINT,
        expired_at BIGINT, cancelling_at BIGINT, cancelled_at BIGINT,
        total INTEGER NOT NULL, completed INTEGER NOT NULL, failed INTEGER NOT NULL,
        input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL,
        lease_holder TEXT, lease_until DOUBLE PRECISION
    );
    CREATE INDEX batches_owner ON batches (owner, seq);
    CREATE TABLE batch_results (
        batch_id TEXT NOT NULL,
        custom_id TEXT NOT NULL,
        line INTEGER NOT NULL,
        ok INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (batch_id, custom_id)
    );
    CREATE INDEX batch_results_line ON batch_results (batch_id, ok, line);
    """,
    RESPONSES_MIGRATION,  # 2: responses, conversations, conversation_items
]

_BATCH_FIELDS = [f.name for f in fields(BatchRecord)]
_FILE_FIELDS = [f.name for f in fields(FileRecord)]
_JSON_FIELDS = ("metadata", "errors")


class SqliteStore(ResponseTables):
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

    def migrate(self) -> int:
        """Applies the migrations not yet applied; returns the schema version."""
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] or 0
            for number, script in enumerate(MIGRATIONS[version:], version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        return len(MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- files -----------------------------------------------------------------------
    def put_file(self, rec: FileRecord) -> None:
        cols = ", ".join(_FILE_FIELDS)
        with self._tx() as db:
            db.execute(f"INSERT INTO files ({cols}) VALUES ({', '.join('?' * len(_FILE_FIELDS))}) "
                       "ON CONFLICT (id) DO NOTHING", [getattr(rec, f) for f in _FILE_FIELDS])

    def get_file(self, owner: str | None, file_id: str) -> FileRecord | None:
        rows = self._query("SELECT * FROM files WHERE id = ? AND deleted = 0", (file_id,))
        if not rows or (owner is not None and rows[0]["owner"] != owner):
            return None
        return _file(rows[0])

    def list_files(self, owner: str, purpose: str | None, after: str | None, limit: int,
                   ascending: bool) -> list[FileRecord]:
        sql, args = "SELECT * FROM files WHERE owner = ? AND deleted = 0", [owner]
        if purpose:
            sql += " AND purpose = ?"
            args.append(purpose)
        if after:
            sql += f" AND seq {'>' if ascending else '<'} (SELECT seq FROM files WHERE id = ? AND owner = ?)"
            args += [after, owner]
        sql += f" ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?"
        return [_file(r) for r in self._query(sql, args + [limit])]

    def delete_file(self, owner: str, file_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE files SET deleted = 1 WHERE id = ? AND owner = ? AND deleted = 0",
                             (file_id, owner))
            return cur.rowcount == 1

    # ---- batches ---------------------------------------------------------------------
    def put_batch(self, rec: BatchRecord) -> None:
        values = asdict(rec)
        for f in _JSON_FIELDS:
            values[f] = json.dumps(values[f])
        cols = ", ".join(_BATCH_FIELDS)
        with self._tx() as db:
            db.execute(f"INSERT INTO batches ({cols}) VALUES ({', '.join('?' * len(_BATCH_FIELDS))})",
                       [values[f] for f in _BATCH_FIELDS])

    def get_batch(self, owner: str | None, batch_id: str) -> BatchRecord | None:
        rows = self._query("SELECT * FROM batches WHERE id = ?", (batch_id,))
        if not rows or (owner is not None and rows[0]["owner"] != owner):
            return None
        return _batch(rows[0])

    def list_batches(self, owner: str, after: str | None, limit: int) -> list[BatchRecord]:
        sql, args = "SELECT * FROM batches WHERE owner = ?", [owner]
        if after:
            sql += " AND seq < (SELECT seq FROM batches WHERE id = ? AND owner = ?)"
            args += [after, owner]
        return [_batch(r) for r in self._query(sql + " ORDER BY seq DESC LIMIT ?", args + [limit])]

    def transition(self, batch_id: str, from_status: tuple[str, ...], **values) -> bool:
        unknown = set(values) - set(_BATCH_FIELDS)
        if unknown:
            raise ValueError(f"unknown batch fields {sorted(unknown)}")
        for f in _JSON_FIELDS:
            if f in values:
                values[f] = json.dumps(values[f])
        sets = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" * len(from_status))
        with self._tx() as db:
            cur = db.execute(f"UPDATE batches SET {sets} WHERE id = ? AND status IN ({marks})",
                             [*values.values(), batch_id, *from_status])
            return cur.rowcount == 1

    def claim_batches(self, holder: str, lease_s: float, now: float) -> list[str]:
        marks = ", ".join("?" * len(ACTIVE))
        with self._tx() as db:
            rows = db.execute(
                f"SELECT id FROM batches WHERE status IN ({marks}) AND "
                "(lease_holder IS NULL OR lease_holder = ? OR lease_until < ?) ORDER BY seq",
                [*ACTIVE, holder, now]).fetchall()
            ids = [r["id"] for r in rows]
            for batch_id in ids:
                db.execute("UPDATE batches SET lease_holder = ?, lease_until = ? WHERE id = ?",
                           (holder, now + lease_s, batch_id))
        return ids

    # ---- results ---------------------------------------------------------------------
    def put_result(self, batch_id: str, result: LineResult) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO batch_results (batch_id, custom_id, line, ok, data) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (batch_id, custom_id) DO NOTHING",
                (batch_id, result.custom_id, result.line, int(result.ok), result.data))
            if cur.rowcount != 1:
                return False
            counter = "completed" if result.ok else "failed"
            db.execute(f"UPDATE batches SET {counter} = {counter} + 1, input_tokens = input_tokens + ?, "
                       "output_tokens = output_tokens + ? WHERE id = ?",
                       (result.input_tokens, result.output_tokens, batch_id))
            return True

    def done_custom_ids(self, batch_id: str) -> set[str]:
        return {r[0] for r in self._query("SELECT custom_id FROM batch_results WHERE batch_id = ?", (batch_id,))}

    def results(self, batch_id: str, ok: bool) -> Iterator[LineResult]:
        rows = self._query("SELECT custom_id, line, ok, data FROM batch_results WHERE batch_id = ? AND ok = ? "
                           "ORDER BY line", (batch_id, int(ok)))
        for r in rows:
            yield LineResult(r["custom_id"], r["line"], bool(r["ok"]), r["data"])


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(**{f: row[f] for f in _FILE_FIELDS})


def _batch(row: sqlite3.Row) -> BatchRecord:
    values = {f: row[f] for f in _BATCH_FIELDS}
    for f in _JSON_FIELDS:
        values[f] = json.loads(values[f])
    return BatchRecord(**values)
