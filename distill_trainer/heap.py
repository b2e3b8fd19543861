"""Handing the C heap's free pages back to the OS.

glibc keeps freed blocks below its adaptive mmap threshold (up to 32 MiB) in its heap, and they count in
the process's memory until a trim: a process that dropped a teacher, or that built a model layer by layer
through temporary tensors, would otherwise go on holding that memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


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
