"""The one thread-count knob: Numba's parallel kernels and NumPy's OpenBLAS.

``set_num_threads(n)`` sets the threads of Numba's ``prange`` loops (``numba.set_num_threads``)
and of the OpenBLAS bundled with NumPy (the GEMMs of ``refsnn.layers``). The OpenBLAS bundled
with SciPy, which Numba's ``np.dot`` calls per sample inside parallel kernels, always runs on one
thread (set when ``refsnn`` is imported). Numba's count is per Python thread: the knob sets it for
the thread that calls it (and, through ``REFSNN_NUM_THREADS``, for the importing thread); another
Python thread that calls refsnn starts at Numba's default unless it calls ``set_num_threads`` too.
The environment variable ``REFSNN_NUM_THREADS`` is applied when ``refsnn`` is imported; unset, each
library keeps its own default (all cores, or what ``NUMBA_NUM_THREADS``/``OPENBLAS_NUM_THREADS``
say, as in the single-threaded Dask workers of ``refsnn.parallel``).

Numba cannot go above the count it started with (``NUMBA_NUM_THREADS``, default all cores), so
that is the upper end of the allowed range. Numba's parallel kernels split work so that every sum
keeps its serial order (their results do not depend on the count), and so does the blocked conv
forward (one single-threaded GEMM per block); NumPy's OpenBLAS GEMMs (Linear layers, the conv
adjoint and bounds' dense products) may round differently at another thread count (last bits of
currents, bounds and gradients, and so,
rarely, a spike whose membrane is that close to the threshold): fix the count for bit-reproducible
runs. ``scoped_threads(n)`` sets both counts for a block (the attacks'); since OpenBLAS has one
count per process, blocks that overlap (in several Python threads) must ask for the same ``n``.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import numbers
import os
import re
import threading
from typing import Dict, Iterator, List, Optional

import numba

ENV_VARIABLE = "REFSNN_NUM_THREADS"

# Numba picks its threading layer as usual (TBB, else OpenMP, else workqueue); the first two are
# thread-safe, so refsnn may be called from several Python threads at once (workqueue aborts the
# process then: tests/test_threads.py). OpenMP's idle workers wait passively unless the user says
# otherwise: spinning workers took the cores from OpenBLAS's threads and from the next parallel
# region (FC forward batch 64 at 2 threads on the shared 2-core VM at load ~15: spinning 198 ms,
# passive 93 ms). Set before any parallel kernel runs (OpenMP reads it when it starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class ThreadCountError(ValueError):
    """A thread count outside ``[1, max_threads()]`` or not an integer."""


def max_threads() -> int:
    """The largest count allowed: the threads Numba started with (``NUMBA_NUM_THREADS``)."""
    return int(numba.config.NUMBA_NUM_THREADS)


_BLAS_FUNCTIONS: Dict[str, Optional[Dict[str, List[ctypes._CFuncPtr]]]] = {"set": None, "get": None}


def _blas_functions(kind: str) -> Dict[str, List[ctypes._CFuncPtr]]:
    """``openblas_set_num_threads`` (``kind="set"``) or ``openblas_get_num_threads`` (``"get"``) of
    the OpenBLAS bundled with NumPy and of the one bundled with SciPy (loaded ones are reused), by
    bundle name; a bundle whose library or symbol is not found has an empty list."""
    if _BLAS_FUNCTIONS[kind] is None:
        import numpy

        site = os.path.dirname(os.path.dirname(numpy.__file__))
        found: Dict[str, List[ctypes._CFuncPtr]] = {"numpy": [], "scipy": []}
        for bundle in found:
            for path in sorted(glob.glob(os.path.join(site, f"{bundle}.libs", "*openblas*.so*"))):
                try:
                    library = ctypes.CDLL(path)
                except OSError:
                    continue
                for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                                       ("openblas", "64_"), ("openblas", "")):
                    function = getattr(library, f"{prefix}_{kind}_num_threads{suffix}", None)
                    if function is not None:
                        if kind == "set":
                            function.argtypes, function.restype = [ctypes.c_int], None
                        else:
                            function.argtypes, function.restype = [], ctypes.c_int
                        found[bundle].append(function)
                        break
        _BLAS_FUNCTIONS[kind] = found
    return _BLAS_FUNCTIONS[kind]


def _blas_setters() -> Dict[str, List[ctypes._CFuncPtr]]:
    """``openblas_set_num_threads`` of NumPy's and SciPy's OpenBLAS, by bundle name."""
    return _blas_functions("set")


def _numpy_blas_getters() -> List[ctypes._CFuncPtr]:
    """``openblas_get_num_threads`` of the OpenBLAS bundled with NumPy (empty if not found)."""
    return _blas_functions("get")["numpy"]


class ThreadScopeError(ValueError):
    """A :func:`scoped_threads` block asking for another count than the blocks active in other
    Python threads (NumPy's OpenBLAS has one count per process)."""


# Blocks of scoped_threads active in the process (any Python thread): the OpenBLAS count is
# process-wide, so the first block to enter saves it and the last to leave restores it; a
# per-block save/restore let overlapping blocks of two threads restore each other's count.
_SCOPE_LOCK = threading.Lock()
_SCOPE = {"active": 0, "count": None, "saved": []}


@contextlib.contextmanager
def scoped_threads(n: Optional[int]) -> Iterator[None]:
    """Numba's parallel loops (in the calling thread) and NumPy's OpenBLAS on ``n`` threads inside
    the block; the previous counts are restored after it. ``None`` changes nothing.

    The OpenBLAS count is process-wide: blocks may overlap (nested, or in several Python threads)
    only with the same ``n``; entering with another ``n`` while a block is active raises
    ``ThreadScopeError`` (a ValueError). The first block to enter saves NumPy's OpenBLAS count, the
    last to leave restores it; another Python thread's GEMMs outside any block run at ``n`` too
    meanwhile. Numba's count is per Python thread and restored by each block for its own thread.
    """
    if n is None:
        yield
        return
    count = _parse(n, "the thread count")
    setters, getters = _blas_setters()["numpy"], _numpy_blas_getters()
    blas_known = bool(setters) and len(getters) == len(setters)
    with _SCOPE_LOCK:
        if _SCOPE["active"] and _SCOPE["count"] != count:
            raise ThreadScopeError(f"the thread count must be {_SCOPE['count']} (a block at that count is active "
                                   f"in this process; OpenBLAS has one count per process), got {count}")
        if not _SCOPE["active"]:
            _SCOPE["saved"] = [getter() for getter in getters] if blas_known else []
            _SCOPE["count"] = count
            if blas_known:
                for setter in setters:
                    setter(count)
        _SCOPE["active"] += 1
    previous_numba = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous_numba)
        with _SCOPE_LOCK:
            _SCOPE["active"] -= 1
            if not _SCOPE["active"]:
                for setter, value in zip(setters, _SCOPE["saved"]):
                    setter(value)
                _SCOPE["count"], _SCOPE["saved"] = None, []


