"""The Dask cluster a run starts or joins, and the memory guard of its workers.

:func:`make_local_cluster` starts single-threaded worker processes tuned for
gating (malloc that keeps its pages between samples, no statistical profiler); a run given
a scheduler address joins that cluster instead. Before reading a file, a
worker refuses one that would not fit its memory limit, with an error naming
the limit, instead of being killed by its nanny.
"""

from __future__ import annotations

import logging
import os

from ..exceptions import CytopipeError
from ..fcs.header import scan_header

__all__ = ["QUIET_WORKERS", "WORKER_MALLOC", "make_local_cluster"]

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
    scheduler: str | None, n_workers: int | None, n_tasks: int, memory_limit: str | int | None = "auto"
):
    from distributed import Client

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except OSError as e:
            msg = f"Cannot reach the Dask scheduler at {scheduler!r}: {e}. Is 'dask scheduler' running there?"
            raise CytopipeError(msg) from e
    workers = n_workers or min(os.cpu_count() or 1, max(n_tasks, 1))
    cluster = make_local_cluster(workers, memory_limit=memory_limit)
    return Client(cluster), cluster


def make_local_cluster(n_workers: int, *, memory_limit: str | int | None = "auto"):
    """Start the local Dask cluster ``run`` uses: single-threaded worker processes.

    Parameters
    ----------
    n_workers
        Worker processes (one sample at a time each).
    memory_limit
        Per worker (``"4GB"``, bytes, ``"auto"``).

    Returns
    -------
    distributed.LocalCluster
    """
    import dask
    from distributed import LocalCluster

    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if not k.startswith("MALLOC_")}
    environ.update(WORKER_MALLOC)
    config = {"distributed.nanny.pre-spawn-environ": environ, **QUIET_WORKERS}
    with dask.config.set(config):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,  # gating is CPU-bound Python/numpy: one sample per core
            processes=True,
            dashboard_address=":0",  # any free port: never collide with another cluster's 8787
            memory_limit=memory_limit,  # a worker over it is restarted by its nanny, not the machine
            silence_logs=logging.ERROR,
        )
