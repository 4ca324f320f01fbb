"""The paper's Table 2 protocol: original error and attack error at several eps, one or two models.

Sample selection (fixed, seeded, documented in docs/ATTACKS.md): the ``n`` test samples are
``sorted(default_rng([seed, 0]).permutation(N_test)[:n])`` (``seed = 0`` by default), the
same for every model and every eps. Digital inputs get ONE evaluation draw of rand maps,
``draw_rand_maps(default_rng([seed, 1]), T, images.shape)``, shared by every model, attack and eps:
the "original error" and the "attack error" columns are both measured on it (the same set the
bounds certify). Each adversarial image is also re-scored on ``fresh_draws`` fresh draws
(``default_rng([seed, 2])``) next to the clean images on the same draws: the ``*_fresh`` columns.
Attacks run in chunks of ``batch_size`` samples; chunk ``c`` uses the attack seed ``[seed, 3, c]``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..encoders import draw_rand_maps
from ..network import SNN
from .base import AttackResult
from .constraints import SpikeBudget
from .ensemble import Strongest
from .evaluate import fresh_error
from .paper import PaperAttack
from .pgd import PGD, GreedyFlip

PROTOCOL_ATTACKS = ("paper", "pgd", "greedy", "strongest")


def select_samples(n_available: int, n: int, seed: int = 0) -> np.ndarray:
    """The protocol's fixed selection: ``n`` sorted indices out of ``n_available``."""
    if not 0 < n <= n_available:
        raise ValueError(f"cannot select {n} samples out of {n_available}; use --n between 1 and {n_available}")
    return np.sort(np.random.default_rng([seed, 0]).permutation(n_available)[:n])


def evaluation_maps(images_shape, T: int, seed: int = 0) -> np.ndarray:
    return draw_rand_maps(np.random.default_rng([seed, 1]), T, images_shape)


