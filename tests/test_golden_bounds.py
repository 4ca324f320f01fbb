"""The bound, certify and robust-training values of the golden corpus (tests/golden/bounds.npz,
recorded by ``benchmarks/golden_bounds.py record``) are reproduced bit for bit on the platform that
recorded them, and within a tight tolerance elsewhere (BLAS summation order differs by machine)."""
import importlib.util
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
    problems = golden_bounds.compare(golden, current, exact=recorded_on == golden_bounds.fingerprint())
    assert not problems, f"{len(problems)} golden values changed, e.g. " + "; ".join(
        f"{key}: {reason}" for key, reason in list(problems.items())[:5])
