"""The allocator setting of the training loop (refsnn.memory): freed memory stays mapped inside the
scope, and glibc's defaults come back after it."""
import os
import platform
import subprocess
import sys

import pytest

PROBE = r"""
import os, sys
import numpy as np
from refsnn.memory import freed_memory_kept, keep_freed_memory

PAGE = os.sysconf("SC_PAGE_SIZE")

def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2 ** 20

def freed_block_resident():
    before = resident_mib()
    block = np.ones(256 * 2 ** 20 // 8)   # 256 MiB, above glibc's largest mmap threshold
    del block
    return resident_mib() - before

def faults_of_mid_sized_arrays():
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        block = np.ones(8 * 2 ** 20 // 8)   # 8 MiB
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

mode = sys.argv[1]
if mode == "scoped":
    with freed_memory_kept() as kept:
        assert kept
        inside = freed_block_resident()
    print(inside, freed_block_resident(), faults_of_mid_sized_arrays())
elif mode == "faults":
    print(faults_of_mid_sized_arrays())
elif mode == "permanent":
    assert keep_freed_memory() and keep_freed_memory()
    print(freed_block_resident())
else:
    print(freed_block_resident())
"""


def _run(mode, **env):
    environment = {**os.environ, **env}
    for name in list(environment):
        if name.startswith("MALLOC_") or name == "GLIBC_TUNABLES":
            del environment[name]
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env=environment)
    return [float(v) for v in out.stdout.split()]


glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
                                or "LD_PRELOAD" in os.environ,
                                reason="glibc's mallopt and /proc are Linux/glibc's")


@glibc_only
def test_the_scope_keeps_a_freed_block_mapped_and_restores_the_defaults_after_it():
    inside, after, faults_after = _run("scoped")
    assert inside > 200     # the 256 MiB stay resident for the next step
    assert after < 50       # after the scope the block is unmapped on free again
    (default,) = _run("default")
    assert default < 50
    # glibc's dynamic mmap threshold is gone after any mallopt: the restored thresholds must not send
    # every mid-sized array to mmap (50 x 8 MiB is about 100,000 page faults there)
    (faults_fresh,) = _run("faults")
    assert faults_after < max(10 * faults_fresh, 5000)


@glibc_only
def test_keep_freed_memory_is_permanent_and_the_switch_turns_it_off():
    (kept,) = _run("permanent")
    assert kept > 200
    inside, _, _ = _run("scoped", REFSNN_KEEP_FREED_MEMORY="1")
    assert inside > 200
    with pytest.raises(subprocess.CalledProcessError):   # the scope reports the setting off
        _run("scoped", REFSNN_KEEP_FREED_MEMORY="0")


@glibc_only
def test_release_gives_the_kept_heap_back_inside_the_scope():
    probe = r"""
import os
import numpy as np
from refsnn.memory import freed_memory_kept, release_freed_memory
PAGE = os.sysconf("SC_PAGE_SIZE")
def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2 ** 20
assert not release_freed_memory()          # outside the scope: nothing to release
with freed_memory_kept():
    before = resident_mib()
    blocks = [np.ones(64 * 2 ** 20 // 8) for _ in range(4)]   # 256 MiB, then freed: kept
    del blocks
    kept = resident_mib() - before
    assert release_freed_memory()
    print(kept, resident_mib() - before)
"""
    environment = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=environment)
    kept, released = (float(v) for v in out.stdout.split())
    assert kept > 200 and released < 50
