"""Chunked map over samples, serial or on a Dask cluster (optional extra ``refsnn[dask]``).

Certification, attack evaluation and MILP verification of a data set are embarrassingly
parallel over samples. A driver splits its sample indices into chunks (:func:`chunk_ranges`),
writes a function ``fn(chunk) -> result`` that depends only on its chunk (per-sample seeds, no
shared state), and calls :func:`map_chunks`:

    results = map_chunks(fn, chunk_ranges(n, 50))                         # serial, no Dask import
    results = map_chunks(fn, chunk_ranges(n, 50), workers=4)              # local Dask cluster
    results = map_chunks(fn, chunk_ranges(n, 50), scheduler="tcp://head:8786")  # real cluster

The results come back in chunk order whatever the backend, so the driver's output is the same
file as the serial run. On a cluster each chunk is one task with a unique key; a worker that
dies mid-run has its tasks recomputed elsewhere by the scheduler (tasks are pure, so a
recomputation gives the same result), exceptions inside ``fn`` are retried ``retries`` times,
and every chunk index is checked to arrive exactly once before the list is returned.
"""
from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from typing import Any, Callable, List, Optional, Sequence, Union

DASK_MISSING = ('Dask is needed for --workers/--scheduler; install it with '
                '`pip install "refsnn[dask]"` (dask[distributed]).')

# Worker processes compute with one BLAS/Numba thread each: N workers on N cores, not N x N threads.
_SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                      "NUMBA_NUM_THREADS": "1"}


