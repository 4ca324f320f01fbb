"""Golden corpus of the bound code: every value the bound, certify and robust-training paths produce
on a fixed set of small FC and CONV networks and boxes, recorded once and checked bit for bit.

Cases: float64 and float32 networks, both firing modes, Gaussian and dyadic weights (membranes
exactly on the threshold), random boxes, eps = 0 (lower == upper), T' = 1, all-free boxes, two
8-channel CONV nets on sparse boxes of 36 rows (the compiled binary conv kernel of S-IBP), and the
committed MNIST FC model on three embedded test images (digital l-inf set, eps 0.12, T' = 3).
Recorded per case: ``compute_bounds`` for every method, every field of ``interval_bounds``,
``crown_bounds`` with its coefficients, the full-S-CROWN intermediates,
``alpha_bounds``, the any-k ball bounds, ``certify`` decisions, and the robust-training bound
graph, loss and gradients (plain, smooth, and re-run with frozen choices).

    python benchmarks/golden_bounds.py record [--out tests/golden/bounds.npz]
    python benchmarks/golden_bounds.py check  [--golden tests/golden/bounds.npz]

``check`` prints every key that differs (max abs difference) and exits 1 if any does.
The corpus is bit-exact only on the platform that recorded it (BLAS summation order differs by
machine and thread count); ``fingerprint()`` says which, and the test falls back to a
tolerance elsewhere.
"""
from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refsnn import SNN  # noqa: E402
from refsnn.layers import AvgPool2d, Conv2d, Flatten, Linear  # noqa: E402

# Arrays with more entries are stored as a SHA-256 of their bytes plus a fixed sample of entries
# (``#sha256``, ``#sample``): the bit-for-bit check stays exact and the file small.
HASH_ABOVE = 20000
# The wide CONV cases' many mid-size arrays are hashed from 2,000 entries (the file would triple otherwise).
WIDE_PREFIX, WIDE_HASH_ABOVE = "convwide", 2000
DEFAULT_PATH = ROOT / "tests" / "golden" / "bounds.npz"
EMBEDDED_MODEL = ROOT / "results" / "budget" / "mnist-fc" / "robust" / "model.h5"
INTERVAL_FIELDS = ("current_lower", "current_upper", "mem_lower", "mem_upper", "spike_lower", "spike_upper",
                   "reset_lower", "reset_upper", "state", "current_margin", "current_magnitude", "current_center",
                   "mem_margin")


def _openblas_core() -> str:
    """The kernel family NumPy's OpenBLAS picked at run time (e.g. ``Haswell``, ``SkylakeX``): the
    same wheel sums a float64 product in another order on another CPU, so it belongs to the platform."""
    import ctypes
    import glob
    import os

    site = os.path.dirname(os.path.dirname(np.__file__))
    for path in sorted(glob.glob(os.path.join(site, "numpy.libs", "*openblas*.so*"))):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                     "openblas_get_corename"):
            function = getattr(library, name, None)
            if function is not None:
                function.argtypes, function.restype = [], ctypes.c_char_p
                return function().decode(errors="replace")
    return "?"


def fingerprint() -> str:
    """Where bit-identity is expected: numpy version, machine, the BLAS in use and its run-time kernels."""
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {}).get("name", "?")
    except TypeError:  # older numpy: no dict mode
        blas = "?"
    return (f"numpy {np.__version__}; {platform.machine()}; {platform.python_version()}; blas {blas}; "
            f"core {_openblas_core()}")


# --- networks ----------------------------------------------------------------------------------------

def _weights(rng: np.random.Generator, shape, dyadic: bool, scale: float) -> np.ndarray:
    if dyadic:
        return rng.integers(-6, 7, size=shape) / 8.0
    return rng.normal(0.0, scale, size=shape)


def _fc(seed: int, sizes, dyadic: bool, **kwargs) -> SNN:
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers.append(Linear(_weights(rng, (n_out, n_in), dyadic, 1.2 / np.sqrt(n_in)),
                             _weights(rng, (n_out,), dyadic, 0.2)))
    return SNN(layers, **kwargs)


