"""Keeps freed host memory in the process heap instead of returning it to the OS.

glibc serves every allocation above its mmap threshold (at most 32 MiB however it adapts)
with a fresh mmap and unmaps it on free, so each new tensor that size, a [256, 32000]
float32 logits matrix for one, is page-faulted and zeroed page by page again: ~24,000
faults and ~40 ms of kernel time per decode step at 256 sequences on a 2-core CPU
(bench/RESULTS.md, issue 17). Raising the mmap and trim thresholds lets the scheduler
process reuse that memory step after step; what it keeps is bounded by its own peak.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("genapi.engine.torch")

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3

#: Allocations below this come from the heap, and up to this much free heap is kept.
KEEP_BYTES = 1 << 30


def keep_freed_memory(keep_bytes: int = KEEP_BYTES) -> bool:
    """Sets glibc's mmap and trim thresholds to `keep_bytes`, for this whole process.
    True when set; False (nothing changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # musl, macOS, Windows: no mallopt
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, keep_bytes) == 1 and mallopt(_M_TRIM_THRESHOLD, keep_bytes) == 1
    if not ok:
        log.warning("mallopt refused the heap thresholds: large tensors will be page-faulted afresh")
    return ok
