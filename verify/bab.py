"""Complete robustness verification by branch and bound over the input set (``robust_bab``).

A node is a subset of the sample's input set: a ``LevelSet`` whose variables (a free bit of a box,
or a pixel of the digital l-inf set) each keep a range of levels, plus a tuple of fixed hidden
spikes (an l0 ball, ``SpikeL0Set``, is never split on inputs: its nodes are the whole ball plus
fixed spikes, bounded over the ball). An input split halves one variable's range; a spike split on
an unstable spike ``s_t`` of a hidden or output neuron makes the children ``s = 1`` (exact membrane
``m >= th``, or ``m > th``) and ``s = 0`` (``m < th``, or ``m <= th``). Either way the two children
partition the node, a membrane exactly on the threshold included. A child's bounds clip that
membrane interval to the child's closed side and fix the spike (``_Search.fixed_hook``, through the
``refine`` hook of ``refsnn.ibp.interval_bounds``); every later interval, S-CROWN and alpha follow
from there. With ``BabConfig.beta`` the splits' constraints also enter the node bound as Lagrangian
terms (beta-CROWN style, ``_Search.split_bound``).

The question is ``Question``: every member has ``C_i . f > c_i`` (or ``>= c_i``) for every row ``i``;
robustness (``robust_bab``) is the margin rows ``f_label - f_j`` with ``c = 0``, strict
(``spec_bab``: any rows and thresholds). Per node and per row still open, the node's box gets a sound float64
lower bound (``method``: ``"ibp"``, ``"crown-ibp"``, ``"best"``, ``"alpha"``, ``"crown"``); a row whose bound
is > 0 is closed for the whole subtree, a node with every row closed is robust. Nodes are
expanded worst bound first, so the smallest open bound (the proven margin lower bound) rises.
A node small enough is a leaf: enumerated when it has at most ``enumerate_always`` members (or
``enumerate_max`` while its bound is far from closing it; margin questions on FC-sized nets in
Gray-code order, ``verify.enumerate.gray_margins``, with sweeps of last-step inputs closed by
intervals), given to the exact MILP
(``verify.milp.SampleVerifier``: the minimum of each open row) when it has at most ``milp_max_free`` open bits.
After a short branching phase (``root_milp_after`` nodes, where witnesses are often found) the whole
set gets one MILP with a share (``root_milp``) of the sample's time. A MILP that reaches its time
limit leaves its node to be split further.

Falsification first and throughout: random members, near-threshold local search
(``verify.search``), at every bounded node the member that minimizes S-CROWN's linear lower bound
over the node's input subset, and every ``search_every`` nodes a local search from the worst node's.
Every candidate witness is replayed in exact rational arithmetic (``verify.exact.ExactNetwork``);
only an exact margin ``<= 0`` makes a sample ``"not_robust"``.
An enumerated leaf whose float64 membranes come near the threshold has those members replayed
exactly too, so no leaf is closed on a rounded comparison.

Answers are anytime: ``"robust"``, ``"not_robust"`` (with the witness), or ``"unknown"`` at the
time limit, always with ``margin_lower`` (a proven lower bound of the smallest margin over the
set) and ``attack_margin`` (the smallest exact margin a member reached).
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator, List, Optional

import numpy as np

from refsnn.l0 import shared_intermediate
from refsnn.network import SNN

from .encoding import FIXED_TIE_BAND, VerifierError, float64_network
from .enumerate import gray_margins, reduced_maps, reduced_spike_counts
from .exact import ExactNetwork, float_outward
from .search import local_search
from .sets import BoxSet, DigitalLinfSet, InputSet, LevelSet, SpikeL0Set, stack_boxes
from .specs import other_classes

BOUND_METHODS = ("ibp", "crown-ibp", "best", "alpha", "crown")
ENUM_CHUNK = 4096  # members per chunk of an enumerated leaf, each with its own interval states
GRAY_CHUNK = 1 << 24  # members per part of a leaf enumerated in Gray-code order (verify.enumerate.gray_margins):
# the fewer the parts, the longer the sweeps of last-step variables that intervals close (2x faster than 2^20
# on plain MNIST FC image 2286)
GRAY_FLAG_CAP = 1024  # members near a tie per part replayed exactly; more: the part is enumerated in chunks
# passes (members evaluated one by one, sweeps closed) a part may make per second of the time limit left,
# until the search has timed a part of its own (then that part's rate: 0.13-0.5 M/s on plain MNIST FC);
# high, so that only the first part can run past the limit, by at most its own length
GRAY_RATE = 2_000_000
GRAY_TIMED = 0.25   # seconds a part must take for its rate to be used
_OUT_OF_TIME = object()
INPUT_BRANCHING = ("first", "widest", "smear")
NEURON_BRANCHING = ("neuron-widest", "neuron-babsr", "mixed")
BRANCHING = INPUT_BRANCHING + NEURON_BRANCHING
SPIKE_OFF, SPIKE_ON = 0, 1  # a split's two sides (refsnn.relaxations.STABLE_OFF / STABLE_ON)
VERDICTS = ("robust", "not_robust", "unknown")
# falsification on l0 balls (_Search.gradient_ball_search): gradient rules and losses of
# refsnn.attacks.gradients, rounds per rule, and members it starts from (the clean train first).
# On N-MNIST FC (12 flips per step) they break images 0 and 2 of the test split, where 60 s of
# local search reached margin 1/3.
BALL_RULES = (({}, "ce"), ({}, "margin"), ({"rule": "rate"}, "ce"), ({"output": "currents"}, "margin"),
              ({"penultimate_threshold_ratio": 10 / 3}, "ce"), ({"rule": "rate", "output": "currents"}, "margin"),
              ({"surrogate": "sigmoid"}, "ce"), ({"surrogate": "atan", "output": "currents"}, "margin"))
BALL_ITERATIONS = 10
BALL_STARTS = 4


class BabConfigError(ValueError):
    """An invalid branch-and-bound setting (the message names the field and the allowed range)."""


@dataclass
class BabConfig:
    """Settings of ``robust_bab``.

    ``method``: node bound (``"crown"``: full S-CROWN intermediates, seconds per node on MNIST FC);
    ``branching``: ``"first"`` (lowest-index open variable), ``"widest"`` (most open bits) or
    ``"smear"`` (largest ``sum |A|`` over its open bits, ``A`` = S-CROWN's input coefficients of the
    node's worst row: the split that can move that linear bound most), or on spikes:
    ``"neuron-widest"``, ``"neuron-babsr"``, ``"mixed"`` (docs/VERIFY.md);
    ``spike_limit``: ``mixed`` splits on a spike once a node has at most that many unstable;
    ``candidates``: unstable spikes ranked per node; ``search_every``: a local search from the worst
    open node's S-CROWN minimizer every that many bounded nodes (0: none);
    ``time_limit`` seconds per sample (None: no limit); a node of at most ``enumerate_always``
    members, or of at most ``enumerate_max`` whose bound is at least two grid steps below 0 (``<=
    -2/T'``: far from closing), is an enumerated leaf, and one of at most ``milp_max_free`` open bits
    a MILP leaf (MILP leaves are off by default: on the plain MNIST FC model a MILP on 16 open bits
    did not finish in 5 s; there the bounds close no node above ~6 free bits on most images, and
    leaves of 2^16 members, enumerated on their unstable neurons, decide 8x more of the set per
    minute than leaves of 1,024, while nodes one grid step from closing still close by bound
    deeper down: results/verify/bab.md); ``milp_time_limit`` seconds per MILP leaf; ``root_milp``:
    share of ``time_limit`` (of ``milp_time_limit`` without a limit) given to one MILP on the whole
    set once ``root_milp_after`` nodes have been bounded (0: none); ``batch`` nodes expanded per bound call; ``attack_samples``
    random members and ``search_starts`` local searches before branching; ``restarts`` local
    searches of up to ``search_steps`` moves from random members once the root bound leaves a row
    open, for at most ``restart_share`` of ``time_limit``; ``root_milp_max_unstable``: the root MILP
    runs only when the root has at most that many unstable spikes (on the plain MNIST FC model the
    roots have 497-865 and the MILP decides none of them; on the robust one, 121-290, and it decides
    the hardest images: results/verify/bab.md); ``max_nodes`` bounded nodes at most; ``solver`` for
    the MILP (None: HiGHS); ``search_moves``: a local-search step with more moves than that evaluates
    that many drawn at random (None: all; an N-MNIST l0 ball of 12 flips per step has ~78,000 moves
    per member, a forward pass of 4,096 of them takes ~2 s on 2 cores); ``ball_split``: an l0 ball
    (``SpikeL0Set``) left open by its root bound and falsification is searched by spike splits
    (``neuron-babsr``, or ``neuron-widest`` when ``branching`` says so) for the rest of the time,
    each node bounded over the ball (``refsnn.l0.anyk_node_bounds``); False: one MILP on the ball.
    ``beta``: a node with spike splits also gets the bound with its splits as Lagrangian terms
    (beta-CROWN: ``refsnn.alpha.split_lower_bounds``, the multipliers optimized by ``beta_iterations``
    projected gradient steps of size ``beta_lr``, jointly with the slopes under ``method="alpha"``),
    intersected with the node's ``method`` bound (never looser); needs a back-substitution method
    (not ``"ibp"``).
    """

    method: str = "best"
    branching: str = "smear"
    time_limit: Optional[float] = 60.0
    enumerate_max: int = 65536
    enumerate_always: int = 1024
    milp_max_free: int = 0
    milp_time_limit: float = 30.0
    batch: int = 8
    attack_samples: int = 64
    search_starts: int = 2
    max_nodes: Optional[int] = None
    solver: Optional[str] = None
    root_milp: float = 0.5
    root_milp_after: int = 64
    candidates: int = 8
    search_every: int = 0
    spike_limit: int = 16
    restarts: int = 256
    restart_share: float = 0.25
    search_steps: int = 200
    root_milp_max_unstable: Optional[int] = 400
    search_moves: Optional[int] = 4096
    ball_split: bool = True
    beta: bool = False
    beta_iterations: int = 10
    beta_lr: float = 0.05

    def __post_init__(self):
        if self.method not in BOUND_METHODS:
            raise BabConfigError(f"method must be one of {BOUND_METHODS}, got {self.method!r}")
        if self.branching not in BRANCHING:
            raise BabConfigError(f"branching must be one of {BRANCHING}, got {self.branching!r}")
        if self.time_limit is not None and not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise BabConfigError(f"time_limit must be a finite number of seconds > 0 or None, got {self.time_limit!r}")
        if not (math.isfinite(self.milp_time_limit) and self.milp_time_limit > 0):
            raise BabConfigError(f"milp_time_limit must be a finite number of seconds > 0, "
                                 f"got {self.milp_time_limit!r}")
        if not (math.isfinite(self.root_milp) and 0 <= self.root_milp <= 1):
            raise BabConfigError(f"root_milp must be a fraction in [0, 1] of the time limit, got {self.root_milp!r}")
        if not (math.isfinite(self.restart_share) and 0 <= self.restart_share <= 1):
            raise BabConfigError(f"restart_share must be a fraction in [0, 1] of the time limit, "
                                 f"got {self.restart_share!r}")
        if self.root_milp_max_unstable is not None and (int(self.root_milp_max_unstable) != self.root_milp_max_unstable
                                                        or self.root_milp_max_unstable < 0):
            raise BabConfigError(f"root_milp_max_unstable must be an integer >= 0 or None, "
                                 f"got {self.root_milp_max_unstable!r}")
        if self.search_moves is not None and (int(self.search_moves) != self.search_moves or self.search_moves < 1):
            raise BabConfigError(f"search_moves must be an integer >= 1 or None, got {self.search_moves!r}")
        for name in ("root_milp_after", "enumerate_max", "enumerate_always", "milp_max_free", "attack_samples",
                     "search_starts", "search_every", "spike_limit", "restarts", "search_steps"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise BabConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("ball_split", "beta"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise BabConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.beta and self.method == "ibp":
            raise BabConfigError("beta needs a back-substitution bound: method must be one of "
                                 f"{BOUND_METHODS[1:]} with beta=True, got 'ibp'")
        if isinstance(self.beta_iterations, bool) or int(self.beta_iterations) != self.beta_iterations \
                or self.beta_iterations < 1:
            raise BabConfigError(f"beta_iterations must be an integer >= 1, got {self.beta_iterations!r}")
        if isinstance(self.beta_lr, bool) or not (isinstance(self.beta_lr, (int, float, np.floating))
                                                  and math.isfinite(self.beta_lr) and self.beta_lr > 0):
            raise BabConfigError(f"beta_lr must be a finite number > 0, got {self.beta_lr!r}")
        if int(self.batch) != self.batch or self.batch < 1:
            raise BabConfigError(f"batch must be an integer >= 1, got {self.batch!r}")
        if int(self.candidates) != self.candidates or self.candidates < 1:
            raise BabConfigError(f"candidates must be an integer >= 1, got {self.candidates!r}")
        if self.max_nodes is not None and (int(self.max_nodes) != self.max_nodes or self.max_nodes < 1):
            raise BabConfigError(f"max_nodes must be an integer >= 1 or None, got {self.max_nodes!r}")


@dataclass
class BabResult:
    """Verdict of one sample (``spec_bab``: read the margin as ``min_i (C_i . f - c_i)``, ``label`` None).
    ``margin_lower``: proven lower bound of ``min_j f_label - f_j`` over the
    set, on the ``1/T'`` grid (the largest float not above ``k / T'``); ``attack_margin``: the
    smallest exact margin a member reached (``witness [T', *in]`` reaches it; ``<= 0`` when not
    robust; ``inf`` when no member was evaluated). ``witness_rates [n_out]``: its exact rates (as
    floats), ``witness_prediction`` their argmax (a tie goes to the lowest index).
    ``stats``: nodes bounded, leaves closed by bound / enumeration / MILP, splits, depth, and
    ``decided_fraction``: the share of the set's members in closed nodes (robust: 1)."""

    status: str
    label: Optional[int]
    margin_lower: float
    attack_margin: float
    witness: Optional[np.ndarray] = None
    witness_rates: Optional[np.ndarray] = None
    witness_prediction: Optional[int] = None
    seconds: float = 0.0
    reason: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def robust(self) -> bool:
        return self.status == "robust"


@dataclass(order=True)
class _Node:
    priority: float
    serial: int
    subset: LevelSet = field(compare=False)
    rows: np.ndarray = field(compare=False)           # classes j still open
    lower: np.ndarray = field(compare=False)          # lower bound of each open row
    floor: float = field(compare=False)               # smallest bound of the rows closed above it
    depth: int = field(compare=False, default=0)
    coefs: Optional[np.ndarray] = field(compare=False, default=None)  # [T', *in] of the worst row
    fixed: tuple = field(compare=False, default=())   # spike splits (stage, t, neuron, SPIKE_OFF/ON)
    weight: Fraction = field(compare=False, default=Fraction(1))  # share of the tree (decided_fraction)
    candidates: Optional[np.ndarray] = field(compare=False, default=None)  # [K, 3] unstable (stage, t, j), best first
    score: float = field(compare=False, default=0.0)  # the first candidate's score
    n_unstable: int = field(compare=False, default=0)  # unstable spikes left in the node


@dataclass
class _Child:
    """A node to bound: its input subset, open rows, inherited floor, depth, spike splits, weight."""

    subset: LevelSet
    rows: np.ndarray
    floor: float
    depth: int
    fixed: tuple = ()
    weight: Fraction = Fraction(1)


class _Done(Exception):
    """Raised inside the search when a witness is found (carries nothing; the state has it)."""


@dataclass(frozen=True)
class Question:
    """What the search decides: does every member satisfy ``C_i . f > c_i`` (``strict``) or
    ``C_i . f >= c_i`` for every row ``i``? ``rows [R, n_out]`` (finite float64 ``C``),
    ``thresholds``: the ``c_i`` as exact rationals. Robustness is ``rows = e_label - e_j`` for every
    ``j != label``, ``c = 0``, strict (``Question.margins``). The searched *margin* of a member is
    ``min_i (C_i . f - c_i)`` in exact arithmetic; ``grid``: every row is integral and every
    ``T' c_i`` an integer, so margins are multiples of ``1/T'``."""

    rows: np.ndarray
    thresholds: tuple
    strict: bool
    grid: bool

    @classmethod
    def make(cls, rows, thresholds, strict: bool, steps: int) -> "Question":
        rows = np.array(rows, dtype=np.float64, ndmin=2)
        if rows.ndim != 2 or rows.shape[0] < 1 or not np.isfinite(rows).all():
            raise ValueError(f"rows must be a finite [R >= 1, n_out] array, got shape {rows.shape}")
        thresholds = tuple(Fraction(c) for c in np.broadcast_to(np.asarray(thresholds, dtype=object),
                                                                 (rows.shape[0],)))
        grid = bool(np.all(rows == np.round(rows))) and all((c * steps).denominator == 1 for c in thresholds)
        # the grid margins C_i . counts - T' c_i are computed in int64: only while they cannot overflow
        grid = grid and all(steps * float(np.abs(row).sum()) + abs(float(c * steps)) < 2.0 ** 53
                            for row, c in zip(rows, thresholds))
        return cls(rows, thresholds, bool(strict), grid)

    @classmethod
    def margins(cls, label: int, n_out: int, steps: int) -> "Question":
        others = other_classes(label, n_out)
        rows = np.zeros((len(others), n_out))
        rows[:, label] = 1.0
        rows[np.arange(len(others)), others] = -1.0
        return cls.make(rows, 0, True, steps)

    def violated(self, margin: Fraction) -> bool:
        """Whether an exact margin ``min_i (C_i . f - c_i)`` breaks the property."""
        return margin <= 0 if self.strict else margin < 0

    def closes(self, lower: np.ndarray) -> np.ndarray:
        """Rows whose sound lower bound of ``C_i . f - c_i`` proves the property (a bound of exactly
        0 proves ``>= c`` but is a tie for ``> c``)."""
        return lower > 0 if self.strict else lower >= 0


class _Search:
    """State of one sample's branch and bound."""

    def __init__(self, net: SNN, input_set: InputSet, label: Optional[int], config: BabConfig,
                 rng: np.random.Generator, question: Optional[Question] = None):
        self.net, self.net64 = net, float64_network(net)
        self.exact = ExactNetwork(net)
        self.input_set, self.label, self.config, self.rng = input_set, label, config, rng
        self.n_out, self.steps = net.n_outputs, input_set.steps
        self.question = question if question is not None else Question.margins(label, net.n_outputs, self.steps)
        q = self.question
        self.C = q.rows
        self.c_float = np.array([float(c) for c in q.thresholds])
        self.c_upper = np.array([float_outward(c, "upper") for c in q.thresholds])  # shifts round down
        self.all_rows = np.arange(self.C.shape[0])  # a node's open rows index C
        if q.grid:
            self.C_int = np.round(self.C).astype(np.int64)
            self.c_grid = np.array([int(c * self.steps) for c in q.thresholds], dtype=np.int64)
        self.start = time.perf_counter()
        self.best_margin: Optional[Fraction] = None
        self.milp_subsets: dict = {}   # id -> input subset whose MILP has run
        self.best_x: Optional[np.ndarray] = None
        self.maps = None  # verify.enumerate.reduced_maps of the net (False: enumerate with net64.run)
        self.pool_margins: Optional[np.ndarray] = None  # [rows of C]: smallest margin of the random members
        self.closed_floor = math.inf
        self.in_flight: List[_Node] = []  # popped, not yet replaced by children or closed
        self.root_bounded = False
        self.fresh: List[_Node] = []  # bounded, not yet in the queue
        self.stats = {"nodes": 0, "splits": 0, "spike_splits": 0, "closed_by_bound": 0, "empty": 0,
                      "enumerated": 0, "milp": 0, "milp_timeouts": 0, "max_depth": 0, "exact_replays": 0,
                      "node_searches": 0, "restarts": 0, "root_milp_skipped": 0, "gradient_rounds": 0,
                      "decided_fraction": 0.0, "beta_bounds": 0, "beta_raised": 0, "gray_members": 0}
        self.serial = itertools.count()
        self.decided_weight = Fraction(0)
        # an l0 ball split on spikes only: every node holds the whole ball (bounded over it)
        self.ball = input_set if isinstance(input_set, SpikeL0Set) and input_set.k > 0 else None
        self.stuck: List[_Node] = []  # open ball nodes without an unstable spike left to split
        self.gray_rate = GRAY_RATE  # passes per second of the Gray parts (the last one timed)
        from refsnn.ibp import prepare_stages

        self.stages = prepare_stages(net)

    def decided(self, weight: Fraction) -> None:
        """Adds a closed node's weight to ``stats["decided_fraction"]``: the share of the set's members
        in closed nodes while only input splits were made (a spike split gives each child half its
        parent's weight, so with spike splits it measures the closed share of the tree)."""
        self.decided_weight += weight
        self.stats["decided_fraction"] = float(self.decided_weight)

    # --- time ---------------------------------------------------------------------------------
    def remaining(self) -> float:
        limit = self.config.time_limit
        return math.inf if limit is None else limit - (time.perf_counter() - self.start)

    def deadline(self) -> Optional[float]:
        """The ``time.perf_counter()`` value of the time limit (None: no limit)."""
        limit = self.config.time_limit
        return None if limit is None else self.start + limit

    def search(self, subset: InputSet, start: np.ndarray, coefs: np.ndarray, max_steps: int = 30,
               stop: Optional[float] = None) -> np.ndarray:
        """``verify.search.local_search`` lowering ``coefs . f`` from ``start``, stopped at the time limit
        (or ``stop``, if earlier) and evaluating at most ``search_moves`` moves per step."""
        deadline = self.deadline()
        if stop is not None:
            deadline = stop if deadline is None else min(stop, deadline)
        x, _ = local_search(self.net64, subset, start, coefs, -1.0, max_steps=max_steps, deadline=deadline,
                            max_moves=self.config.search_moves, rng=self.rng)
        return x

    def grid_lower(self, k: int) -> float:
        """``k / T'`` as the largest float not above it (a sound margin lower bound)."""
        return float_outward(Fraction(k, self.steps), "lower")

    def shifted(self, lower: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Sound lower bounds of ``C_i . f - c_i`` from sound lower bounds of ``C_i . f`` (``lower
        [..., len(rows)]``): the subtraction is rounded down; ``c_i = 0`` is exact and unchanged."""
        c = self.c_upper[rows]
        if not c.any():
            return lower
        with np.errstate(invalid="ignore"):
            return np.where(c != 0, np.nextafter(lower - c, -np.inf), lower)

    def float_margins(self, rates: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``[b, len(rows)]``: ``C_i . f - c_i`` of float64 rates ``[b, n_out]`` (a guide, not a proof)."""
        return rates @ self.C[rows].T - self.c_float[rows]

    # --- falsification --------------------------------------------------------------------------
    def exact_grid_margin(self, x: np.ndarray, rows: np.ndarray) -> int:
        """``T' min_i (C_i . f - c_i)`` over ``rows`` for one member ``x [T', *in]`` in exact semantics
        (grid questions: an integer)."""
        self.stats["exact_replays"] += 1
        counts = self.exact.run(np.ascontiguousarray(x)).counts.astype(np.int64)
        return int((self.C_int[rows] @ counts - self.c_grid[rows]).min())

    def exact_margin(self, x: np.ndarray, rows: Optional[np.ndarray] = None) -> Fraction:
        """``min_i (C_i . f - c_i)`` of one member over ``rows`` (default: all), exactly."""
        self.stats["exact_replays"] += 1
        trace = self.exact.run(x)
        rows = self.all_rows if rows is None else rows
        return min(trace.value(self.C[i]) - self.question.thresholds[i] for i in rows)

    def offer(self, xs: np.ndarray, force: bool = False) -> None:
        """Candidates ``xs [T', b, *in]`` (members of the set): the best by float64 is replayed
        exactly; raises ``_Done`` when its exact margin breaks the property. ``force``: a member whose
        exact margin is already known to break it (float64 may disagree near the threshold): always
        replayed."""
        if xs.shape[1] == 0:
            return
        rates = self.net64.forward(xs)
        margins = self.float_margins(rates, self.all_rows).min(axis=1)
        order = np.argsort(margins, kind="stable")
        # a float64 margin within rounding of 0 may be <= 0 exactly: replay a few of those too
        near = [i for i in order[:4] if margins[i] <= 1.0 / (2 * self.steps)]
        for i in ([order[0]] + [i for i in near if i != order[0]]):
            x = np.ascontiguousarray(xs[:, i])
            half = 1.0 / (2 * self.steps)
            if not force and self.best_margin is not None and margins[i] > float(self.best_margin) - half \
                    and margins[i] > half:
                continue  # not better than the best by a grid step, and not near 0: no replay needed
            exact = self.exact_margin(x)
            if self.best_margin is None or exact < self.best_margin:
                if not self.input_set.contains(x):
                    raise VerifierError("a candidate witness is not a member of the input set; "
                                        "the node sets are broken")
                self.best_margin, self.best_x = exact, x
            if self.question.violated(exact):
                raise _Done()

    def falsify_root(self, subset: InputSet) -> None:
        cfg = self.config
        if cfg.attack_samples == 0:
            return
        pool = subset.sample(self.rng, cfg.attack_samples)
        self.offer(pool)
        if cfg.search_starts == 0 and cfg.restarts == 0:
            return
        rates = self.net64.forward(pool)
        margins = self.float_margins(rates, self.all_rows)
        self.pool_margins = margins.min(axis=0)  # per row of C: how close the pool came to breaking it
        coefs = self.C[int(np.argmin(self.pool_margins))]
        for start in np.argsort(margins.min(axis=1), kind="stable")[:cfg.search_starts]:
            if self.remaining() <= 0:
                return
            self.offer(self.search(subset, pool[:, start], coefs)[:, None])

    def offer_ball_minimizers(self, input_set: SpikeL0Set, rows: np.ndarray) -> None:
        """Offers, per row in ``rows``, the train of the l0 ball minimizing its S-CROWN lower bound
        (``refsnn.l0.anyk_minimizers``), when it is a member (a masked set's may not be)."""
        from refsnn.l0 import anyk_minimizers

        if self.remaining() <= 0:
            return
        xs = anyk_minimizers(self.net64, input_set.center[:, None], input_set.k, self.specs([rows]),
                             input_set.per_step, input_set.mask[:, None])[:, 0]
        members = [i for i in range(xs.shape[1]) if input_set.contains(xs[:, i])]
        self.offer(np.ascontiguousarray(xs[:, members]))

    def gradient_ball_search(self, ball: SpikeL0Set, stop: float) -> None:
        """Falsification on an l0 ball (robustness questions only: the losses need the label): from
        the clean train and random members, ``BALL_ITERATIONS`` rounds of ``x <- the ball's member
        that flips, per step (or in total), the ``k`` allowed positions whose flip raises the loss's
        linearization at ``x`` most`` (``refsnn.attacks.gradients.input_gradient``), for each
        gradient rule and loss of ``BALL_RULES``; every round's members are offered. Stops at
        ``stop`` or the time limit (checked before every gradient)."""
        from refsnn.attacks.gradients import GradientRule, input_gradient

        if self.label is None:
            return
        deadline = min(stop, self.start + self.config.time_limit) if self.config.time_limit else stop
        center = ball.center.reshape(self.steps, -1).astype(np.int8)
        allowed = ball.mask.reshape(self.steps, -1) == 1
        away = (1 - 2 * center).astype(np.float64)  # +1 where a flip turns a bit on, -1 where off
        starts = np.concatenate([ball.center[:, None], ball.sample(self.rng, BALL_STARTS - 1)], axis=1)
        labels = np.full(starts.shape[1], self.label)
        for options, loss in BALL_RULES:
            rule = GradientRule(**options)
            x = starts
            for _ in range(BALL_ITERATIONS):
                if time.perf_counter() >= deadline:
                    return
                self.stats["gradient_rounds"] += 1
                grad = input_gradient(self.net64, x.astype(np.float64), labels, rule, loss=loss)[1]
                gain = np.where(allowed[:, None], grad.reshape(self.steps, x.shape[1], -1) * away[:, None], -np.inf)
                chosen = _top_k_positive(gain, ball.k, ball.per_step)
                x = (center[:, None] ^ chosen).astype(np.uint8).reshape(x.shape)
                self.offer(x)

    def restart_search(self, node: _Node) -> None:
        """Falsification once the root bound leaves rows open: up to ``restarts`` local searches of up
        to ``search_steps`` moves, each from a random member of the node, for at most ``restart_share``
        of the time limit. Even restarts push the row the random members came closest to breaking
        (the root bound is near -1 on every row of hard samples and does not rank them), odd ones
        cycle through the other open rows."""
        cfg = self.config
        if cfg.restarts == 0 or cfg.restart_share == 0:
            return
        budget = math.inf if cfg.time_limit is None else cfg.restart_share * cfg.time_limit
        stop = time.perf_counter() + min(budget, self.remaining())
        rows = node.rows
        if self.pool_margins is not None:
            pool = self.pool_margins[rows]
            rows = rows[np.lexsort((node.lower, pool))]  # by the pool's margin, then by the bound
        else:
            rows = rows[np.argsort(node.lower, kind="stable")]
        for r in range(cfg.restarts):
            if time.perf_counter() >= stop:
                return
            self.stats["restarts"] += 1
            j = rows[0] if r % 2 == 0 or rows.size == 1 else rows[1 + (r // 2) % (rows.size - 1)]
            coefs = self.C[int(j)]
            start = node.subset.sample(self.rng, 1)[:, 0]
            self.offer(self.search(node.subset, start, coefs, cfg.search_steps, stop)[:, None])

    # --- bounds ---------------------------------------------------------------------------------
    def specs(self, nodes_rows: List[np.ndarray]) -> np.ndarray:
        """Spec rows ``[B, S, n_out]`` of each node's open rows (padded by repeating the first)."""
        width = max(len(r) for r in nodes_rows)
        C = np.zeros((len(nodes_rows), width, self.n_out))
        for b, rows in enumerate(nodes_rows):
            C[b] = self.C[np.concatenate([rows, np.repeat(rows[:1], width - len(rows))])]
        return C

    def fixed_hook(self, fixed: List[tuple], inner=None):
        """The ``refine`` hook of ``refsnn.ibp.interval_bounds`` for the nodes' spike splits.

        A split on spike ``s_t`` of neuron ``j`` of stage ``k`` (exact semantics, ``s = 1[m >= th]``
        or ``1[m > th]``) gives the child ``s = 1`` the membranes ``m >= th`` and the child ``s = 0``
        the membranes ``m <= th`` (closed: the exact side is ``m < th`` or ``m <= th``): each child's
        interval is clipped to its closed side and its state fixed, so every exact trajectory of a
        member lies in the child of its own spike, a membrane exactly at ``th`` included. ``inner``:
        another refine hook (full S-CROWN's ``membrane_refiner``) whose interval is intersected too."""
        th = float(self.net.threshold)
        tables = [np.full((self.steps, len(fixed), stage.n_neurons), -1, np.int8) for stage in self.stages]
        for b, decisions in enumerate(fixed):
            for k, t, j, value in decisions:
                tables[k][t, b, j] = value

        def refine(bounds, k: int, t: int):
            state = tables[k][t]
            lower, upper = np.where(state == SPIKE_ON, th, -np.inf), np.where(state == SPIKE_OFF, th, np.inf)
            if inner is not None:
                inner_lower, inner_upper = inner(bounds, k, t)
                lower, upper = np.maximum(lower, inner_lower), np.minimum(upper, inner_upper)
            return lower, upper, state
        return refine

    def bound(self, children: List[_Child]):
        """``(lower [B, S], coefficients [B, S, T', *in] or None, empty [B], candidates, n_unstable [B])``
        of each child's open rows: ``empty`` marks a child whose spike splits contradict its bounds (no
        member has those spikes); ``candidates``: per child ``(indices [K, 3], scores [K])`` of its
        unstable spikes, best first (neuron branching only); ``n_unstable``: its unstable spikes."""
        from refsnn.alpha import BoxConcretizer, alpha_bounds_of_box
        from refsnn.crown import crown_bounds_of_box
        from refsnn.ibp import ibp_spec_bounds, interval_bounds_of_box, output_rounding_margin
        from refsnn.input_sets import binary_box
        from refsnn.relaxations import UNSTABLE
        from refsnn.spec import best_bounds

        cfg = self.config
        if self.ball is not None:
            return self.ball_bound(children)
        x_lower, x_upper = stack_boxes([c.subset for c in children])
        C = self.specs([c.rows for c in children])
        box = binary_box(x_lower, x_upper, self.net)
        fixed = [c.fixed for c in children]
        refine = self.fixed_hook(fixed) if any(fixed) else None
        needs_box = cfg.method == "crown" or (cfg.beta and refine is not None)
        concretizer = BoxConcretizer.of_box(box) if needs_box else None
        if cfg.method == "crown":  # full S-CROWN: every unstable membrane also bounded by back-substitution
            from refsnn.crown_full import membrane_refiner

            refine = self.fixed_hook(fixed, membrane_refiner(self.stages, concretizer))
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # empty children only
            inter = interval_bounds_of_box(self.net, box, self.stages, refine=refine)
            empty = np.zeros(len(children), dtype=bool)
            if refine is not None:
                for lo, hi in zip(inter.mem_lower, inter.mem_upper):
                    empty |= (lo > hi).reshape(self.steps, len(children), -1).any(axis=(0, 2))
            ibp = ibp_spec_bounds(inter, C)
            coefs = crown = None
            if cfg.method != "ibp" or cfg.branching in ("smear", "mixed"):
                crown = crown_bounds_of_box(self.net, box, C, self.stages, intermediate=inter,
                                            return_coefficients=True)
                coefs = np.moveaxis(crown.A_lower, 0, 2)  # [B, S, T', *in]
            if cfg.method == "ibp":
                lower = ibp[0]
            elif cfg.method == "crown-ibp":
                lower = crown.lower
            elif cfg.method in ("best", "crown"):
                margin = output_rounding_margin(C, inter.rule, self.steps)
                lower = best_bounds(C, margin, [ibp, (crown.lower, crown.upper)])[0]
            else:
                lower = alpha_bounds_of_box(self.net, box, C, self.stages, intermediate=inter).lower
            if cfg.beta and refine is not None:
                lower = self.split_bound(lower, inter, C, fixed, empty, concretizer)
            candidates = None
            if cfg.branching in NEURON_BRANCHING:
                candidates = self.spike_candidates(inter, box, C, lower, [len(c.rows) for c in children])
            n_unstable = sum((state.reshape(self.steps, len(children), -1) == UNSTABLE).sum(axis=(0, 2))
                             for state in inter.state)
        return lower, coefs, empty, candidates, n_unstable

    def ball_bound(self, children: List[_Child]):
        """``bound`` of nodes over the l0 ball ``self.ball`` (each with its spike splits): exact
        first-stage currents over the ball, S-IBP / full S-CROWN after them with the splits' clipped
        intervals and fixed states (``fixed_hook``), S-CROWN concretized exactly over the ball
        (``refsnn.l0.anyk_node_bounds``, ``method`` as for boxes; ``crown-ibp`` gives ``best``). The
        ball's enclosing box only ranks the spike candidates."""
        from refsnn.input_sets import binary_box
        from refsnn.l0 import anyk_node_bounds
        from refsnn.relaxations import UNSTABLE

        ball, batch = self.ball, len(children)
        C = self.specs([c.rows for c in children])
        fixed = [c.fixed for c in children]
        hook = (lambda inner: self.fixed_hook(fixed, inner)) if any(fixed) else None
        method = "best" if self.config.method == "crown-ibp" else self.config.method
        clean = np.repeat(ball.center[:, None], batch, axis=1)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # empty children only
            lower, _, inter, lam = anyk_node_bounds(self.net, clean, ball.k, C, method, ball.per_step,
                                                    hook=hook, stages=self.stages,
                                                    mask=np.repeat(ball.mask[:, None], batch, axis=1))
            empty = np.zeros(batch, dtype=bool)
            for lo, hi in zip(inter.mem_lower, inter.mem_upper):
                empty |= (lo > hi).reshape(self.steps, batch, -1).any(axis=(0, 2))
            if self.config.beta and hook is not None:
                from refsnn.l0 import L0Concretizer

                concretizer = L0Concretizer(clean, ball.k, ball.per_step, np.repeat(ball.mask[:, None], batch, axis=1))
                lower = self.split_bound(lower, inter, C, fixed, empty, concretizer)
            lower = np.where(empty[:, None], np.inf, lower)  # an empty child's bounds are meaningless
            coefs = None if lam is None else np.moveaxis(lam, 0, 2)  # [B, S, T', *in]
            box_lower, box_upper = ball.box()
            box = binary_box(np.repeat(box_lower[:, None], batch, axis=1),
                             np.repeat(box_upper[:, None], batch, axis=1), self.net)
            candidates = self.spike_candidates(inter, box, C, np.where(empty[:, None], 0.0, lower),
                                               [len(c.rows) for c in children], self.ball_rule())
        n_unstable = sum((state.reshape(self.steps, batch, -1) == UNSTABLE).sum(axis=(0, 2)) for state in inter.state)
        return lower, coefs, empty, candidates, n_unstable

    def split_bound(self, lower: np.ndarray, inter, C: np.ndarray, fixed: List[tuple], empty: np.ndarray,
                    concretizer) -> np.ndarray:
        """``lower [B, S]`` (the children's ``method`` bounds of ``C f``) raised, for each non-empty child
        with spike splits, to the bound with its splits as Lagrangian terms
        (``refsnn.alpha.split_lower_bounds``). ``inter``: the children's intermediate bounds with the
        splits clipped in; ``concretizer``: their input sets. A split's side is the closed one
        (``m >= th`` / ``m <= th``), as in ``fixed_hook``, so the terms are sound under both firing rules.
        ``stats["beta_bounds"]``: children so bounded; ``stats["beta_raised"]``: those whose worst row rose."""
        from refsnn.alpha import SpikeSplits, split_lower_bounds

        chosen = np.flatnonzero(np.array([bool(f) for f in fixed]) & ~empty)
        if chosen.size == 0:
            return lower
        cfg = self.config
        whole = chosen.size == len(fixed)
        splits = SpikeSplits.from_fixed([fixed[b] for b in chosen], float(self.net.threshold))
        split = split_lower_bounds(self.stages, inter if whole else inter.select(chosen), C[chosen],
                                   concretizer if whole else concretizer.select(chosen), splits,
                                   cfg.beta_iterations, optimize_params=cfg.method == "alpha", beta_lr=cfg.beta_lr)
        raised = np.fmax(lower[chosen], split)  # a NaN split bound never replaces the node's bound
        self.stats["beta_bounds"] += int(chosen.size)
        self.stats["beta_raised"] += int((raised.min(axis=1) > lower[chosen].min(axis=1)).sum())
        lower = lower.copy()
        lower[chosen] = raised
        return lower

    def ball_rule(self) -> str:
        """The spike branching rule on an l0 ball (it has no input variables to split)."""
        return "neuron-widest" if self.config.branching == "neuron-widest" else "neuron-babsr"

    def spike_candidates(self, inter, box, C: np.ndarray, lower: np.ndarray, n_rows: List[int],
                         rule: Optional[str] = None):
        """Per child, its unstable spikes ``[K, 3]`` (stage, t, neuron) ranked by the branching score,
        with the scores ``[K]``: ``neuron-widest`` the membrane width ``m_u - m_l``; ``neuron-babsr``
        and ``mixed`` the BaBSR-like estimate of what fixing the spike moves the worst row's S-CROWN
        bound, ``|lam_s| + |lam_z| (th - min(0, m_l))`` (``lam_s``, ``lam_z``: the back-substitution's
        coefficients on the spike and on the reset term, whose relaxation gaps are at most 1 and
        ``th - min(0, m_l)``)."""
        from refsnn.crown import _lower_bound_rows
        from refsnn.relaxations import UNSTABLE

        batch = lower.shape[0]
        rule = self.config.branching if rule is None else rule
        flat = [(self.steps, batch, stage.n_neurons) for stage in self.stages]
        scores = [np.full(shape, -np.inf) for shape in flat]
        if rule == "neuron-widest":
            for k, shape in enumerate(flat):
                width = inter.mem_upper[k].reshape(shape) - inter.mem_lower[k].reshape(shape)
                scores[k] = np.where(inter.state[k].reshape(shape) == UNSTABLE, width, -np.inf)
        else:
            n_unstable = sum((inter.state[k].reshape(shape) == UNSTABLE).sum(axis=(0, 2))
                             for k, shape in enumerate(flat))
            # mixed: the scores only of children that will split on a spike (the backward pass costs a bound)
            chosen = np.flatnonzero(n_unstable <= self.config.spike_limit) if rule == "mixed" \
                else np.arange(batch)
            if chosen.size:
                sub = inter if chosen.size == batch else inter.select(chosen)
                worst = np.array([int(np.argmin(lower[b, :n_rows[b]])) for b in chosen])
                spec = C[chosen, worst][:, None, :]
                records: list = []
                _lower_bound_rows(self.stages, sub, spec, box.x_lower[:, chosen].astype(np.float64),
                                  box.x_upper[:, chosen].astype(np.float64), record=records)
                th, decay = float(self.net.threshold), float(self.net.decay)
                # lam_s: the coefficients on stage k's spikes (the spec for the last stage, else the next
                # stage's lam_prev); lam_z[t] = decay * lam_m[t + 1], the coefficient on the reset term z_t.
                lam_s = np.broadcast_to(spec[None] / self.steps, (self.steps,) + spec.shape)
                for rec in reversed(records):
                    k = rec.k
                    shape = (self.steps, chosen.size, flat[k][2])
                    unstable = sub.state[k].reshape(shape) == UNSTABLE
                    gap = th - np.minimum(0.0, sub.mem_lower[k].reshape(shape))
                    lam_m = rec.step.lam_cur.reshape(self.steps, chosen.size, -1, flat[k][2])[:, :, 0]
                    lam_z = np.zeros_like(lam_m)
                    lam_z[:-1] = decay * lam_m[1:]
                    value = np.abs(lam_s.reshape(self.steps, chosen.size, -1, flat[k][2])[:, :, 0]) \
                        + np.abs(lam_z) * gap
                    scores[k][:, chosen] = np.where(unstable, value, -np.inf)
                    lam_s = rec.lam_prev
            for b in np.setdiff1d(np.arange(batch), chosen):  # unscored: n_unstable only (input split next)
                for k, shape in enumerate(flat):
                    scores[k][:, b] = np.where(inter.state[k].reshape(shape)[:, b] == UNSTABLE, 0.0, -np.inf)
        out = []
        top = self.config.candidates
        for b in range(batch):
            flat_scores = np.concatenate([sc[:, b].reshape(-1) for sc in scores])
            order = np.argsort(-flat_scores, kind="stable")[:top]
            order = order[np.isfinite(flat_scores[order])]
            index = np.empty((order.size, 3), np.int64)
            for i, position in enumerate(order):
                for k, shape in enumerate(flat):
                    size = shape[0] * shape[2]
                    if position < size:
                        index[i] = (k, position // shape[2], position % shape[2])
                        break
                    position -= size
            out.append((index, flat_scores[order], int(np.isfinite(flat_scores).sum())))
        return out

    def make_nodes(self, children: List[_Child]) -> List[_Node]:
        """Bounds the children; closes rows with a bound > 0 and empty children; offers each node's
        S-CROWN minimizer."""
        lower, coefs, empty, candidates, n_unstable = self.bound(children)
        self.stats["nodes"] += len(children)
        nodes, offers = [], []
        for b, child in enumerate(children):
            if empty[b]:  # no member has these spikes: nothing to decide
                self.stats["empty"] += 1
                self.decided(child.weight)
                continue
            open_rows = child.rows
            low = self.shifted(lower[b, :len(open_rows)], open_rows)
            proven = self.question.closes(low)
            floor = min([child.floor] + low[proven].tolist())
            keep = ~proven
            worst = int(np.argmin(low))
            # a copy: a view would keep the whole batch's coefficients [T', B, S, *in] alive with the node
            coef = None if coefs is None else coefs[b, worst].copy()
            if coef is not None:
                x = ball_minimizer(self.ball, coef) if self.ball is not None else minimizer(child.subset, coef)
                if x is not None:
                    offers.append(x)
            if not keep.any():
                self.stats["closed_by_bound"] += 1
                self.decided(child.weight)
                self.closed_floor = min(self.closed_floor, floor)
                continue
            node = _Node(float(low[keep].min()), next(self.serial), child.subset, open_rows[keep], low[keep], floor,
                         child.depth, coefs=coef, fixed=child.fixed, weight=child.weight,
                         n_unstable=int(n_unstable[b]))
            if candidates is not None:
                node.candidates, scores, node.n_unstable = candidates[b]
                node.score = float(scores[0]) if scores.size else 0.0
            nodes.append(node)
        # a witness found now ends the search: these nodes must still count in the margin bracket
        self.fresh, self.root_bounded = nodes, True
        if offers:
            self.offer(np.stack(offers, axis=1))
        self.fresh = []
        return nodes

    def search_node(self, node: _Node) -> None:
        """Falsification at a node: a local search from its S-CROWN minimizer on its worst row."""
        if node.coefs is None:
            return
        self.stats["node_searches"] += 1
        coefs = self.C[int(node.rows[int(np.argmin(node.lower))])]
        start = ball_minimizer(self.ball, node.coefs) if self.ball is not None else minimizer(node.subset, node.coefs)
        if start is not None:
            self.offer(self.search(node.subset, start, coefs)[:, None])

    # --- leaves -----------------------------------------------------------------------------------
    def enumerate_leaf(self, node: _Node) -> bool:
        """Closes the node exactly: every member of its input subset (a superset of the node when it
        has spike splits): float64 margins, near-ties replayed exactly. Returns False when the time
        limit comes first (the node stays open).

        A ``LevelSet`` is enumerated in chunks of at most ``ENUM_CHUNK`` members (its variables that
        move S-CROWN's bound most fixed outside), each run through ``reduced_spike_counts`` on the
        neurons the chunk's own sound intervals leave unstable."""
        if self.remaining() <= 0:
            return False
        self.stats["enumerated"] += 1
        lowest = math.inf
        if self.reduced_ok(node):
            gray = self.question.grid
            parts = _chunks(node.subset, GRAY_CHUNK if gray else ENUM_CHUNK, node.coefs)
            while group := list(itertools.islice(parts, 16)):
                for part, states in zip(group, self.subset_states(group)):
                    if self.remaining() <= 0:
                        return False
                    part_lowest = self.gray_part(part, states, node.rows) if gray else None
                    if part_lowest is _OUT_OF_TIME:
                        return False
                    if part_lowest is not None:
                        lowest = min(lowest, part_lowest)
                        continue
                    base = part.from_levels(part.lo[None])[:, 0].reshape(self.steps, -1).astype(np.float64)
                    varying = np.unique(part.open_bits()[0] % base.shape[1])
                    for xs in part.enumerate(ENUM_CHUNK):
                        if self.remaining() <= 0:
                            return False
                        counts, membranes = reduced_spike_counts(self.net64, self.maps, base, varying, states,
                                                                 xs.reshape(self.steps, xs.shape[1], -1))
                        lowest = min(lowest, self.close_members(xs, counts, membranes, node.rows))
        else:
            for xs in node.subset.enumerate(1024):
                if self.remaining() <= 0:
                    return False
                trace = self.net64.run(xs)
                counts = trace.spikes[-1].reshape(self.steps, xs.shape[1], -1).sum(axis=0)
                lowest = min(lowest, self.close_members(xs, counts, trace.membranes, node.rows))
        self.closed_floor = min(self.closed_floor, node.floor, lowest)
        self.decided(node.weight)
        return True

    def gray_part(self, part: LevelSet, states: List[np.ndarray], rows: np.ndarray):
        """A sound lower bound of ``min_i (C_i . f - c_i)`` over ``rows`` for every member of ``part``
        by ``verify.enumerate.gray_margins`` (grid questions), flagged members replayed exactly; the
        worst is offered as a witness when its exact margin is <= 0. None when the Gray enumeration
        does not apply or flags too many members (the caller enumerates the part in chunks);
        ``_OUT_OF_TIME`` when its budget of passes (the rate of the parts so far times the seconds
        left) ran out."""
        left = self.remaining()
        budget = None if math.isinf(left) else max(1, int(left * self.gray_rate))
        result = gray_margins(self.net64, self.maps, part, states, self.C_int[rows], self.c_grid[rows],
                              cap=GRAY_FLAG_CAP, budget=budget)
        if result is not None and result.seconds is not None and result.seconds >= GRAY_TIMED:
            self.gray_rate = result.passes / result.seconds
        if result is not None and result.exhausted:
            return _OUT_OF_TIME
        if result is None or result.overflow:
            return None
        self.stats["gray_members"] += result.members
        margins = []
        xs = part.from_levels(result.flagged) if len(result.flagged) else None
        if result.stopped:
            # the kernel stopped at a member whose float counts are exact and whose margin is <= 0 (the
            # last flagged): its offer ends the search; if it did not, the rest of the part is unseen
            self.offer(np.ascontiguousarray(xs[:, -1:]), force=True)
            return None
        if xs is not None:
            for i in range(xs.shape[1]):
                if self.remaining() <= 0:
                    return _OUT_OF_TIME
                margins.append(self.exact_grid_margin(xs[:, i], rows))
            worst = int(np.argmin(margins))
            if margins[worst] <= 0:
                self.offer(np.ascontiguousarray(xs[:, worst:worst + 1]), force=True)
        values = margins + ([result.lowest] if result.lowest is not None else [])
        return self.grid_lower(min(values)) if values else math.inf

    def close_members(self, xs: np.ndarray, counts: np.ndarray, membranes: List[np.ndarray], rows: np.ndarray
                      ) -> float:
        """A sound lower bound of ``min_i (C_i . f - c_i)`` over ``rows`` for members ``xs [T', b, *in]``
        from their float64 output counts ``[b, n_out]``: members with a membrane within
        ``FIXED_TIE_BAND`` of the threshold, or a margin near or below 0, are replayed exactly; the
        worst member is offered as a witness when its exact margin is <= 0 (replayed again by
        ``offer``, whatever its float64 margin says)."""
        th = float(self.net.threshold)
        q = self.question
        counts = np.asarray(counts)
        near = np.zeros(xs.shape[1], dtype=bool)
        for mem in membranes:
            mem = mem.reshape(self.steps, xs.shape[1], -1)
            band = FIXED_TIE_BAND * (1.0 + abs(th) + np.abs(mem))
            near |= (np.abs(mem - th) <= band).any(axis=(0, 2))
        if q.grid:
            # T' (C_i . f - c_i) = C_i . counts - T' c_i: integers, exact once the counts are
            margins = (counts.astype(np.int64) @ self.C_int[rows].T - self.c_grid[rows]).min(axis=1)
            for i in np.flatnonzero(near | (margins <= 0)):
                margins[i] = self.exact_grid_margin(xs[:, i], rows)
            i = int(np.argmin(margins))
            lowest = self.grid_lower(int(margins[i]))
        else:
            # off the grid: a float margin farther than the rounding band from 0, with exact spike
            # counts (no membrane near the threshold), has the exact margin's sign
            margins = self.float_margins(counts / self.steps, rows).min(axis=1)
            slack = 1e-9 * (1.0 + np.abs(self.c_float[rows]) + np.abs(self.C[rows]).sum(axis=1)).max()
            lowers = np.nextafter(margins - slack, -np.inf)
            for i in np.flatnonzero(near | (margins <= slack)):
                exact = self.exact_margin(np.ascontiguousarray(xs[:, i]), rows)
                margins[i], lowers[i] = float(exact), float_outward(exact, "lower")
            i = int(np.argmin(margins))
            lowest = float(lowers.min())
        if margins[i] <= 0:
            self.offer(np.ascontiguousarray(xs[:, i:i + 1]), force=True)
        return lowest

    def reduced_ok(self, node: _Node) -> bool:
        """Whether the node's leaf can use ``verify.enumerate.reduced_spike_counts``: a ``LevelSet``, and
        a net whose dense stage maps are small enough (not CONV nets: those enumerate with ``net64.run``)."""
        if self.maps is None:
            maps = reduced_maps(self.net64)
            self.maps = False if maps is None else maps
        return self.maps is not False and isinstance(node.subset, LevelSet)

    def subset_states(self, subsets: List[LevelSet]) -> List[list]:
        """Per input subset, the interval states ``[T', n_k]`` of each stage (no spike splits: the
        intervals of the whole subset, which every member's exact trajectory lies in)."""
        from refsnn.ibp import interval_bounds_of_box
        from refsnn.input_sets import binary_box

        lower, upper = stack_boxes(subsets)
        inter = interval_bounds_of_box(self.net, binary_box(lower, upper, self.net), self.stages)
        return [[st.reshape(self.steps, len(subsets), -1)[:, b] for st in inter.state] for b in range(len(subsets))]

    def milp_leaf(self, node: _Node, budget: float) -> bool:
        """Tries the exact MILP (``verify.milp.SampleVerifier``: the minimum of each open row
        ``C_i . f`` over the node's input subset, a superset of the node when it has spike splits)
        for at most ``budget`` seconds; True when it proved every row (the node is closed), False to
        split on. Every minimizer is offered as a witness (replayed exactly)."""
        from .milp import SampleVerifier, sound_rate_bound

        budget = min(budget, self.remaining())
        if budget <= 0:
            return False
        self.stats["milp"] += 1
        deadline = time.perf_counter() + budget
        verifier = SampleVerifier(self.net, node.subset, "auto", budget, self.config.solver)
        verifier.deadline = deadline  # every solve of every row within the budget
        lowest = None
        for i in node.rows:
            left = deadline - time.perf_counter()
            if left <= 0:
                self.stats["milp_timeouts"] += 1
                return False
            verifier.time_limit = left
            ext = verifier.rate_extreme(self.C[i], "min")
            if ext.witness is not None:
                # raises _Done when it violates; a float64 witness the exact replay does not confirm
                # (a near tie) leaves the node to be split, down to enumerated leaves
                self.offer(np.ascontiguousarray(ext.witness)[:, None])
            bound = sound_rate_bound(ext.bound, self.C[i], self.steps, "min")
            margin = None if bound is None else bound - self.question.thresholds[i]
            if margin is None or not self.question.closes(margin):
                if ext.status != "exact":
                    self.stats["milp_timeouts"] += 1
                return False
            lowest = margin if lowest is None else min(lowest, margin)
        self.closed_floor = min(self.closed_floor, node.floor, float_outward(lowest, "lower"))
        self.decided(node.weight)
        return True

    # --- branching --------------------------------------------------------------------------------
    def choose(self, node: _Node) -> int:
        subset = node.subset
        open_vars = subset.open_variables
        if self.config.branching == "first":
            return int(open_vars[0])
        widths = subset.free_bits_per_variable()
        if self.config.branching in ("widest", "neuron-widest", "neuron-babsr") or node.coefs is None:
            return int(open_vars[np.argmax(widths[open_vars])])
        return int(open_vars[np.argmax(smear(subset, node.coefs)[open_vars] + 1e-12 * widths[open_vars])])

    def split(self, node: _Node) -> List[_Child]:
        """Two children that partition the node: on its best unstable spike (neuron branching, while
        the node has one) or on an input variable's level range."""
        self.stats["splits"] += 1
        depth = node.depth + 1
        half = node.weight / 2
        neuron = node.candidates is not None and node.candidates.shape[0] > 0
        if neuron and self.config.branching == "mixed" and self.ball is None and node.subset.open_variables.size:
            # input splits (smear) while many spikes are unstable: one spike split then moves the bound little
            neuron = node.n_unstable <= self.config.spike_limit
        if neuron:
            self.stats["spike_splits"] += 1
            k, t, j = (int(v) for v in node.candidates[0])
            return [_Child(node.subset, node.rows, node.floor, depth, node.fixed + ((k, t, j, value),), half)
                    for value in (SPIKE_OFF, SPIKE_ON)]
        if self.ball is not None:  # an l0 ball has no input variables; nodes without spikes go to _ball_leaf
            raise VerifierError("an l0-ball node without an unstable spike cannot be split")
        if not node.subset.open_variables.size:
            raise VerifierError("a node with one member was not enumerated; enumerate_max must be >= 1")
        v = self.choose(node)
        lo, hi = int(node.subset.lo[v]), int(node.subset.hi[v])
        mid = (lo + hi) // 2
        parts = [node.subset.restrict(v, lo, mid), node.subset.restrict(v, mid + 1, hi)]
        count = node.subset.count()
        return [_Child(part, node.rows, node.floor, depth, node.fixed, node.weight * Fraction(part.count(), count))
                for part in parts]


def _top_k_positive(gain: np.ndarray, k: int, per_step: bool) -> np.ndarray:
    """``[T', B, n]`` 0/1: per step and member (``per_step``) or per member over all steps, the (at
    most) ``k`` entries of ``gain`` with the largest positive values."""
    steps, batch, n = gain.shape
    flat = gain if per_step else np.moveaxis(gain, 0, 1).reshape(1, batch, steps * n)
    size = flat.shape[-1]
    chosen = np.zeros(flat.shape, dtype=np.int8)
    if k > 0 and size:
        top = np.argpartition(-flat, min(k, size) - 1, axis=-1)[..., :min(k, size)]
        picked = np.zeros(flat.shape, dtype=bool)
        np.put_along_axis(picked, top, True, axis=-1)
        chosen[picked & (flat > 0)] = 1
    return chosen if per_step else np.moveaxis(chosen.reshape(batch, steps, n), 1, 0)


def _chunks(subset: LevelSet, limit: int, coefs: Optional[np.ndarray]) -> Iterator[LevelSet]:
    """Subsets of at most ``limit`` members that partition ``subset``, one at a time (a leaf of 2^40
    members has 2^16 parts of 2^24, of which a time limit may reach a few): the open variables with
    the largest ``smear`` (or the widest, without ``coefs``) are fixed to each of their levels, the
    rest stay free (fixing the variables that move the bound most leaves the fewest unstable neurons)."""
    open_vars = subset.open_variables
    sizes = (subset.hi - subset.lo + 1)[open_vars]
    weight = smear(subset, coefs)[open_vars] if coefs is not None else sizes.astype(np.float64)
    order = open_vars[np.lexsort((open_vars, -weight))]   # most influential first
    inner, count = [], 1
    for v in order[::-1]:
        size = int(subset.hi[v] - subset.lo[v] + 1)
        if count * size > limit:
            break
        inner.append(int(v))
        count *= size
    outer = [int(v) for v in order if int(v) not in inner]
    for levels in itertools.product(*[range(int(subset.lo[v]), int(subset.hi[v]) + 1) for v in outer]):
        part = subset
        for v, level in zip(outer, levels):
            part = part.restrict(v, level, level)
        yield part


def smear(subset: LevelSet, coefs: np.ndarray) -> np.ndarray:
    """``[V]``: ``sum |A|`` over each variable's open bits (``coefs [T', *in]``, a linear bound's input
    coefficients): how far fixing that variable can move the bound."""
    bits, var, _ = subset.open_bits()
    return np.bincount(var, weights=np.abs(coefs.reshape(-1)[bits]), minlength=subset.n_levels.size)


def minimizer(subset: LevelSet, coefs: np.ndarray) -> np.ndarray:
    """The member ``[T', *in]`` minimizing ``sum A . x`` over the set (``coefs [T', *in]``): per
    variable, the level where the running sum of its rank contributions is smallest."""
    bits, var, rank = subset.open_bits()
    levels = subset.lo.copy()
    if bits.size:
        width = int(subset.n_levels.max())
        table = np.zeros((subset.n_levels.size, width))
        np.add.at(table, (var, rank), coefs.reshape(-1)[bits])
        ranks = np.arange(width)[None, :]
        inside = (ranks >= subset.lo[:, None]) & (ranks < subset.hi[:, None])
        running = np.cumsum(np.where(inside, table, 0.0), axis=1)
        running = np.where(inside, running, np.inf)
        best = np.argmin(running, axis=1)
        improves = running[np.arange(running.shape[0]), best] < 0
        levels = np.where(improves, best + 1, subset.lo)
    return subset.from_levels(levels[None])[:, 0]


def robust_bab(net: SNN, input_set: InputSet, label: int, config: Optional[BabConfig] = None,
               rng: Optional[np.random.Generator] = None) -> BabResult:
    """Decides whether every member ``x [T', *in]`` of ``input_set`` has ``f_label(x) - f_j(x) > 0`` for
    all ``j != label`` (see the module docstring). ``BoxSet`` and ``DigitalLinfSet`` are split;
    an l0 ball (``SpikeL0Set``) gets its root bound over the ball, falsification, then spike splits
    over the ball (``BabConfig.ball_split``; else one MILP on the whole ball)."""
    label = int(label)
    if not 0 <= label < net.n_outputs:
        raise ValueError(f"label must lie in [0, {net.n_outputs}), got {label}")
    return _run(net, input_set, label, None, config, rng)


def spec_bab(net: SNN, input_set: InputSet, rows, thresholds, strict: bool = False,
             config: Optional[BabConfig] = None, rng: Optional[np.random.Generator] = None) -> BabResult:
    """Decides whether every member of ``input_set`` has ``C_i . f >= c_i`` (``strict``: ``> c_i``)
    for every row ``C_i`` of ``rows [R, n_out]`` (``f``: mean output rates over ``T'``), by the search
    of ``robust_bab`` (which is the case ``C_i = e_label - e_j``, ``c = 0``, strict). ``thresholds``:
    ``c [R]`` (or one value), exact rationals or floats (taken as the rationals they denote).

    Verdicts: ``"robust"`` the property holds for every member (proven), ``"not_robust"`` a member
    (``witness``) violates it in exact arithmetic, ``"unknown"``. ``margin_lower`` / ``attack_margin``
    bracket ``min_i (C_i . f - c_i)``; ``label`` is None."""
    question = Question.make(rows, thresholds, strict, input_set.steps)
    if question.rows.shape[1] != net.n_outputs:
        raise ValueError(f"rows must have {net.n_outputs} columns (the network's outputs), got {question.rows.shape[1]}")
    return _run(net, input_set, None, question, config, rng)


def _run(net: SNN, input_set: InputSet, label: Optional[int], question: Optional[Question],
         config: Optional[BabConfig], rng: Optional[np.random.Generator]) -> BabResult:
    # an l0 ball's intermediate bounds (refsnn.l0.anyk_intermediate) serve its root bound, its
    # minimizers and its MILP's big-M intervals: computed once for the question
    with shared_intermediate():
        return _run_question(net, input_set, label, question, config, rng)


def _run_question(net: SNN, input_set: InputSet, label: Optional[int], question: Optional[Question],
                  config: Optional[BabConfig], rng: Optional[np.random.Generator]) -> BabResult:
    config = config if config is not None else BabConfig()
    if tuple(input_set.input_shape) != tuple(net.input_shape):
        raise ValueError(f"the input set holds shape {tuple(input_set.input_shape)}, the network expects "
                         f"{tuple(net.input_shape)}")
    search = _Search(net, input_set, label, config, rng if rng is not None else np.random.default_rng(0), question)
    splittable = isinstance(input_set, (BoxSet, DigitalLinfSet, LevelSet))
    queue: List[_Node] = []
    try:
        search.falsify_root(input_set)
        if search.ball is not None and config.ball_split and input_set.count() > config.enumerate_max:
            queue = _ball_root(search, input_set)
            if queue:
                _expand(search, queue)
            if not queue and search.stuck:
                _ball_leaf(search)
        elif splittable:
            root = LevelSet.of(input_set)
            queue = search.make_nodes([_Child(root, search.all_rows, math.inf, 0)])
            search.root_bounded = True
            if queue:
                search.in_flight = list(queue)
                search.restart_search(queue[0])
                search.in_flight = []
            _expand(search, queue)
        else:
            queue = _root_only(search, input_set)
    except _Done:
        return _result(search, "not_robust", queue, f"exact margin {search.best_margin} "
                                                     f"{'<=' if search.question.strict else '<'} 0")
    if not queue and not search.stuck:
        result = _result(search, "robust", queue, "every node closed")
        if not search.question.closes(np.array([result.margin_lower]))[0]:  # no proof behind the closed nodes
            return _result(search, "unknown", queue, "closed nodes without a proving margin bound")
        return result
    if not queue:
        why = "time limit" if search.remaining() <= 0 else "their leaf solve left them open"
        return _result(search, "unknown", queue, f"open nodes with every spike fixed or stable ({why})")
    return _result(search, "unknown", queue, "time limit" if search.remaining() <= 0 else "node limit")


def _expand(search: _Search, queue: List[_Node]) -> None:
    """Best-first branch and bound until the queue is empty, a witness, or the time or node limit."""
    cfg = search.config
    heapq.heapify(queue)
    root = queue[0] if len(queue) == 1 else None
    root_pending = root is not None and cfg.root_milp > 0
    if root_pending and cfg.root_milp_max_unstable is not None and root.n_unstable > cfg.root_milp_max_unstable:
        root_pending = False  # too many unstable spikes for the MILP: the whole time goes to branching
        search.stats["root_milp_skipped"] += 1
    next_search = cfg.search_every
    while queue:
        if search.remaining() <= 0 or (cfg.max_nodes is not None and search.stats["nodes"] >= cfg.max_nodes):
            return
        if root_pending and search.stats["nodes"] >= cfg.root_milp_after:
            # one MILP on the whole set, after a short branching phase that often finds the witness
            root_pending = False
            search.in_flight = [root]
            if search.milp_leaf(root, cfg.root_milp * (cfg.time_limit if cfg.time_limit is not None
                                                       else cfg.milp_time_limit)):
                queue.clear()
                search.stuck = []   # ball nodes left without a spike to split: inside the set too
                search.in_flight = []
                search.decided_weight = Fraction(0)  # the MILP closed the whole set
                search.decided(Fraction(1))
                return
            search.in_flight = []
            continue
        if cfg.search_every and search.stats["nodes"] >= next_search:
            next_search = search.stats["nodes"] + cfg.search_every
            search.in_flight = []
            search.search_node(queue[0])  # the worst open node: where a witness is most likely
        picked = [heapq.heappop(queue) for _ in range(min(cfg.batch, len(queue)))]
        search.in_flight = list(picked)
        children: List[_Child] = []
        for node in picked:
            if search.ball is not None:  # spike splits only: the ball is neither enumerated nor split
                if node.candidates is None or node.candidates.shape[0] == 0:
                    search.stuck.append(node)  # every spike fixed or stable, bound still open
                else:
                    children.extend(search.split(node))
                continue
            count = node.subset.count()
            no_spike = node.candidates is None or node.candidates.shape[0] == 0
            far = node.priority <= -2.0 / search.steps  # splitting seldom closes it: enumerate a large leaf
            if count <= cfg.enumerate_always or (count <= cfg.enumerate_max and far) or (count == 1 and no_spike):
                if not search.enumerate_leaf(node):
                    heapq.heappush(queue, node)  # the time limit came first: still open
                continue
            # one MILP per input subset: it ignores spike splits, so a node's spike children (and their
            # children) hold the same subset and would only repeat it
            if (id(node.subset) not in search.milp_subsets and node.depth > 0
                    and node.subset.n_free <= cfg.milp_max_free):
                search.milp_subsets[id(node.subset)] = node.subset   # kept alive: the id stays its own
                if search.milp_leaf(node, cfg.milp_time_limit):
                    continue
                if search.remaining() <= 0:
                    heapq.heappush(queue, node)
                    continue
            children.extend(search.split(node))
        if children:
            search.stats["max_depth"] = max(search.stats["max_depth"], max(c.depth for c in children))
            for start in range(0, len(children), 2 * cfg.batch):
                for node in search.make_nodes(children[start:start + 2 * cfg.batch]):
                    heapq.heappush(queue, node)
        search.in_flight = []


def _root_only(search: _Search, input_set: InputSet) -> List[_Node]:
    """A set the search does not split (an l0 ball of at most ``enumerate_max`` members, or any ball
    with ``ball_split=False``): bound it, then enumeration when small, else one MILP (and
    enumeration after all when the MILP leaves it undecided and the set has at most
    ``verify.enumerate.DEFAULT_MAX_MEMBERS`` members).

    A ``SpikeL0Set`` (every train within ``k`` flips per step, or in total) is bounded over its whole
    ball (``refsnn.l0.anyk_bounds``: exact first-stage currents, S-CROWN concretized exactly over
    the ball; a mask only shrinks the set) instead of its enclosing box, which frees every bit and
    bounds nothing (margin bound -1 on every N-MNIST image); the members minimizing each open row's
    S-CROWN bound are offered, and local searches from random members (``restart_search``) run
    before the MILP. Other sets: their enclosing box."""
    from refsnn.bounds import compute_bounds

    from .enumerate import DEFAULT_MAX_MEMBERS

    rows = search.all_rows
    C = search.specs([rows])
    method = "best" if search.config.method == "crown-ibp" else search.config.method
    ball = isinstance(input_set, SpikeL0Set) and input_set.k > 0
    if ball:
        from refsnn.l0 import anyk_bounds

        lower, _ = anyk_bounds(search.net, input_set.center[:, None], input_set.k, C, method=method,
                               per_step=input_set.per_step, mask=input_set.mask[:, None])
    else:
        lower_box, upper_box = input_set.box()
        lower, _ = compute_bounds(search.net, lower_box[:, None], upper_box[:, None], method=method, C=C)
    search.stats["nodes"] += 1
    search.root_bounded = True
    low = search.shifted(lower[0, :len(rows)], rows)
    closed = search.question.closes(low)
    if closed.all():
        search.closed_floor = float(low.min())
        return []
    open_rows = ~closed
    node = _Node(float(low[open_rows].min()), 0, input_set, rows[open_rows], low[open_rows],
                 float(np.min(low[closed], initial=math.inf)))
    search.in_flight = [node]
    count = input_set.count()
    decided = True
    if count <= search.config.enumerate_max:
        decided = search.enumerate_leaf(node)
    else:
        if ball:
            _falsify_ball(search, input_set, node)
        if not search.milp_leaf(node, search.remaining()):
            decided = count <= DEFAULT_MAX_MEMBERS and search.enumerate_leaf(node)
    search.in_flight = []
    return [] if decided else [node]


def _ball_root(search: _Search, ball: SpikeL0Set) -> List[_Node]:
    """The root of an l0 ball's spike-split search: bounded over the ball (``_Search.ball_bound``),
    then the falsification of ``_root_only`` (the bound's minimizers, gradient flips, restarts) when
    a row stays open. Returns the open root (or nothing when the bound proves every row)."""
    queue = search.make_nodes([_Child(ball, search.all_rows, math.inf, 0)])
    search.root_bounded = True
    if not queue:
        return []
    node = queue[0]
    search.in_flight = [node]
    _falsify_ball(search, ball, node)
    search.in_flight = []
    return queue


def _falsify_ball(search: _Search, ball: SpikeL0Set, node: _Node) -> None:
    """The ball's falsification before its MILP or spike splits: the S-CROWN minimizers over the ball,
    the gradient search on flips, then the restarts. The gradient search gets ``restart_share`` of the
    limit and the restarts after it their own share: up to twice that share (half the limit at the
    default 0.25) goes to falsification, since the exact search rarely closes a ball within the limit."""
    search.offer_ball_minimizers(ball, node.rows)
    cfg = search.config
    if cfg.restart_share > 0:
        share = math.inf if cfg.time_limit is None else cfg.restart_share * cfg.time_limit
        search.gradient_ball_search(ball, time.perf_counter() + share)
    search.restart_search(node)


def _ball_leaf(search: _Search) -> None:
    """Open ball nodes with no unstable spike left to split (``search.stuck``): one MILP on the whole
    ball over their open rows with the time left (then enumeration, on a ball small enough), which
    decides every node at once (each is a subset of the ball)."""
    from .enumerate import DEFAULT_MAX_MEMBERS

    stuck, ball = search.stuck, search.ball
    rows = np.unique(np.concatenate([node.rows for node in stuck]))
    lowest = min(node.priority for node in stuck)
    node = _Node(lowest, next(search.serial), ball, rows, np.full(rows.size, lowest),
                 min(node.floor for node in stuck))
    if search.milp_leaf(node, search.remaining()) or (
            ball.count() <= DEFAULT_MAX_MEMBERS and search.enumerate_leaf(node)):
        search.stuck = []
        search.decided_weight = Fraction(0)  # the leaf decided the whole ball
        search.decided(Fraction(1))


def ball_minimizer(ball: SpikeL0Set, coefs: np.ndarray) -> Optional[np.ndarray]:
    """The member ``[T', *in]`` of the l0 ball minimizing ``sum A . x`` (``coefs [T', *in]``): the
    clean train with its ``k`` most negative coefficient changes flipped (per step or in total), or
    None when that train is not a member (a masked ball)."""
    from refsnn.l0 import L0Concretizer

    lam = coefs.reshape(ball.steps, 1, 1, -1)
    x = L0Concretizer(ball.center[:, None], ball.k, ball.per_step, ball.mask[:, None]).gradient(lam)
    x = np.rint(x[:, 0, 0]).astype(np.uint8).reshape(ball.center.shape)
    return x if ball.contains(x) else None


def _result(search: _Search, status: str, queue: List[_Node], reason: str) -> BabResult:
    pending = queue + search.in_flight + search.fresh + search.stuck
    open_lower = min((min(node.priority, node.floor) for node in pending), default=math.inf)
    margin_lower = min(open_lower, search.closed_floor)
    q = search.question
    if not search.root_bounded:  # nothing bounded yet: the trivial range (0 <= f <= 1)
        margin_lower = float_outward(min(Fraction(float(np.minimum(row, 0).sum())) - c
                                         for row, c in zip(q.rows, q.thresholds)), "lower")
    if not math.isfinite(margin_lower):  # every row closed and no value seen: the smallest proof
        margin_lower = search.grid_lower(1 if q.strict else 0) if q.grid else 0.0
    if q.grid:
        # every margin is a multiple of 1/T': a bound L proves the margin >= ceil(L T') / T' (exact arithmetic)
        margin_lower = search.grid_lower(math.ceil(Fraction(margin_lower) * search.steps))
    rates = prediction = None
    if search.best_x is not None:
        trace = search.exact.run(search.best_x)
        rates = np.array([float(r) for r in trace.rates])
        prediction = int(np.argmax(trace.counts))
    attack = math.inf if search.best_margin is None else (
        float(search.best_margin) if q.grid else float_outward(search.best_margin, "upper"))
    return BabResult(status, search.label, float(margin_lower), attack, search.best_x, rates, prediction,
                     time.perf_counter() - search.start, reason, dict(search.stats))