def _conv(seed: int, pool: bool, dyadic: bool, **kwargs) -> SNN:
    rng = np.random.default_rng(seed)
    layers = [Conv2d(_weights(rng, (2, 1, 3, 3), dyadic, 0.5), _weights(rng, (2,), dyadic, 0.1), stride=2, padding=1)]
    if pool:
        layers.append(AvgPool2d(3, 3))
        flat = 2
    else:
        flat = 2 * 3 * 3
    layers += [Flatten(), Linear(_weights(rng, (5, flat), dyadic, 1.0 / np.sqrt(flat)), _weights(rng, (5,), dyadic, 0.1)),
               Linear(_weights(rng, (3, 5), dyadic, 0.6), _weights(rng, (3,), dyadic, 0.1))]
    return SNN(layers, input_shape=(1, 6, 6), **kwargs)


def _wide_conv(seed: int, **kwargs) -> SNN:
    """Two 3x3 convolutions of 8 channels: wide enough, with a batch of 12 at T' = 3 (36 rows) and
    sparse boxes, for the compiled binary conv kernel of S-IBP (``ibp._binary_conv_interval_kernel``)
    that the small nets above never reach."""
    rng = np.random.default_rng(seed)
    layers = [Conv2d(_weights(rng, (8, 1, 3, 3), False, 0.6), _weights(rng, (8,), False, 0.1), stride=1, padding=1),
              Conv2d(_weights(rng, (8, 8, 3, 3), False, 0.25), _weights(rng, (8,), False, 0.1), stride=2, padding=1),
              Flatten(), Linear(_weights(rng, (4, 8 * 4 * 4), False, 0.15), _weights(rng, (4,), False, 0.1))]
    return SNN(layers, input_shape=(1, 8, 8), **kwargs)


def _wide_boxes(seed: int, net: SNN) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """Sparse random boxes (T' = 3, B = 12) and eps = 0 (T' = 3, B = 12)."""
    rng = np.random.default_rng(seed)
    shape = (3, 12) + tuple(net.input_shape)
    lower = (rng.random(shape) < 0.1).astype(np.float64)
    yield "sparse", lower, np.maximum(lower, (rng.random(shape) < 0.25).astype(np.float64))
    yield "eps0", lower, lower.copy()


def wide_cases() -> Iterator[Tuple[str, SNN]]:
    """``(name, net)``, names starting with ``WIDE_PREFIX``."""
    yield "convwide64", _wide_conv(8, threshold=0.25, decay=0.5, firing=">=")
    yield "convwide32gt", _wide_conv(9, threshold=0.25, decay=0.25, firing=">", dtype=np.float32)


def _boxes(seed: int, net: SNN) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """Random (T' = 3, B = 3), eps = 0 (T' = 2), T' = 1, all free (T' = 2, B = 1)."""
    rng = np.random.default_rng(seed)
    shape = tuple(net.input_shape)
    lower = (rng.random((3, 3) + shape) < 0.3).astype(np.float64)
    upper = np.maximum(lower, (rng.random((3, 3) + shape) < 0.5).astype(np.float64))
    yield "random", lower, upper
    clean = (rng.random((2, 2) + shape) < 0.5).astype(np.float64)
    yield "eps0", clean, clean.copy()
    lower = (rng.random((1, 2) + shape) < 0.3).astype(np.float64)
    upper = np.maximum(lower, (rng.random((1, 2) + shape) < 0.4).astype(np.float64))
    yield "T1", lower, upper
    yield "allfree", np.zeros((2, 1) + shape), np.ones((2, 1) + shape)


