"""Import of PyTorch spiking networks (snnTorch, SpikingJelly, plain PyTorch) into refsnn.

refsnn's LIF (the paper's eqs. 1-2), per stage ``k`` with input current ``I_t = W s_t + b``::

    m_t = I_t + alpha * m_{t-1} * (1 - s_{t-1}),    s_t = 1[m_t >= th]   (or 1[m_t > th])

How each framework maps onto it (docs/INTEROP.md has the full table):

- snnTorch ``Leaky(beta, threshold, reset_mechanism="zero")``: ``alpha = clamp(beta, 0, 1)``,
  fires strictly above. ``"subtract"``/``"none"`` resets, learnable or per-neuron beta/threshold,
  graded spikes, inhibition and state quantization are refused.
- SpikingJelly ``LIFNode(tau, decay_input=False, v_threshold, v_reset=0.0)``: ``alpha = 1 - 1/tau``,
  fires at equality; ``decay_input=True`` scales the input by ``1/tau``, folded into the preceding
  layer's ``W`` and ``b`` (with a notice); ``IFNode`` is ``alpha = 1``; soft reset
  (``v_reset=None``) and ``v_reset != 0`` are refused.
- ``"plain"``: Linear/Conv2d/AvgPool2d/Flatten modules in registration order with the LIF above
  after every Linear/Conv2d (the paper authors' released code: ``th = alpha = 0.25``, fires
  strictly above, ``T = 10``); :func:`import_state_dict` builds it from a state_dict.

Every import validates itself and refuses to return or write a model unless:

1. each neuron module, probed alone (float64) with currents exactly at threshold, a spike followed
   by a sub-threshold input, and random current sequences, spikes exactly as refsnn's LIF with the
   detected comparison (``>=`` or ``>``), threshold and decay. The probe runs the framework's own
   code, so semantics that changed between releases (snnTorch's reset) are caught whatever the
   installed version says;
2. the framework's forward (its neuron modules along the layers found, and the module's own
   ``forward`` when it is an ``nn.Sequential`` or ``forward_fn`` is given) and refsnn's forward
   give identical spikes at every stage and time step on random binary inputs (and on real samples
   when given), in the module's dtype and again in float64.

The detected comparison and decay are written into the HDF5 model with the framework versions, the
notices and the validation summary (``metadata/interop``).
"""
from __future__ import annotations

import copy
import importlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..layers import AvgPool2d, Conv2d, Flatten, Linear
from ..network import SNN
from ..firing import fires, fires_at_threshold
from ..neurons import check_firing, lif_forward
from ..validation import ModelValidationError, check_decay, check_threshold
from . import TORCH_REQUIREMENT, require_torch

FRAMEWORKS = ("snntorch", "spikingjelly", "plain")

#: The authors' released layouts (liangling76/certify_snn, model_mnist.py / snn_model.py): parameter
#: names of the state_dict, conv kernel 3, stride 2, padding 1; per-sample input shape.
AUTHORS_ARCHITECTURES: Dict[str, dict] = {
    "MNIST_FC": {"input_shape": (1, 28, 28), "layers": [
        {"kind": "flatten"}, {"kind": "linear", "key": "fc1"}, {"kind": "linear", "key": "fc2"},
        {"kind": "linear", "key": "fc3"}]},
    "MNIST_CONV": {"input_shape": (1, 28, 28), "layers": [
        {"kind": "conv2d", "key": "conv1", "stride": 2, "padding": 1},
        {"kind": "conv2d", "key": "conv2", "stride": 2, "padding": 1},
        {"kind": "flatten"}, {"kind": "linear", "key": "fc1"}, {"kind": "linear", "key": "fc2"}]},
    "NMNIST_FC": {"input_shape": (2, 34, 34), "layers": [
        {"kind": "flatten"}, {"kind": "linear", "key": "fc1"}, {"kind": "linear", "key": "fc2"},
        {"kind": "linear", "key": "fc3"}]},
    "NMNIST_CONV": {"input_shape": (2, 34, 34), "layers": [
        {"kind": "conv2d", "key": "conv1", "stride": 2, "padding": 1},
        {"kind": "conv2d", "key": "conv2", "stride": 2, "padding": 1},
        {"kind": "flatten"}, {"kind": "linear", "key": "fc1"}, {"kind": "linear", "key": "fc2"}]},
}
#: The authors' neuron constants (snn_fire.py): m_th, alpha, strict firing, time steps.
AUTHORS_NEURON = {"threshold": 0.25, "decay": 0.25, "firing": ">", "steps": 10}

_INPUT_DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


class ImportRefused(ValueError):
    """The module uses a setting refsnn cannot represent, or the two forward passes disagree.
    The message names the module, the setting and why."""


@dataclass
class ImportReport:
    """What an import found, decided and checked (stored as ``metadata/interop`` in the model)."""

    framework: str
    versions: Dict[str, str]
    threshold: float
    decay: float
    firing: str
    dtype: str
    input_shape: Tuple[int, ...]
    steps: int
    layers: List[str] = field(default_factory=list)
    neurons: List[dict] = field(default_factory=list)
    notices: List[str] = field(default_factory=list)
    validation: Dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data

    def summary(self) -> str:
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        lines = [f"framework: {self.framework} ({versions})",
                 f"neuron: threshold {self.threshold!r}, decay (alpha) {self.decay!r}, firing '{self.firing}', "
                 f"dtype {self.dtype}, input shape {tuple(self.input_shape)}"]
        lines += [f"  {line}" for line in self.layers]
        lines += [f"  {n['name']}: {n['description']}, detected firing '{n['detected_firing']}'"
                  for n in self.neurons]
        lines += [f"notice: {notice}" for notice in self.notices]
        v = self.validation
        if v:
            lines.append(f"validated: {v['inputs']} input(s) x {v['steps']} steps ({v['random']} random, "
                         f"{v['samples']} samples); spikes identical at every stage in "
                         f"{', '.join(v['dtypes_checked'])}; own forward: {v['own_forward']}; "
                         f"spike fraction per stage {v['spike_fraction']}")
            if v.get("float32_ties_set_aside"):
                lines.append(f"float32: {len(v['float32_ties_set_aside'])} sample(s) set aside at a membrane within "
                             "float32 rounding of the threshold (the float64 comparison is exact on all)")
        return "\n".join(lines)


