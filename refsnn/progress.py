"""Progress output of the long commands: one overall bar with ETA, status lines, a kernel-compile notice.

Every long command (train, certify, attack, reproduce, verify.dataset) shows ONE bar over its
whole work (``Progress``), writes its status lines (epochs, steps) above it, and prints
``compiling kernels (first run only)`` when Numba starts compiling one of refsnn's kernels, which
happens only when it is not in Numba's on-disk cache (``compile_notice`` listens for Numba's
``numba:compile`` event, which a cache load does not fire). ``quiet=True`` silences all of it;
``bar=False`` keeps the lines and drops the bar (``--no-progress``).
"""
from __future__ import annotations

import sys
from typing import IO, Any, Callable, Optional

COMPILE_MESSAGE = "compiling kernels (first run only; later runs load them from Numba's cache)"


def _is_refsnn_kernel(dispatcher: Any) -> bool:
    module = getattr(getattr(dispatcher, "py_func", None), "__module__", "") or ""
    return module.startswith(("refsnn.", "verify."))


def compile_listener(say: Callable[[str], None], enabled: Callable[[], bool] = lambda: True) -> Any:
    """A Numba event listener that calls ``say(COMPILE_MESSAGE)`` once, when Numba starts
    compiling a refsnn kernel while ``enabled()``. Numba fires ``numba:compile`` only for a real
    compile, never for a load from its on-disk cache, so the message is said exactly when compiling
    happens."""
    from numba.core import event

    class CompileNotice(event.Listener):
        said = False

        def on_start(self, ev: Any) -> None:
            if not self.said and enabled() and _is_refsnn_kernel((getattr(ev, "data", None) or {}).get("dispatcher")):
                self.said = True
                say(COMPILE_MESSAGE)

        def on_end(self, ev: Any) -> None:
            pass

    return CompileNotice()


_listener: Any = None
_quiet = False   # the setting of the latest command in this process (one listener serves them all)


def compile_notice(quiet: bool = False) -> None:
    """From now on in this process, prints ``COMPILE_MESSAGE`` to stderr (above any running bar)
    once, when Numba starts compiling a refsnn kernel. ``quiet`` silences it until a later call
    without ``quiet`` (commands run one after another in one process, e.g. from tests or reproduce)."""
    global _listener, _quiet
    _quiet = quiet
    if quiet or _listener is not None:
        return
    from numba.core import event
    from tqdm import tqdm

    _listener = compile_listener(lambda message: tqdm.write(message, file=sys.stderr), lambda: not _quiet)
    event.register("numba:compile", _listener)


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
