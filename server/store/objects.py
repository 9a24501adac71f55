"""File contents in a local directory. Keys (file ids) are opaque strings and never
paths: the on-disk name is the SHA-256 of the key, so no key can name anything outside
the directory. Writes are atomic: a temporary file is written, fsynced and renamed over
the final name (and the directory fsynced), so a reader sees the old content or the
whole new one, never a part."""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Iterator

CHUNK = 1024 * 1024


class ObjectWriter:
    """An object being written: write(), then commit() (atomic) or abort()."""

    def __init__(self, root: Path, final: Path):
        self._final = final
        self._tmp = root / f".tmp-{uuid.uuid4().hex}"
        self._f = open(self._tmp, "xb")
        self.size = 0

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self.size += len(data)

    def commit(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self._final)
        _fsync_dir(self._final.parent)

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


class LocalObjects:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-*"):  # writes a crash interrupted
            stale.unlink(missing_ok=True)

    def path(self, key: str) -> Path:
        return self.root / hashlib.sha256(key.encode()).hexdigest()

    def writer(self, key: str) -> ObjectWriter:
        return ObjectWriter(self.root, self.path(key))

    def put(self, key: str, chunks) -> int:
        """Stores `chunks` (bytes iterable) atomically under `key`; returns the size."""
        w = self.writer(key)
        try:
            for c in chunks:
                w.write(c)
        except BaseException:
            w.abort()
            raise
        w.commit()
        return w.size

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def chunks(self, key: str, size: int = CHUNK) -> Iterator[bytes]:
        with open(self.path(key), "rb") as f:
            while chunk := f.read(size):
                yield chunk

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
