"""Training loop with manual BPTT, checkpoints that resume bit-for-bit, and the CLI.

``python -m refsnn.train`` with no arguments trains the FC network on the MNIST subset shipped
inside the package (2,000 train / 500 test images) for 30 epochs (about 1 s per epoch on 2 quiet
CPU cores, a few minutes on a busy machine), shows progress bars, prints a summary and writes
``runs/default/{model.h5, checkpoint.h5, ...}``.
With arguments it trains any preset on any dataset; ``--help`` lists them.

Structure
---------
- A *method* turns one batch into ``(loss, parameter gradients, output rates)``; ``natural``
  (cross-entropy or MSE on the clean output rates, manual BPTT through ``SNN.backward``) and
  ``robust`` (bound losses, ``refsnn.robust``) are registered here; other methods plug in with
  :func:`register_method` and read their settings from ``TrainConfig.method_options``.
- :class:`Trainer` owns the network, optimizer, schedule and the run's random generator; it
  shuffles with a per-epoch generator, draws fresh Bernoulli rand maps for every batch from the
  run's generator (digital data; event frames pass through), steps the optimizer, evaluates on
  the test split after every epoch and checkpoints atomically.
- Reproducibility: the initial weights come from ``seed``; the shuffling order of epoch ``e``
  from ``default_rng([seed, 1, e])``; the rand maps from the run generator
  ``default_rng([seed, 2])``, whose state is saved in every checkpoint together with the
  weights, the optimizer buffers and the running sums of the epoch. Same seed, same machine:
  identical weights; a resumed run is identical to an uninterrupted one.
"""
from __future__ import annotations

import argparse
import csv
import io as _io
import json
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .architectures import build_network
from .config import DATASETS, PRESETS, TrainConfig, preset_config
from .encoders import rate_encode
from .evaluate import Accuracy, clean_accuracy
from .io import atomic_write_text, clean_orphan_temps, load_checkpoint, load_model, save_checkpoint, save_model
from .losses import make_loss
from .memory import freed_memory_kept, release_freed_memory
from .network import SNN
from .neurons import make_surrogate
from . import robust
from .optim import clip_grad_norm, make_optimizer, make_schedule
from .runlock import RunLock, host_name

SHUFFLE_STREAM = 1
RANDMAP_STREAM = 2
EVENT_DATASETS = ("nmnist",)
# Steps between two returns of the kept free heap to the system (refsnn.memory.release_freed_memory).
_RELEASE_MEMORY_EVERY = 50


# --- methods: one batch -> loss and gradients ----------------------------------------------------

@dataclass
class Batch:
    """One training batch. ``spikes [T, B, *in]`` (uint8 0/1); for digital data also the
    ``images [B, *in]`` and the ``rand_maps [T, B, *in]`` that encoded them (eq. 13)."""

    labels: np.ndarray
    spikes: np.ndarray
    images: Optional[np.ndarray] = None
    rand_maps: Optional[np.ndarray] = None


@dataclass
class StepContext:
    """Where the loop stands, for methods whose loss changes over training (e.g. eps ramps)."""

    config: TrainConfig
    options: Any  # the method's validated ``method_options``
    epoch: int
    step: int  # batch index within the epoch
    steps_per_epoch: int
    global_step: int
    rng: np.random.Generator  # the run generator; draw from it only deterministically


@dataclass
class StepResult:
    """``loss``: batch mean; ``grads``: in ``net.params()`` order; ``rates [B, n_out]``: clean
    outputs (for the training accuracy); ``metrics``: extra batch means, averaged per epoch."""

    loss: float
    grads: List[np.ndarray]
    rates: np.ndarray
    metrics: Dict[str, float] = field(default_factory=dict)


StepFn = Callable[[SNN, Batch, StepContext], StepResult]


@dataclass
class Method:
    """A registered training method: its step function, an optional ``options(dict) -> object``
    validator for ``TrainConfig.method_options``, and optional extra per-epoch metrics
    ``epoch_metrics(trainer) -> dict`` (e.g. certified accuracy)."""

    step: StepFn
    options: Optional[Callable[[Dict[str, Any]], Any]] = None
    epoch_metrics: Optional[Callable[["Trainer"], Dict[str, float]]] = None


METHODS: Dict[str, Method] = {}


def register_method(name: str, step: StepFn, options=None, epoch_metrics=None) -> None:
    """Makes ``--method name`` available to the trainer and the CLI.

    ``options(method_options: dict, config: TrainConfig) -> object`` validates the settings.
    """
    METHODS[name] = Method(step, options, epoch_metrics)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]


