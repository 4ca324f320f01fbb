"""refsnn vs a plain PyTorch CPU implementation of the same LIF network: same outputs, then timings.

Runs in a SEPARATE environment with torch (never a dependency of refsnn)::

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0 numpy scipy numba h5py \\
        pulp highspy hypothesis tqdm && .venv-torch/bin/pip install -e . --no-deps
    .venv-torch/bin/python benchmarks/compare_torch.py --threads 1 [--repeats 5] [--out runs/perf-1.md]
    .venv-torch/bin/python benchmarks/compare_torch.py --combine runs/perf-2.json runs/perf-1.json --out results/perf.md

The PyTorch side is written the usual way: ``F.linear`` / ``F.conv2d`` / ``F.avg_pool2d`` per time
step, the LIF recurrence in a Python loop over T, a ``torch.autograd.Function`` for the spike with
the rectangular surrogate (|m - th| < 1/2, the default of refsnn), autograd BPTT through the reset
(refsnn's ``reset_grad=True``); S-IBP with ``W+``/``W-`` per time step. Both get the weights of
``refsnn.architectures.build_network`` (float32) and the same rate-coded MNIST spikes. Checks:
identical spikes/rates, parameter gradients within float32 tolerance, identical S-IBP output-rate
bounds (up to refsnn's outward rounding). Then the median of ``--repeats`` runs of each row, with
``torch.set_num_threads`` = OpenBLAS/Numba threads = ``--threads``.
"""
from __future__ import annotations

import argparse
import os
import sys


def _threads_from_argv(argv) -> int:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 1


