"""Input gradients for attacks: losses on output rates and pluggable gradient rules.

A gradient rule says how ``dL/ds_t`` (the loss gradient w.r.t. the binary input spikes at every
time step, ``[T, B, *input_shape]``) is computed through the non-differentiable LIF neurons:

- ``bptt``: backpropagation through time with a surrogate derivative of the Heaviside (STBP,
  the network's own ``lif_backward``; the surrogate may be overridden for the attack). This is the
  paper's rule (Liang et al. 2021, eq. 6, first line).
- ``rate``: rate gradient approximation (RGA / BPTR, Bu et al. CVPR 2023): every LIF neuron is
  differentiated as a map from its *mean* input current ``Ibar`` to its spike rate, so
  ``dL/dI_t = dL/ds_t * rho'(Ibar)`` with no temporal recurrence. ``rho'`` is the derivative of
  the piecewise-linear rate curve of a LIF neuron with reset to zero and decay ``alpha``::

      rho'(I) = gamma / th                                     for 0 <= I < th (1 - alpha)
      rho'(I) = (1 - gamma (1 - alpha)) / (th (alpha + ext))   for th (1 - alpha) <= I <= th (1 + ext)
      rho'(I) = 0                                              otherwise

  (Bu et al.'s release with threshold 1 and ``mem = tau * mem + x``, scaled to threshold ``th``;
  defaults ``gamma = 0.2``, ``ext = 1``.) Below ``th (1 - alpha)`` a constant current never fires,
  from ``th`` on it fires every step, which is where the curve reaches 1.

Both rules can raise the firing threshold of the penultimate stage while the gradient is taken,
the trick of the attack's authors (liangling76/snn_attack: 0.3 -> 1.0, i.e. ratio 10/3) against
vanishing gradients: that stage *fires* at ``ratio * th`` in the forward pass used for the
gradient, while its surrogate stays centred on the original ``th`` (as in their ``ActFunThresh``).
The network itself is never modified; success is always judged with the unmodified network.

The loss reads the output rates (``output="rates"``, default) or the mean input current of the
output neurons over time (``output="currents"``): a continuous proxy of the rate that keeps
changing where the rates, multiples of ``1/T``, sit on a plateau; its gradient enters BPTT below
the output neurons' fire function.

Losses act on the output rates ``r [B, n_out]`` (or the mean output currents); the attack
*maximizes* them:

- ``ce``: softmax cross-entropy of ``scale * r`` (``scale = 1``: the authors' ``CrossEntropyLoss``
  applied to spike rates);
- ``margin``: ``max_{j != y} r_j - r_y`` (Carlini-Wagner style; > 0 means misclassified unless tied).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np

from ..network import SNN, Trace
from ..neurons import lif_backward, lif_forward, make_surrogate

GRADIENT_RULES = ("bptt", "rate")
OUTPUTS = ("rates", "currents")
LOSSES = ("ce", "margin")
AUTHORS_THRESHOLD_RATIO = 1.0 / 0.3  # liangling76/snn_attack: penultimate threshold 0.3 -> 1.0


@dataclass(frozen=True)
class GradientRule:
    """How input gradients are computed (see the module docstring).

    ``rule``: ``"bptt"`` or ``"rate"``. ``surrogate``: name of a surrogate from
    ``refsnn.neurons`` (``rectangular``, ``sigmoid``, ``atan``) to use instead of the network's own
    (``None`` keeps the network's). ``penultimate_threshold_ratio``: the penultimate stage fires at
    ``ratio * th`` while the gradient is taken (``None``: off; ``AUTHORS_THRESHOLD_RATIO`` = 10/3 as
    the authors). ``rate_gamma``, ``rate_ext``: shape of the rate curve of the ``rate`` rule.
    ``output``: what the loss reads, ``"rates"`` or ``"currents"`` (mean output current).
    """

    rule: str = "bptt"
    surrogate: Optional[str] = None
    penultimate_threshold_ratio: Optional[float] = None
    rate_gamma: float = 0.2
    rate_ext: float = 1.0
    output: str = "rates"

    def __post_init__(self):
        if self.rule not in GRADIENT_RULES:
            raise ValueError(f"unknown gradient rule {self.rule!r}; choose one of {GRADIENT_RULES}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS} (what the loss reads), got {self.output!r}")
        if self.surrogate is not None:
            make_surrogate(self.surrogate)  # raises with the list of valid names
        ratio = self.penultimate_threshold_ratio
        if ratio is not None and not (np.isfinite(ratio) and ratio > 0):
            raise ValueError(f"penultimate_threshold_ratio must be a positive number or None, got {ratio}")
        if not 0.0 <= self.rate_gamma <= 1.0 or self.rate_ext <= 0:
            raise ValueError("rate_gamma must lie in [0, 1] and rate_ext must be > 0")

    def config(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        parts = [self.rule]
        if self.surrogate:
            parts.append(self.surrogate)
        if self.penultimate_threshold_ratio:
            parts.append(f"pth{self.penultimate_threshold_ratio:.3g}")
        if self.output != "rates":
            parts.append(self.output)
        return "-".join(parts)


# --- losses on rates -----------------------------------------------------------------------------

def rate_loss(rates: np.ndarray, labels: np.ndarray, loss: str = "ce", scale: float = 1.0
              ) -> Tuple[np.ndarray, np.ndarray]:
    """Per-sample loss to *maximize* and its gradient w.r.t. ``rates [B, n_out]``: ``([B], [B, n_out])``."""
    rates = np.asarray(rates, dtype=np.float64)
    labels = np.asarray(labels)
    batch = np.arange(rates.shape[0])
    if loss == "ce":
        logits = scale * rates
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1))
        values = log_norm - shifted[batch, labels]
        grad = np.exp(shifted - log_norm[:, None])
        grad[batch, labels] -= 1.0
        return values, scale * grad
    if loss == "margin":
        others = rates.copy()
        others[batch, labels] = -np.inf
        runner_up = np.argmax(others, axis=1)
        values = rates[batch, runner_up] - rates[batch, labels]
        grad = np.zeros_like(rates)
        grad[batch, runner_up] = 1.0
        grad[batch, labels] = -1.0
        return values, grad
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")


# --- forward with per-stage thresholds, backward with a pluggable neuron rule ----------------------

def _stage_thresholds(net: SNN, rule: GradientRule) -> list:
    thresholds = [net.threshold] * len(net.stages)
    if rule.penultimate_threshold_ratio is not None and len(net.stages) >= 2:
        thresholds[-2] = net.threshold * rule.penultimate_threshold_ratio
    return thresholds


def _check_plain(net: SNN, x: np.ndarray, plain: Trace) -> None:
    """``plain`` must be a pass of ``net`` (its stages, threshold and neuron model) on ``x``: a
    wrong one would silently put another pass's stages under the raised threshold's."""
    steps, batch = x.shape[:2]
    shapes = [(steps, batch) + tuple(stage.neuron_shape) for stage in net.stages]
    if not isinstance(plain, Trace) or np.shape(plain.inputs) != x.shape:
        raise ValueError(f"plain must be a trace of inputs {x.shape} (net.run of these spikes), got "
                         f"{type(plain).__name__} of inputs {np.shape(getattr(plain, 'inputs', None))}")
    if [np.shape(s) for s in plain.spikes] != shapes or plain.threshold != net.threshold or plain.reset != net.reset:
        raise ValueError(f"plain must be a trace of this network (stage spikes {shapes}, threshold {net.threshold}, "
                         f"reset {net.reset!r}), got stage spikes {[np.shape(s) for s in plain.spikes]}, threshold "
                         f"{plain.threshold}, reset {plain.reset!r}")
    if not np.array_equal(plain.inputs, x):
        raise ValueError("plain must be a trace of these very spikes (net.run of them), got one of other spikes")


def attack_forward(net: SNN, spikes: np.ndarray, rule: GradientRule, plain: Optional[Trace] = None) -> Trace:
    """``SNN.run`` with the rule's firing thresholds per stage; ``spikes [T, B, *in]`` of 0/1.

    ``plain``: ``net.run`` of these very spikes (same samples, same batch), whose stages before
    the first raised threshold are taken as they are (the same operations on the same arrays);
    one of other inputs or of another network's shape is refused (``ValueError``).
    """
    thresholds = _stage_thresholds(net, rule)
    if plain is not None:
        _check_plain(net, np.asarray(spikes), plain)
    if all(th == net.threshold for th in thresholds):
        return net.run(spikes, validate=False) if plain is None else plain
    x = np.asarray(spikes, dtype=net.dtype)
    steps, batch = x.shape[:2]
    trace = Trace(inputs=x, threshold=net.threshold, reset=net.reset)
    activation = x.reshape((steps * batch,) + x.shape[2:])
    for k, (stage, threshold) in enumerate(zip(net.stages, thresholds)):
        if plain is not None and all(th == net.threshold for th in thresholds[:k + 1]):
            trace.op_inputs.append(plain.op_inputs[k] if k < len(plain.op_inputs) else [])
            trace.currents.append(plain.currents[k])
            trace.membranes.append(plain.membranes[k])
            trace.spikes.append(plain.spikes[k])
            activation = plain.spikes[k].reshape((steps * batch,) + stage.neuron_shape)
            continue
        inputs = []
        for op in stage.ops:
            inputs.append(activation)
            activation = op.forward(activation)
        current = activation.reshape((steps, batch) + stage.neuron_shape)
        membrane, spike = lif_forward(current, threshold, net.decay, net.firing, reset=net.reset)
        trace.op_inputs.append(inputs)
        trace.currents.append(current)
        trace.membranes.append(membrane)
        trace.spikes.append(spike)
        activation = spike.reshape((steps * batch,) + stage.neuron_shape)
    return trace


def rate_derivative(mean_current: np.ndarray, threshold: float, decay: float, gamma: float = 0.2,
                    ext: float = 1.0) -> np.ndarray:
    """``rho'(Ibar)`` of the ``rate`` rule (module docstring), elementwise."""
    knee = threshold * (1.0 - decay)
    slope_low = gamma / threshold
    slope_high = (1.0 - gamma * (1.0 - decay)) / (threshold * (decay + ext))
    low = (mean_current >= 0.0) & (mean_current < knee)
    high = (mean_current >= knee) & (mean_current <= threshold * (1.0 + ext))
    return np.where(low, slope_low, np.where(high, slope_high, 0.0)).astype(mean_current.dtype)


def attack_backward(net: SNN, trace: Trace, grad_output: np.ndarray, rule: GradientRule) -> np.ndarray:
    """``dL/ds^{in} [T, B, *in]`` from the loss gradient w.r.t. the output ``[B, n_out]`` under ``rule``.

    ``grad_output`` is ``dL/d rates`` (``rule.output == "rates"``) or ``dL/d mean output current``
    (``"currents"``). Only the input gradient is formed (adjoints ``op.transpose``), no parameter
    gradients.
    """
    steps, batch = trace.inputs.shape[:2]
    surrogate = make_surrogate(rule.surrogate) if rule.surrogate else net.surrogate
    last_shape = net.stages[-1].neuron_shape
    # d mean_t(v_t) / d v_t = 1 / T for the rates (v = s) and the mean currents (v = I) alike.
    grad_last = np.broadcast_to(
        np.asarray(grad_output, dtype=net.dtype).reshape((1, batch) + last_shape) / steps,
        (steps, batch) + last_shape)
    grad_spike = grad_last
    for k in range(len(net.stages) - 1, -1, -1):
        stage = net.stages[k]
        if k == len(net.stages) - 1 and rule.output == "currents":
            grad_current = grad_last
        elif rule.rule == "bptt":
            # Surrogate centred on the network's threshold even where the stage fired at a raised one.
            grad_current = lif_backward(trace.membranes[k], trace.spikes[k], grad_spike, net.threshold,
                                        net.decay, surrogate, net.reset_grad, net.reset)
        else:
            slope = rate_derivative(trace.currents[k].mean(axis=0), net.threshold, net.decay,
                                    rule.rate_gamma, rule.rate_ext)
            grad_current = grad_spike * slope[None]
        grad = grad_current.reshape((steps * batch,) + stage.neuron_shape)
        for op in reversed(stage.ops):
            grad = op.transpose(grad)
        grad_spike = grad.reshape((steps, batch) + stage.input_shape)
    return np.asarray(grad_spike)


def uses_plain_forward(net: SNN, rule: GradientRule) -> bool:
    """True when the rule's forward pass is the network's own (no raised threshold)."""
    return all(th == net.threshold for th in _stage_thresholds(net, rule))


def input_gradient(net: SNN, spikes: np.ndarray, labels: np.ndarray, rule: GradientRule = GradientRule(),
                   loss: str = "ce", loss_scale: float = 1.0, trace: Optional[Trace] = None
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss (to maximize) and its gradient w.r.t. the input spikes.

    ``spikes [T, B, *in]`` 0/1, ``labels [B]`` -> ``(loss [B], dL/ds [T, B, *in], rates [B, n_out])``;
    ``rates`` come from the forward pass the gradient was taken on (raised threshold included).
    ``trace``: a ``net.run(spikes)`` of the same batch already computed: the rule's forward pass, or
    with a raised threshold its stages before that one (:func:`attack_forward`).
    """
    trace = attack_forward(net, spikes, rule, plain=trace)
    rates = trace.rates
    output = rates if rule.output == "rates" else output_currents(trace)
    values, grad_output = rate_loss(output, labels, loss, loss_scale)
    return values, attack_backward(net, trace, grad_output, rule), rates


def output_currents(trace: Trace) -> np.ndarray:
    """Mean input current of the output neurons over time ``[B, n_out]``."""
    last = trace.currents[-1]
    return last.mean(axis=0).reshape(last.shape[1], -1)
