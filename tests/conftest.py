"""Test configuration: hypothesis profiles; the ``numpy_blas_getters`` fixture.

The suite runs the ``refsnn-suite`` profile by default: the examples of ``refsnn-ci`` drawn from a
fixed seed per test (``derandomize``) and no example database, so a fresh clone, CI and a developer's
tree run exactly the same examples whatever ``.hypothesis/`` holds. Exploration with fresh random
examples is a separate, explicit run: ``HYPOTHESIS_PROFILE=refsnn-thorough`` (2,000 examples per
property) or ``HYPOTHESIS_PROFILE=refsnn-ci`` (30, random).
"""
import glob
import os

import numpy as np
import pytest
from hypothesis import settings

import refsnn.testing.plugin  # noqa: F401  (registers the refsnn-ci and refsnn-thorough profiles)

settings.register_profile("refsnn-suite", parent=settings.get_profile("refsnn-ci"), derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "refsnn-suite"))


@pytest.fixture
def numpy_blas_getters():
    """The getters of NumPy's OpenBLAS thread count, or a skip where a count change cannot be
    observed: one thread only, or no OpenBLAS bundled with NumPy (where one is bundled, its getter
    must be found)."""
    from refsnn.threads import _numpy_blas_getters, max_threads

    if max_threads() < 2:
        pytest.skip("one thread only: a changed count cannot be observed")
    site = os.path.dirname(os.path.dirname(np.__file__))
    if not glob.glob(os.path.join(site, "numpy.libs", "*openblas*.so*")):
        pytest.skip("NumPy does not bundle OpenBLAS here")
    getters = _numpy_blas_getters()
    assert getters, "NumPy bundles OpenBLAS but its openblas_get_num_threads was not found"
    return getters