# --- the items found in a module ----------------------------------------------------------------

@dataclass
class _Layer:
    name: str
    kind: str                 # linear | conv2d | avgpool2d | flatten
    module: Any = None        # the torch module (None: a flatten refsnn inserts)


@dataclass
class _Neuron:
    name: str
    module: Any               # the torch neuron module (None for plain)
    threshold: float
    decay: float
    firing: str               # the framework's documented comparison (the probe detects the real one)
    runner_factory: Callable[[Any], Any]   # module -> runner with reset() and step(current) -> spikes
    description: str
    input_scale: float = 1.0  # SpikingJelly decay_input=True: the node multiplies its input by 1/tau

    def make_runner(self, module=None):
        """A fresh runner of this neuron (of ``module``, e.g. a float64 copy, when given)."""
        return self.runner_factory(self.module if module is None else module)


def _versions(framework: str) -> Dict[str, str]:
    import importlib.metadata as metadata
    torch = require_torch()
    versions = {"torch": str(torch.__version__)}
    if framework in ("snntorch", "spikingjelly"):
        try:
            versions[framework] = metadata.version(framework)
        except metadata.PackageNotFoundError:
            versions[framework] = str(getattr(importlib.import_module(framework), "__version__", "unknown"))
    return versions


def _version_tuple(text: str) -> Tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _version_notices(framework: str, versions: Dict[str, str]) -> List[str]:
    """What is known about the installed release (the probe decides in any case)."""
    version = versions.get(framework)
    if framework != "snntorch" or not version or version == "unknown":
        return []
    if _version_tuple(version) < (0, 8):
        return [f"snnTorch {version}: before 0.8 the explicit-state 'zero' reset cleared the next step's input "
                "too ((1 - R)(beta U + I)); the probe found this installation's neurons keep it, as refsnn"]
    if _version_tuple(version) > (1, 0, 0):
        return [f"snnTorch {version} is newer than 1.0.0, the release this importer was tested with; its "
                "reset semantics were probed and matched refsnn's"]
    return []


def _module_of(obj) -> str:
    return type(obj).__module__ or ""


def _float_value(value, what: str) -> float:
    torch = require_torch()
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ImportRefused(f"{what} has {value.numel()} values (one per neuron); refsnn's LIF has one "
                                "value for the whole network")
        return float(value.detach().reshape(()).double().item())
    return float(value)


# --- snnTorch --------------------------------------------------------------------------------------

class _SnnTorchRunner:
    """Runs a copy of an snnTorch neuron step by step in the mode it is configured for
    (``init_hidden=True``: hidden state; otherwise the membrane is passed in explicitly)."""

    def __init__(self, neuron):
        self.neuron = copy.deepcopy(neuron)
        self.hidden = bool(getattr(neuron, "init_hidden", False))
        self.mem = None

    def reset(self):
        self.mem = None
        if self.hidden:
            for method in ("reset_mem", "init_leaky"):
                if hasattr(self.neuron, method):
                    result = getattr(self.neuron, method)()
                    if method == "init_leaky" and result is not None:
                        self.neuron.mem = result
                    break

    def step(self, current):
        torch = require_torch()
        if self.hidden:
            out = self.neuron(current)
        else:
            if self.mem is None:
                self.mem = torch.zeros_like(current)
            out = self.neuron(current, self.mem)
        if isinstance(out, tuple):
            spike = out[0]
            if not self.hidden:
                self.mem = out[1]
        else:
            spike = out
        return spike


def _snntorch_neuron(name: str, module, notices: List[str]) -> Optional[_Neuron]:
    if not _module_of(module).startswith("snntorch"):
        return None
    torch = require_torch()
    cls = type(module).__name__
    if cls != "Leaky":
        if hasattr(module, "threshold") or hasattr(module, "beta"):
            raise ImportRefused(f"{name}: snnTorch neuron {cls} is not supported; refsnn's LIF is snnTorch's "
                                "Leaky(beta, threshold, reset_mechanism='zero')")
        return None
    mechanism = getattr(module, "reset_mechanism", None)
    if not isinstance(mechanism, str):
        value = int(getattr(module, "reset_mechanism_val", -1))
        mechanism = {0: "subtract", 1: "zero", 2: "none"}.get(value, f"code {value}")
    if mechanism != "zero":
        raise ImportRefused(
            f"{name}: snnTorch Leaky(reset_mechanism={mechanism!r}) is refused: refsnn's LIF resets the membrane "
            "to zero after a spike (m_t = I_t + alpha m_{t-1} (1 - s_{t-1})); 'subtract' subtracts the threshold "
            "and 'none' never resets (snnTorch's default is 'subtract'). Train with reset_mechanism='zero'.")
    for setting, attribute in (("learn_beta", "beta"), ("learn_threshold", "threshold"),
                               ("learn_graded_spikes_factor", "graded_spikes_factor")):
        if isinstance(getattr(module, attribute, None), torch.nn.Parameter):
            raise ImportRefused(
                f"{name}: snnTorch Leaky({setting}=True) is refused: refsnn's {attribute} is one fixed number, not "
                f"a trained parameter. Rebuild the neuron with {setting}=False and {attribute}="
                f"{getattr(module, attribute).detach().flatten()[:3].tolist()} to import it.")
    graded = _float_value(getattr(module, "graded_spikes_factor", 1.0), f"{name}: graded_spikes_factor")
    if graded != 1.0:
        raise ImportRefused(f"{name}: snnTorch Leaky(graded_spikes_factor={graded}) is refused: "
                            "refsnn's spikes are 0/1")
    if getattr(module, "inhibition", False):
        raise ImportRefused(f"{name}: snnTorch Leaky(inhibition=True) is refused: it suppresses all but the "
                            "strongest neuron, which refsnn's LIF does not model")
    if getattr(module, "state_quant", False):
        raise ImportRefused(f"{name}: snnTorch Leaky(state_quant=...) is refused: refsnn does not quantize membranes")
    beta = _float_value(module.beta, f"{name}: beta")
    threshold = _float_value(module.threshold, f"{name}: threshold")
    decay = min(max(beta, 0.0), 1.0)
    if decay != beta:
        notices.append(f"{name}: beta={beta} is clamped to {decay} by snnTorch's forward; refsnn uses alpha={decay}")
    return _Neuron(name, module, threshold, decay, ">", _SnnTorchRunner,
                   f"snnTorch Leaky(beta={beta}, threshold={threshold}, reset_mechanism='zero', "
                   f"init_hidden={bool(getattr(module, 'init_hidden', False))})")