def small_cases() -> Iterator[Tuple[str, SNN, bool]]:
    """``(name, net, small)``: ``small`` nets also get full S-CROWN and the any-k ball."""
    yield "fc64ge", _fc(1, (7, 6, 5, 4), False, threshold=0.3, decay=0.5, firing=">="), True
    yield "fc32gt", _fc(2, (7, 6, 5, 4), False, threshold=0.25, decay=0.25, firing=">", dtype=np.float32), True
    yield "fcdyadic64", _fc(3, (6, 5, 4), True, threshold=0.25, decay=0.5, firing=">="), True
    yield "fcdyadic32gt", _fc(4, (6, 5, 4), True, threshold=0.5, decay=0.25, firing=">", dtype=np.float32), True
    yield "conv64gt", _conv(5, False, False, threshold=0.25, decay=0.25, firing=">"), True
    yield "convpool32", _conv(6, True, False, threshold=0.2, decay=0.75, firing=">=", dtype=np.float32), True
    yield "convdyadic64", _conv(7, True, True, threshold=0.25, decay=0.5, firing=">="), False


# --- what is recorded ----------------------------------------------------------------------------------

def _record_bounds(out: Dict[str, np.ndarray], name: str, net: SNN, x_lower, x_upper, labels, small: bool,
                   alpha_iterations: int = 3) -> None:
    from refsnn.alpha import alpha_bounds
    from refsnn.bounds import certify, compute_bounds, crown_bounds, interval_bounds, margin_spec
    from refsnn.crown_full import full_crown_intermediate

    batch = x_lower.shape[1]
    spec_rng = np.random.default_rng(len(name))
    specs = {"id": None, "margin": margin_spec(labels, net.n_outputs),
             "rand": spec_rng.integers(-2, 3, size=(2, net.n_outputs)).astype(np.float64)}
    methods = ["ibp", "crown-ibp", "best"] + (["crown"] if small else [])
    for spec_name, C in specs.items():
        for method in methods:
            lower, upper = compute_bounds(net, x_lower, x_upper, method=method, C=C)
            out[f"{name}/bounds/{method}/{spec_name}/lower"] = lower
            out[f"{name}/bounds/{method}/{spec_name}/upper"] = upper
    for method in methods + ["alpha"]:
        out[f"{name}/certify/{method}"] = certify(net, x_lower, x_upper, labels, method=method)
    ib = interval_bounds(net, x_lower, x_upper)
    for field in INTERVAL_FIELDS:
        for k, value in enumerate(getattr(ib, field)):
            out[f"{name}/ibp/{field}/{k}"] = np.asarray(value)
    out[f"{name}/ibp/rate_lower"], out[f"{name}/ibp/rate_upper"] = ib.rate_lower, ib.rate_upper
    cr = crown_bounds(net, x_lower, x_upper, specs["margin"])
    for field in ("lower", "upper", "A_lower", "A_upper", "bias_lower", "bias_upper", "rounding_lower",
                  "rounding_upper"):
        out[f"{name}/crown/numba/{field}"] = getattr(cr, field)
    cr = crown_bounds(net, x_lower, x_upper, specs["rand"], return_coefficients=False)
    out[f"{name}/crown/nocoef/lower"], out[f"{name}/crown/nocoef/upper"] = cr.lower, cr.upper
    al = alpha_bounds(net, x_lower, x_upper, specs["margin"], iterations=alpha_iterations)
    for field in ("lower", "upper", "alpha_lower", "alpha_upper"):
        out[f"{name}/alpha/{field}"] = getattr(al, field)
    out[f"{name}/alpha/history"] = np.asarray(al.history)
    if small:
        full = full_crown_intermediate(net, x_lower, x_upper)
        for field in ("mem_lower", "mem_upper", "state", "reset_lower", "reset_upper"):
            for k, value in enumerate(getattr(full, field)):
                out[f"{name}/fullcrown/{field}/{k}"] = np.asarray(value)


def _record_anyk(out: Dict[str, np.ndarray], name: str, net: SNN, clean, labels) -> None:
    from refsnn.bounds import margin_spec
    from refsnn.l0 import anyk_bounds
    C = margin_spec(labels, net.n_outputs)
    for per_step in (True, False):
        for method in ("ibp", "crown-ibp", "best", "alpha", "crown"):
            lower, upper = anyk_bounds(net, clean, 1, C, method=method, per_step=per_step, iterations=2)
            out[f"{name}/anyk/{per_step}/{method}/lower"] = lower
            out[f"{name}/anyk/{per_step}/{method}/upper"] = upper