def single_thread_kernel_blas() -> None:
    """SciPy's OpenBLAS on one thread: only Numba's ``np.dot`` calls it, on small per-sample
    products inside kernels that are parallel themselves (a threaded BLAS there would put
    n x n threads on n cores; measured: the CONV adjoint 8x slower at 2 threads)."""
    for setter in _blas_setters()["scipy"]:
        setter(1)


def _parse(value, name: str) -> int:
    limit = max_threads()
    count = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        count = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        count = int(value.strip())
    if count is None or not 1 <= count <= limit:
        raise ThreadCountError(f"{name} must be an integer in [1, {limit}] (the threads Numba started with, "
                               f"NUMBA_NUM_THREADS), got {value!r}")
    return count


def set_num_threads(n: int) -> int:
    """Runs Numba's parallel loops and NumPy's/SciPy's OpenBLAS on ``n`` threads; returns ``n``.

    ``n`` must be an integer in ``[1, max_threads()]``; otherwise ``ThreadCountError`` (a ValueError).
    """
    count = _parse(n, "the thread count")
    numba.set_num_threads(count)
    for setter in _blas_setters()["numpy"]:
        setter(count)
    single_thread_kernel_blas()
    return count


def get_num_threads() -> int:
    """The thread count of Numba's parallel loops (the one the knob last set)."""
    return int(numba.get_num_threads())


def apply_environment() -> Optional[int]:
    """Applies ``REFSNN_NUM_THREADS`` if it is set (called when ``refsnn`` is imported)."""
    single_thread_kernel_blas()
    value = os.environ.get(ENV_VARIABLE)
    if value is None or value == "":
        return None
    return set_num_threads(_parse(value, ENV_VARIABLE))
