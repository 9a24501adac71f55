"""The SQL tables of the state store, shared by SQLite (`sqlite.py`) and PostgreSQL
(`postgres.py`): one migration list and one set of queries. The SQL is written in the
dialect both accept, with `?` placeholders (the PostgreSQL store rewrites them to `%s`);
what differs is left to each store: its connection and transactions (`_tx()`, `_query()`),
the schema's identity columns (`_ddl()`), the lock a migration takes (`_migrate_lock()`)
and the row locking of claims (`_SKIP_LOCKED`: "" under SQLite, whose write transactions
are exclusive; " FOR UPDATE SKIP LOCKED" under PostgreSQL).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from typing import Iterator

from .base import ACTIVE, BatchRecord, FileRecord, LineResult
from .line_claims import MIGRATION as LINES_MIGRATION, LineClaims
from .nodes import MIGRATION as NODES_MIGRATION, NodeNames
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
    LINES_MIGRATION,  # 3: batch_lines (per-line leases), batch_line_runs (who ran a line when)
    NODES_MIGRATION,  # 4: nodes (live node names, their heartbeats)
]

_BATCH_FIELDS = [f.name for f in fields(BatchRecord)]
_FILE_FIELDS = [f.name for f in fields(FileRecord)]
_JSON_FIELDS = ("metadata", "errors")
_LEASE_FIELDS = ("lease_holder", "lease_until")  # settable by transition() too (in_progress clears them)


class SqlTables(ResponseTables, LineClaims, NodeNames):
    """The queries of every table; a subclass supplies the connection (see the module doc)."""

    _SKIP_LOCKED = ""

    def _tx(self):  # a context manager yielding a connection with execute()/executemany()
        raise NotImplementedError

    def _query(self, sql: str, args=()) -> list:
        raise NotImplementedError

    def _ddl(self, statement: str) -> str:
        return statement

    def _migrate_lock(self, db) -> None:
        """Serializes migrations of several processes (SQLite: BEGIN IMMEDIATE already does)."""

    def migrate(self) -> int:
        """Applies the migrations not yet applied; returns the schema version."""
        with self._tx() as db:
            self._migrate_lock(db)
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] or 0
            for number, script in enumerate(MIGRATIONS[version:], version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(self._ddl(statement))
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        return len(MIGRATIONS)

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
        unknown = set(values) - set(_BATCH_FIELDS) - set(_LEASE_FIELDS)
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
            leased = db.execute(
                f"UPDATE batches SET lease_holder = ?, lease_until = ? WHERE id IN (SELECT id FROM batches "
                f"WHERE status IN ({marks}) AND status <> 'in_progress' AND "
                f"(lease_holder IS NULL OR lease_holder = ? OR lease_until < ?){self._SKIP_LOCKED}) RETURNING id, seq",
                [holder, now + lease_s, *ACTIVE, holder, now]).fetchall()
            shared = db.execute("SELECT id, seq FROM batches WHERE status = 'in_progress'").fetchall()
        return [r[0] for r in sorted([*leased, *shared], key=lambda r: r[1])]

    def lease_batch(self, batch_id: str, holder: str, lease_s: float, now: float) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE batches SET lease_holder = ?, lease_until = ? WHERE id = ? AND "
                             "(lease_holder IS NULL OR lease_holder = ? OR lease_until < ?)",
                             (holder, now + lease_s, batch_id, holder, now))
            return cur.rowcount == 1

    # ---- results ---------------------------------------------------------------------
    def put_result(self, batch_id: str, result: LineResult) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO batch_results (batch_id, custom_id, line, ok, data) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (batch_id, custom_id) DO NOTHING",
                (batch_id, result.custom_id, result.line, int(result.ok), result.data))
            first = cur.rowcount == 1
            db.execute("UPDATE batch_lines SET done = 1 WHERE batch_id = ? AND line = ?", (batch_id, result.line))
            if result.holder:
                db.execute("UPDATE batch_line_runs SET finished_at = ? WHERE batch_id = ? AND line = ? AND holder = ? "
                           "AND finished_at IS NULL", (time.time(), batch_id, result.line, result.holder))
            if not first:
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


def _file(row) -> FileRecord:
    return FileRecord(**{f: row[f] for f in _FILE_FIELDS})


def _batch(row) -> BatchRecord:
    values = {f: row[f] for f in _BATCH_FIELDS}
    for f in _JSON_FIELDS:
        values[f] = json.loads(values[f])
    return BatchRecord(**values)