# --- SpikingJelly ----------------------------------------------------------------------------------

class _SpikingJellyRunner:
    def __init__(self, node):
        self.node = copy.deepcopy(node)
        if hasattr(self.node, "step_mode"):
            self.node.step_mode = "s"

    def reset(self):
        self.node.reset()

    def step(self, current):
        return self.node(current)


def _spikingjelly_neuron(name: str, module, notices: List[str]) -> Optional[_Neuron]:
    if not _module_of(module).startswith("spikingjelly"):
        return None
    cls = type(module).__name__
    if not cls.endswith("Node"):
        return None
    if cls not in ("LIFNode", "IFNode"):
        why = ("its time constant is learned" if "Parametric" in cls else "its dynamics differ from refsnn's LIF")
        raise ImportRefused(f"{name}: SpikingJelly {cls} is not supported ({why}); refsnn's LIF is "
                            "LIFNode(tau, decay_input=False, v_threshold, v_reset=0.0) (or IFNode, alpha = 1)")
    v_reset = getattr(module, "v_reset", 0.0)
    if v_reset is None:
        raise ImportRefused(f"{name}: SpikingJelly {cls}(v_reset=None) is refused: that is the soft reset, which "
                            "subtracts v_threshold after a spike; refsnn's LIF resets to 0 (v_reset=0.0)")
    if _float_value(v_reset, f"{name}: v_reset") != 0.0:
        raise ImportRefused(f"{name}: SpikingJelly {cls}(v_reset={v_reset}) is refused: refsnn's LIF resets the "
                            "membrane to 0; use v_reset=0.0")
    threshold = _float_value(module.v_threshold, f"{name}: v_threshold")
    if cls == "IFNode":
        return _Neuron(name, module, threshold, 1.0, ">=", _SpikingJellyRunner,
                       f"SpikingJelly IFNode(v_threshold={threshold}, v_reset=0.0)")
    tau = _float_value(module.tau, f"{name}: tau")
    decay = 1.0 - 1.0 / tau
    scale = 1.0
    if getattr(module, "decay_input", True):
        scale = 1.0 / tau
        notices.append(f"{name}: SpikingJelly LIFNode(decay_input=True) scales its input by 1/tau = {scale!r}; "
                       "folded into the weight and bias of the layer before it (W/tau, b/tau)")
    if getattr(module, "detach_reset", False):
        notices.append(f"{name}: detach_reset=True changes gradients only; the forward pass is the same")
    return _Neuron(name, module, threshold, decay, ">=", _SpikingJellyRunner,
                   f"SpikingJelly LIFNode(tau={tau}, decay_input={bool(getattr(module, 'decay_input', True))}, "
                   f"v_threshold={threshold}, v_reset=0.0)", input_scale=scale)


# --- plain ------------------------------------------------------------------------------------------

class _PlainRunner:
    """The LIF recurrence of the authors' code (``BoundMemUpdate``) in torch:
    ``m[t] = I[t] + m[t-1] * (1 - s[t-1]) * alpha``, ``s = 1[m > th]`` (or ``>=``)."""

    def __init__(self, threshold: float, decay: float, firing: str):
        self.threshold, self.decay, self.firing = threshold, decay, firing
        self.carried = None

    def reset(self):
        self.carried = None

    def step(self, current):
        membrane = current if self.carried is None else current + self.carried
        fired = fires(membrane, self.threshold, fires_at_threshold(self.firing))
        spike = fired.to(current.dtype)
        self.carried = membrane * (1 - spike) * self.decay
        return spike


# --- walking a module -------------------------------------------------------------------------------

def _layer_kind(module) -> Optional[str]:
    torch = require_torch()
    nn = torch.nn
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    if isinstance(module, nn.AvgPool2d):
        return "avgpool2d"
    if isinstance(module, nn.Flatten):
        return "flatten"
    return None


def _is_passthrough(module) -> bool:
    torch = require_torch()
    return isinstance(module, (torch.nn.Identity, torch.nn.Dropout, torch.nn.Dropout2d))


def _collect(module, framework: str, neuron_args: dict, notices: List[str]) -> list:
    """Items (layers and neurons) in registration order; recurses into containers."""
    items: list = []

    def visit(name: str, sub):
        label = name or type(sub).__name__
        kind = _layer_kind(sub)
        if kind is not None:
            items.append(_Layer(label, kind, sub))
            if framework == "plain" and kind in ("linear", "conv2d"):
                th, decay, firing = neuron_args["threshold"], neuron_args["decay"], neuron_args["firing"]
                items.append(_Neuron(f"{label}.lif", None, th, decay, firing,
                                     lambda _module: _PlainRunner(th, decay, firing),
                                     f"LIF(threshold={th}, alpha={decay}, firing '{firing}')"))
            return
        if framework == "snntorch":
            neuron = _snntorch_neuron(label, sub, notices)
        elif framework == "spikingjelly":
            neuron = _spikingjelly_neuron(label, sub, notices)
        else:
            neuron = None
        if neuron is not None:
            items.append(neuron)
            return
        children = list(sub.named_children())
        if children:
            for child_name, child in children:
                visit(f"{name}.{child_name}" if name else child_name, child)
            return
        if _is_passthrough(sub):
            notices.append(f"{label}: {type(sub).__name__} is the identity at inference; skipped")
            return
        if any(True for _ in sub.parameters(recurse=False)) or framework != "plain":
            raise ImportRefused(f"{label}: module {type(sub).__module__}.{type(sub).__name__} is not supported; "
                                "refsnn imports Linear, Conv2d, AvgPool2d, Flatten and the framework's LIF neurons "
                                "(Identity/Dropout are skipped)")
        notices.append(f"{label}: parameter-free {type(sub).__name__} skipped (plain: the layers are the "
                       "Linear/Conv2d/AvgPool2d/Flatten modules, a LIF after every Linear/Conv2d)")

    visit("", module)
    return items


