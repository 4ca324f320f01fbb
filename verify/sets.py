"""Input sets of spike trains for one sample, with their exact MILP encodings.

Every set holds spike trains ``x [T', *input_shape]`` of 0/1 and offers the same operations:

- ``box()``: the enclosing box ``(lower, upper)`` (uint8, ``[T', *in]``), used for the interval
  (big-M) bounds; ``contains(x)``; ``count()`` (number of members) and ``enumerate(batch)``
  (all members, time-major ``[T', b, *in]`` batches) for exhaustive checks; ``sample(rng, n)``;
  ``neighbors(x)``: members one move away (local search);
- ``build(prob, name)``: the set's variables and constraints in a PuLP problem; returns an object
  array ``[T', n_in]`` holding ``0``/``1`` for fixed bits and binary ``LpVariable`` s for free ones.

Three sets:

``BoxSet``
    every bit independently in ``[lower, upper]`` (fixed where ``lower == upper``).
``SpikeL0Set``
    spike trains within ``k`` bit flips of a clean train, counted per time step (each step at
    most ``k`` flips, the paper's spike-domain set) or in total; ``mask`` restricts which bits may
    flip.
``DigitalLinfSet``
    the spikes that Bernoulli coding with FIXED rand maps produces from every image in the l-inf
    ball ``|xhat' - xhat| <= r`` clipped to ``[0, 1]``: ``x_t = 1[xhat' > rand_t]`` (eq. 13).
    This is NOT the box of its free bits: one pixel's spikes over time are all decided by one
    value ``xhat'``, so a pixel's bits are monotone in its rand values (if ``rand_a <= rand_b``
    then ``x_b <= x_a``; equal rand values give equal bits). A pixel with ``m`` distinct free rand
    values has ``m + 1`` reachable spike patterns, not ``2^m``. The encoding is exact: one binary
    ``y_j = 1[xhat' > v_j]`` per distinct free rand value ``v_1 < ... < v_m`` of the pixel, with
    ``y_{j+1} <= y_j``; the bit at time ``t`` is the ``y`` of its rand value. Each monotone ``y``
    is reached by some ``xhat'`` in the ball (``xhat' = lo`` gives all zeros, any value in
    ``(v_j, v_{j+1}]`` gives the first ``j`` ones, ``hi`` gives all ones), so nothing is lost
    and nothing is added. ``convention="paper"`` uses radius ``eps / 2`` (the paper's text),
    ``"authors"`` radius ``eps`` (the authors' released code).
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

Shape = Tuple[int, ...]


def _binary_array(value, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != bool and not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must be numeric 0/1 spikes, got dtype {array.dtype}")
    if array.dtype != bool:
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite values; spike sets hold 0/1 bits")
        if not np.all((array == 0) | (array == 1)):
            bad = array[(array != 0) & (array != 1)].ravel()[:3]
            raise ValueError(f"{name} must hold binary spikes (0/1), found values such as {bad.tolist()}")
    return array.astype(np.uint8)


def _add_binary(prob, name: str):
    """A binary variable attached to ``prob`` (PuLP >= 3.3 API, with a fallback for older PuLP)."""
    import pulp
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, 0, 1, cat="Binary")
    return pulp.LpVariable(name, 0, 1, cat="Binary")


class InputSet:
    """Base class: a finite set of spike trains ``[T', *input_shape]`` (see the module docstring)."""

    steps: int
    input_shape: Shape

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.input_shape))

    def box(self) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def n_free(self) -> int:
        """Number of bits not fixed by the enclosing box."""
        lower, upper = self.box()
        return int(np.count_nonzero(lower != upper))

    def contains(self, x) -> bool:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def enumerate(self, batch: int = 4096) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def neighbors(self, x: np.ndarray) -> np.ndarray:
        """Members one elementary move away from member ``x``: ``[T', M, *in]`` (M may be 0)."""
        raise NotImplementedError

    def moves(self, x: np.ndarray) -> "Moves":
        """The members of ``neighbors(x)``, in the same order, addressable by index without building
        them all (``SpikeL0Set`` has ~78,000 per member on N-MNIST at 12 flips per step)."""
        return Moves.of_array(self.neighbors(x))

    def build(self, prob, name: str) -> np.ndarray:
        raise NotImplementedError

    def _check_member_shape(self, x) -> np.ndarray:
        x = np.asarray(x)
        expected = (self.steps,) + tuple(self.input_shape)
        if x.shape != expected:
            raise ValueError(f"spike train has shape {x.shape}, this set holds {expected}")
        return x

    def describe(self) -> dict:
        return {"kind": type(self).__name__, "steps": self.steps, "input_shape": list(self.input_shape),
                "free_bits": self.n_free}


