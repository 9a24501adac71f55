"""Durable state of the core: a small state-store interface (`base.Store`) with its SQLite
and PostgreSQL implementations (one schema, `tables.py`), and object storage for file
contents: a local directory (`objects`) or S3 (`s3`, which also reads and writes the
s3:// URLs of Scaleway-style batches)."""
from __future__ import annotations

from .base import BatchRecord, ConversationItem, ConversationRecord, FileRecord, LineResult, ResponseRecord, Store
from .line_claims import LineRun
from .objects import LocalObjects
from .postgres import PostgresStore, is_postgres_url
from .s3 import S3Objects, S3Url
from .sqlite import SqliteStore

__all__ = ["BatchRecord", "ConversationItem", "ConversationRecord", "ResponseRecord", "FileRecord", "LineResult",
           "LineRun", "LocalObjects", "PostgresStore", "S3Objects", "S3Url", "SqliteStore", "Store", "open_objects",
           "open_store"]


def open_objects(cfg) -> LocalObjects | S3Objects:
    """The object storage [files] url names: a local directory, or s3://bucket/prefix,
    whose bucket is checked now (ValueError: missing, denied, unreachable)."""
    if not cfg.files_url.startswith("s3://"):
        return LocalObjects(cfg.files_dir)
    objects = S3Objects(cfg.files_url)
    objects.check()
    return objects


def open_store(cfg) -> Store:
    """The state store [store] url names: a SQLite file or postgresql://... Raises what
    the store raises when it cannot be opened (PostgreSQL down, wrong password)."""
    if is_postgres_url(cfg.store_url):
        return PostgresStore(cfg.store_url, cfg.store_timeout_s)
    return SqliteStore(cfg.store_path)
