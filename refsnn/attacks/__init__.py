"""White-box untargeted attacks on SNNs for rate-coded images and spike inputs.

``attack = PaperAttack(net, eps=0.1, kind="digital"); result = attack(images, labels, rand_maps=maps)``.
See docs/ATTACKS.md for the threat models, the gradient rules and the Table 2 protocol.
"""
from .base import Attack, AttackResult
from .constraints import DigitalBox, SpikeBudget, l0_changes, linf_radius
from .ensemble import Strongest, default_components
from .evaluate import fresh_error
from .gradients import AUTHORS_THRESHOLD_RATIO, GradientRule, input_gradient, rate_loss
from .paper import PaperAttack, gradient_to_spikes
from .pgd import PGD, GreedyFlip, best_pixel_levels

ATTACKS = {"paper": PaperAttack, "pgd": PGD, "greedy": GreedyFlip, "strongest": Strongest}

__all__ = ["Attack", "AttackResult", "DigitalBox", "SpikeBudget", "l0_changes", "linf_radius", "Strongest",
           "default_components", "fresh_error", "AUTHORS_THRESHOLD_RATIO", "GradientRule", "input_gradient",
           "rate_loss", "PaperAttack", "gradient_to_spikes", "PGD", "GreedyFlip", "best_pixel_levels", "ATTACKS"]
