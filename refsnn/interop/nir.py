"""NIR (Neuromorphic Intermediate Representation) graphs in and out of refsnn (extra ``refsnn[nir]``).

NIR describes neurons as continuous-time ODEs; refsnn's LIF is a discrete recurrence. The two
are tied by forward Euler with an explicit step ``dt`` (seconds per time step), every formula
evaluated by NumPy in the dtype of the stored parameters (``dt`` is a Python float, so float32
parameters, as snnTorch writes them, are evaluated in float32, as snnTorch's own importer does)::

    LIF  tau dv/dt = (v_leak - v) + r I   ->  m_t = (1 - dt/tau) m_{t-1} + ((dt*r)/tau) I_t + (dt*v_leak)/tau
    IF       dv/dt = r I                  ->  m_t = m_{t-1} + (dt*r) I_t
    spike  z_t = 1[m_t > v_threshold] (NIR's comparison); after a spike m_t := v_reset (must be 0),
           so the next step starts from 0: refsnn's  m_t = I_t + alpha m_{t-1} (1 - s_{t-1}).

``alpha = 1 - dt/tau`` becomes the network's decay; the input scale ``(dt*r)/tau`` multiplies the
preceding Affine/Linear/Conv2d weight and bias, and the leak term ``(dt*v_leak)/tau`` is added to
that bias (each fold is reported as a notice; nothing is folded when the scale is exactly 1 and
the leak 0). Anything refsnn cannot represent exactly is refused by name (:class:`NIRRefused`).

The core package never imports ``nir``; this module imports it on first use.
See docs/INTEROP.md ("NIR").
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..layers import AvgPool2d, Conv2d, Flatten, Linear
from ..network import SNN
from ..validation import FIRING_MODES

__all__ = ["from_nir", "read_nir", "to_nir", "write_nir", "load_any_model", "NIRError", "NIRRefused",
           "NIRNotice", "NIRImport", "require_nir", "NIR_REQUIREMENT", "FIRING_METADATA_KEY"]

NIR_REQUIREMENT = "nir>=1.0.6,<2"
FIRING_METADATA_KEY = "refsnn_firing"   # per neuron node; written only with to_nir(firing_metadata=True)
_NIR_FIRING = ">"                       # NIR's LIF/IF: z = 1 if v > v_threshold
_SUPPORTED = "Input, Output, Affine, Linear, Conv2d, AvgPool2d, SumPool2d, Flatten, LIF, IF"


class NIRError(ValueError):
    """A NIR graph or file that cannot be read, or a bad argument (dt, firing)."""


class NIRRefused(NIRError):
    """A valid NIR graph that refsnn cannot represent exactly; the message names the node and field."""


class NIRNotice(UserWarning):
    """A conversion step that is exact in real arithmetic but changes float rounding (a fold)."""


def require_nir():
    """Imports and returns ``nir``, or raises ImportError telling how to install the extra."""
    try:
        import nir
    except ImportError:
        raise ImportError("reading or writing NIR graphs needs the nir package, which the core package does "
                          f'not install: pip install "refsnn[nir]"  (installs {NIR_REQUIREMENT})') from None
    return nir


def _check_dt(dt: Any) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(dt)) or float(dt) <= 0:
        raise NIRError(f"dt must be a finite number > 0 (seconds per time step; snnTorch's NIR export uses "
                       f"1e-4), got {dt!r}")
    return float(dt)


def _check_firing(firing: Any) -> Optional[str]:
    if firing is not None and firing not in FIRING_MODES:
        raise NIRError(f"firing must be None (NIR's '>' unless the graph records refsnn's), '>' or '>=', "
                       f"got {firing!r}")
    return firing


# --- NIR -> refsnn -------------------------------------------------------------------------------

@dataclass
class NIRImport:
    """What :func:`read_nir` produced: the network, the notices of every fold, the dt and firing used."""

    net: SNN
    dt: float
    firing: str
    nodes: List[str]
    notices: List[str] = field(default_factory=list)


def _load_graph(graph_or_path, nir):
    if isinstance(graph_or_path, (str, os.PathLike)):
        path = Path(graph_or_path)
        if not path.exists():
            raise FileNotFoundError(f"no such NIR file: {path}")
        try:
            # refsnn checks every shape itself; nir's type check rejects graphs some writers produce
            return nir.read(path, type_check=False), str(path)
        except Exception as error:  # h5py, KeyError, AssertionError, ...: one message for any unreadable file
            raise NIRError(f"{path} is not a readable NIR file ({type(error).__name__}: {error})") from None
    if isinstance(graph_or_path, nir.NIRGraph):
        return graph_or_path, "NIR graph"
    raise NIRError(f"from_nir takes a nir.NIRGraph or the path of a .nir file, got {type(graph_or_path).__name__}")


def _chain(graph, nir, source: str) -> List[str]:
    """The node names from the Input to the Output, refusing anything that is not one chain."""
    nodes, edges = dict(graph.nodes), [tuple(edge) for edge in graph.edges]
    for name, node in nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise NIRRefused(f"{source}: node {name!r} is a subgraph (NIRGraph, e.g. snnTorch's RLeaky/RSynaptic "
                             "recurrent layer); refsnn runs feed-forward chains only")
    for a, b in edges:
        for end in (a, b):
            if end not in nodes:
                raise NIRError(f"{source}: edge ({a!r}, {b!r}) names node {end!r}, which the graph does not hold")
    inputs = [n for n, node in nodes.items() if isinstance(node, nir.Input)]
    outputs = [n for n, node in nodes.items() if isinstance(node, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise NIRRefused(f"{source}: the graph has {len(inputs)} Input and {len(outputs)} Output nodes; refsnn "
                         "needs exactly one of each (a single chain)")
    successors: Dict[str, List[str]] = {n: [] for n in nodes}
    predecessors: Dict[str, List[str]] = {n: [] for n in nodes}
    for a, b in edges:
        successors[a].append(b)
        predecessors[b].append(a)
    # a cycle first: it is what a recurrent layer looks like, and the clearer reason
    indegree = {n: len(p) for n, p in predecessors.items()}
    ready, seen = [n for n, d in indegree.items() if d == 0], 0
    while ready:
        n = ready.pop()
        seen += 1
        for m in successors[n]:
            indegree[m] -= 1
            if indegree[m] == 0:
                ready.append(m)
    if seen < len(nodes):
        a, b = next((a, b) for a, b in edges if indegree[a] > 0 and indegree[b] > 0)
        raise NIRRefused(f"{source}: recurrent edge ({a!r}, {b!r}) (the graph has a cycle); refsnn runs "
                         "feed-forward chains only")
    for n in nodes:
        if len(predecessors[n]) > 1 or len(successors[n]) > 1:
            raise NIRRefused(f"{source}: non-sequential graph: node {n!r} has {len(predecessors[n])} inputs and "
                             f"{len(successors[n])} outputs; refsnn runs one chain Input -> ... -> Output")
    order, current = [], inputs[0]
    while True:
        order.append(current)
        if not successors[current]:
            break
        current = successors[current][0]
    if order[-1] != outputs[0]:
        raise NIRRefused(f"{source}: the chain from {inputs[0]!r} ends at {order[-1]!r}, not at the Output node")
    stray = sorted(set(nodes) - set(order))
    if stray:
        raise NIRRefused(f"{source}: nodes {stray} are not on the chain from the Input to the Output")
    return order


def _shape(value, what: str, source: str) -> Tuple[int, ...]:
    array = None if value is None else np.atleast_1d(np.asarray(value))
    if array is None or array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu" or np.any(array < 1):
        raise NIRRefused(f"{source}: {what} must give the per-sample input shape (positive integers, no batch "
                         f"axis), got {value!r}; write the graph with its Input type")
    return tuple(int(v) for v in array)


def _pair(value, what: str, source: str) -> Tuple[int, int]:
    array = np.atleast_1d(np.asarray(value))
    if array.size == 1:
        array = np.repeat(array, 2)
    if array.shape != (2,) or array.dtype.kind not in "iu":
        raise NIRRefused(f"{source}: {what} must be an integer or a pair of integers, got {value!r}")
    return int(array[0]), int(array[1])


def _param(node, name: str, node_name: str, shape: Tuple[int, ...], source: str) -> np.ndarray:
    """A neuron parameter broadcast to the layer's neuron shape, finite, in its stored float dtype."""
    array = np.asarray(getattr(node, name))
    if array.dtype.kind not in "iuf":
        raise NIRError(f"{source}: node {node_name!r} field {name} must be real numbers, got dtype {array.dtype}")
    if array.dtype.kind in "iu":
        array = array.astype(np.float64)
    try:
        array = np.broadcast_to(array, shape)
    except ValueError:
        raise NIRRefused(f"{source}: node {node_name!r} field {name} has shape {array.shape}, which does not match "
                         f"the {shape} neurons of the layer before it") from None
    if not np.all(np.isfinite(array)):
        raise NIRRefused(f"{source}: node {node_name!r} field {name} holds a non-finite value "
                         f"({float(array[~np.isfinite(array)].ravel()[0])!r}); the Euler step is undefined")
    return array