def natural_step(net: SNN, batch: Batch, ctx: StepContext) -> StepResult:
    """Natural training: loss on the clean output rates, gradients by manual BPTT."""
    loss_fn = make_loss(ctx.config.loss, ctx.config.loss_scale)
    trace = net.run(batch.spikes, validate=False)  # encoder output is binary by construction
    rates = trace.rates
    loss, grad_rates = loss_fn(rates, batch.labels)
    grads, _ = net.backward(trace, grad_rates, input_grad=False)  # no dL/dx needed for training
    return StepResult(loss, grads, rates)


def _no_options(options: Dict[str, Any], config: Optional[TrainConfig] = None):
    if options:
        raise ValueError(f"method 'natural' takes no method_options, got {sorted(options)}")
    return None


register_method("natural", natural_step, options=_no_options)


def robust_step(net: SNN, batch: Batch, ctx: StepContext) -> StepResult:
    """Robust training (``refsnn.robust``): the bound loss of the batch and its hand-written gradients."""
    loss, grads, rates, metrics = robust.robust_step(net, batch, ctx)
    return StepResult(loss, grads, rates, metrics)


def _robust_options(values: Dict[str, Any], config: Optional[TrainConfig] = None) -> robust.RobustOptions:
    if config is None:
        return robust.robust_options(values)
    return robust.robust_options(values, config.dataset, config.arch, config.epochs)


register_method("robust", robust_step, options=_robust_options, epoch_metrics=robust.robust_epoch_metrics)


# --- the trainer ---------------------------------------------------------------------------------

def _load_split(config: TrainConfig, split: str):
    from .data import load_dataset

    limit = config.limit_train if split == "train" else config.limit_test
    return load_dataset(config.dataset, split, config.data_dir, T=config.T, limit=limit)


def dataset_input_shape(config: TrainConfig, x: np.ndarray) -> tuple:
    return tuple(x.shape[2:]) if config.dataset in EVENT_DATASETS else tuple(x.shape[1:])


def build_model(config: TrainConfig, input_shape, n_classes: int = 10) -> SNN:
    """The network a config asks for: ``init`` model file if given, else a fresh preset."""
    surrogate = make_surrogate(config.surrogate)
    if config.init:
        net = load_model(config.init, dtype=config.dtype)
        if tuple(net.input_shape) != tuple(input_shape) or net.n_outputs != n_classes:
            raise ValueError(f"--init model {config.init} takes inputs {net.input_shape} with "
                             f"{net.n_outputs} outputs; {config.dataset} needs {tuple(input_shape)} and {n_classes}")
        # Training settings come from the config; the model's firing rule must agree with it.
        if net.firing != config.firing or net.threshold != config.threshold or net.decay != config.decay:
            raise ValueError(f"--init model {config.init} uses threshold {net.threshold}, decay {net.decay}, "
                             f"firing '{net.firing}'; pass the same values (--firing ...) to train it")
        net.surrogate = surrogate
        net.reset_grad = config.reset_grad
        return net
    return build_network(config.arch, input_shape, n_classes, seed=config.seed, threshold=config.threshold,
                         decay=config.decay, firing=config.firing, surrogate=surrogate,
                         reset_grad=config.reset_grad, dtype=np.dtype(config.dtype))


@dataclass
class TrainResult:
    net: SNN
    history: List[Dict[str, Any]]
    test_accuracy: Optional[Accuracy]
    out_dir: Optional[Path]
    finished: bool  # False when stopped early (stop_after_steps or Ctrl-C); resume to continue
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM


class _DeferredInterrupt:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a flag checked between optimizer steps, so the
    checkpoint written on interruption never holds a half-applied step. A second Ctrl-C
    aborts at once. Outside the main thread signals are left alone."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


# --- the run folder -------------------------------------------------------------------------------

#: Files a run writes into its folder (besides ``run.lock`` while it runs); ``--overwrite`` removes them.
RUN_FILES = ("checkpoint.h5", "model.h5", "config.json", "metrics.jsonl", "metrics.csv", "summary.json",
             "status.json", "failure.json")


class RunExistsError(ValueError):
    """A new run was pointed at the folder of an earlier one without ``--resume`` or ``--overwrite``."""


class TrainingDiverged(FloatingPointError):
    """A step produced NaN or Inf; the run is marked failed and its last good checkpoint kept.

    ``diagnostics``: the record written to ``failure.json`` (epoch, batch, lr, non-finite tensors,
    norms, loss parts)."""

    def __init__(self, message: str, diagnostics: Dict[str, Any]):
        super().__init__(message)
        self.diagnostics = diagnostics


