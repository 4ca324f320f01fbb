"""Progress output of the long commands: one overall bar with ETA, status lines, a kernel-compile notice.

Every long command (train, certify, attack, reproduce, verify.dataset) shows ONE bar over its
whole work (``Progress``), writes its status lines (epochs, steps) above it, and prints
``compiling kernels (first run only)`` before the first call of Numba kernels that are neither
compiled in this process nor found in Numba's on-disk cache (``compile_notice``). ``quiet=True``
silences all of it; ``bar=False`` keeps the lines and drops the bar (``--no-progress``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, List, Optional

#: Modules whose ``numba.njit(cache=True)`` kernels the commands call.
KERNEL_MODULES = ("refsnn.kernels", "refsnn.ibp", "refsnn.crown")

COMPILE_MESSAGE = "compiling kernels (first run only; later runs load them from Numba's cache)"

_notice_shown = False


def _dispatchers() -> Iterator[Any]:
    import importlib

    from numba.core.dispatcher import Dispatcher

    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, Dispatcher):
                yield value


def uncompiled_kernels(exclude: Iterable[str] = ()) -> Optional[List[str]]:
    """Names of the kernels (less ``exclude``) that would be compiled on their first call: not
    compiled in this process and without an index file in Numba's cache. None when that cannot be told."""
    skip = set(exclude)
    try:
        missing = []
        for dispatcher in _dispatchers():
            if dispatcher.signatures or dispatcher.py_func.__qualname__ in skip:
                continue
            cache = getattr(dispatcher, "_cache", None)
            index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
            if index is None or not Path(index).is_file():
                missing.append(dispatcher.py_func.__qualname__)
        return missing
    except Exception:  # noqa: BLE001 - numba internals differ between versions; then it is unknown
        return None


def compile_notice(quiet: bool = False, file: Optional[IO[str]] = None) -> bool:
    """Prints ``COMPILE_MESSAGE`` once per process when kernels still need compiling; returns
    whether it printed. When the cache cannot be inspected, says the kernels may be compiled."""
    global _notice_shown
    if quiet or _notice_shown:
        return False
    missing = uncompiled_kernels()
    if missing == []:
        return False
    _notice_shown = True
    message = COMPILE_MESSAGE if missing else "loading kernels (compiled on the first run only)"
    print(message, file=file or sys.stderr, flush=True)
    return True


class Progress:
    """One bar over a command's whole work, with ETA, and status lines written above it.

    ``total`` units (samples, batches, steps); ``quiet`` silences bar and lines; ``bar=False``
    keeps the lines only. Lines go to ``file`` (default stdout), the bar to stderr.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", *, quiet: bool = False, bar: bool = True,
                 initial: int = 0, file: Optional[IO[str]] = None) -> None:
        self.quiet = quiet
        self.file = file
        self._bar = None
        if not quiet and bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                             file=sys.stderr, leave=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: v for k, v in values.items() if v is not None}, refresh=False)

    def set_description(self, desc: str) -> None:
        if self._bar is not None:
            self._bar.set_description(desc, refresh=False)

    def write(self, message: str) -> None:
        """A status line above the bar (nothing when quiet)."""
        if self.quiet:
            return
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(message, file=self.file or sys.stdout)
        else:
            print(message, file=self.file or sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