class Moves:
    """``len(moves)`` members one move away from a member, ``moves.take(index [m])`` -> ``[T', m, *in]``."""

    def __init__(self, count: int, take):
        self.count, self._take = int(count), take

    @classmethod
    def of_array(cls, members: np.ndarray) -> "Moves":
        return cls(members.shape[1], lambda index: members[:, np.asarray(index, np.int64)])

    def __len__(self) -> int:
        return self.count

    def take(self, index) -> np.ndarray:
        return self._take(np.asarray(index, np.int64))


class BoxSet(InputSet):
    """All spike trains with ``lower <= x <= upper`` bitwise; ``lower, upper [T', *in]`` of 0/1."""

    def __init__(self, lower, upper):
        lower = _binary_array(lower, "x_lower")
        upper = _binary_array(upper, "x_upper")
        if lower.shape != upper.shape:
            raise ValueError(f"x_lower {lower.shape} and x_upper {upper.shape} must have the same shape")
        if lower.ndim < 2:
            raise ValueError(f"a spike box is [T', *input_shape], got shape {lower.shape}")
        if np.any(lower > upper):
            where = tuple(int(i) for i in np.argwhere(lower > upper)[0])
            raise ValueError(f"x_lower > x_upper at index {where} (time step first); "
                             "the box is empty there, swap or fix the bounds")
        self.lower, self.upper = lower, upper
        self.steps = lower.shape[0]
        self.input_shape = tuple(lower.shape[1:])
        self._free = np.flatnonzero((lower != upper).reshape(-1))

    def box(self):
        return self.lower.copy(), self.upper.copy()

    @property
    def n_free(self) -> int:
        return int(self._free.size)

    def contains(self, x) -> bool:
        x = self._check_member_shape(x)
        return bool(np.all((x >= self.lower) & (x <= self.upper)) and np.all((x == 0) | (x == 1)))

    def count(self) -> int:
        return 2 ** self.n_free

    def _from_free_bits(self, bits: np.ndarray) -> np.ndarray:
        """``bits [b, n_free]`` -> members ``[T', b, *in]``."""
        flat = np.broadcast_to(self.lower.reshape(1, -1), (bits.shape[0], self.lower.size)).copy()
        flat[:, self._free] = bits
        return flat.reshape((bits.shape[0], self.steps) + self.input_shape).swapaxes(0, 1)

    def enumerate(self, batch: int = 4096):
        n = self.n_free
        total = 2 ** n
        for start in range(0, total, batch):
            codes = np.arange(start, min(total, start + batch), dtype=np.int64)
            bits = ((codes[:, None] >> np.arange(n, dtype=np.int64)[None, :]) & 1).astype(np.uint8)
            yield self._from_free_bits(bits)

    def sample(self, rng, n):
        bits = rng.integers(0, 2, size=(n, self.n_free), dtype=np.uint8)
        return self._from_free_bits(bits)

    def neighbors(self, x):
        x = self._check_member_shape(x)
        flat = np.broadcast_to(x.reshape(1, -1), (self.n_free, x.size)).copy()
        rows = np.arange(self.n_free)
        flat[rows, self._free] = 1 - flat[rows, self._free]
        return flat.reshape((self.n_free, self.steps) + self.input_shape).swapaxes(0, 1)

    def build(self, prob, name):
        flat_lower = self.lower.reshape(self.steps, -1)
        flat_upper = self.upper.reshape(self.steps, -1)
        out = np.empty(flat_lower.shape, dtype=object)
        for t in range(self.steps):
            for i in range(flat_lower.shape[1]):
                if flat_lower[t, i] == flat_upper[t, i]:
                    out[t, i] = int(flat_lower[t, i])
                else:
                    out[t, i] = _add_binary(prob, f"{name}_x_{t}_{i}")
        return out


