"""Stage 6: a whole sample sheet on Dask: the sheet, the driver, one worker's task, dispatch
and the cluster.
"""

from __future__ import annotations

from .samplesheet import REQUIRED_COLUMNS, read_sample_sheet
from .dispatch import plan_groups, run_each, task_slots
from .cluster import QUIET_WORKERS, WORKER_MALLOC, make_local_cluster
from .task import SampleResult, process_sample
from .driver import BatchResult, run_batch

__all__ = [
    "REQUIRED_COLUMNS",
    "read_sample_sheet",
    "plan_groups",
    "run_each",
    "task_slots",
    "QUIET_WORKERS",
    "WORKER_MALLOC",
    "make_local_cluster",
    "SampleResult",
    "process_sample",
    "BatchResult",
    "run_batch",
]
