"""pytest plugin of ``refsnn.testing`` (registered as the ``pytest11`` entry point ``refsnn``).

- Registers the hypothesis profiles ``refsnn-ci`` and ``refsnn-thorough`` (no deadline, more
  examples); load one with ``--hypothesis-profile=refsnn-ci`` if you want them. Not needed for
  the deadline: see below.
- Compiles refsnn's Numba kernels once at the start of a session whose collected tests use
  ``refsnn.testing`` (``refsnn.testing.warmup``), so hypothesis' default 200 ms deadline is not
  spent on the first example's compile. It says ``refsnn.testing: compiling kernels (first run
  only; ...)`` when Numba compiles one (not when it loads them from its cache). Disable with
  ``-p no:refsnn``.
"""
from __future__ import annotations

import types

from hypothesis import HealthCheck, settings

settings.register_profile("refsnn-ci", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("refsnn-thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _from_refsnn_testing(value) -> bool:
    try:   # any object can sit in a test module; one whose attributes raise is simply not ours
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    except Exception:  # noqa: BLE001
        return False
    return isinstance(name, str) and (name == "refsnn.testing" or name.startswith("refsnn.testing."))


def _uses_refsnn_testing(items) -> bool:
    """True when a collected test module holds something of ``refsnn.testing`` (the package, or a
    strategy or assertion imported from it)."""
    seen = set()
    for item in items:
        module = getattr(item, "module", None)
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        if any(_from_refsnn_testing(value) for value in list(vars(module).values())):
            return True
    return False


def pytest_collection_finish(session) -> None:
    if session.config.getoption("collectonly", False) or not _uses_refsnn_testing(session.items):
        return
    from numba.core import event

    from ..progress import compile_listener
    from .warmup import warm_kernels

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = (lambda message: reporter.write_line(f"refsnn.testing: {message}")) if reporter is not None else print
    with event.install_listener("numba:compile", compile_listener(say)):
        seconds = warm_kernels()
    if reporter is not None and seconds > 5:
        reporter.write_line(f"refsnn.testing: kernels ready ({seconds:.0f} s)")