def _record_robust(out: Dict[str, np.ndarray], name: str, net: SNN, x_lower, x_upper, labels) -> None:
    from refsnn.robust import robust_loss
    spikes = np.concatenate([x_lower, x_upper], axis=0)  # a clean sample of horizon 2 T'
    for kappa, beta, smooth in ((0.5, 1.0, False), (0.0, 0.5, False), (0.3, 0.0, False), (0.5, 0.7, True)):
        tag = f"{name}/robust/k{kappa}b{beta}s{int(smooth)}"
        result = robust_loss(net, spikes, labels, x_lower, x_upper, kappa, beta, 2.0, smooth=smooth)
        out[f"{tag}/loss"] = np.array([result.loss, result.natural_loss, result.robust_loss, result.robust_error])
        out[f"{tag}/margin_lower"] = result.margin_lower
        out[f"{tag}/ibp_lower"] = result.graph.ibp_lower
        if result.graph.crown_lower is not None:
            out[f"{tag}/crown_lower"] = result.graph.crown_lower
        for i, grad in enumerate(result.grads):
            out[f"{tag}/grad/{i}"] = grad
        frozen = robust_loss(net, spikes, labels, x_lower, x_upper, kappa, beta, 2.0, smooth=smooth,
                             choices=result.graph.choices)
        out[f"{tag}/frozen/loss"] = np.array([frozen.loss, frozen.robust_loss])
        for i, grad in enumerate(frozen.grads):
            out[f"{tag}/frozen/grad/{i}"] = grad


def record_all(progress: Callable[[str], None] = lambda name: None) -> Dict[str, np.ndarray]:
    """Every golden value, keyed ``case/what/...``."""
    out: Dict[str, np.ndarray] = {}
    for case, net, small in small_cases():
        for box_name, x_lower, x_upper in _boxes(len(case), net):
            name = f"{case}/{box_name}"
            progress(name)
            labels = np.arange(x_lower.shape[1]) % net.n_outputs
            _record_bounds(out, name, net, x_lower, x_upper, labels, small)
            _record_robust(out, name, net, x_lower, x_upper, labels)
            if small and box_name == "eps0":
                _record_anyk(out, name, net, x_lower, labels)
    for case, net in wide_cases():
        for box_name, x_lower, x_upper in _wide_boxes(len(case), net):
            name = f"{case}/{box_name}"
            progress(name)
            labels = np.arange(x_lower.shape[1]) % net.n_outputs
            _record_bounds(out, name, net, x_lower, x_upper, labels, small=False, alpha_iterations=2)
            _record_robust(out, name, net, x_lower, x_upper, labels)
    progress("embedded")
    out.update(_record_embedded())
    return out


def _record_embedded() -> Dict[str, np.ndarray]:
    from refsnn.data import load_dataset
    from refsnn.encoders import draw_rand_maps
    from refsnn.input_sets import digital_linf_set
    from refsnn.io import load_model
    out: Dict[str, np.ndarray] = {}
    net = load_model(EMBEDDED_MODEL)
    images, labels = load_dataset("mnist-subset", "test")
    images, labels = images[:3], labels[:3]
    maps = draw_rand_maps(np.random.default_rng(0), 3, images.shape)
    box = digital_linf_set(images, eps=0.12, rand_maps=maps)
    _record_bounds(out, "embedded", net, box.x_lower, box.x_upper, labels, small=False, alpha_iterations=2)
    _record_robust(out, "embedded", net, box.x_lower, box.x_upper, labels)
    # the same model run in float64 (its file stores float32) on the same box
    net64 = load_model(EMBEDDED_MODEL, dtype=np.float64)
    _record_robust(out, "embedded64", net64, box.x_lower, box.x_upper, labels)
    for key in [k for k in out if "/A_lower" in k or "/A_upper" in k]:
        out[key] = out[key][:, :, :2]  # two spec rows of the input coefficients keep the file small
    return out