def _check_structure(items: list, framework: str) -> None:
    """A LIF right after every Linear/Conv2d; only pooling/flatten between a LIF and the next layer."""
    pending = None  # the affine layer waiting for its neuron
    for item in items:
        if isinstance(item, _Neuron):
            if pending is None:
                raise ImportRefused(f"{item.name}: a LIF neuron must follow a Linear or Conv2d layer directly "
                                    "(refsnn has no neuron without its own affine layer)")
            pending = None
        elif pending is not None:
            raise ImportRefused(
                f"{item.name} ({item.kind}) comes after {pending.name} before its LIF neuron; refsnn needs the LIF "
                "right after every Linear/Conv2d (pooling and flatten go after the neuron)")
        elif item.kind in ("linear", "conv2d"):
            pending = item
    if pending is not None:
        raise ImportRefused(f"{pending.name} has no LIF neuron after it; the last module must be a LIF neuron "
                            "whose spikes are the output")
    if not any(isinstance(item, _Neuron) for item in items):
        raise ImportRefused(f"no {framework} LIF neuron and no Linear/Conv2d layer found in the module")


def _unique(values: Sequence[float], what: str, neurons: Sequence[_Neuron]) -> float:
    distinct = sorted(set(values))
    if len(distinct) > 1:
        listing = ", ".join(f"{n.name}={v!r}" for n, v in zip(neurons, values))
        raise ImportRefused(f"the neurons have different {what} ({listing}); refsnn's LIF has one {what} for "
                            "the whole network")
    return distinct[0]


def _array(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().copy()


def _build_layers(items: list, input_shape: Tuple[int, ...], notices: List[str]) -> Tuple[list, list, list]:
    """refsnn layers (with decay_input folded), the items to run on the torch side (with inserted
    flattens), and a description per layer. Conv2d/pool settings refsnn lacks are refused."""
    layers, torch_items, described = [], [], []
    shape = tuple(input_shape)
    for index, item in enumerate(items):
        if isinstance(item, _Neuron):
            torch_items.append(item)
            continue
        module = item.module
        if item.kind == "linear" and len(shape) > 1:
            notices.append(f"{item.name}: its input has shape {shape}; a flatten (torch.flatten(x, 1)) is inserted "
                           "before it, as the module's forward must do")
            flat = _Layer(f"{item.name}.flatten", "flatten", None)
            layers.append(Flatten())
            torch_items.append(flat)
            described.append(f"(inserted) flatten {shape} -> ({int(np.prod(shape))},)")
            shape = (int(np.prod(shape)),)
        scale = 1.0
        if item.kind in ("linear", "conv2d"):
            following = items[index + 1] if index + 1 < len(items) else None
            scale = following.input_scale if isinstance(following, _Neuron) else 1.0
        if item.kind == "linear":
            weight = _array(module.weight)
            bias = _array(module.bias) if module.bias is not None else np.zeros(weight.shape[0], weight.dtype)
            layer = Linear(weight * weight.dtype.type(scale), bias * bias.dtype.type(scale))
        elif item.kind == "conv2d":
            for setting, value, ok in (("dilation", module.dilation, tuple(module.dilation) == (1, 1)),
                                       ("groups", module.groups, module.groups == 1),
                                       ("padding_mode", module.padding_mode, module.padding_mode == "zeros"),
                                       ("padding", module.padding, not isinstance(module.padding, str))):
                if not ok:
                    raise ImportRefused(f"{item.name}: Conv2d({setting}={value!r}) is not supported by refsnn's Conv2d "
                                        "(dilation 1, groups 1, zero padding given as numbers)")
            weight = _array(module.weight)
            bias = _array(module.bias) if module.bias is not None else np.zeros(weight.shape[0], weight.dtype)
            layer = Conv2d(weight * weight.dtype.type(scale), bias * bias.dtype.type(scale),
                           stride=tuple(module.stride), padding=tuple(module.padding))
        elif item.kind == "avgpool2d":
            padding = module.padding if isinstance(module.padding, tuple) else (module.padding, module.padding)
            if any(padding) or module.ceil_mode or module.divisor_override is not None:
                raise ImportRefused(f"{item.name}: AvgPool2d(padding={module.padding}, ceil_mode={module.ceil_mode}, "
                                    f"divisor_override={module.divisor_override}) is not supported; refsnn's "
                                    "AvgPool2d has no padding, floor mode, the plain mean")
            stride = module.stride if module.stride is not None else module.kernel_size
            layer = AvgPool2d(module.kernel_size, stride)
        else:
            if module is not None and (module.start_dim != 1 or module.end_dim != -1):
                raise ImportRefused(f"{item.name}: Flatten(start_dim={module.start_dim}, end_dim={module.end_dim}) "
                                    "is not supported; refsnn flattens every axis after the batch axis")
            layer = Flatten()
        if scale != 1.0:
            # dividing by a power of two is exact; other factors are rounded, and the validation decides
            notices.append(f"{item.name}: weight and bias multiplied by {scale!r} (decay_input of the next neuron)")
        new_shape = tuple(layer.output_shape(shape)) if layer.kind != "flatten" else (int(np.prod(shape)),)
        described.append(f"{item.name}: {item.kind} {shape} -> {new_shape}")
        shape = new_shape
        layers.append(layer)
        torch_items.append(item)
    return layers, torch_items, described


def _infer_input_shape(items: list) -> Tuple[int, ...]:
    for item in items:
        if isinstance(item, _Layer):
            if item.kind == "linear":
                return (int(item.module.in_features),)
            if item.kind != "flatten":
                break
    raise ImportRefused("input_shape is required for this module (its first layer is not Linear), "
                        "e.g. input_shape=(1, 28, 28)")


# --- forward passes and the comparison -------------------------------------------------------------

def _torch_dtype(dtype):
    torch = require_torch()
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]


def _run_items(items: list, spikes: np.ndarray, dtype) -> List[np.ndarray]:
    """The framework side: each layer module and each neuron runner, time step by time step.
    Returns the spikes of every stage ``[T, B, *neuron_shape]``."""
    torch = require_torch()
    runners = {id(item): item.make_runner() for item in items if isinstance(item, _Neuron)}
    for runner in runners.values():
        runner.reset()
    x = torch.as_tensor(np.asarray(spikes), dtype=_torch_dtype(dtype))
    per_stage: List[List[np.ndarray]] = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            activation = x[t]
            stage = 0
            for item in items:
                if isinstance(item, _Neuron):
                    # some frameworks return float32 spikes whatever the input dtype (0/1: exact)
                    activation = runners[id(item)].step(activation).to(activation.dtype)
                    if t == 0:
                        per_stage.append([])
                    per_stage[stage].append(_array(activation))
                    stage += 1
                elif item.module is None:
                    activation = torch.flatten(activation, 1)
                else:
                    activation = item.module(activation)
    return [np.stack(steps) for steps in per_stage]