class SpikeL0Set(InputSet):
    """Spike trains within ``k`` flips of ``center [T', *in]``.

    ``per_step=True``: at most ``k`` flips in each time step; ``False``: at most ``k`` in total.
    ``mask [T', *in]`` (optional, 0/1): only these bits may flip (default: all).
    """

    def __init__(self, center, k: int, per_step: bool = True, mask=None):
        center = _binary_array(center, "center")
        if center.ndim < 2:
            raise ValueError(f"the center spike train is [T', *input_shape], got shape {center.shape}")
        if int(k) != k or k < 0:
            raise ValueError(f"k (number of flips) must be a non-negative integer, got {k!r}")
        self.center = center
        self.k = int(k)
        self.per_step = bool(per_step)
        self.steps = center.shape[0]
        self.input_shape = tuple(center.shape[1:])
        if mask is None:
            mask = np.ones_like(center)
        mask = _binary_array(mask, "mask")
        if mask.shape != center.shape:
            raise ValueError(f"mask {mask.shape} must have the center's shape {center.shape}")
        self.mask = mask
        self._positions = [np.flatnonzero(mask[t].reshape(-1)) for t in range(self.steps)]

    def box(self):
        lower, upper = self.center.copy(), self.center.copy()
        if self.k > 0:
            lower[self.mask == 1] = 0
            upper[self.mask == 1] = 1
        return lower, upper

    def _flips(self, x) -> np.ndarray:
        return (np.asarray(x).astype(np.uint8) != self.center)

    def contains(self, x) -> bool:
        x = self._check_member_shape(x)
        if not np.all((x == 0) | (x == 1)):
            return False
        flips = self._flips(x)
        if np.any(flips & (self.mask == 0)):
            return False
        per_step = flips.reshape(self.steps, -1).sum(axis=1)
        return bool(np.all(per_step <= self.k) if self.per_step else per_step.sum() <= self.k)

    def count(self) -> int:
        if self.per_step:
            return math.prod(sum(math.comb(p.size, i) for i in range(min(self.k, p.size) + 1))
                             for p in self._positions)
        total = sum(p.size for p in self._positions)
        return sum(math.comb(total, i) for i in range(min(self.k, total) + 1))

    def _flip_sets(self):
        """Yields tuples of flat indices (into ``[T' * n_in]``) to flip."""
        n_in = self.n_inputs
        if self.per_step:
            per_t = [[tuple(t * n_in + p for p in combo)
                      for i in range(min(self.k, pos.size) + 1) for combo in itertools.combinations(pos, i)]
                     for t, pos in enumerate(self._positions)]
            for choice in itertools.product(*per_t):
                yield tuple(itertools.chain.from_iterable(choice))
        else:
            every = np.concatenate([t * n_in + pos for t, pos in enumerate(self._positions)])
            for i in range(min(self.k, every.size) + 1):
                yield from itertools.combinations(every.tolist(), i)

    def enumerate(self, batch: int = 4096):
        flat_center = self.center.reshape(-1)
        rows = []
        for flips in self._flip_sets():
            row = flat_center.copy()
            row[list(flips)] ^= 1
            rows.append(row)
            if len(rows) == batch:
                yield np.stack(rows).reshape((len(rows), self.steps) + self.input_shape).swapaxes(0, 1)
                rows = []
        if rows:
            yield np.stack(rows).reshape((len(rows), self.steps) + self.input_shape).swapaxes(0, 1)

    def sample(self, rng, n):
        out = np.broadcast_to(self.center, (n,) + self.center.shape).copy().reshape(n, self.steps, -1)
        every = [(t, p) for t, pos in enumerate(self._positions) for p in pos]
        for row in range(n):
            if self.per_step:
                for t, pos in enumerate(self._positions):
                    count = rng.integers(0, min(self.k, pos.size) + 1)
                    chosen = rng.choice(pos, size=count, replace=False)
                    out[row, t, chosen] ^= 1
            elif every:
                count = rng.integers(0, min(self.k, len(every)) + 1)
                for index in rng.choice(len(every), size=count, replace=False):
                    t, p = every[index]
                    out[row, t, p] ^= 1
        return out.reshape((n, self.steps) + self.input_shape).swapaxes(0, 1)

    def neighbors(self, x):
        moves = self.moves(x)
        return moves.take(np.arange(len(moves)))

    def moves(self, x):
        """Single flips (position by position, step by step) that stay within the budget, then swaps
        (undo one flip of a step, flip another position of it: the count stays, so a search can move
        along a full budget), ``a`` over the step's flipped positions, ``b`` over its others."""
        x = self._check_member_shape(x)
        flat = x.reshape(self.steps, -1).astype(np.uint8)
        n_in = flat.shape[1]
        flips = flat != self.center.reshape(self.steps, -1)
        if np.any(flips & (self.mask.reshape(self.steps, -1) == 0)):
            raise ValueError("x is not a member of the set: it flips a masked bit")
        counts = flips.sum(axis=1)
        total = int(counts.sum())
        singles, pairs = [], []
        for t, pos in enumerate(self._positions):
            change = np.where(flips[t, pos], -1, 1)
            after = counts[t] + change if self.per_step else total + change
            singles.append(t * n_in + pos[after <= self.k])
        for t, pos in enumerate(self._positions):
            on, off = pos[flips[t, pos]], pos[~flips[t, pos]]
            a, b = np.repeat(on, off.size), np.tile(off, on.size)
            pairs.append(np.stack([t * n_in + a, t * n_in + b], axis=1))
        first = np.concatenate(singles).astype(np.int64)
        second = np.concatenate(pairs).astype(np.int64).reshape(-1, 2)
        shape = (self.steps,) + self.input_shape
        base = flat.reshape(-1)

        def take(index):
            out = np.broadcast_to(base, (index.size, base.size)).copy()
            rows = np.arange(index.size)
            one = index < first.size
            out[rows[one], first[index[one]]] ^= 1
            two = second[index[~one] - first.size]
            out[rows[~one], two[:, 0]] ^= 1
            out[rows[~one], two[:, 1]] ^= 1
            return out.reshape((index.size,) + shape).swapaxes(0, 1)

        return Moves(first.size + second.shape[0], take)

    def build(self, prob, name):
        import pulp
        flat_center = self.center.reshape(self.steps, -1)
        out = np.empty(flat_center.shape, dtype=object)
        out[:] = flat_center.astype(int)
        flips_by_step = []
        for t, pos in enumerate(self._positions):
            flips = []
            if self.k > 0:
                for p in pos:
                    var = _add_binary(prob, f"{name}_x_{t}_{p}")
                    out[t, p] = var
                    # flip indicator: x when the clean bit is 0, 1 - x when it is 1
                    flips.append((var, 1.0) if flat_center[t, p] == 0 else (var, -1.0))
            flips_by_step.append(flips)

        def flip_count(flips):
            constant = sum(1 for _, coef in flips if coef < 0)
            return pulp.LpAffineExpression(flips, constant=constant)

        if self.per_step:
            for t, flips in enumerate(flips_by_step):
                if len(flips) > self.k:
                    prob += flip_count(flips) <= self.k, f"{name}_l0_{t}"
        else:
            flips = [f for step in flips_by_step for f in step]
            if len(flips) > self.k:
                prob += flip_count(flips) <= self.k, f"{name}_l0"
        return out

    def describe(self):
        info = super().describe()
        info.update(k=self.k, per_step=self.per_step)
        return info


