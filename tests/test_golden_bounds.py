"""The bound, certify and robust-training values of the golden corpus (tests/golden/bounds.npz,
recorded by ``benchmarks/golden_bounds.py record``) are reproduced within a tight tolerance.

Bit identity is what a refactor of the bound code must keep, and ``benchmarks/golden_bounds.py
check`` (or ``REFSNN_GOLDEN_EXACT=1`` here) asks for it on the recording platform. The suite does not:
BLAS sums in an order that depends on the machine and on the number of threads
(``OPENBLAS_NUM_THREADS=1`` changes some float64 bounds in the last bits on the recording machine
itself), and the suite must pass on any fresh clone.
"""
import importlib.util
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _golden_module():
    spec = importlib.util.spec_from_file_location("golden_bounds", ROOT / "benchmarks" / "golden_bounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_golden_corpus_reproduced():
    golden_bounds = _golden_module()
    with np.load(golden_bounds.DEFAULT_PATH) as data:
        golden = {key: data[key] for key in data.files if key != "_fingerprint"}
        recorded_on = str(data["_fingerprint"])
    current = golden_bounds.pack(golden_bounds.record_all())
    exact = os.environ.get("REFSNN_GOLDEN_EXACT") == "1" and recorded_on == golden_bounds.fingerprint()
    problems = golden_bounds.compare(golden, current, exact=exact)
    assert not problems, f"{len(problems)} golden values changed, e.g. " + "; ".join(
        f"{key}: {reason}" for key, reason in list(problems.items())[:5])


def test_compare_names_a_changed_hash_instead_of_failing():
    golden_bounds = _golden_module()
    old = {"x#sha256": np.array("a" * 64), "y": np.array([1.0, 2.0])}
    new = {"x#sha256": np.array("b" * 64), "y": np.array([1.0, 2.5])}
    problems = golden_bounds.compare(old, new, exact=True)
    assert problems["x#sha256"] == "differs" and problems["y"].startswith("differs: max |diff| 0.5")