def _one_value(array: np.ndarray, what: str, node_name: str, source: str, why: str) -> float:
    values = np.unique(array)
    if values.size != 1:
        raise NIRRefused(f"{source}: node {node_name!r} has per-neuron {what} ({values.size} distinct values, "
                         f"{float(values[0])!r} to {float(values[-1])!r}); {why}")
    return float(values[0])


def _neuron(node, node_name: str, nir, shape, dt: float, source: str):
    """(decay, threshold, input scale [*shape], leak term [*shape]) of a LIF or IF node."""
    threshold = _param(node, "v_threshold", node_name, shape, source)
    reset = _param(node, "v_reset", node_name, shape, source) if getattr(node, "v_reset", None) is not None \
        else np.zeros(shape)
    if np.any(reset != 0):
        raise NIRRefused(f"{source}: node {node_name!r} has v_reset = {float(reset[reset != 0].ravel()[0])!r}; refsnn "
                         "resets the membrane to 0 after a spike (a subtractive or other reset is not its LIF)")
    if isinstance(node, nir.LIF):
        tau = _param(node, "tau", node_name, shape, source)
        r = _param(node, "r", node_name, shape, source)
        v_leak = _param(node, "v_leak", node_name, shape, source)
        if np.any(tau <= 0):
            raise NIRRefused(f"{source}: node {node_name!r} has tau <= 0 ({float(tau[tau <= 0].ravel()[0])!r})")
        decay_array = 1 - dt / tau
        scale = (dt * r) / tau
        leak = (dt * v_leak) / tau
    else:
        r = _param(node, "r", node_name, shape, source)
        decay_array = np.ones(shape)
        scale = dt * r
        leak = np.zeros(shape)
    decay = _one_value(decay_array, "tau (decay 1 - dt/tau)", node_name, source,
                       "refsnn has one decay for the whole network")
    if not 0.0 <= decay <= 1.0:
        raise NIRRefused(f"{source}: node {node_name!r}: forward Euler decay 1 - dt/tau = {decay!r} is outside "
                         f"[0, 1] (tau < dt); use a smaller dt (given {dt!r})")
    th = _one_value(threshold, "v_threshold", node_name, source, "refsnn has one threshold for the whole network")
    if not th > 0:
        raise NIRRefused(f"{source}: node {node_name!r} has v_threshold = {th!r}; refsnn's LIF needs a threshold "
                         "> 0 (above the reset value 0)")
    if not np.all(np.isfinite(scale)) or not np.all(np.isfinite(leak)):
        raise NIRRefused(f"{source}: node {node_name!r}: the input scale (dt*r)/tau or the leak term "
                         "(dt*v_leak)/tau is not finite")
    return decay, th, np.asarray(scale, dtype=np.float64), np.asarray(leak, dtype=np.float64)


