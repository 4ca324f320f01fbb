"""The strongest attack: the paper's attack first, then stronger attacks on the samples it missed.

A sample counts as broken when *any* component breaks it on the evaluation input, so on the same
samples (and the same evaluation rand maps) the ensemble's attack error is never below the
paper attack's: its first component *is* the paper attack with the same seed (or a result of it
handed in as ``start``). The default components use several gradient rules (BPTT with the
rectangular and the arctangent surrogate, the raised penultimate threshold, the rate rule of
RGA/BPTR), two losses on the output rates or on the mean output currents, and many steps, because a single fixed-surrogate short attack is known to
overestimate the robustness of SNNs.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from ..network import SNN
from ..kernels import frozen_weights
from ..threads import scoped_threads
from .base import Attack, AttackResult, Seed, resolve_threads
from .constraints import encode
from .gradients import AUTHORS_THRESHOLD_RATIO, GradientRule
from .paper import PaperAttack
from .pgd import PGD, GreedyFlip


def _sub_seed(seed: Seed, index: int):
    if seed is None:
        return None
    base = list(seed) if isinstance(seed, (tuple, list)) else [int(seed)]
    return base + [index]


def default_components(net: SNN, eps: float, kind: str = "digital", convention: str = "paper",
                       seed: Seed = 0, T: int = 10, effort: float = 1.0) -> List[Attack]:
    """The components of :class:`Strongest` (``effort`` scales their step counts)."""
    def steps(n):
        return max(1, int(round(n * effort)))

    common = dict(eps=eps, kind=kind, convention=convention, T=T)
    bptt = GradientRule("bptt")
    raised = GradientRule("bptt", penultimate_threshold_ratio=AUTHORS_THRESHOLD_RATIO)
    atan = GradientRule("bptt", surrogate="atan")
    rate = GradientRule("rate")
    atan_currents = GradientRule("bptt", surrogate="atan", output="currents")
    rate_currents = GradientRule("rate", output="currents")
    components: List[Attack] = [PaperAttack(net, seed=seed, **common)]
    if kind == "digital":
        components += [
            GreedyFlip(net, steps=steps(40), gradient=bptt, loss="ce", seed=_sub_seed(seed, 1), **common),
            GreedyFlip(net, steps=steps(40), gradient=rate, loss="ce", seed=_sub_seed(seed, 2), **common),
            GreedyFlip(net, steps=steps(40), gradient=raised, loss="margin", seed=_sub_seed(seed, 3), **common),
            PGD(net, steps=steps(40), gradient=atan, loss="ce", restarts=2, seed=_sub_seed(seed, 4), **common),
            PaperAttack(net, steps=steps(50), resample=False, seed=_sub_seed(seed, 5), **common),
            GreedyFlip(net, steps=steps(40), gradient=atan_currents, loss="margin", seed=_sub_seed(seed, 6), **common),
            GreedyFlip(net, steps=steps(40), gradient=rate_currents, loss="margin", seed=_sub_seed(seed, 7), **common),
        ]
    else:
        components += [
            GreedyFlip(net, steps=steps(40), gradient=bptt, loss="ce", seed=_sub_seed(seed, 1), **common),
            GreedyFlip(net, steps=steps(40), gradient=rate, loss="ce", seed=_sub_seed(seed, 2), **common),
            GreedyFlip(net, steps=steps(40), gradient=raised, loss="margin", restarts=2,
                       seed=_sub_seed(seed, 3), **common),
            PaperAttack(net, steps=steps(50), gradient=atan, seed=_sub_seed(seed, 4), **common),
            GreedyFlip(net, steps=steps(40), gradient=atan_currents, loss="margin", seed=_sub_seed(seed, 5), **common),
            GreedyFlip(net, steps=steps(40), gradient=rate_currents, loss="margin", seed=_sub_seed(seed, 6), **common),
        ]
    return components


class Strongest(Attack):
    """Union of attacks: ``Strongest(net, eps, kind=...)(x, y, rand_maps, start=None)``.

    ``components``: attacks with the same ``eps``, ``kind`` and ``convention`` (default:
    :func:`default_components`); the first should be the paper attack. ``start``: an
    :class:`AttackResult` of the first component on the same inputs, reused instead of running it.
    """

    name = "strongest"

    def __init__(self, net: SNN, eps: float, kind: str = "digital", convention: str = "paper",
                 components: Optional[Sequence[Attack]] = None, effort: float = 1.0, seed: Seed = 0, T: int = 10):
        super().__init__(net, eps, kind, convention, steps=0, seed=seed, T=T)
        if components is None:
            components = default_components(net, eps, kind, convention, seed, T, effort)
        components = list(components)
        if not components:
            raise ValueError("Strongest needs at least one component attack")
        for attack in components:
            if attack.net is not net or attack.eps != self.eps or attack.kind != kind or (
                    kind == "digital" and attack.convention != self.convention):
                raise ValueError(f"component {attack.name} must use the same network, eps, kind and convention "
                                 f"as the ensemble (eps={self.eps}, kind={kind}, convention={self.convention})")
        self.components = components
        self.effort = float(effort)

    def config(self) -> dict:
        config = super().config()
        for key in ("steps", "gradient", "loss", "loss_scale"):
            config.pop(key, None)
        config["effort"] = self.effort
        config["components"] = [attack.config() for attack in self.components]
        return config

    def __call__(self, x, y, rand_maps=None, allowed=None, start: Optional[AttackResult] = None) -> AttackResult:
        with scoped_threads(resolve_threads(self.threads)), frozen_weights():
            return self._union(x, y, rand_maps, allowed, start)

    def _union(self, x, y, rand_maps, allowed, start: Optional[AttackResult]) -> AttackResult:
        labels = self._check_labels(y)
        if self.kind == "digital":
            if allowed is not None:
                raise ValueError("allowed masks apply to spike inputs; digital attacks are confined by eps")
            x, rand_maps = self._check_digital(x, labels, rand_maps, np.random.default_rng(self.seed))
        else:
            x = self._check_spikes(x, labels, rand_maps)
            allowed = self._check_allowed(allowed, x)
        if start is None:
            first = self.components[0](x, labels, rand_maps, allowed)
        else:
            _check_start(start, labels, rand_maps, self.components[0])
            first = start
        x_adv = first.x_adv.copy()
        adv_pred = first.adv_pred.copy()
        iterations = first.iterations.copy()
        broken_by = [int(first.success.sum())]
        batch_axis = 0 if self.kind == "digital" else 1
        for attack in self.components[1:]:
            todo = np.flatnonzero(~first.clean_wrong & (adv_pred == labels))
            if todo.size == 0:
                broken_by.append(0)
                continue
            sub_x = x[todo] if batch_axis == 0 else x[:, todo]
            sub_maps = rand_maps[:, todo] if rand_maps is not None else None
            sub_allowed = allowed[:, todo] if allowed is not None else None
            result = attack(sub_x, labels[todo], sub_maps, sub_allowed)
            iterations[todo] += result.iterations
            won = result.adv_wrong
            broken_by.append(int(won.sum()))
            if batch_axis == 0:
                x_adv[todo[won]] = result.x_adv[won]
            else:
                x_adv[:, todo[won]] = result.x_adv[:, won]
            adv_pred[todo[won]] = result.adv_pred[won]
        spikes_adv = encode(x_adv, rand_maps) if self.kind == "digital" else x_adv
        final_pred = self.net.predict(spikes_adv)
        if not np.array_equal(final_pred, adv_pred):
            raise AssertionError("Strongest: re-evaluated predictions differ from the components'; this is a bug")
        config = self.config()
        config["broken_by"] = {f"{i}:{attack.name}": count
                               for i, (attack, count) in enumerate(zip(self.components, broken_by))}
        return AttackResult(self.kind, x_adv, spikes_adv, rand_maps, labels, first.clean_pred, final_pred,
                            iterations, config)


def _check_start(start: AttackResult, labels, rand_maps, first: Attack) -> None:
    if not np.array_equal(start.labels, labels):
        raise ValueError("start was computed on other labels than the ones given")
    if rand_maps is not None and (start.rand_maps is None or not np.array_equal(start.rand_maps, rand_maps)):
        raise ValueError("start was computed on other rand maps than the ones given")
    if start.config.get("eps") != first.eps or start.config.get("attack") != first.name:
        raise ValueError(f"start must be a result of the first component ({first.name}, eps={first.eps}), "
                         f"got {start.config.get('attack')} at eps={start.config.get('eps')}")