def check_new_run_folder(out_dir, overwrite: bool = False) -> None:
    """Refuses (:class:`RunExistsError`) to start a new run in a folder holding an earlier one,
    unless ``overwrite``, which removes the earlier run's files."""
    out_dir = Path(out_dir)
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not existing:
        return
    if not overwrite:
        raise RunExistsError(f"--out {out_dir} already holds a training run ({', '.join(existing)}); continue it "
                             "with --resume, replace it with --overwrite, or choose another --out")
    for name in existing:
        (out_dir / name).unlink()


def _finite(arrays: Sequence[np.ndarray]) -> bool:
    # One reduction per array: a sum is finite exactly when no element is NaN/Inf, except that a
    # sum of huge finite values can overflow, which the exact check below then clears.
    for array in arrays:
        if not np.isfinite(array.sum()) and not np.isfinite(array).all():
            return False
    return True


def _finite_number(value: float) -> Any:
    value = float(value)
    return value if np.isfinite(value) else str(value)  # JSON has no NaN/Inf


def _tensor_report(kind: str, names: Sequence[str], arrays: Sequence[np.ndarray]) -> tuple:
    """``(non-finite entries, norms)`` of named arrays for the failure diagnostics."""
    bad, norms = [], {}
    for name, array in zip(names, arrays):
        with np.errstate(over="ignore", invalid="ignore"):
            norms[f"{kind} {name}"] = _finite_number(np.linalg.norm(array.ravel().astype(np.float64)))
        nan = int(np.isnan(array).sum())
        inf = int(np.isinf(array).sum())
        if nan or inf:
            bad.append({"tensor": f"{kind} {name}", "nan": nan, "inf": inf, "size": int(array.size)})
    return bad, norms


