"""An independent, vectorized oracle of one S-CROWN back-substitution stage (the paper's relaxations,
eqs. 8, 10, 17-18, with the sound policy's rounding bound), written from the rules rather than from
the kernel: NumPy over samples, specs and neurons at once. ``refsnn.operator.backsub_step`` is
tested against it; it is not part of the library.
"""
from __future__ import annotations

import numpy as np

from refsnn.operator import StepTables


def oracle_stage(lam_s: np.ndarray, tab: StepTables):
    """``lam_s [T', B, R, n]`` -> ``(lam_cur [T', B, R, n], bias [B, R], err [B, R], steps)`` where
    ``steps[t] = (lam_s_in, lam_z_in, lam_m, bias_step, err_step)`` (arrays over ``[B, R(, n)]``)."""
    mem_mag, carry_mag, fwd_scale, g = tab.rounding
    steps = lam_s.shape[0]
    carry = np.zeros(lam_s.shape[1:])
    bias = np.zeros(lam_s.shape[1:3])
    err = np.zeros(lam_s.shape[1:3])
    lam_cur = np.empty(lam_s.shape)
    records = [None] * steps
    for t in range(steps - 1, -1, -1):
        ls = lam_s[t].copy()
        lz = carry
        st = tab.state[t][:, None, :]
        on, unstable = st == 1, st == 2
        p = np.abs(ls)
        lm = np.where(st == 0, lz, 0.0)
        r = np.where(lz >= 0.0, tab.reset_lo[t][:, None, :], tab.reset_hi[t][:, None, :])
        rz = np.where(unstable, lz * r, 0.0)
        ls = np.where(unstable, ls - rz, ls)
        positive = ls >= 0.0
        a = np.where(positive, tab.slope_lo[t][:, None, :], tab.slope_up[t][:, None, :])
        c = np.where(positive, tab.icpt_lo[t][:, None, :], tab.icpt_up[t][:, None, :])
        lm = np.where(unstable, ls * a, lm)
        step_bias = np.where(on, lam_s[t], 0.0).sum(-1) + rz.sum(-1) + np.where(unstable, ls * c, 0.0).sum(-1)
        p += np.where(unstable, 2.0 * np.abs(rz) + np.abs(ls) * (np.abs(a) * mem_mag[t][:, None, :]
                                                                 + np.abs(c) + 1.0), 0.0)
        p += np.abs(lm) * carry_mag[t][:, None, :]
        step_err = g * p.sum(-1)
        records[t] = (lam_s[t].copy(), lz.copy(), lm.copy(), step_bias, step_err)
        bias += step_bias + lm @ tab.bias
        err += step_err + (np.abs(lm) * fwd_scale[t][:, None, :]).sum(-1)
        lam_cur[t] = lm
        carry = tab.alpha * lm
    return lam_cur, bias, err, records