def _fold(affine, scale: np.ndarray, leak: np.ndarray, node_name: str, source: str, notices: List[str]):
    """Applies the input scale and the leak term to the affine op before the neuron (W' = g W, b' = g b + l)."""
    kind, weight, bias, extra = affine
    if np.all(scale == 1) and np.all(leak == 0):
        return affine
    if kind == "conv2d":
        # a Conv2d has one weight slice and one bias per output channel
        per_channel = []
        for what, array in (("r (input scale (dt*r)/tau)", scale), ("v_leak (leak term (dt*v_leak)/tau)", leak)):
            flat = array.reshape(array.shape[0], -1)
            if np.any(flat != flat[:, :1]):
                raise NIRRefused(f"{source}: node {node_name!r}: {what} varies within a channel of the Conv2d "
                                 "before it; it cannot be folded into that Conv2d's per-channel weight and bias")
            per_channel.append(flat[:, 0])
        g, l = per_channel
        weight = weight.astype(np.float64) * g[:, None, None, None]
    else:
        g, l = scale, leak
        weight = weight.astype(np.float64) * g[:, None]
    bias = bias.astype(np.float64) * g + l
    notices.append(f"node {node_name!r}: input scale (dt*r)/tau (values {np.unique(g)[:3].tolist()}) and leak term "
                   f"(dt*v_leak)/tau (values {np.unique(l)[:3].tolist()}) folded into the weight and bias of the "
                   "layer before it (exact in real arithmetic; float rounding may differ from a simulator that "
                   "scales after summing)")
    return kind, weight, bias, extra


