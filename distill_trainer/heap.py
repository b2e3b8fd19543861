"""Handing the C heap's free pages back to the OS, and keeping them for reuse while a job computes.

glibc keeps freed blocks below its adaptive mmap threshold (up to 32 MiB) in its heap, and they count in
the process's memory until a trim: a process that dropped a teacher, or that built a model layer by layer
through temporary tensors, would otherwise go on holding that memory.

The opposite trade, for speed (`reusing_freed_memory`): a block above the threshold gets pages of its own
from the kernel and hands them back when freed, so a tensor the size of (positions, vocabulary), which a
training step or a decoding step makes several times over, is faulted in page by page every time. Where
page faults are dear (a virtualised or sandboxed kernel) that costs more than the arithmetic on those
tensors (docs/performance.md, "Freed memory kept for reuse").
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import os

# mallopt's parameter numbers (malloc.h) and glibc's defaults for them
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT_THRESHOLD = 128 * 1024
# blocks up to this size come from the heap, and this much free memory at its top is kept, while reusing
_REUSE_THRESHOLD = 1 << 30
_FALLBACK_THRESHOLD = 32 << 20


@functools.cache
def _libc_function(name: str):
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def _malloc_trim():
    return _libc_function("malloc_trim")


@contextlib.contextmanager
def reusing_freed_memory():
    """While the block runs, freed blocks of any size up to 1 GiB stay in the C heap and serve the next
    allocation, instead of going back to the kernel and being faulted in again; on leaving, glibc's default
    thresholds are set again and the heap is trimmed, so memory read afterwards tracks live data. Nothing
    changes where there is no glibc, or where the environment sets the allocator's thresholds itself
    (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_: the memory benchmarks do, so that resident memory
    tracks live tensors). Yields whether the thresholds were changed."""
    mallopt = _libc_function("mallopt")
    configured = any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
    if mallopt is None or configured:
        yield False
        return
    # older glibc refuses a threshold above 32 MiB (half its largest arena heap): then that is the most
    if not mallopt(_M_MMAP_THRESHOLD, _REUSE_THRESHOLD):
        mallopt(_M_MMAP_THRESHOLD, _FALLBACK_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _REUSE_THRESHOLD)
    try:
        yield True
    finally:
        mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)
        trim_heap()


def trim_heap() -> bool:
    """Return the heap's free pages to the OS (cheap: no garbage collection); False where there is no
    glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def release_freed_memory() -> bool:
    """Collect garbage, then `trim_heap()`, so that a model just dropped stops counting in memory; without
    it a process that held a teacher keeps its freed heap for the rest of its life. Returns whether the heap
    was trimmed (False where there is no glibc)."""
    gc.collect()
    return trim_heap()
