"""Optimizers (SGD with momentum, Adam), gradient-norm clipping and learning-rate schedules.

Optimizers update ``net.params()`` IN PLACE (the arrays inside the layers) and follow
PyTorch's update rules exactly, so hyper-parameters port 1:1:

- SGD:  ``g = grad + wd * p;  buf = momentum * buf + g;  p -= lr * buf``
  (``nesterov``: ``p -= lr * (g + momentum * buf)``); ``buf`` starts at 0, which equals
  PyTorch's first-step ``buf = g``.
- Adam: ``g = grad + wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
  p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.

Their full state (buffers, step count, hyper-parameters) is a flat dict of arrays and scalars
(``state_dict`` / ``load_state_dict``) that checkpoints store exactly, so a resumed run is
bit-for-bit the uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np


def _check_grads(params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
    if len(grads) != len(params):
        raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
    for i, (param, grad) in enumerate(zip(params, grads)):
        if grad.shape != param.shape:
            raise ValueError(f"gradient {i} has shape {grad.shape}, its parameter {param.shape}")


class Optimizer:
    """Base class: holds references to the parameter arrays and a learning rate ``lr``."""

    name = "optimizer"

    def __init__(self, params: Sequence[np.ndarray], lr: float):
        self.params: List[np.ndarray] = list(params)
        for i, param in enumerate(self.params):
            if not isinstance(param, np.ndarray) or not np.issubdtype(param.dtype, np.floating):
                raise TypeError(f"parameter {i} must be a float NumPy array, got {type(param)}")
        if not np.isfinite(lr) or lr < 0:
            raise ValueError(f"the learning rate must be a finite number >= 0, got {lr}")
        self.lr = float(lr)
        self.step_count = 0

    def step(self, grads: Sequence[np.ndarray]) -> None:
        raise NotImplementedError

    def hyperparams(self) -> dict:
        raise NotImplementedError

    def _buffers(self) -> Dict[str, List[np.ndarray]]:
        return {}

    def state_dict(self) -> dict:
        """``{"name", "lr", "step_count", "hyperparams": {...}, "buffers": {name: [arrays]}}``."""
        return {"name": self.name, "lr": self.lr, "step_count": self.step_count,
                "hyperparams": self.hyperparams(),
                "buffers": {key: [b.copy() for b in value] for key, value in self._buffers().items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restores a ``state_dict`` (buffers copied into this optimizer's arrays)."""
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, this optimizer is {self.name!r}")
        self.lr = float(state["lr"])
        self.step_count = int(state["step_count"])
        for key, value in state.get("hyperparams", {}).items():
            setattr(self, key, tuple(value) if isinstance(value, list) else value)
        own = self._buffers()
        saved = state.get("buffers", {})
        if set(saved) != set(own):
            raise ValueError(f"optimizer state holds buffers {sorted(saved)}, expected {sorted(own)}")
        for key, arrays in own.items():
            if len(saved[key]) != len(arrays):
                raise ValueError(f"optimizer buffer {key!r} holds {len(saved[key])} arrays for "
                                 f"{len(arrays)} parameters; the checkpoint belongs to another network")
            for i, (target, source) in enumerate(zip(arrays, saved[key])):
                source = np.asarray(source)
                if source.shape != target.shape:
                    raise ValueError(f"optimizer buffer {key}[{i}] has shape {source.shape}, "
                                     f"parameter has {target.shape}")
                target[...] = source


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, (L2) weight decay and optional Nesterov."""

    name = "sgd"

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.momentum_buffers = [np.zeros_like(p) for p in self.params]

    def hyperparams(self):
        return {"momentum": self.momentum, "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def _buffers(self):
        return {"momentum": self.momentum_buffers}

    def step(self, grads):
        _check_grads(self.params, grads)
        for param, grad, buf in zip(self.params, grads, self.momentum_buffers):
            grad = np.asarray(grad, dtype=param.dtype)
            if self.weight_decay:
                grad = grad + param.dtype.type(self.weight_decay) * param
            if self.momentum:
                buf *= param.dtype.type(self.momentum)
                buf += grad
                update = grad + param.dtype.type(self.momentum) * buf if self.nesterov else buf
            else:
                update = grad
            param -= param.dtype.type(self.lr) * update
        self.step_count += 1


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and optional (L2) weight decay, as ``torch.optim.Adam``."""

    name = "adam"

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if eps <= 0 or weight_decay < 0:
            raise ValueError(f"eps must be > 0 and weight_decay >= 0, got {eps}, {weight_decay}")
        self.betas = betas
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.exp_avg = [np.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [np.zeros_like(p) for p in self.params]

    def hyperparams(self):
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _buffers(self):
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def step(self, grads):
        _check_grads(self.params, grads)
        self.step_count += 1
        beta1, beta2 = self.betas
        correction1 = 1.0 - beta1 ** self.step_count
        correction2_sqrt = np.sqrt(1.0 - beta2 ** self.step_count)
        for param, grad, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            kind = param.dtype.type
            grad = np.asarray(grad, dtype=param.dtype)
            if self.weight_decay:
                grad = grad + kind(self.weight_decay) * param
            m *= kind(beta1)
            m += kind(1.0 - beta1) * grad
            v *= kind(beta2)
            v += kind(1.0 - beta2) * grad * grad
            denom = np.sqrt(v) / kind(correction2_sqrt) + kind(self.eps)
            param -= kind(self.lr / correction1) * m / denom


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name: str, params, lr: float, **kwargs) -> Optimizer:
    """Optimizer by name (``sgd`` or ``adam``) over ``params`` with its keyword hyper-parameters."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr, **kwargs)


def global_grad_norm(grads: Sequence[np.ndarray]) -> float:
    """Euclidean norm of all gradients together (float64 accumulation)."""
    return float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads)))


def clip_grad_norm(grads: Sequence[np.ndarray], max_norm: float) -> float:
    """Scales ``grads`` in place so their global norm is at most ``max_norm`` (as
    ``torch.nn.utils.clip_grad_norm_``: factor ``max_norm / (norm + 1e-6)`` when below 1).
    Returns the norm before clipping. The authors' robust training clips at 0.25."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    norm = global_grad_norm(grads)
    if not np.isfinite(norm):
        raise FloatingPointError(f"gradient norm is {norm}; the loss diverged (lower the learning rate)")
    factor = max_norm / (norm + 1e-6)
    if factor < 1.0:
        for grad in grads:
            grad *= grad.dtype.type(factor)
    return norm


