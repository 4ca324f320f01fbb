"""The spiking network: a stack of spatial layers with a LIF neuron after every Linear/Conv2d.

A *spiking stage* ``k`` is the chain of spatial ops between two LIF layers (zero or more
AvgPool2d/Flatten followed by exactly one Linear or Conv2d) plus the LIF neuron after it::

    I_t[k] = ops_k(s_t[k-1])                 # all linear, shared over time
    m_t[k] = I_t[k] + alpha * m_{t-1}[k] * (1 - s_{t-1}[k])
    s_t[k] = 1[m_t[k] >= th]                 (or > th)

Output: the mean spike rate of the last stage over the T time steps (rate coding, eq. 15).
Predicted class: the most spikes; ties go to the lowest class index (``np.argmax``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .layers import Layer, Shape
from .neurons import Rectangular, lif_backward, lif_forward, neuron_model
from .validation import (ModelValidationError, check_decay, check_dtype, check_firing, check_input_shape,
                         check_reset, check_reset_grad, check_surrogate, check_threshold)


@dataclass
class Stage:
    """Ops of one spiking stage (the last one carries the LIF neuron) and its shapes."""

    ops: List[Layer]
    input_shape: Shape
    shapes: List[Shape]  # output shape of each op; shapes[-1] is the neuron shape

    @property
    def neuron_shape(self) -> Shape:
        return self.shapes[-1]

    @property
    def affine(self) -> Layer:
        return self.ops[-1]


@dataclass
class Trace:
    """Every intermediate of a forward pass, time-major.

    ``inputs [T, B, *in]``; per stage k: ``currents[k]``, ``membranes[k]``, ``spikes[k]`` of shape
    ``[T, B, *neuron_shape_k]``; ``op_inputs[k][j]`` is the input of op j of stage k, flattened
    over time and batch ``[T*B, ...]`` (needed for the weight gradients).
    """

    inputs: np.ndarray
    currents: List[np.ndarray] = field(default_factory=list)
    membranes: List[np.ndarray] = field(default_factory=list)
    spikes: List[np.ndarray] = field(default_factory=list)
    op_inputs: List[List[np.ndarray]] = field(default_factory=list)
    threshold: float = 0.0    # the network's th and neuron model (for ``resets``)
    reset: str = "zero"

    @property
    def rates(self) -> np.ndarray:
        """Mean output rate ``[B, n_out]``."""
        last = self.spikes[-1]
        return last.mean(axis=0).reshape(last.shape[1], -1)

    @property
    def resets(self) -> List[np.ndarray]:
        """Reset terms ``z_t`` per stage: ``m_t (1 - s_t)`` for the LIF (eqs. 9-10), ``m_t - th s_t``
        for reset by subtraction (the neuron model's ``carry`` with ``alpha = 1``)."""
        model = neuron_model(self.reset)
        return [model.carry(m, s, self.threshold, 1.0, 1.0) for m, s in zip(self.membranes, self.spikes)]


def validate_spikes(x, input_shape: Optional[Shape], name: str = "x") -> np.ndarray:
    """Checks a spike tensor ``[T, B, *input_shape]`` of 0/1 values; returns it unchanged as an array."""
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"{name} must be time-major [T, B, *input_shape], got shape {x.shape}")
    if input_shape is not None and tuple(x.shape[2:]) != tuple(input_shape):
        raise ValueError(f"{name} has per-sample shape {tuple(x.shape[2:])} but the network expects "
                         f"{tuple(input_shape)}; arrays are [T, B, *input_shape]")
    if x.dtype != bool and not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"{name} must be numeric or boolean, got dtype {x.dtype}")
    if x.dtype != bool and not np.all((x == 0) | (x == 1)):
        bad = x[(x != 0) & (x != 1)].ravel()[:3]
        raise ValueError(f"{name} must hold binary spikes (0/1), found values such as {bad.tolist()}; "
                         "encode images first with refsnn.encoders.rate_encode")
    return x