def _own_forward(module, framework: str, spikes: np.ndarray, dtype, forward_fn) -> Optional[np.ndarray]:
    """The module's own forward over time, output spikes ``[T, B, ...]``; None when not runnable."""
    torch = require_torch()
    x = torch.as_tensor(np.asarray(spikes), dtype=_torch_dtype(dtype))
    module = copy.deepcopy(module).eval()
    with torch.no_grad():
        if forward_fn is not None:
            return _array(torch.as_tensor(forward_fn(module, x)))
        if not isinstance(module, torch.nn.Sequential) or framework == "plain":
            return None
        if framework == "snntorch":
            neurons = [m for m in module.modules() if _module_of(m).startswith("snntorch") and hasattr(m, "beta")]
            if not all(getattr(m, "init_hidden", False) for m in neurons):
                return None  # an nn.Sequential of snnTorch neurons runs only with init_hidden=True
            for m in neurons:
                if hasattr(m, "reset_mem"):
                    m.reset_mem()
                elif hasattr(m, "init_leaky"):
                    m.init_leaky()
        else:
            from spikingjelly.activation_based import functional
            functional.set_step_mode(module, "s")
            functional.reset_net(module)
        outputs = []
        for t in range(x.shape[0]):
            out = module(x[t])
            outputs.append(_array(out[0] if isinstance(out, tuple) else out))
        return np.stack(outputs)


def _first_mismatch(reference: np.ndarray, other: np.ndarray) -> tuple:
    return tuple(int(v) for v in np.argwhere(reference != other)[0])


def _is_tie(membrane: float, threshold: float, ulps: int) -> bool:
    """``membrane`` lies within ``ulps`` float32 spacings of the threshold."""
    spacing = float(np.spacing(np.float32(max(abs(membrane), abs(threshold), np.finfo(np.float32).tiny))))
    return abs(membrane - threshold) <= ulps * spacing


def _compare(net: SNN, spikes: np.ndarray, framework_stages: List[np.ndarray], own_output: Optional[np.ndarray],
             where: str, stage_names: List[str], tie_ulps: int = 0) -> dict:
    """Spikes of every stage must be identical. With ``tie_ulps > 0`` a sample whose first
    differing spike (earliest stage, earliest step) sits on a membrane within ``tie_ulps`` float32
    spacings of the threshold is set aside (the two implementations sum in different orders and
    round differently there); every other sample must still agree exactly."""
    trace = net.run(spikes)
    active = np.ones(spikes.shape[1], dtype=bool)  # samples still compared
    ties = []
    for k, (mine, theirs) in enumerate(zip(trace.spikes, framework_stages)):
        theirs = theirs.reshape(mine.shape)
        differ = (mine != theirs) & active.reshape((1, -1) + (1,) * (mine.ndim - 2))
        if not differ.any():
            continue
        for b in np.flatnonzero(differ.reshape(differ.shape[0], differ.shape[1], -1).any(axis=(0, 2))):
            steps = np.flatnonzero(differ[:, b].reshape(differ.shape[0], -1).any(axis=1))
            t = int(steps[0])
            positions = np.argwhere(differ[t, b])
            gaps = [float(trace.membranes[k][(t, b, *pos)]) for pos in positions]
            if tie_ulps and all(_is_tie(m, net.threshold, tie_ulps) for m in gaps):
                active[b] = False
                ties.append({"stage": k, "t": t, "sample": int(b),
                             "gap": max(abs(m - net.threshold) for m in gaps)})
                continue
            neuron = tuple(int(v) for v in positions[0])
            membrane = gaps[0]
            gap = membrane - net.threshold
            hint = (" The membrane is within float rounding of the threshold: the two implementations sum in "
                    "different orders and round differently there (docs/INTEROP.md: float32 at the threshold; "
                    "tolerate_float32_ties=... sets such samples aside)."
                    if _is_tie(membrane, net.threshold, 64) else "")
            raise ImportRefused(
                f"validation failed ({where}): stage {k} ({stage_names[k]}) at t={t}, sample {b}, neuron "
                f"{neuron}: the framework gives spike {theirs[(t, b, *neuron)]:g}, refsnn "
                f"{mine[(t, b, *neuron)]:g} (refsnn membrane {membrane!r}, threshold {net.threshold!r}, "
                f"gap {gap:.3g}); {int(np.count_nonzero(differ))} of {mine.size} spikes differ.{hint} "
                "No model was written.")
    own = "not run"
    if own_output is not None:
        last = trace.spikes[-1]
        if own_output.size != last.size:
            raise ImportRefused(f"validation failed ({where}): the module's own forward returned shape "
                                f"{own_output.shape}, expected the output spikes {last.shape} ([T, B, n_out])")
        own_output = own_output.reshape(last.shape)
        if not np.array_equal(own_output[:, active], last[:, active]):
            t, b, *neuron = _first_mismatch(last[:, active], own_output[:, active])
            raise ImportRefused(
                f"validation failed ({where}): the module's own forward differs from refsnn at t={t}, sample {b}, "
                f"output {tuple(neuron)} ({own_output[:, active][(t, b, *neuron)]:g} vs "
                f"{last[:, active][(t, b, *neuron)]:g}) while the layers found, run in registration order, agree: "
                "the forward wires them differently. No model was written.")
        own = "identical"
    if not active.any():
        raise ImportRefused(f"validation failed ({where}): every input sample was set aside at a float32 tie; "
                            "nothing was compared")
    return {"own_forward": own, "spike_fraction": [round(float(s.mean()), 4) for s in trace.spikes],
            "float32_ties_set_aside": ties}


# --- the single-neuron probe ------------------------------------------------------------------------

