"""The thread-count knob (refsnn.threads) and thread-count independence of the CONV BPTT step."""
import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import refsnn
from refsnn.architectures import build_network
from refsnn.losses import rate_cross_entropy
from refsnn.threads import ThreadCountError, max_threads, set_num_threads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_threads():
    before = numba.get_num_threads()
    yield
    set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 10_000, "two", "", "\u00b2", "\u0661", 1.5, 2.0, True, None])
def test_bad_thread_counts_are_refused_in_one_line(bad, restore_threads):
    before = numba.get_num_threads()
    with pytest.raises(ValueError) as raised:
        set_num_threads(bad)
    assert isinstance(raised.value, ThreadCountError)
    message = str(raised.value)
    assert "\n" not in message and f"[1, {max_threads()}]" in message and "thread count" in message
    assert numba.get_num_threads() == before  # nothing changed


def test_knob_sets_numba_threads(restore_threads):
    assert refsnn.set_num_threads(1) == 1
    assert numba.get_num_threads() == 1 and refsnn.get_num_threads() == 1
    top = max_threads()
    assert refsnn.set_num_threads(top) == top
    assert numba.get_num_threads() == top


def _import_with(value: str):
    env = dict(os.environ, REFSNN_NUM_THREADS=value, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", "import numba, refsnn; print(numba.get_num_threads())"],
                          env=env, capture_output=True, text=True, cwd=REPO)


def test_environment_variable_is_applied_on_import():
    done = _import_with("1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    bad = _import_with("0")
    assert bad.returncode != 0
    assert "REFSNN_NUM_THREADS must be an integer in [1, " in bad.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["refsnn.train", "refsnn.certify", "verify.dataset"])
def test_a_bad_environment_value_is_a_command_lines_one_line_error(command):
    env = dict(os.environ, REFSNN_NUM_THREADS="two", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", command, "--help"], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: REFSNN_NUM_THREADS must be an integer in "
                                        f"[1, {max_threads()}] (the threads Numba started with, "
                                        "NUMBA_NUM_THREADS), got 'two'"]


CONCURRENT_CALLERS = """
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from refsnn import set_num_threads
from refsnn.architectures import build_network
set_num_threads(2)
net = build_network("conv", (1, 28, 28), seed=0)
x = (np.random.default_rng(0).random((4, 8, 1, 28, 28)) < 0.3).astype(np.float32)
def work(i):
    for _ in range(3):
        net.forward(x)
    return i
with ThreadPoolExecutor(2) as pool:
    print(sorted(pool.map(work, range(4))))
"""


@pytest.mark.skipif(max_threads() < 2, reason="needs Numba started with at least 2 threads")
def test_parallel_kernels_may_be_called_from_several_python_threads():
    """A web server or a threaded Dask worker calls refsnn from several threads at once: Numba's
    workqueue layer aborts the process then, so refsnn must not force it."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("NUMBA_THREADING_LAYER", None)
    done = subprocess.run([sys.executable, "-c", CONCURRENT_CALLERS], env=env, capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[0, 1, 2, 3]", done.stderr[-500:]


def _conv_step(net, spikes, labels):
    trace = net.run(spikes, validate=False)
    _, grad_rates = rate_cross_entropy(trace.rates, labels)
    grads, grad_input = net.backward(trace, grad_rates, input_grad=True)
    return trace, grads, grad_input


@pytest.mark.skipif(max_threads() < 2, reason="needs Numba started with at least 2 threads")
def test_conv_step_same_at_one_and_two_threads(restore_threads):
    # T * B = 40 rows: above the event kernels' minimum, several prange blocks per kernel
    net = build_network("conv", (1, 28, 28), seed=3, dtype=np.float32)
    rng = np.random.default_rng(7)
    spikes = (rng.random((5, 8, 1, 28, 28)) < 0.15).astype(np.float32)
    labels = rng.integers(0, 10, 8)
    set_num_threads(1)
    trace1, grads1, input1 = _conv_step(net, spikes, labels)
    set_num_threads(2)
    trace2, grads2, input2 = _conv_step(net, spikes, labels)
    for spike1, spike2 in zip(trace1.spikes, trace2.spikes):
        assert np.array_equal(spike1, spike2)
    for membrane1, membrane2 in zip(trace1.membranes, trace2.membranes):
        np.testing.assert_allclose(membrane1, membrane2, rtol=0, atol=1e-5)
    # float32 summation-order tolerance (BLAS may split sums differently with more threads)
    for grad1, grad2 in zip(grads1 + [input1], grads2 + [input2]):
        scale = np.abs(grad1).max() + 1e-30
        assert np.abs(grad1 - grad2).max() <= 1e-5 * scale


def test_scoped_threads_sets_and_restores_both_counts(restore_threads, numpy_blas_getters):
    from refsnn.threads import scoped_threads

    getters = numpy_blas_getters
    set_num_threads(max_threads())
    with pytest.raises(RuntimeError):
        with scoped_threads(1):
            assert numba.get_num_threads() == 1 and all(getter() == 1 for getter in getters)
            raise RuntimeError("inside")
    assert numba.get_num_threads() == max_threads()
    assert all(getter() == max_threads() for getter in getters)
    with scoped_threads(None):
        assert numba.get_num_threads() == max_threads()
    with pytest.raises(ThreadCountError):
        with scoped_threads(0):
            pass


def test_overlapping_scoped_threads_in_two_threads_keep_the_count(restore_threads, numpy_blas_getters):
    """A enters, B enters, A leaves: B still computes at the scoped count, and the process's count
    comes back when B (the last) leaves; a block asking for another count meanwhile is refused."""
    import threading

    from refsnn.threads import ThreadScopeError, scoped_threads

    getters = numpy_blas_getters
    top = max_threads()
    set_num_threads(top)
    a_in, b_in, a_out, b_checked = (threading.Event() for _ in range(4))
    seen = {}

    def run_a():
        with scoped_threads(1):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def run_b():
        a_in.wait(10)
        with scoped_threads(1):
            b_in.set()
            a_out.wait(10)
            seen["b after a left"] = [getter() for getter in getters]
            seen["b numba"] = numba.get_num_threads()
            b_checked.wait(10)

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for thread in threads:
        thread.start()
    a_out.wait(10)
    with pytest.raises(ThreadScopeError) as raised:  # B is still inside at 1
        with scoped_threads(top):
            pass
    assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)
    assert [getter() for getter in getters] == [1] * len(getters)
    b_checked.set()
    for thread in threads:
        thread.join(10)
    assert seen == {"b after a left": [1] * len(getters), "b numba": 1}
    assert [getter() for getter in getters] == [top] * len(getters)
    assert numba.get_num_threads() == top
    with scoped_threads(top):  # nothing active any more: another count is accepted
        assert [getter() for getter in getters] == [top] * len(getters)