@contextlib.contextmanager
def _spawn_environment(variables: dict):
    """``os.environ`` holds ``variables`` inside the block and exactly its previous entries after it.

    A spawned worker inherits the environment of the moment it is spawned, before it imports
    anything. The Nanny's own ``env`` arrives later, after the worker has re-imported the parent's
    main module (and with it Numba, if that module imports refsnn): Numba has then read its thread
    count, and its next compilation refuses the changed ``NUMBA_NUM_THREADS`` ("Cannot set
    NUMBA_NUM_THREADS ... once the threads have been launched"). The parent's Numba re-reads
    ``NUMBA_*`` only when it compiles, which it does not while the cluster starts (the block), so
    its own thread count is unchanged.
    """
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def chunk_ranges(n: int, chunk_size: int, start: int = 0) -> List[range]:
    """Split the sample indices ``start .. start+n-1`` into consecutive ranges of ``chunk_size``.

    The last range is shorter when ``chunk_size`` does not divide ``n``; ``n = 0`` gives ``[]``.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    n, chunk_size, start = int(n), int(chunk_size), int(start)
    return [range(lo, min(start + n, lo + chunk_size)) for lo in range(start, start + n, chunk_size)]


def import_distributed():
    """``dask.distributed``, or an ImportError that says how to install it."""
    try:
        import distributed  # noqa: F401  (the package behind dask.distributed)
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError(DASK_MISSING) from error
    return distributed


def _run_chunk(fn: Callable[[Any], Any], chunk: Any) -> Any:
    """The task body: module-level, so the worker unpickles a plain reference."""
    return fn(chunk)


def _progress_callback(progress, total: int):
    """``progress``: None/False (silent), True (a tqdm bar) or a callable ``(index, result)``."""
    if progress is None or progress is False:
        return None, None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="chunks", unit="chunk")
        return (lambda index, result: bar.update(1)), bar
    if callable(progress):
        return progress, None
    raise TypeError(f"progress must be None, a bool or a callable (index, result), got {progress!r}")


def map_chunks(fn: Callable[[Any], Any], chunks: Sequence[Any], *, workers: Optional[int] = None,
               scheduler: Union[str, Any, None] = None, progress=None, retries: int = 2) -> list:
    """``[fn(chunk) for chunk in chunks]``, serial or one Dask task per chunk; results in chunk order.

    fn: a pure function of its chunk (same input, same output; it may run more than once when
        a worker is lost). On a cluster it is pickled with cloudpickle, so it must not hold
        open files, locks or large globals.
    chunks: a sequence (e.g. :func:`chunk_ranges`); each element is passed to ``fn`` unchanged.
    workers: start a ``LocalCluster`` of this many single-threaded worker processes for this call.
    scheduler: a scheduler address ``"tcp://host:port"``, or an existing ``distributed.Client``
        (left open). Exclusive with ``workers``.
    progress: None, True (tqdm bar over chunks) or a callable ``progress(index, result)`` called
        once per chunk as it completes (completion order on a cluster, chunk order serially).
    retries: how often a task whose ``fn`` raised is retried on a cluster before the error is
        re-raised here (a worker that dies is handled separately by the scheduler).

    With ``workers`` and ``scheduler`` both None nothing is imported from Dask.
    """
    chunks = list(chunks)
    if workers is not None and scheduler is not None:
        raise ValueError("give either workers (a local cluster) or scheduler (an existing one), not both")
    if workers is not None and (int(workers) != workers or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if int(retries) != retries or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    callback, bar = _progress_callback(progress, len(chunks))
    try:
        if workers is None and scheduler is None:
            results = []
            for index, chunk in enumerate(chunks):
                results.append(fn(chunk))
                if callback is not None:
                    callback(index, results[-1])
            return results
        return _map_on_dask(fn, chunks, workers, scheduler, callback, int(retries))
    finally:
        if bar is not None:
            bar.close()


def _map_on_dask(fn, chunks, workers, scheduler, callback, retries) -> list:
    distributed = import_distributed()
    if scheduler is not None and not isinstance(scheduler, (str, distributed.Client)):
        raise TypeError(f"scheduler must be an address string or a distributed.Client, got {scheduler!r}")
    with dask_client(workers, scheduler) as client:
        return gather_in_order(client, fn, chunks, callback, retries)


def gather_in_order(client, fn, chunks, callback=None, retries: int = 2) -> list:
    """Submit one task per chunk on ``client`` and return the results in chunk order.

    Each task has a unique key (``refsnn-chunk-<run>-<index>``) so chunks of two runs never
    share a cached result. A chunk whose result arrives twice, or never, raises RuntimeError.
    """
    distributed = import_distributed()
    run = uuid.uuid4().hex[:12]
    with warnings.catch_warnings():
        # fn carries the run's models and data (megabytes) inside the graph on purpose: a task
        # lost with its worker is recomputed from the graph alone, which scattered data would
        # not survive when every copy's worker is lost. Distributed's size advice does not apply.
        warnings.filterwarnings("ignore", message="Sending large graph", category=UserWarning)
        futures = [client.submit(_run_chunk, fn, chunk, key=f"refsnn-chunk-{run}-{index}",
                                 retries=retries, pure=False)
                   for index, chunk in enumerate(chunks)]
    index_of_key = {future.key: index for index, future in enumerate(futures)}
    results = {}
    try:
        for future in distributed.as_completed(futures):
            index = index_of_key[future.key]
            if index in results:
                raise RuntimeError(f"chunk {index} returned twice")
            results[index] = future.result()
            future.release()
            if callback is not None:
                callback(index, results[index])
    except BaseException:
        client.cancel(futures)
        raise
    missing = sorted(set(range(len(chunks))) - set(results))
    if missing:
        raise RuntimeError(f"chunks {missing} returned no result")
    return [results[index] for index in range(len(chunks))]


#: Interface of every local cluster refsnn starts (scheduler, workers, dashboard).
LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def dask_client(workers: Optional[int] = None, scheduler: Union[str, Any, None] = None):
    """A ``distributed.Client`` for several :func:`map_chunks` calls, or None (serial) without options.

    ``with dask_client(args.workers, args.scheduler) as client: map_chunks(fn, chunks, scheduler=client)``
    starts one local cluster (or connects once) for a whole run and closes what it opened.
    A ``distributed.Client`` given as ``scheduler`` is yielded unchanged and left open.
    """
    if workers is not None and scheduler is not None:
        raise ValueError("give either workers (a local cluster) or scheduler (an existing one), not both")
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and (int(workers) != workers or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    distributed = import_distributed()
    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler
        return
    cluster = None
    if workers is not None:
        # Loopback only: a local cluster serves nobody else, and its dashboard and scheduler
        # accept unauthenticated connections (":0" would bind every interface).
        # The workers are spawned with the single-thread variables in their environment from the
        # start (_spawn_environment). A worker the Nanny restarts after a loss is spawned with the
        # parent's variables: the Nanny's env leaves NUMBA_NUM_THREADS out so that such a worker
        # keeps the count its Numba started with instead of failing at its first compilation.
        with _spawn_environment(_SINGLE_THREAD_ENV):
            cluster = distributed.LocalCluster(
                n_workers=int(workers), threads_per_worker=1, processes=True, host=LOOPBACK,
                dashboard_address=f"{LOOPBACK}:0",
                env={k: v for k, v in _SINGLE_THREAD_ENV.items() if not k.startswith("NUMBA_")})
        client = distributed.Client(cluster)
    else:
        client = distributed.Client(scheduler)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def add_cluster_arguments(parser) -> None:
    """``--workers N`` (an integer >= 1) and ``--scheduler ADDRESS`` (mutually exclusive) on an argparse parser."""
    from .cli import VOCABULARY, positive_int

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help=f"{VOCABULARY['--workers']} of N worker processes "
                            "(needs refsnn[dask]; results identical to the serial run; default: serial)")
    group.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run the chunks on the Dask cluster at ADDRESS, e.g. tcp://head:8786 "
                            "(see docs/SCALE.md; default: serial)")


def single_thread_env() -> dict:
    """The environment the local workers are spawned with (one BLAS/Numba thread per process)."""
    return dict(_SINGLE_THREAD_ENV)


__all__ = ["chunk_ranges", "map_chunks", "dask_client", "add_cluster_arguments", "gather_in_order",
           "import_distributed", "DASK_MISSING", "single_thread_env"]
