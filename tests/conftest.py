"""Test configuration: hypothesis profiles.

The suite runs the ``refsnn-suite`` profile by default: the examples of ``refsnn-ci`` drawn from a
fixed seed per test (``derandomize``) and no example database, so a fresh clone, CI and a developer's
tree run exactly the same examples whatever ``.hypothesis/`` holds. Exploration with fresh random
examples is a separate, explicit run: ``HYPOTHESIS_PROFILE=refsnn-thorough`` (2,000 examples per
property) or ``HYPOTHESIS_PROFILE=refsnn-ci`` (30, random).
"""
import os

from hypothesis import settings

import refsnn.testing.plugin  # noqa: F401  (registers the refsnn-ci and refsnn-thorough profiles)

settings.register_profile("refsnn-suite", parent=settings.get_profile("refsnn-ci"), derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "refsnn-suite"))