def read_nir(graph_or_path, dt: float, *, firing: Optional[str] = None, dtype=np.float64) -> NIRImport:
    """Converts a NIR graph (or a ``.nir`` file) into a refsnn network; see :func:`from_nir`."""
    nir = require_nir()
    dt = _check_dt(dt)
    firing = _check_firing(firing)
    graph, source = _load_graph(graph_or_path, nir)
    order = _chain(graph, nir, source)
    input_shape = _shape(graph.nodes[order[0]].input_type.get("input"), f"Input node {order[0]!r}", source)
    layers, notices, neurons = [], [], []
    shape, affine, pool_scale = input_shape, None, 1.0
    recorded = set()

    def add_affine(kind, weight, bias, extra, node_name):
        nonlocal pool_scale
        if affine is not None:
            raise NIRRefused(f"{source}: node {node_name!r} follows another affine node without a neuron between "
                             "them; refsnn needs a LIF or IF after every Affine/Linear/Conv2d")
        if pool_scale != 1.0:
            # a SumPool2d before: its window area (a power of two, so exact) moves into this weight
            weight = weight.astype(np.float64) * pool_scale
            pool_scale = 1.0
        return kind, weight, bias, extra

    for node_name in order[1:-1]:
        node = graph.nodes[node_name]
        kind = type(node).__name__
        if isinstance(node, (nir.Affine, nir.Linear)):
            weight = np.asarray(node.weight)
            if weight.ndim != 2:
                raise NIRRefused(f"{source}: node {node_name!r} ({kind}) has a {weight.ndim}-D weight; refsnn's "
                                 "Linear takes [out, in]")
            if shape != (weight.shape[1],):
                raise NIRRefused(f"{source}: node {node_name!r} ({kind}) takes inputs of shape ({weight.shape[1]},) "
                                 f"but receives {shape}; a Flatten node must come first")
            bias = np.asarray(node.bias) if isinstance(node, nir.Affine) else np.zeros(weight.shape[0])
            affine = add_affine("linear", weight, bias, {}, node_name)
            shape = (weight.shape[0],)
        elif isinstance(node, nir.Conv2d):
            weight = np.asarray(node.weight)
            if weight.ndim != 4:
                raise NIRRefused(f"{source}: node {node_name!r} (Conv2d) weight must be [out, in, kh, kw], "
                                 f"got shape {weight.shape}")
            if _pair(node.dilation, f"node {node_name!r} dilation", source) != (1, 1) or int(node.groups) != 1:
                raise NIRRefused(f"{source}: node {node_name!r} (Conv2d) has dilation {node.dilation} and groups "
                                 f"{node.groups}; refsnn's Conv2d has dilation 1 and groups 1")
            if isinstance(node.padding, str) and node.padding != "valid":
                raise NIRRefused(f"{source}: node {node_name!r} (Conv2d) has padding {node.padding!r}; refsnn "
                                 "takes integer padding (or 'valid')")
            padding = (0, 0) if isinstance(node.padding, str) else _pair(node.padding, "Conv2d padding", source)
            stride = _pair(node.stride, f"node {node_name!r} stride", source)
            if len(shape) != 3 or shape[0] != weight.shape[1]:
                raise NIRRefused(f"{source}: node {node_name!r} (Conv2d) takes ({weight.shape[1]}, H, W) inputs "
                                 f"but receives {shape}")
            bias = np.asarray(node.bias) if node.bias is not None else np.zeros(weight.shape[0])
            conv = Conv2d(weight, bias, stride=stride, padding=padding)
            affine = add_affine("conv2d", weight, bias, {"stride": stride, "padding": padding}, node_name)
            shape = conv.output_shape(shape)
        elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
            if affine is not None:
                raise NIRRefused(f"{source}: node {node_name!r} ({kind}) sits between an affine node and its "
                                 "neuron; refsnn needs the neuron right after the Affine/Linear/Conv2d")
            kernel = _pair(node.kernel_size, f"node {node_name!r} kernel_size", source)
            stride = _pair(node.stride, f"node {node_name!r} stride", source)
            if _pair(node.padding, f"node {node_name!r} padding", source) != (0, 0):
                raise NIRRefused(f"{source}: node {node_name!r} ({kind}) has padding {node.padding}; refsnn's "
                                 "pooling has none")
            if isinstance(node, nir.SumPool2d):
                area = kernel[0] * kernel[1]
                if area & (area - 1):
                    raise NIRRefused(f"{source}: node {node_name!r} (SumPool2d) has a {kernel} window; refsnn "
                                     "represents a sum pool as an average pool times the window area folded into "
                                     "the next layer, exact only for an area that is a power of two")
                pool_scale *= area
                notices.append(f"node {node_name!r}: SumPool2d {kernel} read as AvgPool2d with its window area "
                               f"{area} folded into the next layer's weight (exact: a power of two)")
            if len(shape) != 3:
                raise NIRRefused(f"{source}: node {node_name!r} ({kind}) takes (C, H, W) inputs, receives {shape}")
            pool = AvgPool2d(kernel, stride)
            shape = pool.output_shape(shape)
            layers.append(pool)
        elif isinstance(node, nir.Flatten):
            if affine is not None:
                raise NIRRefused(f"{source}: node {node_name!r} (Flatten) sits between an affine node and its "
                                 "neuron; refsnn needs the neuron right after the Affine/Linear/Conv2d")
            ndim = len(shape)
            start, end = int(node.start_dim), int(node.end_dim)
            if not (start in (0, -ndim) and end in (-1, ndim - 1)):
                raise NIRRefused(f"{source}: node {node_name!r} (Flatten) flattens dims {start}..{end} of a "
                                 f"{shape} input (no batch axis); refsnn's Flatten flattens all of them (0..-1)")
            if ndim > 1:
                layers.append(Flatten())
                shape = (int(np.prod(shape)),)
        elif isinstance(node, (nir.LIF, nir.IF)):
            if affine is None:
                raise NIRRefused(f"{source}: node {node_name!r} ({kind}) does not follow an Affine/Linear/Conv2d "
                                 "node directly; refsnn's neurons sit right after one")
            decay, th, scale, leak = _neuron(node, node_name, nir, shape, dt, source)
            affine = _fold(affine, scale, leak, node_name, source, notices)
            op_kind, weight, bias, extra = affine
            layers.append(Linear(weight, bias) if op_kind == "linear" else Conv2d(weight, bias, **extra))
            affine = None
            neurons.append((node_name, decay, th))
            value = (node.metadata or {}).get(FIRING_METADATA_KEY)
            recorded.add(value.decode() if isinstance(value, bytes) else value)
        else:
            reasons = {
                "CubaLIF": "its synaptic current (tau_syn) is a second state refsnn's LIF does not have",
                "CubaLI": "a current-based leaky integrator has no spikes",
                "LI": "a leaky integrator has no spikes (refsnn's output is the last LIF's spike rate)",
                "I": "an integrator has no spikes",
                "Conv1d": "refsnn has 2-D convolutions only",
                "Scale": "a per-neuron scale outside an affine node is not one of refsnn's layers",
                "Delay": "refsnn has no synaptic delays",
                "Threshold": "a threshold without membrane dynamics is not refsnn's LIF",
                "Input": "a second Input", "Output": "a second Output",
            }
            raise NIRRefused(f"{source}: node {node_name!r} is a {kind} node: "
                             f"{reasons.get(kind, 'not a node type refsnn reads')}; supported: {_SUPPORTED}")
    if affine is not None:
        raise NIRRefused(f"{source}: the last affine node has no neuron after it; refsnn's output is the spike "
                         "rate of a LIF or IF layer")
    if not neurons or not layers or not layers[-1].has_neuron:
        raise NIRRefused(f"{source}: the graph must end with a LIF or IF node before its Output (refsnn's output "
                         "is the last neuron layer's spike rate)")
    for what, index in (("decay 1 - dt/tau", 1), ("v_threshold", 2)):
        values = sorted({n[index] for n in neurons})
        if len(values) > 1:
            where = ", ".join(f"{n[0]!r}: {n[index]!r}" for n in neurons)
            raise NIRRefused(f"{source}: the neuron nodes differ in {what} ({where}); refsnn has one value for the "
                             "whole network")
    if len(recorded) > 1 or not recorded <= {None, *FIRING_MODES}:
        raise NIRError(f"{source}: neuron metadata {FIRING_METADATA_KEY!r} must be one of {FIRING_MODES} in every "
                       f"neuron node or in none, got {sorted(map(str, recorded))}")
    stored = next(iter(recorded))
    if firing is not None and stored is not None and firing != stored:
        raise NIRError(f"{source}: firing={firing!r} contradicts the graph's {FIRING_METADATA_KEY} {stored!r}")
    used = firing or stored or _NIR_FIRING
    _, decay, threshold = neurons[0]
    net = SNN(layers, threshold=threshold, decay=decay, firing=used, input_shape=input_shape, dtype=dtype)
    output = graph.nodes[order[-1]].output_type.get("output")
    if output is not None and np.asarray(output).size and int(np.prod(output)) != net.n_outputs:
        raise NIRRefused(f"{source}: the Output node declares shape {np.asarray(output).tolist()} but the last "
                         f"neuron layer has {net.n_outputs} neurons")
    return NIRImport(net=net, dt=dt, firing=used, nodes=order, notices=notices)