class DigitalLinfSet(InputSet):
    """Spikes of every image in the clipped l-inf ball around ``image`` under fixed ``rand_maps``.

    ``image [*in]`` in [0, 1]; ``rand_maps [T', *in]``; radius ``eps / 2`` (``convention="paper"``)
    or ``eps`` (``"authors"``). Spike rule ``x_t = 1[xhat' > rand_t]`` as ``refsnn.encoders``.
    """

    def __init__(self, image, eps: float, rand_maps, convention: str = "paper"):
        image = np.asarray(image, dtype=np.float64)
        rand_maps = np.asarray(rand_maps, dtype=np.float64)
        if rand_maps.shape[1:] != image.shape:
            raise ValueError(f"rand_maps {rand_maps.shape} must be [T', *image.shape] with image {image.shape}")
        if not (np.all(np.isfinite(image)) and np.all(np.isfinite(rand_maps))):
            raise ValueError("image and rand_maps must be finite")
        if image.min(initial=0) < 0 or image.max(initial=0) > 1:
            raise ValueError("image values must lie in [0, 1]")
        if convention not in ("paper", "authors"):
            raise ValueError(f"convention must be 'paper' (radius eps/2) or 'authors' (radius eps), got {convention!r}")
        if not np.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite non-negative number, got {eps!r}")
        self.image, self.rand_maps, self.eps, self.convention = image, rand_maps, float(eps), convention
        self.radius = self.eps / 2 if convention == "paper" else self.eps
        self.steps = rand_maps.shape[0]
        self.input_shape = tuple(image.shape)
        self.image_lower = np.clip(image - self.radius, 0.0, 1.0)
        self.image_upper = np.clip(image + self.radius, 0.0, 1.0)
        rand = rand_maps.reshape(self.steps, -1)
        lo, hi = self.image_lower.reshape(-1), self.image_upper.reshape(-1)
        self._always_on = rand < lo[None, :]
        self._free = (rand >= lo[None, :]) & (rand < hi[None, :])
        # Per pixel: the distinct free rand values in increasing order, and each free bit's rank.
        self._levels = []
        self._rank = np.full(rand.shape, -1, dtype=np.int64)
        for p in range(rand.shape[1]):
            times = np.flatnonzero(self._free[:, p])
            values = np.unique(rand[times, p])
            self._levels.append(values)
            if times.size:
                self._rank[times, p] = np.searchsorted(values, rand[times, p])

    def box(self):
        lower = self._always_on.astype(np.uint8).reshape((self.steps,) + self.input_shape)
        upper = (self._always_on | self._free).astype(np.uint8).reshape((self.steps,) + self.input_shape)
        return lower, upper

    def clean(self) -> np.ndarray:
        """Spikes of the unperturbed image ``[T', *in]``."""
        return (self.image[None] > self.rand_maps).astype(np.uint8)

    def _from_levels(self, levels: np.ndarray) -> np.ndarray:
        """``levels [b, n_pixels]`` (number of free rand values below xhat') -> ``[T', b, *in]``."""
        on = self._always_on[None] | (self._free[None] & (self._rank[None] < levels[:, None, :]))
        return on.astype(np.uint8).reshape((levels.shape[0], self.steps) + self.input_shape).swapaxes(0, 1)

    def _levels_of(self, x) -> Optional[np.ndarray]:
        flat = np.asarray(x).reshape(self.steps, -1)
        levels = np.zeros(flat.shape[1], dtype=np.int64)
        for p, values in enumerate(self._levels):
            if values.size:
                on = flat[self._free[:, p], p]
                levels[p] = int(np.unique(self._rank[self._free[:, p], p][on == 1]).size)
        return levels

    def contains(self, x) -> bool:
        x = self._check_member_shape(x)
        if not np.all((x == 0) | (x == 1)):
            return False
        levels = self._levels_of(x)
        return bool(np.array_equal(self._from_levels(levels[None])[:, 0], x.astype(np.uint8)))

    def count(self) -> int:
        return math.prod(values.size + 1 for values in self._levels)

    def enumerate(self, batch: int = 4096):
        ranges = [range(values.size + 1) for values in self._levels]
        chunk = []
        for combo in itertools.product(*ranges):
            chunk.append(combo)
            if len(chunk) == batch:
                yield self._from_levels(np.array(chunk, dtype=np.int64))
                chunk = []
        if chunk:
            yield self._from_levels(np.array(chunk, dtype=np.int64))

    def sample(self, rng, n):
        sizes = np.array([values.size for values in self._levels])
        levels = np.floor(rng.random((n, sizes.size)) * (sizes + 1)).astype(np.int64)
        return self._from_levels(np.minimum(levels, sizes))

    def neighbors(self, x):
        x = self._check_member_shape(x)
        levels = self._levels_of(x)
        candidates = []
        for p, values in enumerate(self._levels):
            for step in (-1, 1):
                if 0 <= levels[p] + step <= values.size:
                    moved = levels.copy()
                    moved[p] += step
                    candidates.append(moved)
        if not candidates:
            return np.zeros((self.steps, 0) + self.input_shape, dtype=np.uint8)
        return self._from_levels(np.stack(candidates))

    def build(self, prob, name):
        out = np.empty((self.steps, self.n_inputs), dtype=object)
        out[:] = self._always_on.astype(int)
        for p, values in enumerate(self._levels):
            level_vars = [_add_binary(prob, f"{name}_y_{p}_{j}") for j in range(values.size)]
            for j in range(1, len(level_vars)):
                prob += level_vars[j] - level_vars[j - 1] <= 0, f"{name}_mono_{p}_{j}"
            for t in np.flatnonzero(self._free[:, p]):
                out[t, p] = level_vars[self._rank[t, p]]
        return out

    def describe(self):
        info = super().describe()
        info.update(eps=self.eps, radius=self.radius, convention=self.convention, members=self.count())
        return info