class Trainer:
    """Runs ``config`` and writes into ``out_dir`` (``None``: nothing written)."""

    def __init__(self, config: TrainConfig, out_dir=None, progress: bool = True, verbose: bool = True,
                 data=None, net: Optional[SNN] = None, overwrite: bool = False):
        self.config = config.validate()
        self.overwrite = overwrite
        self.resumed = False  # set by resume(): the folder's run continues instead of a new one
        self.method = get_method(config.method)
        self.options = self.method.options(dict(config.method_options), config) if self.method.options else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.verbose = verbose
        if data is None:
            data = (*_load_split(config, "train"), *_load_split(config, "test"))
        self.x_train, self.y_train, self.x_test, self.y_test = data
        self.events = config.dataset in EVENT_DATASETS
        if self.events and self.x_train.shape[1] != config.T:
            raise ValueError(f"event frames have T = {self.x_train.shape[1]}, config asks for T = {config.T}")
        self.input_shape = dataset_input_shape(config, self.x_train)
        self.net = net if net is not None else build_model(config, self.input_shape)
        if tuple(self.net.input_shape) != self.input_shape:
            raise ValueError(f"the network takes inputs {self.net.input_shape}, {config.dataset} has {self.input_shape}")
        self.optimizer = self._make_optimizer()
        self.schedule = make_schedule(config.schedule, config.lr, config.milestones, config.step_size, config.gamma)
        self.rng = np.random.default_rng([config.seed, RANDMAP_STREAM])
        self.epoch = 0
        self.step = 0
        self.global_step = 0
        self.history: List[Dict[str, Any]] = []
        self.running = self._zero_running()

    def _make_optimizer(self):
        config = self.config
        if config.optimizer == "sgd":
            return make_optimizer("sgd", self.net.params(), config.lr, momentum=config.momentum,
                                  weight_decay=config.weight_decay)
        return make_optimizer("adam", self.net.params(), config.lr, weight_decay=config.weight_decay)

    @staticmethod
    def _zero_running() -> Dict[str, float]:
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "metrics": {}}

    # --- checkpoints ---------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.out_dir / "checkpoint.h5" if self.out_dir is not None else None

    def save_checkpoint(self, path=None) -> Path:
        path = Path(path) if path is not None else self.checkpoint_path
        return save_checkpoint(path, self.net, self.optimizer, self.config, self.history, self.rng,
                               self.epoch, self.step, self.global_step, extra={"running": self.running})

    @classmethod
    def resume(cls, path, out_dir=None, progress: bool = True, verbose: bool = True, epochs: Optional[int] = None,
               data=None, data_dir: Optional[str] = None) -> "Trainer":
        """Continues the run stored in checkpoint ``path`` (``epochs`` may extend it; ``data_dir``
        points to the same data at another place, e.g. on another machine)."""
        checkpoint = load_checkpoint(path)
        config = TrainConfig.from_dict(checkpoint.config)
        if data_dir is not None:
            config = config.replace(data_dir=str(data_dir))
        if epochs is not None:
            if epochs < checkpoint.epoch:
                raise ValueError(f"the checkpoint is at epoch {checkpoint.epoch}; cannot shorten the run to {epochs}")
            config = config.replace(epochs=epochs)
        net = checkpoint.net
        trainer = cls(config, out_dir if out_dir is not None else Path(path).parent, progress, verbose, data, net)
        trainer.resumed = True
        trainer.optimizer.load_state_dict(checkpoint.optimizer_state)
        trainer.rng.bit_generator.state = checkpoint.rng_state
        trainer.epoch, trainer.step, trainer.global_step = checkpoint.epoch, checkpoint.step, checkpoint.global_step
        trainer.history = list(checkpoint.history)
        trainer.running = checkpoint.extra.get("running", cls._zero_running())
        return trainer

    # --- data ----------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.y_train) // self.config.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.config.seed, SHUFFLE_STREAM, epoch]).permutation(len(self.y_train))

    def make_batch(self, indices: np.ndarray) -> Batch:
        labels = self.y_train[indices]
        if self.events:
            return Batch(labels, np.ascontiguousarray(np.swapaxes(self.x_train[indices], 0, 1)))
        images = self.x_train[indices]
        spikes, rand_maps = rate_encode(images, self.config.T, self.rng)
        return Batch(labels, spikes, images, rand_maps)

    # --- the loop ------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.verbose:
            from tqdm import tqdm
            tqdm.write(message)

    def evaluate(self, seeds: Sequence[int]) -> Accuracy:
        return clean_accuracy(self.net, self.x_test, self.y_test, self.config.T, seeds=seeds)

    def fit(self, stop_after_steps: Optional[int] = None) -> TrainResult:
        """Trains until ``config.epochs``; with ``stop_after_steps`` stops (and checkpoints) once
        ``global_step`` reaches it, as an interruption would.

        With an ``out_dir`` the folder is locked for the run (:class:`refsnn.runlock.RunLock`), a new
        run refuses a folder holding an earlier one (:func:`check_new_run_folder`) and ``status.json``
        says ``running``, ``stopped``, ``interrupted``, ``done`` or ``failed``. Raises
        :class:`TrainingDiverged` when a step gives NaN/Inf."""
        # every step frees and reallocates the same large arrays (refsnn.memory)
        with freed_memory_kept():
            return self._fit_locked(stop_after_steps)

    def _fit_locked(self, stop_after_steps: Optional[int]) -> TrainResult:
        if self.out_dir is None:
            return self._fit(stop_after_steps)
        with RunLock(self.out_dir) as lock:
            if lock.notice:
                self.log(lock.notice)
            if not self.resumed:
                check_new_run_folder(self.out_dir, self.overwrite)
            for name in RUN_FILES:
                clean_orphan_temps(self.out_dir / name)
            self._write_status("running")
            try:
                return self._fit(stop_after_steps)
            except TrainingDiverged:
                raise  # its status was written with the diagnostics
            except KeyboardInterrupt:
                self._write_status("interrupted", quiet=True)
                raise
            except BaseException as error:
                self._write_status("failed", f"{type(error).__name__}: {error}", quiet=True)
                raise

    def _write_status(self, state: str, message: Optional[str] = None, quiet: bool = False) -> None:
        """``status.json``: the run's state and position; ``quiet`` swallows write errors (used
        while another error is on its way out, which must not be masked)."""
        if self.out_dir is None:
            return
        record = {"state": state, "epoch": self.epoch + 1, "batch": self.step, "global_step": self.global_step,
                  "epochs": self.config.epochs, "pid": os.getpid(), "host": host_name(),
                  "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if message:
            record["message"] = message
        try:
            atomic_write_text(self.out_dir / "status.json", json.dumps(record, indent=2) + "\n")
        except (OSError, ValueError):
            if not quiet:
                raise

    def _fit(self, stop_after_steps: Optional[int] = None) -> TrainResult:
        from .progress import Progress, compile_notice

        config = self.config
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        compile_notice(quiet=not (self.verbose or self.progress))
        # One bar over every remaining batch of the run, so its ETA is the whole run's.
        bar = Progress(config.epochs * self.steps_per_epoch, f"{config.method} {config.dataset} {config.arch}", "batch",
                       quiet=not self.progress, initial=min(self.epoch, config.epochs) * self.steps_per_epoch + self.step)
        with _DeferredInterrupt() as interrupt, bar:
            while self.epoch < config.epochs:
                order = self.epoch_order(self.epoch)
                self.optimizer.lr = self.schedule.lr_at(self.epoch)
                bar.set_description(f"epoch {self.epoch + 1}/{config.epochs}")
                while self.step < self.steps_per_epoch:
                    if interrupt.requested or (stop_after_steps is not None and self.global_step >= stop_after_steps):
                        return self._stop(interrupted=interrupt.requested)
                    started = time.perf_counter()
                    self._train_step(order)
                    self.running["seconds"] += time.perf_counter() - started
                    bar.update(1)
                    if self.global_step % _RELEASE_MEMORY_EVERY == 0:
                        release_freed_memory()
                    if self.step % 5 == 0 or self.step == self.steps_per_epoch:
                        bar.set_postfix(**self._postfix())
                    if config.checkpoint_every and self.global_step % config.checkpoint_every == 0 \
                            and self.step < self.steps_per_epoch:
                        self._checkpoint()
                self._end_epoch()
                if interrupt.requested:
                    return self._stop(interrupted=True)
        return self._finish()

    def _train_step(self, order: np.ndarray) -> None:
        config = self.config
        start = self.step * config.batch_size
        batch = self.make_batch(order[start:start + config.batch_size])
        ctx = StepContext(config, self.options, self.epoch, self.step, self.steps_per_epoch, self.global_step, self.rng)
        result = self.method.step(self.net, batch, ctx)
        if not (np.isfinite(result.loss) and _finite(result.grads)):
            self._diverged(result, updated=False)  # the weights are still those of the last good step
        if config.grad_clip is not None:
            clip_grad_norm(result.grads, config.grad_clip)
        self.optimizer.step(result.grads)
        if not _finite(self.net.params()):
            self._diverged(result, updated=True)
        size = len(batch.labels)
        running = self.running
        running["loss_sum"] += float(result.loss) * size
        running["correct"] += int(np.sum(np.argmax(result.rates, axis=1) == batch.labels))
        running["seen"] += size
        for key, value in result.metrics.items():
            running["metrics"][key] = running["metrics"].get(key, 0.0) + float(value) * size
        self.step += 1
        self.global_step += 1

    def _diverged(self, result: StepResult, updated: bool) -> None:
        """Writes ``failure.json`` and ``status.json`` (failed) and raises :class:`TrainingDiverged`;
        the checkpoint on disk, the last good state, is not touched."""
        names = self.net.param_names()
        bad, norms = _tensor_report("gradient", names, result.grads)
        if updated:
            bad_weights, weight_norms = _tensor_report("weight", names, self.net.params())
            bad += bad_weights
            norms.update(weight_norms)
        loss_ok = bool(np.isfinite(result.loss))
        if not loss_ok:
            bad.insert(0, {"tensor": "loss", "value": str(float(result.loss))})
        where = f"epoch {self.epoch + 1}, batch {self.step} (step {self.global_step + 1})"
        what = ", ".join(entry["tensor"] + ("" if entry["tensor"] == "loss" else f" ({entry['nan']} NaN, {entry['inf']} Inf)")
                         for entry in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        diagnostics = {"epoch": self.epoch + 1, "batch": self.step, "global_step": self.global_step + 1,
                       "lr": self.optimizer.lr, "update_applied": updated, "non_finite": bad, "norms": norms,
                       "loss": _finite_number(result.loss),
                       "loss_parts": {key: _finite_number(value) for key, value in result.metrics.items()
                                      if np.isscalar(value)},
                       "grad_clip": self.config.grad_clip}
        message = f"training failed at {where}: non-finite {what}"
        if self.out_dir is not None:
            checkpoint = self.checkpoint_path
            kept = (f"last good checkpoint {checkpoint} left unchanged" if checkpoint.exists()
                    else "no checkpoint was written yet")
            diagnostics["checkpoint"] = str(checkpoint) if checkpoint.exists() else None
            failure = self.out_dir / "failure.json"
            try:
                atomic_write_text(failure, json.dumps(diagnostics, indent=2) + "\n")
                message += f"; {kept}; diagnostics in {failure}"
            except (OSError, ValueError) as error:
                message += f"; {kept}; could not write {failure}: {error}"
            self._write_status("failed", message, quiet=True)
        raise TrainingDiverged(message + "; lower the learning rate or clip gradients (--grad-clip)", diagnostics)

    def _postfix(self) -> Dict[str, str]:
        running = self.running
        seen = max(running["seen"], 1)
        return {"loss": f"{running['loss_sum'] / seen:.4f}", "acc": f"{100 * running['correct'] / seen:.2f}%",
                "samples/s": f"{running['seen'] / max(running['seconds'], 1e-9):.0f}"}

    def _end_epoch(self) -> None:
        running = self.running
        seen = max(running["seen"], 1)
        started = time.perf_counter()
        accuracy = self.evaluate(seeds=[0])
        record = {"epoch": self.epoch + 1, "lr": self.optimizer.lr, "train_loss": running["loss_sum"] / seen,
                  "train_acc": running["correct"] / seen, "test_acc": accuracy.mean,
                  "train_seconds": running["seconds"], "samples_per_s": running["seen"] / max(running["seconds"], 1e-9),
                  "eval_seconds": time.perf_counter() - started}
        record.update({f"train_{key}": value / seen for key, value in running["metrics"].items()})
        if self.method.epoch_metrics is not None:
            record.update(self.method.epoch_metrics(self))
        self.history.append(record)
        self.log(epoch_line(record, self.config.epochs))
        self.epoch += 1
        self.step = 0
        self.running = self._zero_running()
        release_freed_memory()   # the evaluation's arrays are larger than a step's
        self._checkpoint()
        self._write_metrics()

    def _stop(self, interrupted: bool) -> TrainResult:
        self._checkpoint()
        self._write_status("interrupted" if interrupted else "stopped")
        where = f"epoch {self.epoch + 1}, batch {self.step} (step {self.global_step})"
        self.log(("interrupted" if interrupted else "stopped") + f" at {where}"
                 + (f"; checkpoint {self.checkpoint_path}, continue with --resume" if self.out_dir else ""))
        return self._result(finished=False, interrupted=interrupted)

    def _checkpoint(self) -> None:
        if self.out_dir is not None:
            self.save_checkpoint()

    def _write_metrics(self) -> None:
        if self.out_dir is None:
            return
        lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in self.history)
        atomic_write_text(self.out_dir / "metrics.jsonl", lines)
        keys = sorted({key for record in self.history for key in record}, key=lambda k: (k != "epoch", k))
        buffer = _io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.out_dir / "metrics.csv", buffer.getvalue())

    def _result(self, finished: bool, accuracy: Optional[Accuracy] = None, interrupted: bool = False) -> TrainResult:
        return TrainResult(self.net, self.history, accuracy, self.out_dir, finished, interrupted)

    def _finish(self) -> TrainResult:
        config = self.config
        started = time.perf_counter()
        accuracy = self.evaluate(seeds=range(config.eval_seeds))
        eval_seconds = time.perf_counter() - started
        train_seconds = sum(record["train_seconds"] for record in self.history)
        summary = {"config": config.to_dict(), "test_accuracy": accuracy.to_dict(), "epochs": config.epochs,
                   "train_seconds_total": train_seconds, "final_eval_seconds": eval_seconds,
                   "seconds_per_epoch": train_seconds / max(len(self.history), 1),
                   "n_train": int(len(self.y_train)), "n_test": int(len(self.y_test)),
                   "machine": machine_description()}
        if self.out_dir is not None:
            save_model(self.out_dir / "model.h5", self.net, config=config.to_dict(),
                       test_accuracy=accuracy.to_dict(), history=self.history)
            atomic_write_text(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            self._write_status("done")
        self.log(f"done: {config.dataset} {config.arch} ({config.method}), {len(self.history)} epochs, "
                 f"{summary['seconds_per_epoch']:.1f} s/epoch; test accuracy {accuracy}"
                 + (f"\nwrote {self.out_dir / 'model.h5'} and {self.checkpoint_path}" if self.out_dir else ""))
        return self._result(finished=True, accuracy=accuracy)


def epoch_line(record: Dict[str, Any], epochs: int) -> str:
    """The status line of one finished epoch (a ``metrics.jsonl`` record): loss, accuracies, time
    and, for robust training, the eps reached, the loss parts and the certified errors."""
    line = (f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}, "
            f"train acc {100 * record['train_acc']:.2f}%, test acc {100 * record['test_acc']:.2f}% "
            f"(seed 0), {record['train_seconds']:.1f} s, {record['samples_per_s']:.0f} samples/s, lr {record['lr']:g}")
    if "eps" in record:
        line += f"; eps {record['eps']:.4g}"
        if "kappa" in record and "beta" in record:
            line += f" (kappa {record['kappa']:.3g}, beta {record['beta']:.3g})"
    parts = [f"{name} {record['train_' + key]:.4f}" for key, name in
             (("natural_loss", "natural"), ("robust_loss", "robust")) if "train_" + key in record]
    if parts:
        line += "; loss parts: " + ", ".join(parts)
    certified = [f"{100 * record[f'cert_error_{method}_{when}']:.1f}% {label} at {'eps now' if when == 'now' else 'final eps'}"
                 for when in ("now", "final") for method, label in (("crown-ibp", "S-CROWN"), ("best", "best"))
                 if f"cert_error_{method}_{when}" in record]
    if certified:
        line += f"; certified error ({record.get('cert_n', '?')} test samples): " + ", ".join(certified)
    return line


