"""The allocator setting of the training loop (refsnn.memory): freed memory stays mapped."""
import subprocess
import sys

import pytest

PROBE = r"""
import sys
import numpy as np
from refsnn.memory import keep_freed_memory

def resident_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2 ** 20

if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()
before = resident_mib()
block = np.ones(256 * 2 ** 20 // 8)   # 256 MiB, above glibc's largest mmap threshold
del block
print(resident_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux's")
def test_keep_freed_memory_keeps_a_freed_block_mapped():
    kept = {}
    for mode in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        kept[mode] = float(out.stdout.split()[-1])
    assert kept["keep"] > 200      # the 256 MiB stay resident for the next step
    assert kept["default"] < 50    # without it glibc unmaps the block on free