def _probe_neuron(neuron: _Neuron, decay: float, rng: np.random.Generator) -> Tuple[str, List[str]]:
    """Runs a float64 copy of the neuron alone. Returns the detected comparison and the
    differences found from refsnn's LIF (empty when it matches).

    Currents are given as refsnn sees them (after a folded input scale); the neuron receives
    ``current / input_scale``."""
    torch = require_torch()
    th = neuron.threshold
    scale = neuron.input_scale
    module64 = copy.deepcopy(neuron.module).double()

    def run(inputs: np.ndarray) -> np.ndarray:
        """inputs [T, N] as the neuron module receives them -> spikes [T, N]."""
        runner = neuron.make_runner(module64)
        runner.reset()
        x = torch.as_tensor(inputs, dtype=torch.float64)
        with torch.no_grad():
            return np.stack([_array(runner.step(x[t])) for t in range(x.shape[0])])

    def input_reaching(target: float) -> float:
        """An input the neuron scales onto exactly ``target`` (decay_input rounds ``x / tau``)."""
        guess = target / scale
        for candidate in (guess, np.nextafter(guess, np.inf), np.nextafter(guess, -np.inf)):
            if scale == 1.0 or float(torch.tensor(candidate, dtype=torch.float64) * scale) == target:
                return float(candidate)
        return float(guess)

    problems = []
    tie = run(np.array([[input_reaching(th)]]))[0, 0]
    detected = ">=" if tie == 1 else ">"
    if detected != neuron.firing:
        problems.append(f"a membrane exactly at the threshold {'fires' if tie else 'does not fire'}, while "
                        f"{neuron.description} is documented to fire when m {neuron.firing} th")
    if th > 0:
        after = run(np.array([[2 * th], [1.5 * th]]) / scale)[:, 0]
        if after[0] == 1 and after[1] == 0:
            problems.append("after a spike the neuron also discards the input current of the next step (the reset "
                            "is applied to beta*U + I, as snnTorch's explicit-state 'zero' reset before 0.8); "
                            "refsnn keeps it: m_t = I_t + alpha m_{t-1} (1 - s_{t-1})")
    span = max(abs(th), 1e-3)
    currents = rng.uniform(-0.5 * span, 1.5 * span, size=(12, 256))
    theirs = run(currents / scale)
    _, mine = lif_forward(currents, th, decay, detected)
    if not np.array_equal(mine, theirs):
        t, n = _first_mismatch(mine, theirs)
        problems.append(f"on random current sequences the neuron spikes differently from refsnn's LIF "
                        f"(alpha={decay!r}, threshold={th!r}, firing '{detected}'), first at sequence {n}, step {t}")
    return detected, problems


# --- public API ------------------------------------------------------------------------------------

def _random_inputs(rng: np.random.Generator, n: int, steps: int, input_shape) -> np.ndarray:
    densities = np.array([_INPUT_DENSITIES[i % len(_INPUT_DENSITIES)] for i in range(n)])
    shape = (steps, n) + tuple(input_shape)
    per_sample = densities.reshape((1, n) + (1,) * len(input_shape))
    return (rng.random(shape) < per_sample).astype(np.uint8)


def _prepare_samples(samples, input_shape, steps: int, rng: np.random.Generator) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim == len(input_shape) + 2 and tuple(samples.shape[2:]) == tuple(input_shape):
        if not np.all((samples == 0) | (samples == 1)):
            raise ValueError("samples of shape [T, B, *input_shape] must be binary spike trains")
        return samples.astype(np.uint8)
    if samples.ndim == len(input_shape) + 1 and tuple(samples.shape[1:]) == tuple(input_shape):
        from ..encoders import rate_encode
        spikes, _ = rate_encode(samples, steps, rng)
        return spikes
    raise ValueError(f"samples must be spike trains [T, B, *{tuple(input_shape)}] or images "
                     f"[B, *{tuple(input_shape)}] in [0, 1], got shape {samples.shape}")


