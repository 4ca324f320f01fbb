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
keeps its serial order (their results do not depend on the count); NumPy's OpenBLAS GEMMs may
round differently at another thread count (last bits of currents, bounds and gradients, and so,
rarely, a spike whose membrane is that close to the threshold): fix the count for bit-reproducible
runs.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import numbers
import os
import re
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


_BLAS_SETTERS: Optional[Dict[str, List[ctypes._CFuncPtr]]] = None


def _blas_setters() -> Dict[str, List[ctypes._CFuncPtr]]:
    """``openblas_set_num_threads`` of the OpenBLAS bundled with NumPy and of the one bundled with
    SciPy (loaded ones are reused), by bundle name."""
    global _BLAS_SETTERS
    if _BLAS_SETTERS is None:
        import numpy

        site = os.path.dirname(os.path.dirname(numpy.__file__))
        setters: Dict[str, List[ctypes._CFuncPtr]] = {"numpy": [], "scipy": []}
        for bundle in setters:
            for path in sorted(glob.glob(os.path.join(site, f"{bundle}.libs", "*openblas*.so*"))):
                try:
                    library = ctypes.CDLL(path)
                except OSError:
                    continue
                for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                               "openblas_set_num_threads64_", "openblas_set_num_threads"):
                    setter = getattr(library, symbol, None)
                    if setter is not None:
                        setter.argtypes, setter.restype = [ctypes.c_int], None
                        setters[bundle].append(setter)
                        break
        _BLAS_SETTERS = setters
    return _BLAS_SETTERS


_BLAS_GETTERS: Optional[List[ctypes._CFuncPtr]] = None


def _numpy_blas_getters() -> List[ctypes._CFuncPtr]:
    """``openblas_get_num_threads`` of the OpenBLAS bundled with NumPy (empty if not found)."""
    global _BLAS_GETTERS
    if _BLAS_GETTERS is None:
        import numpy

        site = os.path.dirname(os.path.dirname(numpy.__file__))
        getters: List[ctypes._CFuncPtr] = []
        for path in sorted(glob.glob(os.path.join(site, "numpy.libs", "*openblas*.so*"))):
            try:
                library = ctypes.CDLL(path)
            except OSError:
                continue
            for symbol in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                           "openblas_get_num_threads64_", "openblas_get_num_threads"):
                getter = getattr(library, symbol, None)
                if getter is not None:
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    getters.append(getter)
                    break
        _BLAS_GETTERS = getters
    return _BLAS_GETTERS


@contextlib.contextmanager
def scoped_threads(n: Optional[int]) -> Iterator[None]:
    """Numba's parallel loops (in the calling thread) and NumPy's OpenBLAS on ``n`` threads inside
    the block; the previous counts are restored after it. ``None`` changes nothing.

    The OpenBLAS count is process-wide: another Python thread's GEMMs run at ``n`` threads too
    while the block lasts (their last bits may differ, as at any other count).
    """
    if n is None:
        yield
        return
    count = _parse(n, "the thread count")
    setters, getters = _blas_setters()["numpy"], _numpy_blas_getters()
    blas_known = bool(setters) and len(getters) == len(setters)
    previous_blas = [getter() for getter in getters] if blas_known else []
    previous_numba = numba.get_num_threads()
    numba.set_num_threads(count)
    if blas_known:
        for setter in setters:
            setter(count)
    try:
        yield
    finally:
        numba.set_num_threads(previous_numba)
        for setter, value in zip(setters if blas_known else [], previous_blas):
            setter(value)


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
