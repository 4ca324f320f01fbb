"""The allocator setting of long training loops: keep freed memory mapped for the next step.

A robust CONV step allocates and frees about 1 GiB of ``[T', B, S, n]`` back-substitution
arrays (the coefficients, their record and their gradients). glibc serves every block above its
mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``, so every step
faults all of those pages in again, zero-filled by the kernel: measured on the CONV robust step
(T' = 3, batch 64, one thread) 38,000 page faults and 0.7-1.6 s of system time beside 1.6 s of
user time, against 0 once freed memory is kept (``results/robust/bench_robust.md``).

The setting tells glibc to serve large blocks from the heap (``M_MMAP_MAX = 0``) and not to give
freed heap memory back (``M_TRIM_THRESHOLD``), so the process keeps what it freed and reuses it.
The heap can then hold more than one step's peak (fragmentation), so it is scoped:
:func:`freed_memory_kept` applies it for the duration of a loop (``refsnn.train``'s ``fit``) and
afterwards trims the heap and sets the thresholds where glibc's own dynamic rule settles once large
blocks have been freed (mmap above 32 MiB, trim above 64 MiB): any ``mallopt`` call ends that
dynamic rule for the process, and its starting point (mmap above 128 KiB) would make every
mid-sized array of later work fault in again. ``REFSNN_KEEP_FREED_MEMORY=0`` turns the setting
off, and so does any ``MALLOC_*_`` variable or ``GLIBC_TUNABLES`` (the user's own allocator
settings are left alone). :func:`keep_freed_memory` applies it for the rest of the process
(benchmark workers).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import sys
from typing import Iterator, Optional

# glibc's mallopt parameters (malloc.h), its default block count and where its dynamic thresholds
# settle (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, trim = 2 x mmap threshold)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_SETTLED_MMAP_THRESHOLD = 32 * 2 ** 20
_SETTLED_TRIM_THRESHOLD = 64 * 2 ** 20
# The largest trim threshold mallopt accepts (an int): freed memory below it stays mapped.
_NEVER_TRIM = 2 ** 31 - 1

ENV_SWITCH = "REFSNN_KEEP_FREED_MEMORY"

_depth = 0          # nesting of freed_memory_kept
_permanent = False  # keep_freed_memory was called


def _libc() -> Optional[ctypes.CDLL]:
    """glibc, or None where the allocator is another (musl, macOS, Windows) or the switch is off."""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return None
    if "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ):
        return None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def _apply(libc: ctypes.CDLL) -> bool:
    if not libc.mallopt(_M_MMAP_MAX, 0):
        return False
    if not libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM):
        libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)  # all or nothing
        return False
    return True


def _restore(libc: ctypes.CDLL) -> None:
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD)
    libc.malloc_trim(0)


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[bool]:
    """Keeps freed memory mapped inside the ``with`` block (glibc only); yields True if the
    setting is in force. On leaving the outermost block the heap is trimmed and blocks above 32 MiB
    are unmapped on free again, unless :func:`keep_freed_memory` made the setting permanent. Not for
    concurrent use from several Python threads (the setting is process-wide)."""
    global _depth
    libc = _libc()
    if libc is None:
        yield False
        return
    applied = _permanent or _depth > 0 or _apply(libc)
    if applied:
        _depth += 1
    try:
        yield applied
    finally:
        if applied:
            _depth -= 1
            if _depth == 0 and not _permanent:
                _restore(libc)


def keep_freed_memory() -> bool:
    """Keeps freed memory mapped for the rest of the process (glibc only); True if the setting is
    in force; False where glibc's ``mallopt`` is not there or the setting is switched off
    (``REFSNN_KEEP_FREED_MEMORY=0``, the user's own ``MALLOC_*_``/``GLIBC_TUNABLES``): the allocator
    is then left as it is."""
    global _permanent
    if _permanent:
        return True
    libc = _libc()
    if libc is None:
        return False
    _permanent = _depth > 0 or _apply(libc)
    return _permanent


def release_freed_memory() -> bool:
    """Gives the heap's free pages back to the system (``malloc_trim``) while the setting is in
    force; True if it ran. Long loops call it every few dozen steps and after their evaluations:
    kept memory only pays while it is reused, and a heap that is never trimmed grows with
    fragmentation (a MNIST CONV robust run reached 12.5 GB resident and was killed for memory)."""
    if not (_permanent or _depth > 0):
        return False
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