def import_module(module, framework: str, input_shape: Optional[Sequence[int]] = None, *, steps: int = 10,
                  samples=None, n_random: int = 64, seed: int = 0,
                  forward_fn: Optional[Callable] = None, threshold: Optional[float] = None,
                  decay: Optional[float] = None, firing: Optional[str] = None,
                  out: Optional[Union[str, "os.PathLike"]] = None, return_report: bool = False,
                  tolerate_float32_ties: int = 0, **metadata):
    """Converts a PyTorch SNN module into a refsnn :class:`SNN`, validated against the module.

    Parameters
    ----------
    module: a ``torch.nn.Module``: its Linear/Conv2d/AvgPool2d/Flatten layers and LIF neurons in
        registration order form the network (containers are walked; Identity/Dropout skipped).
    framework: ``"snntorch"``, ``"spikingjelly"`` or ``"plain"`` (a LIF with ``threshold``,
        ``decay``, ``firing`` after every Linear/Conv2d; defaults: the authors' 0.25, 0.25, ``">"``).
    input_shape: per-sample input shape, e.g. ``(1, 28, 28)``; inferred when the first layer is Linear.
    steps: time steps ``T`` of the validation runs (the authors' code: 10).
    samples: real inputs for the validation too: spike trains ``[T, B, *input_shape]`` (0/1) or
        images ``[B, *input_shape]`` in [0, 1] (rate-encoded with ``seed``).
    n_random: random binary input trains ``[steps, n_random, *input_shape]`` (densities 5%-90%).
    forward_fn: ``forward_fn(module, x [T, B, *input_shape]) -> output spikes [T, B, n_out]``, the
        module's own forward over time; nn.Sequential models of snnTorch (``init_hidden=True``) and
        SpikingJelly are run without it.
    out: write the HDF5 model here (only after the validation passed); ``metadata`` is stored too.
    return_report: return ``(net, ImportReport)`` instead of ``net``.
    tolerate_float32_ties: 0 (default) demands identical spikes everywhere. ``n > 0`` sets aside
        samples of the float32 comparison whose first differing spike has its membrane within ``n``
        float32 spacings of the threshold (summation order differs between torch and NumPy); the
        float64 comparison stays exact, and the samples set aside are listed in the report.

    Raises :class:`ImportRefused` naming the module and setting when the network uses semantics
    refsnn does not have, or when the validation finds any differing spike.
    """
    torch = require_torch()
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__} (a state_dict? use "
                        "import_state_dict for the plain layout)")
    if framework != "plain" and any(v is not None for v in (threshold, decay, firing)):
        raise ValueError(f"threshold/decay/firing are read from the {framework} neurons; pass them only with "
                         "framework='plain'")
    if n_random < 1 and samples is None:
        raise ValueError("the validation needs inputs: n_random >= 1 or samples")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    module = copy.deepcopy(module).eval()  # the caller's module keeps its mode and state
    notices: List[str] = []
    neuron_args = {"threshold": AUTHORS_NEURON["threshold"] if threshold is None else float(threshold),
                   "decay": AUTHORS_NEURON["decay"] if decay is None else float(decay),
                   "firing": check_firing(AUTHORS_NEURON["firing"] if firing is None else firing)}
    items = _collect(module, framework, neuron_args, notices)
    _check_structure(items, framework)
    neurons = [item for item in items if isinstance(item, _Neuron)]

    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) > 1:
        raise ImportRefused(f"the module mixes parameter dtypes {sorted(map(str, dtypes))}; convert it with "
                            ".float() or .double() first")
    torch_dtype = dtypes.pop() if dtypes else torch.float32
    if torch_dtype not in (torch.float32, torch.float64):
        raise ImportRefused(f"parameters are {torch_dtype}; refsnn computes in float32 or float64 (call .float())")
    np_dtype = np.float32 if torch_dtype == torch.float32 else np.float64

    rng = np.random.default_rng(seed)
    net_threshold = _unique([n.threshold for n in neurons], "threshold", neurons)
    net_decay = _unique([n.decay for n in neurons], "decay (alpha)", neurons)
    try:  # refsnn's model rules (refsnn.validation), before any probing: e.g. a threshold <= 0 is refused
        check_threshold(net_threshold, np_dtype)
        check_decay(net_decay)
    except ModelValidationError as error:
        raise ImportRefused(f"{', '.join(n.name for n in neurons)}: {error}") from None
    probed = []
    for neuron in neurons:
        if neuron.module is None:
            probed.append(neuron.firing)
            continue
        detected, problems = _probe_neuron(neuron, net_decay, rng)
        if problems:
            raise ImportRefused(f"{neuron.name}: {neuron.description} does not follow refsnn's LIF in this "
                                f"installation ({', '.join(f'{k} {v}' for k, v in _versions(framework).items())}): "
                                + "; ".join(problems))
        probed.append(detected)
    net_firing = check_firing(_unique_firing(probed, neurons))

    shape = tuple(int(v) for v in input_shape) if input_shape is not None else _infer_input_shape(items)
    layers, torch_items, described = _build_layers(items, shape, notices)
    net = SNN(layers, threshold=net_threshold, decay=net_decay, firing=net_firing, input_shape=shape,
              dtype=np_dtype)
    stage_names = [n.name for n in torch_items if isinstance(n, _Neuron)]

    inputs = _random_inputs(rng, n_random, steps, shape) if n_random > 0 else None
    n_samples = 0
    if samples is not None:
        real = _prepare_samples(samples, shape, steps, rng)
        n_samples = real.shape[1]
        if inputs is None:
            inputs = real
        else:
            if real.shape[0] != inputs.shape[0]:
                raise ValueError(f"samples have {real.shape[0]} time steps, the validation runs {steps}")
            inputs = np.concatenate([inputs, real], axis=1)

    checks = {}
    checks[np.dtype(np_dtype).name] = _compare(
        net, inputs, _run_items(torch_items, inputs, np_dtype),
        _own_forward(module, framework, inputs, np_dtype, forward_fn), f"{np.dtype(np_dtype).name}", stage_names,
        tie_ulps=int(tolerate_float32_ties) if np_dtype == np.float32 else 0)
    if np_dtype != np.float64:
        module64 = copy.deepcopy(module).double()
        items64 = _collect(module64, framework, neuron_args, [])
        _, torch_items64, _ = _build_layers(items64, shape, [])
        net64 = SNN(layers, threshold=net_threshold, decay=net_decay, firing=net_firing, input_shape=shape,
                    dtype=np.float64)
        # the module's own forward runs in its own dtype only (snnTorch returns float32 spikes always)
        checks["float64"] = _compare(net64, inputs, _run_items(torch_items64, inputs, np.float64), None,
                                     "float64", stage_names)
    first = checks[np.dtype(np_dtype).name]
    if first["own_forward"] == "not run":
        notices.append("the module's own forward() was not run (pass forward_fn=...; nn.Sequential models run "
                       "without it): the validation ran the framework's neurons along the layers in "
                       "registration order")
    for k, fraction in enumerate(first["spike_fraction"]):
        if fraction in (0.0, 1.0):
            how = "(almost) never" if fraction == 0.0 else "(almost) always"
            notices.append(f"stage {k} ({stage_names[k]}) {how} spiked on the validation inputs, which then say "
                           "little about it; pass real samples (samples=...)")
    versions = _versions(framework)
    notices.extend(_version_notices(framework, versions))
    report = ImportReport(
        framework=framework, versions=versions, threshold=net_threshold, decay=net_decay,
        firing=net_firing, dtype=np.dtype(np_dtype).name, input_shape=shape, steps=steps, layers=described,
        neurons=[{"name": n.name, "description": n.description, "detected_firing": f} for n, f in zip(neurons, probed)],
        notices=notices,
        validation={"inputs": int(inputs.shape[1]), "random": int(n_random), "samples": int(n_samples),
                    "steps": int(steps), "seed": int(seed), "dtypes_checked": list(checks),
                    "own_forward": first["own_forward"], "spike_fraction": first["spike_fraction"],
                    "float32_ties_set_aside": first["float32_ties_set_aside"]})
    if out is not None:
        from ..io import save_model
        save_model(out, net, interop=report.to_metadata(), **metadata)
    return (net, report) if return_report else net


def _unique_firing(probed: List[str], neurons: List[_Neuron]) -> str:
    if len(set(probed)) > 1:
        listing = ", ".join(f"{n.name} '{f}'" for n, f in zip(neurons, probed))
        raise ImportRefused(f"the neurons fire with different comparisons ({listing}); refsnn's network has one")
    return probed[0]


