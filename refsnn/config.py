"""Experiment configuration: one small dataclass saved with every checkpoint, model and result.

``TrainConfig`` holds everything that determines a training run (with the seed, the same
config on the same machine gives bit-identical weights). Named presets fill in the schedule:

- ``default``: the embedded job of ``python -m refsnn.train`` with no arguments (FC on the
  2,000/500-image MNIST subset shipped in the package, 30 epochs, lr 0.01 -> 0.001 at epoch 20,
  about 1 s per epoch on 2 quiet cores; the test accuracy plateaus at ~91% after about 10
  epochs). With ``--dataset mnist`` it is the quick full-data recipe: ``--epochs 3
  --milestones 2`` is the acceptance run in results/train/.
- ``paper``: the paper's schedule, 80 epochs, SGD lr 0.01 decayed to 0.001 at epoch 55
  (momentum 0.9 and batch 128 as in the authors' script; the paper does not state them; the
  loss is refsnn's default, cross-entropy on ``5 * rates``).
- ``authors``: what the released script ``train_org_mnist.py`` actually runs: its
  ``lr_scheduler(optimizer, epoch, 55)`` is called after epoch index 55, so 0.01 holds for 56
  epochs and 0.001 for the last 24; softmax cross-entropy straight on the rates, batch 128.
- ``authors-step35``: the default of that ``lr_scheduler`` function, x0.1 every 35 epochs; it
  runs after the test of epoch index 35 and 70, so the decayed rates start at epochs 36 and 71.

Method-specific settings (e.g. robust training's epsilon schedule) live in
``method_options``, a plain dict that the method registered in :mod:`refsnn.train` validates.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

DATASETS = ("mnist", "fmnist", "nmnist", "mnist-subset")

#: Logit scale of the cross-entropy on rates when none is given (see refsnn.losses): FC learns
#: fastest with 5; with 5 the CONV net diverged within 20 SGD steps at lr 0.01 (its 6272-input
#: FC layer takes 5x larger steps), with 2 it learns (results/train/README.md).
DEFAULT_LOSS_SCALE = {"fc": 5.0, "conv": 2.0}
DTYPES = ("float32", "float64")


@dataclass
class TrainConfig:
    """A training run. Epochs count from 0; ``lr`` is the base learning rate of the schedule."""

    dataset: str = "mnist-subset"
    arch: str = "fc"
    method: str = "natural"
    epochs: int = 30
    batch_size: int = 64
    T: int = 10
    # optimizer and schedule
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "multistep"
    milestones: Tuple[int, ...] = ()
    step_size: int = 0
    gamma: float = 0.1
    grad_clip: Optional[float] = None
    # loss on the output rates
    loss: str = "ce"
    loss_scale: Optional[float] = None  # logits = scale * rates; None: DEFAULT_LOSS_SCALE[arch]
    # neuron model
    threshold: float = 0.25
    decay: float = 0.25
    firing: str = ">="
    surrogate: str = "rectangular"
    reset_grad: bool = True
    dtype: str = "float32"
    # data, seeds, evaluation, checkpoints
    seed: int = 0
    data_dir: Optional[str] = None
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    eval_seeds: int = 5
    checkpoint_every: int = 0  # also checkpoint every N steps (0: only at the end of each epoch)
    init: Optional[str] = None  # start from the weights of this model file
    method_options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.loss_scale is None:
            self.loss_scale = DEFAULT_LOSS_SCALE.get(self.arch, 1.0)

    def validate(self) -> "TrainConfig":
        """Raises ``ValueError`` naming the bad field; returns ``self``."""
        from .architectures import ARCHITECTURES
        from .losses import LOSSES
        from .neurons import FIRING_MODES, SURROGATES
        from .optim import OPTIMIZERS, SCHEDULES

        choices = {"dataset": DATASETS, "arch": ARCHITECTURES, "optimizer": tuple(OPTIMIZERS),
                   "schedule": SCHEDULES, "loss": tuple(LOSSES), "firing": FIRING_MODES,
                   "surrogate": tuple(SURROGATES), "dtype": DTYPES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "T", "eval_seeds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.schedule == "step" and self.step_size < 1:
            raise ValueError("schedule 'step' needs step_size >= 1")
        if self.loss_scale is None or not self.loss_scale > 0:
            raise ValueError(f"loss_scale must be > 0, got {self.loss_scale}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config fields {unknown}; the file was written by a "
                             "newer or different version of refsnn")
        data = dict(data)
        if "milestones" in data:
            data["milestones"] = tuple(int(m) for m in data["milestones"])
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


PRESETS: Dict[str, Dict[str, Any]] = {
    "default": dict(dataset="mnist-subset", arch="fc", epochs=30, batch_size=64, lr=0.01,
                    schedule="multistep", milestones=(20,), optimizer="sgd", momentum=0.9),
    "paper": dict(epochs=80, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9,
                  schedule="multistep", milestones=(55,), gamma=0.1),
    "authors": dict(epochs=80, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9,
                    schedule="multistep", milestones=(56,), gamma=0.1, loss="ce", loss_scale=1.0,
                    firing=">"),
    "authors-step35": dict(epochs=80, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9,
                           schedule="multistep", milestones=(36, 71), gamma=0.1, loss="ce", loss_scale=1.0,
                           firing=">"),
}


def preset_config(name: str, **overrides) -> TrainConfig:
    """``TrainConfig`` of a named preset with ``overrides`` applied (``None`` values ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS[name])
    values.update({key: value for key, value in overrides.items() if value is not None})
    return TrainConfig(**values).validate()