# --- learning-rate schedules ---------------------------------------------------------------------

@dataclass(frozen=True)
class ConstantLR:
    """Same learning rate every epoch."""

    base_lr: float

    def lr_at(self, epoch: int) -> float:
        return self.base_lr


@dataclass(frozen=True)
class MultiStepLR:
    """``base_lr * gamma ** (number of milestones <= epoch)``; epochs count from 0.

    The paper: 0.01 for 80 epochs, 0.001 from epoch 55 on -> ``MultiStepLR(0.01, (55,), 0.1)``.
    """

    base_lr: float
    milestones: Tuple[int, ...]
    gamma: float = 0.1

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)


@dataclass(frozen=True)
class StepLR:
    """``base_lr * gamma ** (epoch // step_size)``: x0.1 every 35 epochs is the default of the
    ``lr_scheduler`` function in the authors' scripts."""

    base_lr: float
    step_size: int
    gamma: float = 0.1

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


SCHEDULES = ("constant", "multistep", "step")


def make_schedule(name: str, base_lr: float, milestones: Sequence[int] = (), step_size: int = 0,
                  gamma: float = 0.1):
    """Schedule by name: ``constant``, ``multistep`` (uses ``milestones``), ``step`` (``step_size``)."""
    if name == "constant":
        return ConstantLR(base_lr)
    if name == "multistep":
        return MultiStepLR(base_lr, tuple(int(m) for m in milestones), gamma)
    if name == "step":
        if step_size < 1:
            raise ValueError(f"the step schedule needs step_size >= 1, got {step_size}")
        return StepLR(base_lr, int(step_size), gamma)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