def from_nir(graph_or_path, dt: float, *, firing: Optional[str] = None, dtype=np.float64) -> SNN:
    """A refsnn :class:`SNN` from a ``nir.NIRGraph`` or a ``.nir`` file, discretized with step ``dt``.

    ``firing``: None uses the comparison recorded by refsnn's writer (``to_nir(firing_metadata=True)``)
    or else NIR's ``v > v_threshold`` (``">"``); ``">="`` is for graphs whose simulator fires at the
    threshold. Every fold (input scale, leak, sum pool) is issued as a :class:`NIRNotice` warning.
    Input spikes are ``[T, B, *input_shape]`` with the Input node's shape. Raises :class:`NIRRefused`
    for what refsnn cannot represent exactly.
    """
    result = read_nir(graph_or_path, dt, firing=firing, dtype=dtype)
    for notice in result.notices:
        warnings.warn(notice, NIRNotice, stacklevel=2)
    return result.net


# --- refsnn -> NIR -------------------------------------------------------------------------------

def _neighbours(value: float, count: int = 16):
    yield value
    up = down = value
    for _ in range(count):
        up, down = np.nextafter(up, math.inf), np.nextafter(down, -math.inf)
        yield float(up)
        yield float(down)


def _exact_tau(decay: float, dt: float) -> Optional[float]:
    """A float64 tau with ``1 - dt/tau == decay`` exactly (as :func:`read_nir` evaluates it), or None."""
    for tau in _neighbours(dt / (1.0 - decay)):
        if tau > 0 and 1 - dt / np.float64(tau) == decay:
            return tau
    return None