def machine_description() -> Dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__}


def train(config: TrainConfig, out_dir=None, resume: bool = False, progress: bool = False, verbose: bool = False,
          stop_after_steps: Optional[int] = None, overwrite: bool = False) -> TrainResult:
    """Trains ``config`` (or resumes ``out_dir/checkpoint.h5``) and returns the result. A new run
    refuses an ``out_dir`` holding an earlier one unless ``overwrite``."""
    if resume:
        if out_dir is None:
            raise ValueError("resume needs the out_dir that holds checkpoint.h5")
        trainer = Trainer.resume(Path(out_dir) / "checkpoint.h5", out_dir, progress, verbose, epochs=config.epochs)
    else:
        trainer = Trainer(config, out_dir, progress, verbose, overwrite=overwrite)
    return trainer.fit(stop_after_steps)


# --- command line ------------------------------------------------------------------------------

def _parse_option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--method-option needs KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


PROG = "python -m refsnn.train"


def _milestones(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = (-1,)
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"needs comma-separated epoch numbers >= 0, e.g. 55 or 30,60; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m refsnn.train`` parser (shared vocabulary of ``refsnn.cli``). Options left out take
    the value of ``--preset`` (see refsnn/config.py), hence their default ``none`` here."""
    from . import cli

    parser = cli.make_parser(
        PROG, "Train a LIF spiking network with manual BPTT. With no arguments: the FC network on the embedded "
              "MNIST subset (30 epochs, about 1 s each on 2 cores), written to runs/default/. Options whose "
              "default reads 'none' take the --preset's value.")
    add = parser.add_argument
    add("--preset", choices=sorted(PRESETS), default="default",
        help="named preset of the training schedule (default: the embedded quick job; paper: 80 epochs, "
             "lr 0.01 -> 0.001 at 55)")
    cli.add_dataset(parser)
    add("--arch", choices=("fc", "conv"), help="architecture (refsnn.architectures)")
    add("--method", help="training method: natural (default) or robust (S-IBP/S-CROWN bound loss)")
    cli.add_eps(parser, None, detail="; robust: final eps (default: the paper's Table 2 value)")
    cli.add_robust_T(parser, None, detail="; robust: the bound set (default 3)")
    add("--recipe", choices=("crown-ibp", "authors"), help="robust: loss/ramp recipe (default crown-ibp)")
    add("--ramp-epochs", type=cli.positive_float,
        help="robust: epochs of the linear eps ramp (default 250/300 of --epochs)")
    add("--method-option", action="append", type=_parse_option, default=None, metavar="KEY=VALUE",
        help="method-specific setting (JSON value), repeatable")
    add("--epochs", type=cli.positive_int, help="training epochs")
    add("--lr", type=cli.positive_float, help="base learning rate")
    cli.add_batch_size(parser, None)
    cli.add_T(parser, None, detail=" (the preset's: 10)")
    cli.add_seed(parser, detail=" (initial weights, shuffling, rand maps)")
    add("--optimizer", choices=("sgd", "adam"), help="optimizer")
    add("--momentum", type=cli.nonnegative_float, help="SGD momentum")
    add("--weight-decay", type=cli.nonnegative_float, help="L2 weight decay")
    add("--schedule", choices=("constant", "multistep", "step"), help="learning-rate schedule")
    add("--milestones", type=_milestones, help="multistep: epochs where lr is multiplied by --gamma, e.g. 55 or 30,60")
    add("--step-size", type=cli.positive_int, help="step schedule: epochs between decays")
    add("--gamma", type=cli.positive_float, help="learning-rate decay factor")
    add("--grad-clip", type=cli.positive_float, help="clip the gradient norm to this value")
    add("--loss", choices=("ce", "mse"), help="loss on the output rates")
    add("--loss-scale", type=cli.positive_float,
        help="logit scale on rates for the ce loss (default: 5 for fc, 2 for conv)")
    add("--firing", choices=(">=", ">"), help="firing rule m >= th (the paper) or m > th (the authors' code)")
    add("--surrogate", choices=("rectangular", "sigmoid", "atan"), help="surrogate derivative of the spike")
    add("--detach-reset", action="store_true", default=None, help="do not differentiate the reset path")
    add("--dtype", choices=("float32", "float64"), help="compute dtype of training")
    add("--limit-train", type=cli.positive_int, help="use the first N training samples")
    add("--limit-test", type=cli.positive_int, help="use the first N test samples")
    add("--eval-seeds", type=cli.positive_int, help="sampling seeds of the final test evaluation (digital data)")
    add("--checkpoint-every", type=cli.nonnegative_int, help="also checkpoint every N steps (0: per epoch only)")
    add("--init", metavar="FILE", help="start from the weights of this model file")
    cli.add_out(parser, "runs/default without arguments, else runs/<dataset>-<arch>-<method>-seed<seed>")
    add("--resume", action="store_true", help="continue the run in --out from its checkpoint.h5")
    add("--overwrite", action="store_true", help="replace the earlier run in --out (its checkpoint, model and metrics)")
    add("--stop-after-steps", type=cli.positive_int, help="stop and checkpoint after this many steps in total")
    cli.add_progress(parser)
    return parser


CONFIG_ARGS = ("dataset", "arch", "method", "epochs", "lr", "batch_size", "T", "seed", "optimizer", "momentum",
               "weight_decay", "schedule", "milestones", "step_size", "gamma", "grad_clip", "loss", "loss_scale",
               "firing", "surrogate", "dtype", "data_dir", "limit_train", "limit_test", "eval_seeds",
               "checkpoint_every", "init")


def config_from_args(args) -> TrainConfig:
    overrides = {name: getattr(args, name) for name in CONFIG_ARGS}
    if args.detach_reset:
        overrides["reset_grad"] = False
    method_options = dict(args.method_option or [])
    for name in ("eps", "robust_T", "recipe", "ramp_epochs"):
        if getattr(args, name, None) is not None:
            method_options[name] = getattr(args, name)
    if method_options:
        overrides["method_options"] = method_options
    return preset_config(args.preset, **overrides)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m refsnn.train``; returns the exit code (2 with one stderr line for bad input)."""
    from .cli import run_main

    return run_main(PROG)(_main)(argv)


def _main(argv: Optional[Sequence[str]] = None) -> int:
    from . import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    progress = not (args.no_progress or args.quiet)
    try:
        if args.resume:
            out = Path(args.out or "runs/default")
            given = sorted(name for name in CONFIG_ARGS
                           if getattr(args, name) != parser.get_default(name) and name not in ("epochs", "data_dir"))
            robust_given = any(getattr(args, name) is not None for name in ("eps", "robust_T", "recipe", "ramp_epochs"))
            if args.overwrite:
                parser.error("--resume continues the run in --out and --overwrite replaces it; pass one of them")
            if given or args.method_option or robust_given or args.detach_reset or args.preset != "default":
                parser.error(f"--resume continues the stored config; drop {['--' + g.replace('_', '-') for g in given]}"
                             " (only --epochs and --data-dir may change)")
            trainer = Trainer.resume(out / "checkpoint.h5", out, progress, not args.quiet, epochs=args.epochs,
                                     data_dir=args.data_dir)
            trainer.log(f"resuming {out / 'checkpoint.h5'} at epoch {trainer.epoch + 1}, batch {trainer.step}")
        else:
            config = config_from_args(args)
            cli.check_robust_T(config.method_options.get("robust_T"), config.T, "--T")
            out = Path(args.out) if args.out else (Path("runs/default") if not argv else
                                                     Path(f"runs/{config.dataset}-{config.arch}-{config.method}-seed{config.seed}"))
            cli.check_out_dir(out)
            if not args.overwrite:
                check_new_run_folder(out)  # refuse in a second, before the data are loaded
            trainer = Trainer(config, out, progress, not args.quiet, overwrite=args.overwrite)
            trainer.log(f"training {trainer.net!r}\non {config.dataset} ({len(trainer.y_train)} train / "
                        f"{len(trainer.y_test)} test), T = {config.T}, batch {config.batch_size}, {config.optimizer} "
                        f"lr {config.lr}, {config.epochs} epochs, loss {config.loss}, dtype {config.dtype}, "
                        f"seed {config.seed} -> {out}")
        result = trainer.fit(args.stop_after_steps)
    except KeyboardInterrupt:
        return 130
    except TrainingDiverged as error:  # a failed run (1), not a usage error (2)
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy, so that methods registered from
    # other modules land in the registry main reads.
    from refsnn.train import main as _main
    sys.exit(_main())
