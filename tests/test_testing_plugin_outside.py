"""``refsnn.testing`` from another project: plain ``python -m pytest``, no flags, hypothesis' default deadline.

The throw-away project lives in tmp_path (no conftest, no ini file, no profile) and runs with an
empty Numba cache, so the first example would include every kernel compile (seconds, against a
200 ms deadline) unless the plugin compiles the kernels before the first example.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

OUTSIDE_TEST = '''
from hypothesis import given, strategies as st

from refsnn.bounds import compute_bounds
from refsnn.testing import assert_bounds_sound, box_strategy, snn_strategy, spec_strategy


def crown(net, x_lower, x_upper, C):
    return compute_bounds(net, x_lower, x_upper, method="crown-ibp", C=C)


@given(data=st.data())
def test_refsnn_bounds_are_sound_on_small_nets(data):
    net = data.draw(snn_strategy(data.draw(st.sampled_from(["fc", "conv"]))))
    x_lower, x_upper = data.draw(box_strategy(net, max_free_bits=4))
    assert_bounds_sound(crown, net, x_lower, x_upper, data.draw(spec_strategy(net, kind="margin")))
'''


def test_outside_project_passes_with_plain_pytest(tmp_path):
    project = tmp_path / "other_project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_uses_refsnn.py").write_text(textwrap.dedent(OUTSIDE_TEST))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HYPOTHESIS", "PYTEST"))}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "empty-numba-cache")   # a first run: every kernel compiles
    result = subprocess.run([sys.executable, "-m", "pytest"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "1 passed" in output
    assert "refsnn.testing: compiling kernels (first run only" in output


def test_plugin_warms_up_only_for_sessions_that_use_refsnn_testing():
    import types
    from unittest import mock

    from refsnn.testing import plugin, snn_strategy

    def item(**names):
        return types.SimpleNamespace(module=types.SimpleNamespace(**names))

    odd = mock.Mock()
    del odd.__module__   # an attribute that raises must not break another project's collection
    assert not plugin._uses_refsnn_testing([item(np=types.ModuleType("numpy"), odd=odd), object()])
    assert plugin._uses_refsnn_testing([item(x=1), item(strategy=snn_strategy)])
    assert plugin._uses_refsnn_testing([item(rt=__import__("refsnn.testing").testing)])