THREADS = _threads_from_argv(sys.argv[1:])
for _variable in ("REFSNN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "NUMBA_NUM_THREADS"):
    os.environ[_variable] = str(THREADS)  # before numpy / numba / torch / refsnn are imported

import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refsnn.architectures import build_network  # noqa: E402
from refsnn.bounds import compute_bounds, margin_spec  # noqa: E402
from refsnn.data import load_dataset  # noqa: E402
from refsnn.encoders import rate_encode  # noqa: E402
from refsnn.ibp import interval_bounds  # noqa: E402
from refsnn.input_sets import digital_linf_set  # noqa: E402
from refsnn.layers import AvgPool2d, Conv2d, Flatten, Linear  # noqa: E402


class SpikeFn(torch.autograd.Function):
    """Heaviside ``1[m >= th]`` forward, rectangular surrogate ``1[|m - th| < 1/2]`` backward."""

    @staticmethod
    def forward(ctx, membrane, threshold):
        ctx.save_for_backward(membrane)
        ctx.threshold = threshold
        return (membrane >= threshold).to(membrane.dtype)

    @staticmethod
    def backward(ctx, grad):
        (membrane,) = ctx.saved_tensors
        return grad * ((membrane - ctx.threshold).abs() < 0.5).to(grad.dtype), None


class TorchSNN:
    """The refsnn network's weights as torch tensors; LIF after every Linear/Conv2d."""

    def __init__(self, net):
        self.threshold, self.decay = net.threshold, net.decay
        self.ops, self.params = [], []
        for layer in net.layers:
            if isinstance(layer, Linear):
                w = torch.tensor(layer.weight, requires_grad=True)
                b = torch.tensor(layer.bias, requires_grad=True)
                self.ops.append(("linear", w, b))
                self.params += [w, b]
            elif isinstance(layer, Conv2d):
                w = torch.tensor(layer.weight, requires_grad=True)
                b = torch.tensor(layer.bias, requires_grad=True)
                self.ops.append(("conv", w, b, layer.stride, layer.padding))
                self.params += [w, b]
            elif isinstance(layer, AvgPool2d):
                self.ops.append(("pool", layer.kernel_size))
            elif isinstance(layer, Flatten):
                self.ops.append(("flatten",))

    def stages(self):
        stage = []
        for op in self.ops:
            stage.append(op)
            if op[0] in ("linear", "conv"):
                yield stage
                stage = []

    @staticmethod
    def apply(op, x, weight=None):
        if op[0] == "linear":
            return F.linear(x, op[1] if weight is None else weight, op[2] if weight is None else None)
        if op[0] == "conv":
            return F.conv2d(x, op[1] if weight is None else weight, op[2] if weight is None else None,
                            stride=op[3], padding=op[4])
        if op[0] == "pool":
            return F.avg_pool2d(x, op[1])
        return x.flatten(1)

    def interval(self, op, lower, upper):
        """Eq. 11 through one spatial op: W+ / W- on the bounds plus the bias (monotone ops as they are)."""
        if op[0] not in ("linear", "conv"):
            return self.apply(op, lower), self.apply(op, upper)
        w_pos, w_neg = op[1].clamp(min=0), op[1].clamp(max=0)
        new_lower = self.apply(op, lower, w_pos) + self.apply(op, upper, w_neg)
        new_upper = self.apply(op, upper, w_pos) + self.apply(op, lower, w_neg)
        bias = op[2].reshape((1, -1) + (1,) * (new_lower.dim() - 2))
        return new_lower + bias, new_upper + bias

    def forward(self, spikes):
        """``spikes [T, B, *in]`` -> mean output rates ``[B, n_out]`` (time loop per stage, like refsnn)."""
        steps, batch = spikes.shape[:2]
        activation = spikes.reshape((steps * batch,) + tuple(spikes.shape[2:]))
        for stage in self.stages():
            for op in stage:
                activation = self.apply(op, activation)
            current = activation.reshape((steps, batch) + tuple(activation.shape[1:]))
            carried = torch.zeros_like(current[0])
            out = []
            for t in range(steps):
                membrane = current[t] + carried
                spike = SpikeFn.apply(membrane, self.threshold)
                carried = self.decay * membrane * (1.0 - spike)
                out.append(spike)
            activation = torch.stack(out).reshape((steps * batch,) + tuple(current.shape[2:]))
        return activation.reshape((steps, batch, -1)).mean(0)

    @torch.no_grad()
    def ibp(self, x_lower, x_upper):
        """S-IBP (eqs. 7, 9, 11) the usual tensor way: output-rate bounds ``[B, n_out]``."""
        steps, batch = x_lower.shape[:2]
        lower = x_lower.reshape((steps * batch,) + tuple(x_lower.shape[2:]))
        upper = x_upper.reshape((steps * batch,) + tuple(x_upper.shape[2:]))
        th, alpha = self.threshold, self.decay
        for stage in self.stages():
            for op in stage:
                lower, upper = self.interval(op, lower, upper)
            shape = (steps, batch) + tuple(lower.shape[1:])
            cur_lower, cur_upper = lower.reshape(shape), upper.reshape(shape)
            z_lower = torch.zeros_like(cur_lower[0])
            z_upper = torch.zeros_like(cur_upper[0])
            s_lower, s_upper = [], []
            for t in range(steps):
                m_lower = cur_lower[t] + alpha * z_lower
                m_upper = cur_upper[t] + alpha * z_upper
                fires_low = (m_lower >= th).to(m_lower.dtype)
                fires_up = (m_upper >= th).to(m_upper.dtype)
                silent = fires_up == 0
                firing = fires_low == 1
                z_lower = torch.where(silent, m_lower, torch.where(firing, 0.0, torch.clamp(m_lower, max=0.0)))
                z_upper = torch.where(silent, m_upper, torch.where(firing, 0.0, torch.full_like(m_upper, th)))
                s_lower.append(fires_low)
                s_upper.append(fires_up)
            lower = torch.stack(s_lower).reshape((steps * batch,) + tuple(shape[2:]))
            upper = torch.stack(s_upper).reshape((steps * batch,) + tuple(shape[2:]))
        return lower.reshape(steps, batch, -1).mean(0), upper.reshape(steps, batch, -1).mean(0)

    # --- training bounds: S-IBP + S-CROWN with autograd (the rules of refsnn.robust, no rounding) ---
    def transpose(self, op, coef, in_shape):
        """Adjoint of one spatial op: ``coef [N, *out] -> [N, *in]`` (``in_shape`` per sample)."""
        if op[0] == "linear":
            return coef @ op[1]
        if op[0] == "conv":
            stride, padding = tuple(op[3]), tuple(op[4])
            kernel = tuple(op[1].shape[-2:])
            extra = tuple(size - ((o - 1) * st - 2 * p + k)
                          for size, o, st, p, k in zip(in_shape[-2:], coef.shape[-2:], stride, padding, kernel))
            return F.conv_transpose2d(coef, op[1], stride=stride, padding=padding, output_padding=extra)
        if op[0] == "pool":
            return F.interpolate(coef, scale_factor=op[1], mode="nearest") / (op[1] * op[1])
        return coef.reshape((coef.shape[0],) + tuple(in_shape))

    def training_bounds(self, x_lower, x_upper, C, with_crown=True):
        """Lower bounds of ``C f`` (``C [B, S, n_out]``): ``(ibp [B, S], crown [B, S] or None)``.

        S-IBP with ``W+``/``W-``, spikes through ``SpikeFn`` (surrogate gradient, as refsnn.robust);
        S-CROWN by back-substitution through layers and time: per stage, ``t = T'-1 .. 0``, reset
        (eq. 10) then fire (eq. 8) vectorized over ``[B, S, n]``, then the ops' adjoint
        (``lam @ W``, ``conv_transpose2d``). Every discrete choice comes from the values; autograd
        differentiates the rest (slopes, intercepts, membrane bounds, weights).
        """
        steps, batch = x_lower.shape[:2]
        th, alpha = self.threshold, self.decay
        lower = x_lower.reshape((steps * batch,) + tuple(x_lower.shape[2:]))
        upper = x_upper.reshape((steps * batch,) + tuple(x_upper.shape[2:]))
        records = []
        for stage in self.stages():
            in_shapes = []
            for op in stage:
                in_shapes.append(tuple(lower.shape[1:]))
                lower, upper = self.interval(op, lower, upper)
            neuron_shape = tuple(lower.shape[1:])
            cur_lower = lower.reshape(steps, batch, -1)
            cur_upper = upper.reshape(steps, batch, -1)
            z_lower = torch.zeros_like(cur_lower[0])
            z_upper = torch.zeros_like(cur_upper[0])
            m_lo, m_up, s_lo, s_hi = [], [], [], []
            for t in range(steps):
                m_lower = cur_lower[t] + alpha * z_lower
                m_upper = cur_upper[t] + alpha * z_upper
                fires_low = SpikeFn.apply(m_lower, th)
                fires_up = SpikeFn.apply(m_upper, th)
                silent = m_upper < th
                firing = m_lower >= th
                z_lower = torch.where(silent, m_lower, torch.where(firing, 0.0, torch.clamp(m_lower, max=0.0)))
                z_upper = torch.where(silent, m_upper, torch.where(firing, 0.0, torch.full_like(m_upper, th)))
                m_lo.append(m_lower)
                m_up.append(m_upper)
                s_lo.append(fires_low)
                s_hi.append(fires_up)
            records.append(dict(stage=stage, in_shapes=in_shapes, neuron_shape=neuron_shape,
                                mem_lower=torch.stack(m_lo), mem_upper=torch.stack(m_up)))
            lower = torch.stack(s_lo).reshape((steps * batch,) + neuron_shape)
            upper = torch.stack(s_hi).reshape((steps * batch,) + neuron_shape)
        rate_lower = lower.reshape(steps, batch, -1).mean(0)
        rate_upper = upper.reshape(steps, batch, -1).mean(0)
        ibp = (torch.einsum("bsn,bn->bs", C.clamp(min=0), rate_lower)
               + torch.einsum("bsn,bn->bs", C.clamp(max=0), rate_upper))
        if not with_crown:
            return ibp, None
        rows = C.shape[1]
        lam_s = (C / steps).unsqueeze(0).expand(steps, batch, rows, C.shape[2])
        bias_total = torch.zeros(batch, rows, dtype=C.dtype)
        for record in reversed(records):
            m_l, m_u = record["mem_lower"], record["mem_upper"]   # [T', B, n]
            n = m_l.shape[-1]
            on = m_l >= th
            off = m_u < th
            unstable = ~(on | off)
            upper_case = unstable & ((m_u - th) < (th - m_l))
            upper_chord = upper_case & (th - m_l > 0)
            lower_chord = unstable & ~upper_case & (m_u - th > 0)
            inv_up = torch.where(upper_chord, 1.0 / torch.where(upper_chord, th - m_l, torch.ones_like(m_l)), 0.0)
            inv_lo = torch.where(lower_chord, 1.0 / torch.where(lower_chord, m_u - th, torch.ones_like(m_u)), 0.0)
            on_f = on.to(C.dtype)
            slope_up, icpt_up = inv_up, torch.where(upper_chord, -m_l * inv_up, on_f + unstable.to(C.dtype))
            slope_lo, icpt_lo = inv_lo, torch.where(lower_chord, -th * inv_lo, on_f)
            affine = record["stage"][-1]
            bias_vec = affine[2].reshape(-1, *([1] * (len(record["neuron_shape"]) - 1))).expand(
                record["neuron_shape"]).reshape(-1)
            carry = torch.zeros(batch, rows, n, dtype=C.dtype)
            lam_cur = [None] * steps
            for t in range(steps - 1, -1, -1):
                ls, lz = lam_s[t], carry
                st_on, st_off, st_un = on[t][:, None], off[t][:, None], unstable[t][:, None]
                r = torch.where(lz >= 0, m_l[t][:, None], torch.full_like(lz, th))        # eq. 10
                rz = torch.where(st_un, lz * r, 0.0)
                ls2 = ls - rz
                positive = ls2 >= 0                                                     # eq. 8
                a = torch.where(positive, slope_lo[t][:, None], slope_up[t][:, None])
                c = torch.where(positive, icpt_lo[t][:, None], icpt_up[t][:, None])
                lm = torch.where(st_off, lz, torch.where(st_on, 0.0, ls2 * a))
                bias_total = bias_total + (torch.where(st_on, ls, 0.0) + rz
                                           + torch.where(st_un, ls2 * c, 0.0)).sum(-1) + lm @ bias_vec
                lam_cur[t] = lm
                carry = alpha * lm
            coef = torch.stack(lam_cur).reshape((steps * batch * rows,) + record["neuron_shape"])
            for op, in_shape in zip(reversed(record["stage"]), reversed(record["in_shapes"])):
                coef = self.transpose(op, coef, in_shape)
            lam_s = coef.reshape(steps, batch, rows, -1)
        mid = ((x_lower + x_upper) * 0.5).reshape(steps, batch, 1, -1)
        rad = ((x_upper - x_lower) * 0.5).reshape(steps, batch, 1, -1)
        crown = (lam_s * mid - lam_s.abs() * rad).sum(dim=(0, 3)) + bias_total
        return ibp, crown

    def robust_step(self, spikes, labels, x_lower, x_upper, C, kappa, beta, temperature):
        """One CROWN-IBP training step of refsnn.robust.robust_loss with autograd: loss, grads in place."""
        for p in self.params:
            p.grad = None
        rates = self.forward(spikes)
        natural = F.cross_entropy(rates, labels)
        ibp, crown = self.training_bounds(x_lower, x_upper, C, with_crown=beta > 0)
        lower = (1.0 - beta) * ibp + (beta * crown if beta > 0 else 0.0)
        n_out = C.shape[2]
        others = torch.tensor([[j for j in range(n_out) if j != y] for y in range(n_out)])[labels]
        logits = torch.zeros(len(labels), n_out, dtype=lower.dtype).scatter(1, others, -temperature * lower)
        loss = kappa * natural + (1.0 - kappa) * F.cross_entropy(logits, labels)
        loss.backward()
        return loss.detach(), lower.detach()


NOTES = """## Notes

- Every row has a PyTorch counterpart written the usual tensor way (see the module docstring).
  Rows marked "sound float64" time refsnn's certified bounds (`refsnn.ibp`, `refsnn.crown`:
  float64, every current and membrane interval widened by its outward rounding margin, S-CROWN
  accumulating a bound on its own rounding, the exact real-number chord case, every intermediate
  kept) against the PyTorch float32 pass without rounding: not like for like, the price of a
  certificate. Rows marked "training float32" time `refsnn.robust` (the bounds robust training
  differentiates: same relaxations, network dtype, no margins) against the same PyTorch pass.
- S-CROWN "lower+upper": `compute_bounds(..., method="crown-ibp")` returns both bounds (2 x 9
  specification rows); the PyTorch pass gets the same 18 rows. "lower": the 9 margin rows
  e_y - e_j that the training loss uses, on both sides.
- Checks: `crown_training_*` compare PyTorch S-CROWN with `refsnn.robust.BoundGraph` (same rules,
  float32); `robust_*` compare the whole CROWN-IBP step (loss, bounds, parameter gradients from
  autograd vs refsnn's hand-written reverse pass); `crown_sound_minus_torch_*` is informational:
  the sound bounds decide the chord case exactly and use th_lo/th_hi and margins, so they are
  neither always above nor always below the float32 training bounds. `robust_natural_*`: the
  natural part's rates on the robust step's spikes; a membrane within float32 rounding of the
  threshold can spike in one implementation and not in the other (different summation order),
  which moves that part of the loss and gradients, so the bound part (kappa = 0) is compared
  on its own as well (`robust_bound_part_*`).
- Event-driven kernels are chosen per layer and call by the measured density crossovers
  (refsnn/kernels.py, results/perf/kernels.json): rate-coded MNIST input (density about 0.125)
  takes the event-driven Linear in the 784x512 layer and the event-driven Conv2d in both
  convolutions (input densities about 0.16); other layers use BLAS. The sound bounds use the
  same layers in float64, so their convolutions also go event-driven on sparse boxes.
- Certificates: whatever dtype a model is trained in, every certificate refsnn reports
  (`python -m refsnn.certify`, the per-epoch certified errors of robust training) is computed
  with the float64 outward-rounded bounds, never with the float32 training bounds
  (docs/BOUNDS.md, "Training bounds (float32) and certificates (float64)").
- Where the time goes in the sound rows: S-IBP computes W mid, |W| rad and the rounding
  magnitude |W| u in float64. On sparse spike bounds (the input box, the first convolution's
  spikes) it sums only the weight rows [W.T | |W|.T] of the set bits, read in float32 and
  widened exactly, with the margin applied in the same pass (`refsnn/ibp.py: _binary_current`,
  rows in parallel); dense bounds take two float64 GEMMs, one single-threaded GEMM per thread.
  The time recurrence runs in parallel over samples. Every intermediate bound is kept (about
  eight [T', B, n] float64 arrays per stage; the spike bounds and current margins are made from
  the state and magnitude only when read), against PyTorch's four float32 products per layer.
  S-CROWN's cost is the float64 adjoint products (lam W through layers and time), the fused
  per-stage relaxation kernel and the first-layer concretization over the free input bits only.
- One shared 2-core VM under load from other jobs: expect +-20% between runs.
"""


LOAD_AT_START: list = []
ROW_FILTER: list = []  # --rows: substrings of the row names to time (empty: every row)


def wanted(name: str) -> bool:
    """Whether the row ``name`` is timed in this run (``--rows``)."""
    return not ROW_FILTER or any(part in name for part in ROW_FILTER)


class Timing(float):
    """A median time in seconds that keeps the individual runs (``samples``) for the JSON."""

    samples: list


def median_time(fn, repeats):
    """Median of ``repeats`` timed calls after one warm-up call (seconds, with the samples)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    median = Timing(float(np.median(times)))
    median.samples = times
    return median


def check_and_time(arch, images, labels, batch, repeats, rows, checks):
    net = build_network(arch, (1, 28, 28), seed=0, dtype=np.float32)
    tnet = TorchSNN(net)
    spikes, rand_maps = rate_encode(images[:batch], 10, np.random.default_rng(batch))
    spikes_f = spikes.astype(np.float32)
    x_torch = torch.from_numpy(spikes_f)
    grad_rates = np.random.default_rng(1).normal(size=(batch, 10)).astype(np.float32)

    # --- same outputs and gradients ---
    trace = net.run(spikes)
    grads, _ = net.backward(trace, grad_rates)
    rates_t = tnet.forward(x_torch)
    (rates_t * torch.from_numpy(grad_rates)).sum().backward()
    rate_diff = float(np.abs(rates_t.detach().numpy() - trace.rates).max())
    grad_rel = max(float(np.abs(p.grad.numpy() - g).max() / (np.abs(g).max() + 1e-30))
                   for p, g in zip(tnet.params, grads))
    checks.append({"arch": arch, "batch": batch, "max_rate_difference": rate_diff,
                   "max_relative_gradient_difference": grad_rel})
    print(checks[-1], flush=True)

    def torch_forward():
        with torch.no_grad():
            tnet.forward(x_torch)

    def torch_step():
        for p in tnet.params:
            p.grad = None
        (tnet.forward(x_torch) * torch.from_numpy(grad_rates)).sum().backward()

    def refsnn_step():
        net.backward(net.run(spikes), grad_rates, input_grad=False)  # as training (torch: no input grad)

    forward_t10 = None
    if wanted("forward"):
        forward_t10 = median_time(lambda: net.run(spikes), repeats)
        rows.append(("forward", arch, batch, 10, forward_t10, median_time(torch_forward, repeats)))
        print(rows[-1], flush=True)
    if wanted("BPTT step (forward + backward)"):
        rows.append(("BPTT step (forward + backward)", arch, batch, 10, median_time(refsnn_step, repeats),
                     median_time(torch_step, repeats)))
        print(rows[-1], flush=True)
    return net, tnet, forward_t10


def bounds_rows(arch, net, tnet, images, labels, batch, repeats, rows, checks, forward_t10):
    from refsnn.robust import BoundGraph

    rand_maps = np.random.default_rng(7).random((3, batch, 1, 28, 28))
    box = digital_linf_set(images[:batch], 0.12, rand_maps, convention="paper")
    lower_t = torch.from_numpy(box.x_lower.astype(np.float32))
    upper_t = torch.from_numpy(box.x_upper.astype(np.float32))
    C = margin_spec(labels[:batch], 10)
    C32 = C.astype(np.float32)
    C_t = torch.from_numpy(C32)
    ours = interval_bounds(net, box.x_lower, box.x_upper)
    theirs_lower, theirs_upper = tnet.ibp(lower_t, upper_t)
    agree = float(np.mean((theirs_lower.numpy() == ours.rate_lower) & (theirs_upper.numpy() == ours.rate_upper)))

    C_both_t = torch.cat([C_t, -C_t], dim=1)  # lower and upper bound of C f, as compute_bounds returns

    def torch_bounds(with_crown, spec=C_t):
        with torch.no_grad():
            return tnet.training_bounds(lower_t, upper_t, spec, with_crown=with_crown)

    # S-CROWN: PyTorch vs refsnn's float32 training bounds (same rules, no rounding margins) and vs
    # the sound float64 bounds (outward rounded: never above the training value beyond float32 noise).
    ibp_t, crown_t = torch_bounds(True)
    graph = BoundGraph(net, box.x_lower, box.x_upper, C32)
    sound_lower, _ = compute_bounds(net, box.x_lower, box.x_upper, method="crown-ibp", C=C)
    crown_t = crown_t.numpy().astype(np.float64)
    scale = max(1.0, float(np.abs(crown_t).max()))
    checks.append({"arch": arch, "batch": batch, "ibp_rate_bounds_identical_fraction": agree,
                   "ibp_training_max_abs_difference": float(np.abs(ibp_t.numpy() - graph.ibp_lower).max()),
                   "crown_training_max_abs_difference": float(np.abs(crown_t - graph.crown_lower).max()),
                   "crown_training_max_relative_difference": float(np.abs(crown_t - graph.crown_lower).max() / scale),
                   "crown_sound_minus_torch_max": float((sound_lower - crown_t).max()),
                   "crown_sound_minus_torch_median": float(np.median(sound_lower - crown_t))})
    print(checks[-1], flush=True)
    if wanted("S-IBP T'=3, sound float64 (refsnn.ibp)"):
        rows.append(("S-IBP T'=3, sound float64 (refsnn.ibp)", arch, batch, 3,
                     median_time(lambda: interval_bounds(net, box.x_lower, box.x_upper), repeats),
                     median_time(lambda: tnet.ibp(lower_t, upper_t), repeats)))
        print(rows[-1], flush=True)
    if wanted("S-IBP T'=3, training float32 (refsnn.robust)"):
        rows.append(("S-IBP T'=3, training float32 (refsnn.robust)", arch, batch, 3,
                     median_time(lambda: BoundGraph(net, box.x_lower, box.x_upper, C32, with_crown=False), repeats),
                     median_time(lambda: torch_bounds(False), repeats)))
        print(rows[-1], flush=True)
    ratios = {}
    if wanted("S-CROWN T'=3 lower+upper, sound float64 (refsnn.crown)"):
        torch_both_s = median_time(lambda: torch_bounds(True, C_both_t), repeats)
        crown_s = median_time(lambda: compute_bounds(net, box.x_lower, box.x_upper, method="crown-ibp", C=C),
                              repeats)
        rows.append(("S-CROWN T'=3 lower+upper, sound float64 (refsnn.crown)", arch, batch, 3, crown_s,
                     torch_both_s))
        print(rows[-1], flush=True)
        if forward_t10 is not None:
            ratios["sound float64"] = crown_s / forward_t10
    if wanted("S-CROWN T'=3 lower, training float32 (refsnn.robust)"):
        torch_crown_s = median_time(lambda: torch_bounds(True), repeats)
        train_s = median_time(lambda: BoundGraph(net, box.x_lower, box.x_upper, C32), repeats)
        rows.append(("S-CROWN T'=3 lower, training float32 (refsnn.robust)", arch, batch, 3, train_s,
                     torch_crown_s))
        print(rows[-1], flush=True)
        if forward_t10 is not None:
            ratios["training float32"] = train_s / forward_t10
    print("S-CROWN time / forward at T=10:", ratios, flush=True)
    return ratios


def robust_step_row(arch, net, tnet, images, labels, batch, repeats, rows, checks):
    from refsnn.robust import robust_loss

    spikes, rand_maps = rate_encode(images[:batch], 10, np.random.default_rng(3))
    box = digital_linf_set(images[:batch], 0.12, rand_maps[:3], convention="paper")
    spikes_t = torch.from_numpy(spikes.astype(np.float32))
    lower_t = torch.from_numpy(box.x_lower.astype(np.float32))
    upper_t = torch.from_numpy(box.x_upper.astype(np.float32))
    labels_t = torch.from_numpy(np.asarray(labels[:batch], dtype=np.int64))
    C_t = torch.from_numpy(margin_spec(labels[:batch], 10).astype(np.float32))
    settings = dict(kappa=0.5, beta=1.0, temperature=1.0)

    def step():
        return robust_loss(net, spikes, labels[:batch], box.x_lower, box.x_upper, **settings)

    def torch_step():
        return tnet.robust_step(spikes_t, labels_t, lower_t, upper_t, C_t, **settings)

    def compare(kappa):
        ours = robust_loss(net, spikes, labels[:batch], box.x_lower, box.x_upper, **{**settings, "kappa": kappa})
        loss_t, lower_t_value = tnet.robust_step(spikes_t, labels_t, lower_t, upper_t, C_t,
                                                 **{**settings, "kappa": kappa})
        grad_rel = max(float(np.abs(p.grad.numpy() - g).max() / (np.abs(g).max() + 1e-30))
                       for p, g in zip(tnet.params, ours.grads))
        return (abs(float(loss_t) - ours.loss), float(np.abs(lower_t_value.numpy() - ours.margin_lower).max()),
                grad_rel, float(np.abs(tnet.forward(spikes_t).detach().numpy() - ours.rates).max()))

    loss_diff, bound_diff, grad_rel, rate_diff = compare(settings["kappa"])
    bound_loss_diff, _, bound_grad_rel, _ = compare(0.0)
    checks.append({"arch": arch, "batch": batch, "robust_loss_difference": loss_diff,
                   "robust_bound_max_abs_difference": bound_diff,
                   "robust_max_relative_gradient_difference": grad_rel,
                   "robust_natural_max_rate_difference": rate_diff,
                   "robust_bound_part_loss_difference": bound_loss_diff,
                   "robust_bound_part_max_relative_gradient_difference": bound_grad_rel})
    print(checks[-1], flush=True)
    rows.append(("robust-training step (CROWN-IBP loss + gradients, float32)", arch, batch, 10,
                 median_time(step, repeats), median_time(torch_step, repeats)))
    print(rows[-1], flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch, OpenBLAS and Numba threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--archs", default="fc,conv")
    parser.add_argument("--rows", action="append", default=[], metavar="TEXT",
                        help="time only the rows whose name contains TEXT (repeatable, e.g. --rows \"S-IBP T'=3, "
                             "sound\"; default: every row; the same-output checks run anyway)")
    parser.add_argument("--out", default="runs/perf.md", help="report (.md) and .json beside it (default runs/)")
    parser.add_argument("--combine", nargs=2, metavar=("BOTH_CORES_JSON", "ONE_CORE_JSON"),
                        help="no timing: write one table with both-core and one-core columns from two reports")
    args = parser.parse_args(argv)
    if args.combine:
        combine_reports(*args.combine, args.out)
        return
    torch.set_num_threads(args.threads)
    ROW_FILTER[:] = [part for part in args.rows if part]
    LOAD_AT_START[:] = os.getloadavg()
    started = time.time()
    images, labels = load_dataset("mnist-subset", "test")
    images = images.astype(np.float64)
    rows, checks, crown_ratio = [], [], {}
    batches = [int(b) for b in args.batches.split(",")]
    for arch in args.archs.split(","):
        for batch in batches:
            repeats = args.repeats if arch == "fc" else max(3, args.repeats // 2)
            net, tnet, forward_t10 = check_and_time(arch, images, labels, batch, repeats, rows, checks)
            if batch == batches[0]:
                crown_ratio[arch] = bounds_rows(arch, net, tnet, images, labels, batch, repeats, rows, checks,
                                                forward_t10)
                if wanted("robust-training step (CROWN-IBP loss + gradients, float32)"):
                    robust_step_row(arch, net, tnet, images, labels, batch, max(3, repeats // 2), rows, checks)
    write_report(args, rows, checks, crown_ratio, time.time() - started)


def write_report(args, rows, checks, crown_ratio, seconds):
    command = ".venv-torch/bin/python benchmarks/compare_torch.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = ["# refsnn vs plain PyTorch CPU", "",
             f"Command: `{command}` ({seconds:.0f} s)", "",
             f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores (shared VM, other jobs running), numpy {np.__version__}, torch {torch.__version__}. "
             f"Threads: torch.set_num_threads({args.threads}), REFSNN/OPENBLAS/OMP/MKL/NUMBA_NUM_THREADS={THREADS}. "
             f"Load average (1, 5, 15 min) at the start: {', '.join(f'{v:.2f}' for v in LOAD_AT_START)}, "
             f"at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}.", "",
             f"Medians of {args.repeats} runs (FC) and {max(3, args.repeats // 2)} (CONV, robust step), float32, "
             "rate-coded embedded MNIST test images, weights of `refsnn.architectures.build_network(arch, (1, 28, 28), seed=0)`. "
             "Ratio = PyTorch time / refsnn time (> 1: refsnn faster).", "",
             "| row | arch | batch | T | refsnn (ms) | PyTorch (ms) | ratio |", "|---|---|---|---|---|---|---|"]
    for name, arch, batch, steps, ours, theirs in rows:
        ratio = f"{theirs / ours:.2f}" if theirs is not None else "-"
        theirs_text = f"{1e3 * theirs:.1f}" if theirs is not None else "not implemented"
        lines.append(f"| {name} | {arch} | {batch} | {steps} | {1e3 * ours:.1f} | {theirs_text} | {ratio} |")
    lines += ["", "## Same outputs", "", "| check | value |", "|---|---|"]
    for check in checks:
        key = ", ".join(f"{k}={v}" for k, v in check.items() if k in ("arch", "batch"))
        for k, v in check.items():
            if k not in ("arch", "batch"):
                lines.append(f"| {key}: {k} | {v:.3g} |")
    lines += ["", "## Targets", ""]
    compared = [(name, arch, batch, ours, theirs) for name, arch, batch, _, ours, theirs in rows if theirs is not None]
    for name, arch, batch, ours, theirs in compared:
        verdict = "met" if ours <= theirs else "NOT met"
        lines.append(f"- refsnn at least as fast as PyTorch, {name} {arch} batch {batch}: {verdict} "
                     f"({theirs / ours:.2f}x)")
    for name, arch, batch, ours, theirs in compared:
        if arch == "fc" and name.startswith(("forward", "BPTT")):
            verdict = "met" if 2 * ours <= theirs else "NOT met"
            lines.append(f"- stretch 2x, {name} fc batch {batch}: {verdict} ({theirs / ours:.2f}x)")
    for arch, ratios in crown_ratio.items():
        for label, ratio in ratios.items():
            verdict = "met" if ratio <= 10 else "NOT met"
            lines.append(f"- S-CROWN T'=3 ({label}) within 10x of one forward at T=10 ({arch}, batch "
                         f"{args.batches.split(',')[0]}): {verdict} ({ratio:.1f}x)")
    lines += ["", NOTES]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    json_rows = [{"row": name, "arch": arch, "batch": batch, "T": steps,
                  "refsnn_median_s": float(ours), "refsnn_runs_s": list(getattr(ours, "samples", [])),
                  "torch_median_s": None if theirs is None else float(theirs),
                  "torch_runs_s": None if theirs is None else list(getattr(theirs, "samples", [])),
                  "ratio_torch_over_refsnn": None if theirs is None else float(theirs) / float(ours)}
                 for name, arch, batch, steps, ours, theirs in rows]
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"command": command, "seconds": seconds, "threads": args.threads, "repeats_fc": args.repeats,
         "repeats_conv_and_robust_step": max(3, args.repeats // 2),
         "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "numpy": np.__version__, "torch": torch.__version__,
                     "note": "shared VM, other jobs running"},
         "load_average_at_start": list(LOAD_AT_START), "load_average_at_end": list(os.getloadavg()), "rows": json_rows, "checks": checks,
         "crown_ratio_to_forward_T10": crown_ratio}, indent=2) + "\n")
    print(text)


def combine_reports(both_path: str, one_path: str, out: str) -> None:
    """One markdown table: each row's refsnn/PyTorch times and ratio at 2 threads and at 1 thread."""
    both, one = (json.loads(Path(path).read_text()) for path in (both_path, one_path))
    single = {(r["row"], r["arch"], r["batch"]): r for r in one["rows"]}

    def cells(row):
        if row is None:
            return "- | - | -"
        theirs = row["torch_median_s"]
        return (f"{1e3 * row['refsnn_median_s']:.1f} | " + ("-" if theirs is None else f"{1e3 * theirs:.1f}") + " | "
                + ("-" if row["ratio_torch_over_refsnn"] is None else f"{row['ratio_torch_over_refsnn']:.2f}"))

    lines = ["# refsnn vs plain PyTorch CPU, both cores and one core", ""]
    for label, report in ((f"{both['threads']} threads", both), (f"{one['threads']} thread", one)):
        machine = report["machine"]
        lines.append(f"- {label}: `{report['command']}` ({report['seconds']:.0f} s); {machine['platform']}, "
                     f"{machine['processor']}, {machine['cpu_count']} cores ({machine['note']}), numpy "
                     f"{machine['numpy']}, torch {machine['torch']}; load average (1, 5, 15 min) at start "
                     f"{', '.join(f'{v:.2f}' for v in report['load_average_at_start'])}, at end "
                     f"{', '.join(f'{v:.2f}' for v in report['load_average_at_end'])}.")
    lines += ["", "Ratio = PyTorch time / refsnn time (> 1: refsnn faster), both measured in the same run. "
              "Medians; float32 unless the row says float64. Each run's own report (with the same-output "
              "checks) is the .json named above.", "",
              f"| row | arch | batch | T | refsnn {both['threads']}t (ms) | PyTorch {both['threads']}t (ms) | "
              f"ratio {both['threads']}t | refsnn {one['threads']}t (ms) | PyTorch {one['threads']}t (ms) | "
              f"ratio {one['threads']}t |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in both["rows"]:
        other = single.get((row["row"], row["arch"], row["batch"]))
        lines.append(f"| {row['row']} | {row['arch']} | {row['batch']} | {row['T']} | {cells(row)} | {cells(other)} |")
    lines += ["", "## Targets (issue 18) at both cores", ""]
    for row in both["rows"]:
        ratio = row["ratio_torch_over_refsnn"]
        if ratio is None:
            continue
        goal = 1.5 if row["arch"] == "conv" and row["row"].startswith(("BPTT", "robust")) else 1.0
        lines.append(f"- {row['row']} {row['arch']} batch {row['batch']}: {ratio:.2f}x, target >= {goal}x: "
                     f"{'met' if ratio >= goal else 'NOT met'}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