def _exact_r(dt: float, tau: Optional[float]) -> Optional[float]:
    """A float64 r with input scale ``(dt*r)/tau == 1`` (LIF) or ``dt*r == 1`` (IF, tau None) exactly."""
    for r in _neighbours(tau / dt if tau is not None else 1.0 / dt):
        scale = (dt * np.float64(r)) / np.float64(tau) if tau is not None else dt * np.float64(r)
        if scale == 1.0:
            return r
    return None


def to_nir(net: SNN, dt: float, *, firing_metadata: bool = False):
    """The ``nir.NIRGraph`` of ``net`` for step ``dt``: Input, then per layer Affine/Conv2d/AvgPool2d/
    Flatten, a LIF (or IF when the decay is 1) after each Affine/Conv2d, then Output.

    Neuron parameters are float64 arrays of the layer's neuron shape, chosen so that :func:`from_nir`
    with the same ``dt`` gives back ``net`` bit for bit: ``tau`` with ``1 - dt/tau == decay``, ``r``
    with ``(dt*r)/tau == 1``, ``v_leak = v_reset = 0``. NIR's neurons fire when ``v > v_threshold``;
    a ``firing=">="`` network is refused unless ``firing_metadata=True``, which records ``">="`` in each
    neuron node's metadata (read back by refsnn; other NIR readers simulate ``>``).
    """
    nir = require_nir()
    dt = _check_dt(dt)
    if not isinstance(net, SNN):
        raise NIRError(f"to_nir takes a refsnn SNN, got {type(net).__name__}")
    if getattr(net, "reset", "zero") != "zero":
        raise NIRRefused(f"reset={net.reset!r}: NIR's LIF and IF nodes reset to v_reset; only reset='zero' networks "
                         "are written")
    if net.firing != _NIR_FIRING and not firing_metadata:
        raise NIRRefused("NIR's LIF and IF fire when v > v_threshold; this network fires at m >= threshold. "
                         "Pass firing_metadata=True to record '>=' in each neuron node's metadata (refsnn reads "
                         "it back; other NIR readers simulate '>')")
    decay = float(net.decay)
    tau = None
    if decay != 1.0:
        tau = _exact_tau(decay, dt)
        if tau is None:
            raise NIRRefused(f"decay {decay!r} is not 1 - dt/tau for any float64 tau (dt = {dt!r}); NIR stores tau, "
                             f"so this decay cannot be written exactly (decays in [0.5, 1] always can)")
    r = _exact_r(dt, tau)
    if r is None:
        raise NIRRefused(f"no float64 r gives an input scale of exactly 1 for dt = {dt!r} and tau = {tau!r}")
    metadata = {FIRING_METADATA_KEY: net.firing} if firing_metadata else {}
    nodes: Dict[str, Any] = {"input": nir.Input(input_type={"input": np.asarray(net.input_shape)})}
    names, shape = ["input"], tuple(net.input_shape)
    for index, layer in enumerate(net.layers):
        name = f"layer{index}"
        if layer.kind == "linear":
            node = nir.Affine(weight=np.array(layer.weight), bias=np.array(layer.bias))
        elif layer.kind == "conv2d":
            node = nir.Conv2d(input_shape=tuple(int(v) for v in shape[1:]), weight=np.array(layer.weight),
                              stride=tuple(layer.stride), padding=tuple(layer.padding), dilation=(1, 1), groups=1,
                              bias=np.array(layer.bias))
        elif layer.kind == "avgpool2d":
            node = nir.AvgPool2d(kernel_size=np.asarray(layer.kernel_size), stride=np.asarray(layer.stride),
                                 padding=np.zeros(2, dtype=np.int64))
        else:
            node = nir.Flatten(input_type={"input": np.asarray(shape)}, start_dim=0, end_dim=-1)
        nodes[name] = node
        names.append(name)
        shape = tuple(layer.output_shape(shape))
        if layer.has_neuron:
            full = lambda value: np.full(shape, value, dtype=np.float64)  # noqa: E731
            if tau is None:
                neuron = nir.IF(r=full(r), v_threshold=full(net.threshold), v_reset=full(0.0), metadata=dict(metadata))
            else:
                neuron = nir.LIF(tau=full(tau), r=full(r), v_leak=full(0.0), v_threshold=full(net.threshold),
                                 v_reset=full(0.0), metadata=dict(metadata))
            nodes[f"lif{index}"] = neuron
            names.append(f"lif{index}")
    nodes["output"] = nir.Output(output_type={"output": np.asarray(shape)})
    names.append("output")
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])))


