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

_apply_thread_environment()  # REFSNN_NUM_THREADS, when set