def _layer_spec(architecture) -> Tuple[list, Optional[Tuple[int, ...]]]:
    if isinstance(architecture, str):
        if architecture not in AUTHORS_ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; presets: {sorted(AUTHORS_ARCHITECTURES)} "
                             "(the authors' layouts), or a list of layer dicts")
        preset = AUTHORS_ARCHITECTURES[architecture]
        return preset["layers"], preset["input_shape"]
    if isinstance(architecture, dict):
        return list(architecture["layers"]), (tuple(architecture["input_shape"])
                                              if architecture.get("input_shape") is not None else None)
    return list(architecture), None


def unwrap_state_dict(state) -> Dict[str, Any]:
    """The tensors of a state_dict saved bare or inside ``{"state_dict"|"model"|"net": ...}``,
    with DataParallel's ``module.`` prefixes removed."""
    for key in ("state_dict", "model_state_dict", "model", "net", "snn"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"expected a state_dict (a dict of tensors), got {type(state).__name__}")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def import_state_dict(state_dict, architecture, input_shape: Optional[Sequence[int]] = None, *,
                      threshold: float = AUTHORS_NEURON["threshold"], decay: float = AUTHORS_NEURON["decay"],
                      firing: str = AUTHORS_NEURON["firing"], steps: int = AUTHORS_NEURON["steps"], **kwargs):
    """Imports a plain PyTorch state_dict (the authors' layout by default) into a refsnn :class:`SNN`.

    ``architecture``: a preset name (``MNIST_FC``, ``MNIST_CONV``, ``NMNIST_FC``, ``NMNIST_CONV``: the
    authors' classes with their parameter names ``fc1``/``conv1``...), or a list of layer dicts
    ``{"kind": "linear"|"conv2d", "key": "<state_dict prefix>", "stride": s, "padding": p}``,
    ``{"kind": "flatten"}``, ``{"kind": "avgpool2d", "kernel_size": k, "stride": s}`` (optionally
    wrapped as ``{"layers": [...], "input_shape": [...]}``). A LIF follows every linear/conv2d layer.
    Every tensor of the state_dict must be used, and every key found. Other keyword arguments go
    to :func:`import_module` (``samples``, ``n_random``, ``out``, ``return_report`` ...).
    """
    torch = require_torch()
    tensors = unwrap_state_dict(state_dict)
    spec, preset_shape = _layer_spec(architecture)
    used = set()
    modules = []
    for index, entry in enumerate(spec):
        kind = entry.get("kind")
        if kind in ("linear", "conv2d"):
            key = entry.get("key")
            if f"{key}.weight" not in tensors:
                raise ValueError(f"layer {index} ({kind}): state_dict has no {key}.weight; keys: {sorted(tensors)}")
            weight = torch.as_tensor(tensors[f"{key}.weight"])
            bias = tensors.get(f"{key}.bias")
            used.update({f"{key}.weight", f"{key}.bias"} & set(tensors))
            if kind == "linear":
                if weight.ndim != 2:
                    raise ValueError(f"{key}.weight must be [out, in] for a linear layer, got {tuple(weight.shape)}")
                layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            else:
                if weight.ndim != 4:
                    raise ValueError(f"{key}.weight must be [out, in, kh, kw] for conv2d, got {tuple(weight.shape)}")
                layer = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]),
                                        stride=entry.get("stride", 1), padding=entry.get("padding", 0),
                                        bias=bias is not None)
            layer = layer.to(weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(weight)
                if bias is not None:
                    layer.bias.copy_(torch.as_tensor(bias))
            modules.append((key.replace(".", "_"), layer))
        elif kind == "flatten":
            modules.append((f"flatten{index}", torch.nn.Flatten()))
        elif kind == "avgpool2d":
            modules.append((f"pool{index}", torch.nn.AvgPool2d(entry["kernel_size"], entry.get("stride"))))
        else:
            raise ValueError(f"layer {index}: kind must be linear, conv2d, flatten or avgpool2d, got {kind!r}")
    unused = sorted(set(tensors) - used)
    if unused:
        raise ImportRefused(f"state_dict entries not used by the architecture: {unused}; refsnn would silently drop "
                            "them (describe every layer)")
    from collections import OrderedDict
    module = torch.nn.Sequential(OrderedDict(modules))
    shape = input_shape if input_shape is not None else preset_shape
    return import_module(module, "plain", shape, steps=steps, threshold=threshold, decay=decay, firing=firing,
                         **kwargs)


def load_torch_model(path, framework: str, *, architecture=None, module_class: Optional[str] = None,
                     full_module: bool = False, **kwargs):
    """Loads ``path`` (``torch.save`` output) and imports it (see docs/INTEROP.md).

    - a pickled ``nn.Module`` (``torch.save(model, path)``): needs ``full_module=True``, since
      unpickling runs code from the file (load only files you trust) and the model's classes must
      be importable;
    - a state_dict: with ``framework="plain"`` and ``architecture`` (preset or layer list), or with
      ``module_class="package.module:ClassName"`` (instantiated without arguments, then
      ``load_state_dict``) for any framework.
    """
    torch = require_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not full_module)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - torch raises several kinds of unpickling errors
        if full_module:
            raise
        raise ValueError(f"{path}: not a plain state_dict ({type(error).__name__}: {str(error).splitlines()[0]}); "
                         "if it holds a pickled module you trust, pass full_module=True (--full-module)") from None
    if isinstance(obj, torch.nn.Module):
        return import_module(obj, framework, **kwargs)
    if module_class is not None:
        if ":" not in module_class:
            raise ValueError(f"module_class must look like 'package.module:ClassName', got {module_class!r}")
        module_name, class_name = module_class.split(":", 1)
        model = getattr(importlib.import_module(module_name), class_name)()
        model.load_state_dict(unwrap_state_dict(obj))
        return import_module(model, framework, **kwargs)
    if framework != "plain":
        raise ValueError(f"{path} holds a state_dict: for {framework} pass module_class='package.module:Class' "
                         "(--module-class) to rebuild the module, or save the whole module")
    if architecture is None:
        raise ValueError(f"{path} holds a state_dict: pass the architecture (--arch), e.g. one of "
                         f"{sorted(AUTHORS_ARCHITECTURES)}")
    return import_state_dict(obj, architecture, **kwargs)


def torch_requirement() -> str:
    """The torch version the extra pins (``refsnn[torch]``)."""
    return TORCH_REQUIREMENT
