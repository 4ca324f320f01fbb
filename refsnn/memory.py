"""The allocator setting of the training loop: keep freed memory mapped for the next step.

A robust CONV step allocates and frees about 1 GiB of ``[T', B, S, n]`` back-substitution
arrays (the coefficients, their record and their gradients). glibc serves every block above its
mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, so every step
faults all of those pages in again, zero-filled by the kernel: measured on the CONV robust step
(T' = 3, batch 64, one thread) 38,000 page faults and 0.7-1.6 s of system time beside 1.6 s of
user time, against 0 once freed memory is kept (``results/robust/bench_robust.md``).

``keep_freed_memory()`` tells glibc to serve large blocks from the heap (``M_MMAP_MAX = 0``) and
never to give freed heap memory back (``M_TRIM_THRESHOLD``): the process keeps its peak working
set (one step's) mapped and reuses it. It is process-wide and permanent, so it is set by the
drivers of long loops (``refsnn.train``), not when ``refsnn`` is imported.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# The largest trim threshold mallopt accepts (an int): freed memory below it stays mapped.
_NEVER_TRIM = 2 ** 31 - 1

_applied = False


def keep_freed_memory() -> bool:
    """Keeps freed memory mapped for reuse (glibc only); True if the setting is in force, False
    on a platform without glibc's ``mallopt`` (the allocator is then left as it is)."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return _applied
