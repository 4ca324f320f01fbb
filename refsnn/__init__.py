"""refsnn: a framework-free NumPy reference implementation of LIF spiking neural networks,
their certified robustness bounds (S-IBP, S-CROWN) and their training."""
from .layers import AvgPool2d, Conv2d, Flatten, Linear
from .network import SNN, Trace
from .neurons import ATan, Rectangular, Sigmoid
from .threads import get_num_threads, set_num_threads
from .threads import apply_environment as _apply_thread_environment

__version__ = "0.1.0"
__all__ = ["SNN", "Trace", "Linear", "Conv2d", "AvgPool2d", "Flatten", "Rectangular", "Sigmoid", "ATan",
           "set_num_threads", "get_num_threads"]

def _apply_environment_or_exit() -> None:
    """``REFSNN_NUM_THREADS``, when set. A bad value raises ``ThreadCountError``; while a command
    line ``python -m refsnn.<cmd>`` / ``python -m verify.<cmd>`` is being started (``sys.argv[0]``
    is ``"-m"`` until the module is found), it is that command's one-line error and exit code 2."""
    import sys

    from .threads import ThreadCountError

    try:
        _apply_thread_environment()
    except ThreadCountError as error:
        if sys.argv[:1] == ["-m"]:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        raise


_apply_environment_or_exit()