class SNN:
    """Multi-layer LIF spiking network (the paper's eqs. 1-4).

    Parameters
    ----------
    layers: spatial layers in order; every ``Linear``/``Conv2d`` is followed by a LIF neuron,
        ``AvgPool2d``/``Flatten`` are not. The last layer must be ``Linear`` or ``Conv2d``.
    threshold, decay: ``th`` and ``alpha`` of eqs. 1-2 (paper: 0.25 and 0.25); ``th > 0`` and
        ``alpha`` in [0, 1], the range the bound rules cover (``refsnn.validation``).
    firing: ``">="`` fires at threshold (paper, eq. 2; SpikingJelly), ``">"`` only strictly above
        (the authors' released code, snnTorch).
    surrogate: derivative used for the Heaviside in BPTT (default: rectangular, 1 on |m - th| < 0.5).
    reset_grad: differentiate the reset path ``(1 - s_{t-1})`` (default True, as the authors' code).
    reset: the neuron model of every stage (``refsnn.neurons``): ``"zero"`` (default, the paper's
        LIF, ``m_t = I_t + alpha m_{t-1} (1 - s_{t-1})``) or ``"subtract"`` (reset by subtraction,
        ``m_t = I_t + alpha (m_{t-1} - th s_{t-1})``).
    input_shape: per-sample input shape, e.g. ``(784,)`` or ``(1, 28, 28)``; inferred for a
        first ``Linear`` layer, required for convolutional nets.

    Every setting is checked here with the rules of ``refsnn.validation`` (the layers check their
    own arrays in the network's dtype); a bad one raises ``ModelValidationError`` (a ``ValueError``)
    naming the field and the allowed range. ``validate_network`` re-checks a built network.
    """

    def __init__(self, layers: Sequence[Layer], threshold: float = 0.25, decay: float = 0.25,
                 firing: str = ">=", surrogate=None, reset_grad: bool = True,
                 input_shape: Optional[Sequence[int]] = None, dtype=np.float64, reset: str = "zero"):
        layers = list(layers)
        if not layers:
            raise ModelValidationError("an SNN needs at least one Linear or Conv2d layer")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ModelValidationError(f"layer {index} must be a refsnn layer (Linear, Conv2d, AvgPool2d, "
                                           f"Flatten), got {type(layer).__name__}")
        if not layers[-1].has_neuron:
            raise ModelValidationError("the last layer must be Linear or Conv2d (a LIF neuron follows it and "
                                       f"produces the output spikes), got {type(layers[-1]).__name__}")
        self.dtype = check_dtype(dtype)
        self.threshold = check_threshold(threshold, self.dtype)
        self.decay = check_decay(decay)
        self.firing = check_firing(firing)
        self.surrogate = surrogate if surrogate is not None else Rectangular()
        self.reset_grad = check_reset_grad(reset_grad)
        self.reset = check_reset(reset)
        self.layers = [layer.astype(self.dtype) for layer in layers]
        if input_shape is None and self.layers[0].kind == "linear":
            input_shape = (self.layers[0].in_features,)
        if input_shape is None:
            raise ModelValidationError("input_shape is required when the first layer is not Linear, "
                                       "e.g. SNN(layers, input_shape=(1, 28, 28))")
        self.input_shape: Shape = check_input_shape(input_shape)
        check_surrogate(self.surrogate)
        self.stages = self._build_stages()

    # --- structure -------------------------------------------------------------------------
    def _build_stages(self) -> List[Stage]:
        stages, ops, shapes = [], [], []
        shape = stage_input = self.input_shape
        for index, layer in enumerate(self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as error:
                raise ModelValidationError(f"layer {index} ({layer.kind}) does not chain: {error}") from None
            ops.append(layer)
            shapes.append(shape)
            if layer.has_neuron:
                stages.append(Stage(ops, stage_input, shapes))
                ops, shapes, stage_input = [], [], shape
        return stages

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.stages[-1].neuron_shape))

    def params(self) -> List[np.ndarray]:
        """All trainable arrays (views, updated in place by optimizers), in a fixed order."""
        return [array for layer in self.layers for array in layer.params().values()]

    def param_names(self) -> List[str]:
        return [f"layer{i}.{name}" for i, layer in enumerate(self.layers) for name in layer.params()]

    def copy(self) -> "SNN":
        import copy
        return copy.deepcopy(self)

    # --- forward ---------------------------------------------------------------------------
    def _prepare(self, x) -> np.ndarray:
        x = validate_spikes(x, self.input_shape)
        return x.astype(self.dtype, copy=False)

    def run(self, x, smooth: bool = False, validate: bool = True) -> Trace:
        """Forward pass keeping every intermediate. ``x [T, B, *input_shape]`` of 0/1."""
        x = self._prepare(x) if validate else np.asarray(x, dtype=self.dtype)
        steps, batch = x.shape[:2]
        trace = Trace(inputs=x, threshold=self.threshold, reset=self.reset)
        activation = x.reshape((steps * batch,) + x.shape[2:])
        for stage in self.stages:
            inputs = []
            for op in stage.ops:
                inputs.append(activation)
                activation = op.forward(activation)
            current = activation.reshape((steps, batch) + stage.neuron_shape)
            membrane, spike = lif_forward(current, self.threshold, self.decay, self.firing,
                                          self.surrogate, smooth, self.reset)
            trace.op_inputs.append(inputs)
            trace.currents.append(current)
            trace.membranes.append(membrane)
            trace.spikes.append(spike)
            activation = spike.reshape((steps * batch,) + stage.neuron_shape)
        return trace

    def forward(self, x) -> np.ndarray:
        """Mean output spike rates ``[B, n_out]`` for spikes ``x [T, B, *input_shape]``."""
        return self.run(x).rates

    __call__ = forward

    def predict(self, x) -> np.ndarray:
        """Predicted classes ``[B]``: most output spikes, ties to the lowest class index."""
        return np.argmax(self.forward(x), axis=1)

    # --- manual BPTT -----------------------------------------------------------------------
    def backward(self, trace: Trace, grad_rates: np.ndarray, smooth: bool = False, input_grad: bool = True
                 ) -> Tuple[List[np.ndarray], Optional[np.ndarray]]:
        """Backpropagation through time from ``dL/d rates [B, n_out]``.

        Returns ``(param_grads, grad_inputs)``: gradients in the order of ``params()`` and
        ``dL/dx [T, B, *input_shape]`` (the input gradient used by attacks).
        ``smooth`` must match the forward pass that produced ``trace``. ``input_grad=False``
        (training): ``grad_inputs`` is None and the first layer's input-gradient product is
        skipped (the parameter gradients are the same values).
        """
        del smooth  # the surrogate derivative is the derivative of the smooth forward
        steps, batch = trace.inputs.shape[:2]
        grad_rates = np.asarray(grad_rates, dtype=self.dtype)
        last_shape = self.stages[-1].neuron_shape
        grad_spike = np.broadcast_to(grad_rates.reshape((1, batch) + last_shape) / steps,
                                     (steps, batch) + last_shape)
        grads_per_layer = {}
        for k in range(len(self.stages) - 1, -1, -1):
            stage = self.stages[k]
            grad_current = lif_backward(trace.membranes[k], trace.spikes[k], grad_spike,
                                        self.threshold, self.decay, self.surrogate, self.reset_grad, self.reset)
            grad = grad_current.reshape((steps * batch,) + stage.neuron_shape)
            if k == 0 and not input_grad:
                # only the affine op (last of the stage) has parameters; nothing flows further
                for op, op_input in zip(stage.ops, trace.op_inputs[k]):
                    grads_per_layer[id(op)] = op.param_grads(op_input, grad) if op is stage.ops[-1] else {}
                grad_spike = None
                break
            for op, op_input in zip(reversed(stage.ops), reversed(trace.op_inputs[k])):
                grad, op_grads = op.backward(op_input, grad)
                grads_per_layer[id(op)] = op_grads
            grad_spike = grad.reshape((steps, batch) + stage.input_shape)
        param_grads = [grads_per_layer[id(layer)][name]
                       for layer in self.layers for name in layer.params()]
        return param_grads, grad_spike

    def __repr__(self) -> str:
        names = "-".join(_layer_label(layer) for layer in self.layers)
        return (f"SNN({names}, input_shape={self.input_shape}, threshold={self.threshold}, "
                f"decay={self.decay}, firing='{self.firing}', dtype={self.dtype.name}"
                + (f", reset='{self.reset}')" if self.reset != "zero" else ")"))


def _layer_label(layer: Layer) -> str:
    if layer.kind == "linear":
        return f"FC{layer.out_features}"
    if layer.kind == "conv2d":
        return f"C{layer.weight.shape[0]}K{layer.kernel_size[0]}S{layer.stride[0]}"
    if layer.kind == "avgpool2d":
        return f"AP{layer.kernel_size[0]}"
    return "F"