def _sample_index(size: int) -> np.ndarray:
    return np.random.default_rng(size).choice(size, 256, replace=False)


def pack(values: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Large arrays -> their hash, shape and a sample of entries (see ``HASH_ABOVE``)."""
    packed = {}
    for key, value in values.items():
        value = np.ascontiguousarray(value)
        if value.size > (WIDE_HASH_ABOVE if key.startswith(WIDE_PREFIX) else HASH_ABOVE):
            packed[f"{key}#sha256"] = np.array(hashlib.sha256(value.tobytes()).hexdigest())
            packed[f"{key}#shape"] = np.array(value.shape)
            packed[f"{key}#sample"] = value.reshape(-1)[_sample_index(value.size)]
        else:
            packed[key] = value
    return packed


def compare(golden: Dict[str, np.ndarray], current: Dict[str, np.ndarray], exact: bool = True,
            rtol: float = 1e-6, atol: float = 1e-9) -> Dict[str, str]:
    """Keys whose values differ, with a one-line reason; bit-for-bit if ``exact``."""
    problems = {}
    for key in sorted(set(golden) | set(current)):
        if key not in current:
            problems[key] = "missing now"
            continue
        if key not in golden:
            problems[key] = "not in the golden corpus"
            continue
        old, new = np.asarray(golden[key]), np.asarray(current[key])
        if not exact and key.endswith("#sha256"):
            continue  # another platform: the sample of entries is compared within tolerance
        if old.shape != new.shape or old.dtype != new.dtype:
            problems[key] = f"shape/dtype {old.shape} {old.dtype} -> {new.shape} {new.dtype}"
            continue
        if exact:
            same = old.tobytes() == new.tobytes()
        elif old.dtype.kind == "f":
            # another summation order (BLAS build, thread count): each value within rtol of itself
            # or within rtol of the array's largest magnitude (sums with cancellation), float32
            # arrays at their own precision
            tol = rtol if old.dtype == np.float64 else max(rtol, 1e3 * float(np.finfo(old.dtype).eps))
            scale = float(np.nanmax(np.abs(old[np.isfinite(old)]))) if np.isfinite(old).any() else 0.0
            same = np.allclose(new, old, rtol=tol, atol=atol + tol * scale, equal_nan=True)
        else:
            same = np.array_equal(new, old)
        if not same and old.dtype.kind not in "biuf":
            problems[key] = "differs"   # a hash (``#sha256``) or another non-numeric entry
        elif not same:
            diff = np.abs(new.astype(np.float64) - old.astype(np.float64))
            problems[key] = f"differs: max |diff| {np.nanmax(diff) if diff.size else 0:.3g} at {int(np.sum(diff != 0))} entries"
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("record", "check"))
    parser.add_argument("--golden", "--out", dest="path", default=str(DEFAULT_PATH))
    args = parser.parse_args()
    values = pack(record_all(progress=lambda name: print(f"  {name}", file=sys.stderr)))
    path = Path(args.path)
    if args.action == "record":
        path.parent.mkdir(parents=True, exist_ok=True)
        values["_fingerprint"] = np.array(fingerprint())
        np.savez_compressed(path, **values)
        print(f"recorded {len(values)} arrays into {path} ({path.stat().st_size / 1e6:.2f} MB)")
        return 0
    with np.load(path) as data:
        golden = {k: data[k] for k in data.files if k != "_fingerprint"}
        recorded_on = str(data["_fingerprint"])
    exact = recorded_on == fingerprint()
    problems = compare(golden, values, exact=exact)
    for key, reason in problems.items():
        print(f"{key}: {reason}")
    mode = "bit for bit" if exact else f"within tolerance (recorded on {recorded_on})"
    print(f"{len(golden) - len(problems)}/{len(golden)} arrays equal {mode}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