def write_nir(net: SNN, path: Union[str, os.PathLike], dt: float, *, firing_metadata: bool = False) -> Path:
    """Writes :func:`to_nir` of ``net`` to ``path`` (a ``.nir`` HDF5 file, ``nir.write``); returns the path."""
    nir = require_nir()
    graph = to_nir(net, dt, firing_metadata=firing_metadata)
    path = Path(path)
    if path.suffix != ".nir":
        raise NIRError(f"a NIR file name ends in .nir, got {path.name!r}")
    nir.write(path, graph)
    return path


# --- one loader for the command-line tools ---------------------------------------------------------

def load_any_model(path: Union[str, os.PathLike], dt: Optional[float] = None, dtype=None) -> SNN:
    """A model from ``path``: a ``.nir`` file converted in memory with step ``dt`` (required there),
    any other file read as refsnn's HDF5 model (``refsnn.io.load_model``; ``dt`` must then be None)."""
    from ..io import load_model

    if Path(path).suffix.lower() == ".nir":
        if dt is None:
            raise NIRError(f"{path} is a NIR graph (continuous time): give the time step with --dt (dt=...), e.g. "
                           "1e-4 for snnTorch's exports")
        return from_nir(path, dt, dtype=dtype if dtype is not None else np.float64)
    if dt is not None:
        raise NIRError(f"--dt (dt={dt!r}) applies to .nir models only; {path} is read as a refsnn HDF5 model")
    return load_model(path, dtype=dtype)