@dataclass
class ProtocolConfig:
    """Settings of one Table 2 run (saved with its results)."""

    attacks: Sequence[str] = ("paper",)
    eps: Sequence[float] = (0.104, 0.124, 0.140, 0.154)
    kind: str = "digital"
    convention: str = "paper"
    T: int = 10
    seed: int = 0
    fresh_draws: int = 5
    batch_size: int = 100
    steps: Optional[int] = None
    effort: float = 1.0

    def __post_init__(self):
        unknown = [name for name in self.attacks if name not in PROTOCOL_ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(f"unknown attack(s) {unknown}; choose from {PROTOCOL_ATTACKS}")
        if self.batch_size < 1 or self.fresh_draws < 0:
            raise ValueError("batch_size must be >= 1 and fresh_draws >= 0")


def make_attack(name: str, net: SNN, eps: float, config: ProtocolConfig, seed) -> object:
    common = dict(kind=config.kind, convention=config.convention, seed=seed, T=config.T)
    steps = {} if config.steps is None else {"steps": config.steps}
    if name == "paper":
        return PaperAttack(net, eps, **common, **steps)
    if name == "pgd":
        return PGD(net, eps, restarts=2, **common, **steps)
    if name == "greedy":
        return GreedyFlip(net, eps, **common, **steps)
    return Strongest(net, eps, effort=config.effort, **common)


def _concat(results: List[AttackResult]) -> AttackResult:
    first = results[0]
    axis = 0 if first.kind == "digital" else 1
    maps = None if first.rand_maps is None else np.concatenate([r.rand_maps for r in results], axis=1)
    config = dict(first.config, seed="[protocol seed, 3, chunk index]")
    if "broken_by" in config:
        config["broken_by"] = {key: int(sum(r.config["broken_by"][key] for r in results))
                               for key in first.config["broken_by"]}
    return AttackResult(first.kind, np.concatenate([r.x_adv for r in results], axis=axis),
                        np.concatenate([r.spikes_adv for r in results], axis=1), maps,
                        np.concatenate([r.labels for r in results]),
                        np.concatenate([r.clean_pred for r in results]),
                        np.concatenate([r.adv_pred for r in results]),
                        np.concatenate([r.iterations for r in results]), config)


def _attack_chunk(net: SNN, name: str, eps: float, config: ProtocolConfig, chunk) -> AttackResult:
    """One chunk of one attack (a pure function of its arguments: the seed is ``[seed, 3, chunk index]``)."""
    index, sub_x, sub_labels, sub_maps, sub_start = chunk
    attack = make_attack(name, net, eps, config, [config.seed, 3, index])
    if sub_start is not None:
        return attack(sub_x, sub_labels, sub_maps, start=sub_start)
    return attack(sub_x, sub_labels, sub_maps)


def run_attack(net: SNN, name: str, eps: float, x, labels, rand_maps, config: ProtocolConfig,
               start: Optional[AttackResult] = None, progress: Optional[Callable[[int], None]] = None,
               scheduler=None) -> AttackResult:
    """One attack at one eps over all samples, in chunks; ``start`` (paper result) feeds ``strongest``.

    ``scheduler``: None (serial) or a ``distributed.Client`` / address: the chunks then run as one
    Dask task each (``refsnn.parallel.map_chunks``) with the same per-chunk seeds, so the result
    is identical to the serial run.
    """
    from functools import partial

    from ..parallel import map_chunks

    chunks = []
    for index, begin in enumerate(range(0, labels.size, config.batch_size)):
        part = slice(begin, begin + config.batch_size)
        sub_x = x[part] if config.kind == "digital" else x[:, part]
        sub_maps = rand_maps[:, part] if rand_maps is not None else None
        sub_start = _slice_result(start, part) if name == "strongest" and start is not None else None
        chunks.append((index, sub_x, labels[part], sub_maps, sub_start))
    report = None if progress is None else (lambda index, result: progress(int(result.labels.size)))
    results = map_chunks(partial(_attack_chunk, net, name, eps, config), chunks, scheduler=scheduler,
                         progress=report)
    return _concat(results)


def _slice_result(result: AttackResult, part: slice) -> AttackResult:
    axis0 = result.kind == "digital"
    return AttackResult(result.kind, result.x_adv[part] if axis0 else result.x_adv[:, part],
                        result.spikes_adv[:, part], None if result.rand_maps is None else result.rand_maps[:, part],
                        result.labels[part], result.clean_pred[part], result.adv_pred[part],
                        result.iterations[part], result.config)


@dataclass
class ProtocolRow:
    model: str
    attack: str
    eps: float
    radius: Optional[float]
    n: int
    original_error: float
    attack_error: float
    success_rate_on_correct: float
    mean_iterations: float
    seconds: float
    l0_budget: Optional[int] = None
    original_error_fresh: Optional[float] = None
    attack_error_fresh: Optional[float] = None
    broken_by: Dict[str, int] = field(default_factory=dict)
    adv_wrong: List[int] = field(default_factory=list)  # per sample, 1 = misclassified after the attack


def _chunks(x, labels, rand_maps, config: ProtocolConfig) -> list:
    """``(chunk index, x, labels, maps)`` of consecutive ``batch_size`` samples (chunk ``c`` seeds ``[seed, 3, c]``)."""
    chunks = []
    for index, begin in enumerate(range(0, labels.size, config.batch_size)):
        part = slice(begin, begin + config.batch_size)
        chunks.append((index, x[part] if config.kind == "digital" else x[:, part], labels[part],
                       rand_maps[:, part] if rand_maps is not None else None))
    return chunks


def _protocol_task(config: ProtocolConfig, task) -> Dict[str, tuple]:
    """Every attack of ``config`` on one chunk of one model at one eps, in order; a paper result feeds
    ``strongest`` as in :func:`run_attack`. Returns ``{attack: (AttackResult, seconds)}``."""
    net, eps, (index, sub_x, sub_labels, sub_maps) = task
    out: Dict[str, tuple] = {}
    paper_result = None
    for name in config.attacks:
        started = time.perf_counter()
        start = paper_result if name == "strongest" else None
        result = _attack_chunk(net, name, eps, config, (index, sub_x, sub_labels, sub_maps, start))
        out[name] = (result, time.perf_counter() - started)
        if name == "paper":
            paper_result = result
    return out


def run_protocol(models: Dict[str, SNN], x, labels, config: ProtocolConfig, rand_maps=None,
                 progress_factory: Optional[Callable] = None, scheduler=None) -> List[ProtocolRow]:
    """Rows for every model x eps x attack. ``x``: images ``[n, *in]`` (digital) or spikes ``[T, n, *in]``.

    The work is one task per (model, eps, chunk of ``batch_size`` samples) running every attack of
    ``config`` on that chunk, so a pool of workers stays busy over the whole table rather than one
    attack at a time. ``scheduler``: None (serial) or a ``distributed.Client``
    (``refsnn.parallel.dask_client``); the rows are identical either way and to a run attack by attack
    (:func:`run_attack`): a chunk's seeds depend on its index only. ``progress_factory(description,
    total)`` is called once, with ``total`` = models x eps x attacks x samples, and its ``update(k)``
    after each task. A row's ``seconds`` is the sum over its chunks (compute time, not wall time).
    """
    from functools import partial

    from ..parallel import map_chunks

    if config.kind == "digital" and rand_maps is None:
        rand_maps = evaluation_maps(x.shape, config.T, config.seed)
    chunks = _chunks(x, labels, rand_maps, config)
    tasks = [(net, eps, chunk) for net in models.values() for eps in config.eps for chunk in chunks]
    bar = (progress_factory("attack " + ",".join(config.attacks), len(models) * len(config.eps)
                            * len(config.attacks) * int(labels.size)) if progress_factory else None)
    report = None if bar is None else (
        lambda index, result: bar.update(len(result) * int(next(iter(result.values()))[0].labels.size)))
    done = map_chunks(partial(_protocol_task, config), tasks, scheduler=scheduler, progress=report)
    if bar is not None:
        bar.close()
    rows: List[ProtocolRow] = []
    position = 0
    for label, net in models.items():
        clean_fresh = None
        if config.kind == "digital" and config.fresh_draws:
            clean_fresh, _ = fresh_error(net, x, labels, config.T, config.fresh_draws, [config.seed, 2])
        for eps in config.eps:
            parts = done[position:position + len(chunks)]
            position += len(chunks)
            for name in config.attacks:
                result = _concat([part[name][0] for part in parts])
                seconds = float(sum(part[name][1] for part in parts))
                fresh = None
                if config.kind == "digital" and config.fresh_draws:
                    fresh, _ = fresh_error(net, result.x_adv, labels, config.T, config.fresh_draws, [config.seed, 2])
                summary = result.summary()
                budget = (SpikeBudget.for_network(net, x.shape[0], eps).total if config.kind == "spike" else None)
                rows.append(ProtocolRow(label, name, float(eps), result.config.get("radius"), int(labels.size),
                                        result.clean_error, result.error, summary["success_rate_on_correct"],
                                        summary["mean_iterations"], seconds, budget, clean_fresh, fresh,
                                        dict(result.config.get("broken_by", {})),
                                        result.adv_wrong.astype(int).tolist()))
    return rows


def rows_to_dicts(rows: Sequence[ProtocolRow]) -> List[dict]:
    return [asdict(row) for row in rows]


def markdown_table(rows: Sequence[ProtocolRow], attack: str, models: Sequence[str], fresh: bool = False) -> str:
    """The paper's Table 2 layout for one attack: eps, then original and attack error (%) per model,
    then the attack-error difference (first model minus second) when there are two."""
    key = "attack_error_fresh" if fresh else "attack_error"
    original_key = "original_error_fresh" if fresh else "original_error"
    header = ["attack eps"]
    for model in models:
        header += [f"{model}: original err. (%)", f"{model}: attack err. (%)"]
    if len(models) == 2:
        header.append(f"attack err. difference {models[0]} - {models[1]} (pp)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    by_key = {(row.model, row.eps): row for row in rows if row.attack == attack}
    for eps in sorted({row.eps for row in rows if row.attack == attack}):
        budgets = {row.l0_budget for row in rows if row.attack == attack and row.eps == eps} - {None}
        cells = [f"{eps:g}" + (f" ({'/'.join(str(b) for b in sorted(budgets))} bits)" if budgets else "")]
        values = []
        for model in models:
            row = by_key.get((model, eps))
            original = getattr(row, original_key) if row else None
            value = getattr(row, key) if row else None
            cells += [_pct(original), _pct(value)]
            values.append(value)
        if len(models) == 2:
            cells.append(_pct(values[0] - values[1]) if None not in values else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"
