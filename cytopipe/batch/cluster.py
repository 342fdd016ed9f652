"""The Dask cluster a run starts or joins, and the memory guard of its workers.

:func:`make_local_cluster` starts single-threaded worker processes tuned for
gating (malloc that keeps its pages between samples, no statistical profiler); a run given
a scheduler address joins that cluster instead. The local workers are forked
from one process that has already loaded what a sample needs (FlowKit,
matplotlib, cytopipe's task): :func:`start_worker_processes` starts it, and
``cytopipe run`` calls it first thing, so those imports overlap the driver's
own. Before reading a file, a worker refuses one that would not fit its
memory limit, with an error naming the limit, instead of being killed by its nanny.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..exceptions import CytopipeError

__all__ = ["QUIET_WORKERS", "WORKER_MALLOC", "WORKER_PRELOAD", "WORKER_THREADS", "cluster_ahead",
           "make_local_cluster", "start_worker_processes"]

#: Dask settings that keep Dask's own timers (the statistical profiler, the event-loop
#: tick, the memory and system monitors) from preempting the gating when every core
#: runs a worker. The task stream, progress and memory panels still work; too-big files
#: are refused before reading (:func:`_check_memory`). docs/performance.md has the measurements.
QUIET_WORKERS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
}


#: glibc malloc settings of the local cluster's worker processes. Dask's own
#: MALLOC_TRIM_THRESHOLD_ hands every freed temporary back to the kernel, to be page-faulted
#: afresh by the next sample; here arrays under 32 MB come from the heap, which keeps 64 MB
#: free at its top, so the next sample reuses pages the worker already has. A worker then
#: keeps its heap's high-water mark plus 64 MB between samples. docs/performance.md.
WORKER_MALLOC = {"MALLOC_TOP_PAD_": str(64 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}

#: BLAS and OpenMP threads of a local worker: one, as Dask's nanny sets by default
#: (``distributed.nanny.pre-spawn-environ``; the gating is one sample per core). The process the
#: workers are forked from starts with them, before this process has Dask loaded: OpenBLAS reads
#: them only as it loads, and a forked worker keeps the threads it inherits (two a worker here,
#: whatever its environment said, when the forkserver was started without them).
WORKER_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

#: Modules the local workers have loaded before they start. They are forked from one
#: ``forkserver`` process that imports these once (~2 s of FlowKit, pandas, matplotlib and
#: Dask, see :mod:`cytopipe.batch.preload`), instead of each spawned worker importing them
#: again on its first task; docs/performance.md ("Start-up and exit") has the measurements.
WORKER_PRELOAD = ("cytopipe.batch.preload",)

#: Names of the forkserver's launch environment, read (and dropped) by :mod:`.preload`: the marker
#: ("1"), and the run's strategy when known (``name@version``, a folder, or the default's stand-in).
_MARKER, _STRATEGY, _DEFAULT_STRATEGY = "CYTOPIPE_FORKSERVER", "CYTOPIPE_FORKSERVER_STRATEGY", ":default:"

_FORKSERVER_LOCK = threading.Lock()
#: Local clusters started ahead of a run (:func:`cluster_ahead`), by (workers, memory limit, dashboard).
_EARLY: dict[tuple, object] = {}

#: Peak bytes per event value above the worker's baseline while gating a file read
#: with FlowKit's float64 ``Sample`` (~3.7x the float32 matrix, ~15 bytes a value).
_PEAK_BYTES_PER_VALUE = 16
#: The same for a float32 file read by :mod:`cytopipe.fcs.lean`: its float32 matrix
#: (4 bytes a value) plus, per event, the gates' row indices, the float64 Time values
#: and temporaries; 64 bytes an event leaves a margin over the peaks measured
#: (docs/performance.md, "Memory").
_LEAN_BYTES_PER_EVENT = 64
#: The worker's own footprint.
_WORKER_BASELINE = 300e6


def _check_memory(path: str, *, lean: bool = False) -> None:
    """Refuse, before reading, a file too big for this Dask worker's memory limit.

    ``lean``: the need of a read by :func:`~cytopipe.fcs.lean.read_fcs_lean`
    (less than half of what FlowKit's reader needs); otherwise FlowKit's.
    """
    try:
        from distributed import get_worker

        limit = get_worker().memory_manager.memory_limit
    except (ImportError, ValueError, AttributeError):  # not in a Dask worker
        return
    if not limit:
        return
    from ..fcs.header import scan_header  # here: the CLI imports this module before anything heavy

    head = scan_header(path)
    n, p = int(head.get("$TOT", 0) or 0), int(head.get("$PAR", 0) or 0)
    per_event = p * 4 + _LEAN_BYTES_PER_EVENT if lean else p * _PEAK_BYTES_PER_VALUE
    need = n * per_event + _WORKER_BASELINE
    if need > limit:
        msg = (
            f"{path}: {n:,} events x {p} channels need about {need / 1e9:.1f} GB to gate, more than "
            f"the Dask worker memory limit of {limit / 1e9:.1f} GB; run with fewer workers "
            f"(--workers 1) or a larger --memory-limit."
        )
        raise CytopipeError(msg)


def _make_client(
    scheduler: str | None, n_workers: int | None, n_tasks: int, memory_limit: str | int | None = "auto",
    *, take_early: bool = True, dashboard: bool = False,
):
    from distributed import Client

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except OSError as e:
            msg = f"Cannot reach the Dask scheduler at {scheduler!r}: {e}. Is 'dask scheduler' running there?"
            raise CytopipeError(msg) from e
    workers = _workers(n_workers, n_tasks)
    if take_early:
        with _FORKSERVER_LOCK:
            early = _EARLY.pop((workers, memory_limit, dashboard), None)
        _discard_early()  # any other started ahead was for another size: not needed
        if early is not None:
            return early.result()
    cluster = make_local_cluster(workers, memory_limit=memory_limit, dashboard=dashboard)
    try:
        return Client(cluster), cluster
    except BaseException:
        cluster.close()
        raise


def _workers(n_workers: int | None, n_tasks: int) -> int:
    return n_workers or min(os.cpu_count() or 1, max(n_tasks, 1))


@contextmanager
def cluster_ahead(n_workers: int | None, n_tasks: int, *, memory_limit: str | int | None = "auto",
                  dashboard: bool = False) -> Iterator[None]:
    """Start the local cluster a run will ask for now, in a thread; close it at the end if no run took it.

    :func:`~cytopipe.batch.driver.run_batch` asking, inside the ``with``,
    for a local cluster of the same size, memory limit and dashboard takes this one
    instead of starting its own. ``cytopipe run`` enters it (with
    :func:`start_worker_processes`) before it loads FlowKit, so the cluster
    comes up meanwhile (docs/performance.md, "Start-up and exit").

    Parameters
    ----------
    n_workers, n_tasks
        As ``run_batch``'s ``n_workers`` and the sample sheet's rows (the
        default is one worker per core, at most one per row).
    memory_limit, dashboard
        As ``run_batch``'s.

    Examples
    --------
    >>> with cluster_ahead(2, n_tasks=24):  # doctest: +SKIP
    ...     result = run_batch("samples.csv", "out", n_workers=2)
    """
    start_worker_processes()
    key = (_workers(n_workers, n_tasks), memory_limit, dashboard)
    with _FORKSERVER_LOCK:
        if key not in _EARLY:
            _EARLY[key] = _start_client(None, key[0], key[0], memory_limit, take_early=False, dashboard=dashboard)
    try:
        yield
    finally:
        _discard_early()


def _discard_early() -> None:
    with _FORKSERVER_LOCK:
        futures = list(_EARLY.values())
        _EARLY.clear()
    for future in futures:
        _discard_client(future)


def _worker_environ(*, dask_config: bool = True) -> dict[str, str]:
    """The environment a local worker starts with: one BLAS thread, Dask's pre-spawn settings, our malloc settings.

    ``dask_config=False``: without Dask's settings (and without importing Dask, ~0.1 s), for the
    forkserver's launch; it applies a configured thread count itself (:mod:`.preload`).
    """
    environ = dict(WORKER_THREADS)
    if dask_config:
        import dask

        environ.update({k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                        if not k.startswith("MALLOC_") and v is not None})
    environ.update(WORKER_MALLOC)
    if environ.get("PYTHONHASHSEED") in (None, "0"):  # as Dask's nanny does: one hash seed for all workers
        environ["PYTHONHASHSEED"] = "6640"
    return environ


def start_worker_processes(strategy: str | os.PathLike | None = None, *, default_strategy: bool = False) -> None:
    """Start the process local workers are forked from, if it is not running yet; return at once.

    It imports :data:`WORKER_PRELOAD` in the background, with the workers'
    environment (:data:`WORKER_MALLOC`, :data:`WORKER_THREADS`), while this
    process goes on; :func:`make_local_cluster` calls it too, so calling it
    early only moves those imports earlier. Idempotent. It imports nothing
    heavy itself: ``cytopipe run`` calls it before loading anything else.

    Parameters
    ----------
    strategy
        The run's strategy (``name@version`` or folder), when known: the
        forkserver also checks and parses it and draws its gate plots'
        frames, once for all workers.
    default_strategy
        Without ``strategy``: the run's is the default one
        (:data:`~cytopipe.strategy.registry.DEFAULT_STRATEGY`), resolved by
        the forkserver, so the caller need not load the strategy registry first.

    Examples
    --------
    >>> start_worker_processes()  # doctest: +SKIP
    """
    import multiprocessing
    from multiprocessing import forkserver

    ref = str(strategy) if strategy is not None else (_DEFAULT_STRATEGY if default_strategy else "")
    with _FORKSERVER_LOCK:
        ctx = multiprocessing.get_context("forkserver")
        # no "__main__": a worker needs nothing of the script that started the run
        ctx.set_forkserver_preload(list(WORKER_PRELOAD))
        environ = {**_worker_environ(dask_config=False), _MARKER: "1", _STRATEGY: ref}
        saved = {k: os.environ.get(k) for k in environ}
        os.environ.update(environ)  # read by the forkserver (and glibc's malloc there) as it starts
        try:
            forkserver.ensure_running()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def make_local_cluster(n_workers: int, *, memory_limit: str | int | None = "auto", dashboard: bool = False):
    """Start the local Dask cluster ``run`` uses: single-threaded worker processes.

    The workers are forked from the process :func:`start_worker_processes`
    starts (so they begin with FlowKit and cytopipe loaded) and get this
    process's environment as it is now, as spawned workers would.

    Parameters
    ----------
    n_workers
        Worker processes (one sample at a time each).
    memory_limit
        Per worker (``"4GB"``, bytes, ``"auto"``).
    dashboard
        Serve Dask's dashboard on a free port. Off by default: the scheduler
        then imports its Bokeh apps (~0.7 s of the command's start-up, measured
        in docs/performance.md).

    Returns
    -------
    distributed.LocalCluster
    """
    import dask
    from distributed import LocalCluster

    start_worker_processes()
    environ = _worker_environ()
    config = {"distributed.nanny.pre-spawn-environ": environ,
              "distributed.worker.multiprocessing-method": "forkserver", **QUIET_WORKERS}
    with dask.config.set(config):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,  # gating is CPU-bound Python/numpy: one sample per core
            processes=True,
            dashboard_address=":0",  # any free port: never collide with another cluster's 8787
            # without it the scheduler's HTTP server (health, metrics) still starts, on that port
            scheduler_kwargs={"dashboard": dashboard},
            memory_limit=memory_limit,  # a worker over it is restarted by its nanny, not the machine
            silence_logs=logging.ERROR,
            # a forked worker has the forkserver's environment: bring it up to this process's
            env={**os.environ, **environ},
        )


def _start_client(scheduler: str | None, n_workers: int | None, n_tasks: int,
                  memory_limit: str | int | None = "auto", *, take_early: bool = True, dashboard: bool = False):
    """:func:`_make_client` in a thread: a ``Future`` of ``(client, cluster)``; the caller goes on meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="cytopipe-cluster-start")
    try:
        return pool.submit(_make_client, scheduler, n_workers, n_tasks, memory_limit, take_early=take_early,
                           dashboard=dashboard)
    finally:
        pool.shutdown(wait=False)


def _discard_client(future) -> None:
    """Close what a :func:`_start_client` started (waiting for it to be up), ignoring a failed start."""
    if future is None:
        return
    try:
        client, cluster = future.result()
    except Exception:  # noqa: BLE001 - the start failed: nothing to close
        return
    client.close()
    if cluster is not None:
        cluster.close()
