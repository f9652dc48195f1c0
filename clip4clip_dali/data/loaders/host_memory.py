"""Host batches without fresh pages: let glibc reuse the freed blocks of earlier batches.

glibc serves an allocation above its mmap threshold (32 MB at most, adjusted on the fly) with a
fresh ``mmap`` and unmaps it on ``free``, so every float batch a CPU loader makes (58 MB for
8 clips x 12 frames x 3 x 224 x 224) is page-faulted and zeroed by the kernel again, on the
cores that also decode. Measured on 2 cores (benchmarks/results/cpu-2core-2026-12-06-shards.md):
copying DALI's output into the torch batch took ~3.5 s of a ~4 s pass, ~0.6 s with the blocks
reused. Raising the mmap threshold and the trim threshold keeps such blocks in the heap, where
the next batch takes them; the cost is up to ``TRIM`` bytes of freed memory the process keeps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("clip4clip_dali")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP = 256 << 20  # blocks up to this size come from the heap
TRIM = 1 << 30  # freed memory at the top of the heap kept for the next batches

_done = False


def reuse_freed_batches() -> bool:
    """Tune glibc's malloc once per process (True when done now or before). Left alone where
    the user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or where the C library
    is not glibc."""
    global _done
    if _done:
        return True
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM))
    if not _done:
        log.debug("mallopt refused the thresholds; batches keep their fresh pages")
    return _done
