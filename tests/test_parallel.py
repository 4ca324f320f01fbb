"""refsnn.parallel: chunking, serial map without Dask, LocalCluster equality and a worker lost mid-run."""
import os
import subprocess
import sys

import numpy as np
import pytest

from refsnn.parallel import chunk_ranges, map_chunks


def _per_sample_work(chunk):
    """A pure function of the chunk: one seeded draw per sample index, as the drivers do."""
    return [(index, float(np.random.default_rng(index).standard_normal(16).sum())) for index in chunk]


def test_chunk_ranges_cover_every_index_once():
    assert chunk_ranges(0, 4) == []
    assert chunk_ranges(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert chunk_ranges(3, 5, start=7) == [range(7, 10)]
    flat = [i for chunk in chunk_ranges(103, 7, start=5) for i in chunk]
    assert flat == list(range(5, 108))
    with pytest.raises(ValueError):
        chunk_ranges(10, 0)
    with pytest.raises(ValueError):
        chunk_ranges(-1, 3)


def test_serial_map_keeps_order_and_reports_progress():
    seen = []
    chunks = chunk_ranges(9, 2)
    results = map_chunks(_per_sample_work, chunks, progress=lambda index, result: seen.append(index))
    assert results == [_per_sample_work(chunk) for chunk in chunks]
    assert seen == list(range(len(chunks)))
    with pytest.raises(ValueError):
        map_chunks(_per_sample_work, chunks, workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ValueError):
        map_chunks(_per_sample_work, chunks, workers=0)


def test_serial_map_does_not_import_dask():
    code = ("import sys; from refsnn.parallel import map_chunks, chunk_ranges; "
            "assert map_chunks(len, chunk_ranges(5, 2)) == [2, 2, 1]; "
            "assert not any(m == 'dask' or m.startswith(('dask.', 'distributed')) for m in sys.modules), "
            "sorted(m for m in sys.modules if 'dask' in m or 'distributed' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_local_cluster_matches_serial():
    pytest.importorskip("distributed")
    chunks = chunk_ranges(40, 3)
    serial = map_chunks(_per_sample_work, chunks)
    completed = []
    parallel = map_chunks(_per_sample_work, chunks, workers=2, progress=lambda i, r: completed.append(i))
    assert parallel == serial
    assert sorted(completed) == list(range(len(chunks)))


def test_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path):
    pytest.importorskip("distributed")
    marker = str(tmp_path / "killed-once")
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    log = str(log_dir)

    def work_then_die_once(chunk):
        import os as _os
        import signal
        import time

        import numpy as _np

        time.sleep(0.05)
        if chunk.start == 12:
            # The first attempt of this chunk kills its worker process outright (SIGKILL, as an
            # out-of-memory kill would); the marker makes the recomputation succeed.
            try:
                handle = _os.open(marker, _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                _os.close(handle)
                _os.kill(_os.getpid(), signal.SIGKILL)
        with open(_os.path.join(log, f"{chunk.start}-{_os.getpid()}-{time.monotonic_ns()}"), "w"):
            pass
        return [(i, float(_np.random.default_rng(i).standard_normal(16).sum())) for i in chunk]

    chunks = chunk_ranges(36, 3)
    results = map_chunks(work_then_die_once, chunks, workers=2)
    assert os.path.exists(marker), "the worker-killing chunk never ran"
    assert results == [_per_sample_work(chunk) for chunk in chunks]
    flat = [index for part in results for index, _ in part]
    assert flat == list(range(36))
    finished = [name.split("-")[0] for name in os.listdir(log)]
    assert "12" in finished  # the killed chunk was recomputed on a live worker


# --- drivers: identical results with and without a cluster ------------------------------------------

@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from refsnn.parallel import dask_client

    with dask_client(workers=2) as dask:
        yield dask


def _small_net(seed=0, sizes=(16, 12, 10, 3)):
    from refsnn import SNN, Linear

    rng = np.random.default_rng(seed)
    return SNN([Linear(rng.normal(0, 0.6 / np.sqrt(a), (b, a)), rng.normal(0.05, 0.05, b))
                for a, b in zip(sizes[:-1], sizes[1:])])


def test_a_chunk_function_carrying_megabytes_runs_without_the_graph_size_warning(client):
    import warnings

    from refsnn.parallel import gather_in_order

    data = np.arange(2_000_000, dtype=np.float64)  # 16 MB inside the chunk function, as models and images are
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sums = gather_in_order(client, lambda chunk: float(data[chunk].sum()), chunk_ranges(2_000_000, 1_000_000))
    assert sums == [float(data[:1_000_000].sum()), float(data[1_000_000:].sum())]
    assert not [w for w in caught if "large graph" in str(w.message)]


def test_attack_protocol_on_a_cluster_matches_serial(client):
    from dataclasses import asdict

    from refsnn.attacks.protocol import ProtocolConfig, run_protocol

    rng = np.random.default_rng(3)
    images, labels = rng.random((11, 16)), rng.integers(0, 3, 11)
    config = ProtocolConfig(attacks=("paper", "strongest"), eps=(0.1, 0.3), T=6, fresh_draws=1, batch_size=4,
                            steps=3, effort=0.05)
    models = {"a": _small_net(0), "b": _small_net(1)}
    rows = {}
    for mode in ("serial", "cluster"):
        out = run_protocol(models, images, labels, config, scheduler=client if mode == "cluster" else None)
        rows[mode] = [{k: v for k, v in asdict(row).items() if k != "seconds"} for row in out]
    assert rows["cluster"] == rows["serial"]


def test_attack_cli_with_workers_writes_the_serial_table(tmp_path):
    pytest.importorskip("distributed")
    import json

    from refsnn.architectures import build_network
    from refsnn.attack import main
    from refsnn.io import save_model

    path = tmp_path / "m" / "model.h5"
    path.parent.mkdir()
    save_model(path, build_network("fc", (1, 28, 28), seed=0), config={"T": 4})
    tables = {}
    for mode, extra in (("serial", []), ("cluster", ["--workers", "2"])):
        out = tmp_path / mode
        assert main(["--model", str(path), "--dataset", "mnist-subset", "--n", "6", "--eps", "0.3",
                     "--attack", "paper", "--steps", "2", "--fresh-draws", "0", "--batch-size", "2",
                     "--out", str(out), "--no-progress"] + extra) == 0
        summary = json.loads((out / "table.json").read_text())
        tables[mode] = [{k: v for k, v in row.items() if k != "seconds"} for row in summary["rows"]]
    assert tables["cluster"] == tables["serial"]


def test_dataset_verification_on_a_cluster_matches_serial(client):
    from verify.dataset import DatasetVerifyConfig, sample_set, verify_dataset

    rng = np.random.default_rng(4)
    images = rng.random((7, 16))
    indices = np.arange(100, 107)
    config = DatasetVerifyConfig(eps=0.2, horizon=2, time_limit=None, chunk_size=3, attack_samples=8)
    net = _small_net(2)
    # labels = the clean predictions, so that both verdicts (MILP-proven robust, refuted) occur
    labels = np.array([net.predict(sample_set(image, index, config)[1][:, None])[0]
                       for image, index in zip(images, indices)])

    def strip(report):
        return [{k: v for k, v in record.items() if k != "seconds"} for record in report["samples"]]

    serial = verify_dataset(net, images, labels, indices, config)
    parallel = verify_dataset(net, images, labels, indices, config, scheduler=client)
    assert strip(parallel) == strip(serial) and parallel["summary"] == serial["summary"]
    assert [r["index"] for r in serial["samples"]] == indices.tolist()
    assert serial["summary"]["robust"] > 0 and serial["summary"]["not_robust"] > 0
    # one sample alone gets the same verdict as inside the data set (per-sample seeds)
    alone = verify_dataset(net, images[3:4], labels[3:4], indices[3:4], config)
    assert strip(alone) == strip(serial)[3:4]


def test_dataset_verification_cli_with_workers_matches_serial(tmp_path):
    pytest.importorskip("distributed")
    import json

    from refsnn import SNN, Flatten, Linear
    from refsnn.io import save_model
    from verify.dataset import main

    rng = np.random.default_rng(5)
    net = SNN([Flatten(), Linear(rng.normal(0, 0.08, (6, 784)), np.full(6, 0.1)),
               Linear(rng.normal(0, 0.5, (10, 6)), np.full(10, 0.05))], input_shape=(1, 28, 28))
    path = tmp_path / "tiny" / "model.h5"
    path.parent.mkdir()
    save_model(path, net)
    outputs = {}
    for mode, extra in (("serial", []), ("cluster", ["--workers", "2"])):
        out = tmp_path / mode
        assert main(["--model", str(path), "--dataset", "mnist-subset", "--n", "5", "--eps", "0.02",
                     "--robust-T", "2", "--time-limit", "60", "--batch-size", "2", "--out", str(out),
                     "--no-progress"] + extra) == 0
        document = json.loads((out / "verify.json").read_text())
        outputs[mode] = ([{k: v for k, v in r.items() if k != "seconds"} for r in document["samples"]],
                         document["summary"])
    assert outputs["cluster"] == outputs["serial"]
    assert len(outputs["serial"][0]) == 5


@pytest.mark.parametrize("module", ["refsnn.attack", "verify.dataset", "refsnn.certify"])
def test_cli_refuses_a_worker_count_below_one(module, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit):
        main(["--model", "missing.h5", "--workers", "0"])
    assert "argument --workers: must be an integer >= 1" in capsys.readouterr().err


def test_local_cluster_listens_on_loopback_only():
    """The scheduler, the workers and the dashboard of a local cluster bind 127.0.0.1, not every interface."""
    pytest.importorskip("distributed")
    from urllib.parse import urlparse

    from refsnn.parallel import LOOPBACK, dask_client

    with dask_client(workers=1) as client:
        addresses = [client.scheduler.address] + list(client.scheduler_info()["workers"])
        assert all(urlparse(address).hostname == LOOPBACK for address in addresses), addresses
        assert urlparse(client.cluster.dashboard_link).hostname == LOOPBACK, client.cluster.dashboard_link
        sockets = [sock.getsockname()[0] for sock in client.cluster.scheduler.http_server._sockets.values()]
        assert sockets and all(host == LOOPBACK for host in sockets), sockets


_WORKER_SCRIPT = '''
import json, os, sys
import numba
import numpy as np
import refsnn  # imported again in every spawned worker (its __mp_main__), before the Nanny sets its env
from refsnn.parallel import map_chunks


def compile_in_worker(chunk):
    numba.get_num_threads()  # launches the worker's Numba threads
    kernel = numba.njit(lambda x: x + 1.0)  # a fresh compilation re-reads NUMBA_* from os.environ
    return [float(kernel(float(i))) for i in chunk], os.environ.get("NUMBA_NUM_THREADS"), \\
        int(numba.config.NUMBA_NUM_THREADS), int(numba.get_num_threads())


if __name__ == "__main__":
    before = (os.environ.get("NUMBA_NUM_THREADS"), int(numba.config.NUMBA_NUM_THREADS))
    results = map_chunks(compile_in_worker, [range(0, 2), range(2, 4)], workers=2)
    after = (os.environ.get("NUMBA_NUM_THREADS"), int(numba.config.NUMBA_NUM_THREADS))
    parent_kernel = numba.njit(lambda x: x * 2.0)(3.0)  # the parent still compiles at its own count
    print(json.dumps({"results": results, "before": before, "after": after, "parent": parent_kernel}))
'''


def test_local_workers_start_single_threaded_without_exported_variables(tmp_path):
    """A worker whose Numba was imported before the Nanny's environment arrived (the parent's main
    module imports refsnn) compiles a kernel; the parent keeps its own NUMBA_NUM_THREADS."""
    pytest.importorskip("distributed")
    script = tmp_path / "run_workers.py"
    script.write_text(_WORKER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env["NUMBA_NUM_THREADS"] = "2"
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert [row[0] for row in report["results"]] == [[1.0, 2.0], [3.0, 4.0]]
    assert all(row[1:] == ["1", 1, 1] for row in report["results"])  # one Numba thread per worker
    assert report["before"] == report["after"] == ["2", 2] and report["parent"] == 6.0


def test_spawn_environment_restores_the_exact_previous_entries(monkeypatch):
    """Set and unset entries come back exactly, also when the block raises."""
    from refsnn.parallel import _spawn_environment

    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.setenv("MKL_NUM_THREADS", "")
    monkeypatch.delenv("REFSNN_TEST_ABSENT", raising=False)
    variables = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "REFSNN_TEST_ABSENT": "1"}
    with pytest.raises(RuntimeError):
        with _spawn_environment(variables):
            assert all(os.environ[name] == "1" for name in variables)
            raise RuntimeError("worker start failed")
    assert os.environ["OMP_NUM_THREADS"] == "8" and os.environ["MKL_NUM_THREADS"] == ""
    assert "REFSNN_TEST_ABSENT" not in os.environ
