"""The SQLite tables of responses and conversations (schema version 2), as a mixin of
SqliteStore: it uses the store's `_tx()` (one write transaction) and `_query()`.

Deletes are soft (`deleted = 1`): a deleted id reads like a missing one."""
from __future__ import annotations

import json

from .base import ConversationItem, ConversationRecord, ResponseRecord

MIGRATION = """
    CREATE TABLE responses (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        status TEXT NOT NULL,
        data TEXT NOT NULL,
        history TEXT NOT NULL,
        input TEXT NOT NULL,
        background INTEGER NOT NULL,
        stored INTEGER NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        lease_holder TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE INDEX responses_active ON responses (background, status);
    CREATE TABLE conversations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        metadata TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE conversation_items (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        data TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX conversation_items_conv ON conversation_items (conversation_id, seq)
"""

_RESPONSE_COLS = ("id", "owner", "created_at", "status", "data", "history", "input", "background", "stored")


class ResponseTables:
    # ---- responses ---------------------------------------------------------------------
    def put_response(self, rec: ResponseRecord) -> None:
        values = [getattr(rec, c) for c in _RESPONSE_COLS]
        values[7], values[8] = int(rec.background), int(rec.stored)
        sets = ", ".join(f"{c} = excluded.{c}" for c in _RESPONSE_COLS[3:])
        with self._tx() as db:
            db.execute(f"INSERT INTO responses ({', '.join(_RESPONSE_COLS)}) VALUES "
                       f"({', '.join('?' * len(_RESPONSE_COLS))}) ON CONFLICT (id) DO UPDATE SET {sets}", values)

    def get_response(self, owner: str | None, response_id: str) -> ResponseRecord | None:
        rows = self._query("SELECT * FROM responses WHERE id = ? AND deleted = 0", (response_id,))
        if not rows or (owner is not None and rows[0]["owner"] != owner):
            return None
        r = rows[0]
        return ResponseRecord(**{c: r[c] for c in _RESPONSE_COLS[:7]}, background=bool(r["background"]),
                              stored=bool(r["stored"]))

    def delete_response(self, owner: str, response_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE responses SET deleted = 1 WHERE id = ? AND owner = ? AND deleted = 0",
                             (response_id, owner))
            return cur.rowcount == 1

    def set_response_status(self, response_id: str, from_status: tuple[str, ...], status: str,
                            data: str | None = None) -> bool:
        marks = ", ".join("?" * len(from_status))
        sets, args = "status = ?", [status]
        if data is not None:
            sets, args = sets + ", data = ?", args + [data]
        with self._tx() as db:
            cur = db.execute(f"UPDATE responses SET {sets} WHERE id = ? AND status IN ({marks})",
                             [*args, response_id, *from_status])
            return cur.rowcount == 1

    def claim_response(self, response_id: str, holder: str, lease_s: float, now: float) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE responses SET lease_holder = ?, lease_until = ? WHERE id = ? AND deleted = 0 "
                             "AND status IN ('queued', 'in_progress') AND "
                             "(lease_holder IS NULL OR lease_holder = ? OR lease_until < ?)",
                             (holder, now + lease_s, response_id, holder, now))
            return cur.rowcount == 1

    def claimable_responses(self, holder: str, now: float) -> list[str]:
        rows = self._query("SELECT id FROM responses WHERE background = 1 AND deleted = 0 AND "
                           "status IN ('queued', 'in_progress') AND "
                           "(lease_holder IS NULL OR lease_holder = ? OR lease_until < ?) ORDER BY seq",
                           (holder, now))
        return [r["id"] for r in rows]

    # ---- conversations -----------------------------------------------------------------
    def put_conversation(self, rec: ConversationRecord) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO conversations (id, owner, created_at, metadata) VALUES (?, ?, ?, ?)",
                       (rec.id, rec.owner, rec.created_at, json.dumps(rec.metadata)))

    def get_conversation(self, owner: str, conversation_id: str) -> ConversationRecord | None:
        rows = self._query("SELECT * FROM conversations WHERE id = ? AND owner = ? AND deleted = 0",
                           (conversation_id, owner))
        if not rows:
            return None
        r = rows[0]
        return ConversationRecord(r["id"], r["owner"], r["created_at"], json.loads(r["metadata"]))

    def update_conversation(self, owner: str, conversation_id: str, metadata: dict) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE conversations SET metadata = ? WHERE id = ? AND owner = ? AND deleted = 0",
                             (json.dumps(metadata), conversation_id, owner))
            return cur.rowcount == 1

    def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE conversations SET deleted = 1 WHERE id = ? AND owner = ? AND deleted = 0",
                             (conversation_id, owner))
            if cur.rowcount != 1:
                return False
            db.execute("UPDATE conversation_items SET deleted = 1 WHERE conversation_id = ?", (conversation_id,))
            return True

    def add_conversation_items(self, conversation_id: str, items: list[ConversationItem]) -> None:
        with self._tx() as db:
            db.executemany("INSERT INTO conversation_items (conversation_id, item_id, data) VALUES (?, ?, ?)",
                           [(conversation_id, i.item_id, i.data) for i in items])

    def conversation_items(self, conversation_id: str) -> list[ConversationItem]:
        rows = self._query("SELECT item_id, data FROM conversation_items WHERE conversation_id = ? AND deleted = 0 "
                           "ORDER BY seq", (conversation_id,))
        return [ConversationItem(conversation_id, r["item_id"], r["data"]) for r in rows]

    def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE conversation_items SET deleted = 1 WHERE conversation_id = ? AND item_id = ? "
                             "AND deleted = 0", (conversation_id, item_id))
            return cur.rowcount >= 1
