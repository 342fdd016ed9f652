"""Stage 6: a whole sample sheet on Dask: the sheet, the driver, one worker's task, dispatch
and the cluster.

The sheet, task and driver names load on first use (they bring in pandas and
FlowKit), so ``cytopipe run`` can start the workers' process and the local
cluster (:func:`~cytopipe.batch.cluster.start_worker_processes`,
:func:`~cytopipe.batch.cluster.cluster_ahead`) before loading them.
"""

from __future__ import annotations

from .._lazy import lazy_names
from .cluster import (
    QUIET_WORKERS,
    WORKER_MALLOC,
    WORKER_PRELOAD,
    WORKER_THREADS,
    cluster_ahead,
    make_local_cluster,
    start_worker_processes,
)
from .dispatch import plan_groups, run_each, task_slots

__all__ = [
    "REQUIRED_COLUMNS",
    "read_sample_sheet",
    "plan_groups",
    "run_each",
    "task_slots",
    "QUIET_WORKERS",
    "WORKER_MALLOC",
    "WORKER_PRELOAD",
    "WORKER_THREADS",
    "cluster_ahead",
    "make_local_cluster",
    "start_worker_processes",
    "SampleResult",
    "process_sample",
    "cache_key",
    "versions_sha",
    "worker_versions",
    "BatchResult",
    "run_batch",
    "applied_gates",
    "check_panels",
    "PANEL_COLUMNS",
]

_LAZY = {"REQUIRED_COLUMNS": "samplesheet", "read_sample_sheet": "samplesheet", "SampleResult": "task",
         "process_sample": "task", "cache_key": "task", "versions_sha": "task", "worker_versions": "task",
         "BatchResult": "driver", "run_batch": "driver", "applied_gates": "driver",
         "check_panels": "panels", "PANEL_COLUMNS": "panels"}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