def sets_from_boxes(x_lower, x_upper) -> list:
    """One ``BoxSet`` per sample from time-major boxes ``[T', B, *in]``."""
    lower = _binary_array(x_lower, "x_lower")
    upper = _binary_array(x_upper, "x_upper")
    if lower.shape != upper.shape:
        raise ValueError(f"x_lower {lower.shape} and x_upper {upper.shape} must have the same shape")
    if lower.ndim < 3:
        raise ValueError(f"boxes are time-major [T', B, *input_shape], got shape {lower.shape}")
    return [BoxSet(lower[:, b], upper[:, b]) for b in range(lower.shape[1])]


def stack_boxes(sets: Sequence[InputSet]) -> Tuple[np.ndarray, np.ndarray]:
    """Enclosing boxes of several sets, time-major ``[T', B, *in]``."""
    boxes = [s.box() for s in sets]
    return np.stack([b[0] for b in boxes], axis=1), np.stack([b[1] for b in boxes], axis=1)


class LevelSet(InputSet):
    """Spike trains decided by integer levels, one per variable, each within a range ``[lo_v, hi_v]``.

    Bit ``(t, i)`` is on when it is always on, or when it belongs to variable ``v`` and its rank is
    below ``v``'s level: the bits of one variable turn on in rank order (equal ranks together), so a
    variable with ``m_v`` ranks has ``m_v + 1`` patterns. ``BoxSet`` is the case of one bit per
    variable (``m_v = 1``), ``DigitalLinfSet`` one variable per pixel (its free rand values in
    increasing order are the ranks). Narrowing a variable's range (``restrict``) gives a subset of
    the same kind, which is how ``verify.bab`` branches: the children of a node partition it.

    ``base [T', *in]`` 0/1 (always-on bits), ``variable [T', *in]`` int (-1: bit fixed by ``base``),
    ``rank [T', *in]`` int, ``n_levels [V]`` (``m_v``), optional ``lo, hi [V]`` (default ``0, m_v``).
    """

    def __init__(self, base, variable, rank, n_levels, lo=None, hi=None):
        base = _binary_array(base, "base")
        variable, rank = np.asarray(variable, np.int64), np.asarray(rank, np.int64)
        n_levels = np.asarray(n_levels, np.int64).reshape(-1)
        if base.ndim < 2 or variable.shape != base.shape or rank.shape != base.shape:
            raise ValueError(f"base, variable and rank must share one shape [T', *in], got {base.shape}, "
                             f"{variable.shape}, {rank.shape}")
        flat_var, flat_rank = variable.reshape(-1), rank.reshape(-1)
        free = flat_var >= 0
        if np.any(flat_var >= n_levels.size) or np.any(base.reshape(-1)[free] != 0):
            raise ValueError("variable indices must lie in [-1, len(n_levels)) and bits of a variable "
                             "must be 0 in base")
        if np.any((flat_rank[free] < 0) | (flat_rank[free] >= n_levels[flat_var[free]])):
            raise ValueError("every rank must lie in [0, n_levels[variable])")
        lo = np.zeros_like(n_levels) if lo is None else np.asarray(lo, np.int64).reshape(-1)
        hi = n_levels.copy() if hi is None else np.asarray(hi, np.int64).reshape(-1)
        if lo.shape != n_levels.shape or hi.shape != n_levels.shape or np.any(lo < 0) or np.any(lo > hi) \
                or np.any(hi > n_levels):
            raise ValueError("level ranges must satisfy 0 <= lo <= hi <= n_levels, one per variable")
        self.base, self.variable, self.rank, self.n_levels = base, variable, rank, n_levels
        self.lo, self.hi = lo, hi
        self.steps = base.shape[0]
        self.input_shape = tuple(base.shape[1:])
        self._flat_var = flat_var
        self._flat_rank = np.where(free, flat_rank, 0)
        self._free_bits = np.flatnonzero(free)

    @classmethod
    def of(cls, input_set: InputSet) -> "LevelSet":
        """The ``LevelSet`` holding exactly the members of a ``BoxSet`` or ``DigitalLinfSet``."""
        if isinstance(input_set, LevelSet):
            return input_set
        if isinstance(input_set, BoxSet):
            lower, upper = input_set.box()
            free = (lower != upper).reshape(-1)
            variable = np.full(free.size, -1, np.int64)
            variable[free] = np.arange(int(free.sum()))
            return cls(lower, variable.reshape(lower.shape), np.zeros(lower.shape, np.int64),
                       np.ones(int(free.sum()), np.int64))
        if isinstance(input_set, DigitalLinfSet):
            shape = (input_set.steps,) + input_set.input_shape
            variable = np.where(input_set._free, np.arange(input_set.n_inputs)[None, :], -1)
            n_levels = np.array([values.size for values in input_set._levels], np.int64)
            return cls(input_set._always_on.astype(np.uint8).reshape(shape), variable.reshape(shape),
                       np.where(input_set._free, input_set._rank, 0).reshape(shape), n_levels)
        raise TypeError(f"no level form for {type(input_set).__name__}; BoxSet and DigitalLinfSet have one")

    def restrict(self, v: int, lo: int, hi: int) -> "LevelSet":
        """The members whose variable ``v`` has a level in ``[lo, hi]`` (inside the current range)."""
        if not self.lo[v] <= lo <= hi <= self.hi[v]:
            raise ValueError(f"range [{lo}, {hi}] of variable {v} is not inside [{self.lo[v]}, {self.hi[v]}]")
        new_lo, new_hi = self.lo.copy(), self.hi.copy()
        new_lo[v], new_hi[v] = lo, hi
        out = object.__new__(LevelSet)
        out.__dict__.update(self.__dict__)
        out.lo, out.hi = new_lo, new_hi
        return out

    @property
    def open_variables(self) -> np.ndarray:
        """Indices of the variables whose level is not fixed (``lo < hi``)."""
        return np.flatnonzero(self.lo < self.hi)

    def open_bits(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(bits, variable, rank)``: the flat positions (in ``[T' * n_in]``) of the bits whose value
        the set leaves open (rank in their variable's ``[lo, hi)``), with their variable and rank."""
        bits = self._free_bits
        var, rank = self._flat_var[bits], self._flat_rank[bits]
        keep = (rank >= self.lo[var]) & (rank < self.hi[var])
        return bits[keep], var[keep], rank[keep]

    def free_bits_per_variable(self) -> np.ndarray:
        """``[V]``: bits of each variable whose value the node leaves open (rank in ``[lo, hi)``)."""
        return np.bincount(self.open_bits()[1], minlength=self.n_levels.size)

    def from_levels(self, levels: np.ndarray) -> np.ndarray:
        """``levels [b, V]`` -> members ``[T', b, *in]``."""
        levels = np.asarray(levels, np.int64)
        flat = np.broadcast_to(self.base.reshape(1, -1), (levels.shape[0], self.base.size)).copy()
        bits = self._free_bits
        flat[:, bits] = (self._flat_rank[bits][None, :] < levels[:, self._flat_var[bits]]).astype(np.uint8)
        return flat.reshape((levels.shape[0],) + self.base.shape).swapaxes(0, 1)

    def levels_of(self, x) -> np.ndarray:
        """``[V]``: the level each variable shows in ``x`` (the highest rank on, plus one)."""
        flat = np.asarray(x).reshape(-1)
        bits = self._free_bits[flat[self._free_bits] == 1]
        levels = np.zeros(self.n_levels.size, np.int64)
        np.maximum.at(levels, self._flat_var[bits], self._flat_rank[bits] + 1)
        return levels

    def box(self):
        lower = self.from_levels(self.lo[None])[:, 0]
        upper = self.from_levels(self.hi[None])[:, 0]
        return lower, upper

    @property
    def n_free(self) -> int:
        return int(self.free_bits_per_variable().sum())

    def contains(self, x) -> bool:
        x = self._check_member_shape(x)
        if not np.all((x == 0) | (x == 1)):
            return False
        levels = self.levels_of(x)
        if np.any(levels < self.lo) or np.any(levels > self.hi):
            return False
        return bool(np.array_equal(self.from_levels(levels[None])[:, 0], x.astype(np.uint8)))

    def count(self) -> int:
        return math.prod(int(h - l + 1) for l, h in zip(self.lo, self.hi))

    def enumerate(self, batch: int = 4096):
        open_vars = self.open_variables
        sizes = (self.hi - self.lo + 1)[open_vars]
        total = self.count()
        for start in range(0, total, batch):
            codes = np.arange(start, min(total, start + batch), dtype=object if total >= 2 ** 62 else np.int64)
            levels = np.broadcast_to(self.lo, (len(codes), self.lo.size)).copy()
            for v, size in zip(open_vars, sizes):
                levels[:, v] += np.asarray(codes % int(size), np.int64)
                codes = codes // int(size)
            yield self.from_levels(levels)

    def sample(self, rng, n):
        levels = self.lo[None, :] + np.floor(rng.random((n, self.lo.size)) * (self.hi - self.lo + 1)).astype(np.int64)
        return self.from_levels(np.minimum(levels, self.hi[None, :]))

    def neighbors(self, x):
        x = self._check_member_shape(x)
        levels = self.levels_of(x)
        moves = []
        for v in self.open_variables:
            for step in (-1, 1):
                if self.lo[v] <= levels[v] + step <= self.hi[v]:
                    moved = levels.copy()
                    moved[v] += step
                    moves.append(moved)
        if not moves:
            return np.zeros((self.steps, 0) + self.input_shape, dtype=np.uint8)
        return self.from_levels(np.stack(moves))

    def build(self, prob, name):
        flat_var, flat_rank = self._flat_var.reshape(self.steps, -1), self._flat_rank.reshape(self.steps, -1)
        out = np.empty(flat_var.shape, dtype=object)
        out[:] = self.from_levels(self.lo[None])[:, 0].reshape(self.steps, -1).astype(int)
        level_vars = {}
        for v in self.open_variables:
            # y_j = 1[level > j] for j in [lo, hi): a monotone chain, exact for the range
            chain = [_add_binary(prob, f"{name}_y_{v}_{j}") for j in range(self.lo[v], self.hi[v])]
            for j in range(1, len(chain)):
                prob += chain[j] - chain[j - 1] <= 0, f"{name}_mono_{v}_{j}"
            level_vars[int(v)] = chain
        for t, i in zip(*np.nonzero(flat_var >= 0)):
            v, r = int(flat_var[t, i]), int(flat_rank[t, i])
            if v in level_vars and self.lo[v] <= r < self.hi[v]:
                out[t, i] = level_vars[v][r - self.lo[v]]
        return out

    def describe(self):
        info = super().describe()
        info.update(variables=int(self.n_levels.size), open_variables=int(self.open_variables.size),
                    members=self.count())
        return info
