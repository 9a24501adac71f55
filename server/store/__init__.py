"""Durable state of the core: a small state-store interface (`base.Store`) with its SQLite
implementation, and a local object directory for file contents (`objects`)."""
from __future__ import annotations

from .base import BatchRecord, FileRecord, LineResult, Store
from .objects import LocalObjects
from .sqlite import SqliteStore

__all__ = ["BatchRecord", "FileRecord", "LineResult", "LocalObjects", "SqliteStore", "Store", "open_store"]


def open_store(cfg) -> tuple[Store, LocalObjects]:
    """The state store and object directory a genapi.config.Config names."""
    return SqliteStore(cfg.store_path), LocalObjects(cfg.files_dir)
