"""Test configuration: hypothesis profiles (HYPOTHESIS_PROFILE=refsnn-thorough for long local runs)."""
import os

from hypothesis import settings

import refsnn.testing.plugin  # noqa: F401  (registers the refsnn-ci and refsnn-thorough profiles)

settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "refsnn-ci"))
