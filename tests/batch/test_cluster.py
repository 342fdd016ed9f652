"""Tests for cytopipe.batch.cluster: the local cluster's workers and the memory guard."""

from __future__ import annotations

import pytest

from cytopipe.batch.cluster import _check_memory
from cytopipe.exceptions import CytopipeError
from cytopipe.sim.sample import SampleSpec, write_fcs


def test_local_workers_run_without_the_profiler_and_with_a_malloc_top_pad(dask_client):
    """make_local_cluster's workers: Dask's timers quieted, no MALLOC_TRIM_THRESHOLD_, a top pad (see cluster.py)."""
    import dask

    from cytopipe.batch.cluster import QUIET_WORKERS, WORKER_MALLOC

    profiling = dask_client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    trim = dask_client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
    pad = dask_client.run(lambda: __import__("os").environ.get("MALLOC_TOP_PAD_"))
    assert len(profiling) == 2 and not any(profiling.values())
    assert not any(trim.values())
    assert set(pad.values()) == {WORKER_MALLOC["MALLOC_TOP_PAD_"]}
    for key, value in QUIET_WORKERS.items():
        seen = dask_client.run(lambda key=key: dask.config.get(key))
        assert set(seen.values()) == {value}, key
    # the scheduler (started in this process for a LocalCluster) and the workers tick once a second
    assert dask_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler._tick_interval) == 1.0
    assert set(dask_client.run(lambda dask_worker: dask_worker._tick_interval).values()) == {1.0}


def test_memory_guard_refuses_a_file_over_the_worker_limit_naming_it(tmp_path, dask_client):
    """Checked inside a real worker: a file needing more than the limit fails before it is read."""
    path = tmp_path / "big.fcs"
    write_fcs(path, SampleSpec(n_events=200_000, seed=3))
    limit = dask_client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
    assert all(limit.values())  # the local cluster always sets one
    assert dask_client.submit(_check_memory, str(path), pure=False).result() is None  # fits: 200k x 12 x 16 B

    def over_a_small_limit(p: str) -> str:
        from distributed import get_worker

        manager = get_worker().memory_manager
        saved, manager.memory_limit = manager.memory_limit, 100_000_000
        try:
            _check_memory(p)
        except CytopipeError as e:
            return str(e)
        finally:
            manager.memory_limit = saved
        return ""

    message = dask_client.submit(over_a_small_limit, str(path), pure=False).result()
    assert "big.fcs" in message and "0.1 GB" in message and "--memory-limit" in message



def test_memory_guard_is_silent_outside_a_worker(tmp_path):
    """Outside Dask (a notebook, the tests) there is no worker limit to enforce."""
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=1_000, seed=1))
    assert _check_memory(str(path)) is None


def test_a_worker_gates_its_next_sample_in_pages_it_already_has(tmp_path, dask_client):
    """The top pad and the reader's reused buffer: a second 300k-event sample costs almost no page faults.

    Measured in a fresh process: with Dask's MALLOC_TRIM_THRESHOLD_=65536 such a sample page-faults
    ~40,000 times (every temporary returned to the kernel and faulted in afresh), with glibc's
    adaptive thresholds 800-2,300 times, with :data:`~cytopipe.batch.cluster.WORKER_MALLOC` twice.
    """
    import resource

    from cytopipe.batch.task import process_sample
    from cytopipe.strategy.registry import load_strategy

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"s{i}.fcs"))
        write_fcs(paths[-1], SampleSpec(n_events=300_000, seed=40 + i))
    d = str(load_strategy("treg@1.0.0").directory)

    def faults_of_the_last(paths: list[str]) -> int:
        for p in paths[:-1]:  # the first samples set the worker's heap up
            process_sample(p, d)
        faults = []
        for _ in range(2):  # the fewest of two: the count is process-wide, and Dask's own threads allocate too
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            assert not process_sample(paths[-1], d).error
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return min(faults)

    worker = next(iter(dask_client.scheduler_info()["workers"]))
    faults = dask_client.submit(faults_of_the_last, paths, workers=[worker], pure=False).result()
    assert faults < 100, f"{faults} page faults gating a 300k-event sample in a warm worker"


def test_local_workers_start_with_their_modules_loaded_once_for_all(tmp_path):
    """Forked from the forkserver: FlowKit, matplotlib and the task are loaded before any task ran there."""
    from distributed import Client

    from cytopipe.batch.cluster import make_local_cluster

    def state():
        import gc
        import os
        import sys

        loaded = sorted(m for m in ("flowkit", "matplotlib.figure", "cytopipe.batch.task") if m in sys.modules)
        return loaded, gc.get_freeze_count() > 0, "CYTOPIPE_FORKSERVER" in os.environ

    with make_local_cluster(1) as cluster, Client(cluster) as client:
        seen = list(client.run(state).values())
    assert seen == [(["cytopipe.batch.task", "flowkit", "matplotlib.figure"], True, False)]


def test_a_run_takes_the_cluster_started_ahead_of_it(tmp_path):
    """``cluster_ahead`` (what ``cytopipe run`` enters first): the run's samples go to that cluster's worker."""
    import json

    import cytopipe.batch.cluster as cluster_mod
    from cytopipe.batch.driver import run_batch

    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=5_000, seed=1))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na.fcs,P1,D1\n")
    with cluster_mod.cluster_ahead(2, 1), cluster_mod.cluster_ahead(None, 1):  # 2 workers, and 1 (one row)
        ahead = dict(cluster_mod._EARLY)
        assert sorted(ahead) == [(1, "auto", False), (2, "auto", False)]
        client, _ = ahead[(1, "auto", False)].result()
        pid = next(iter(client.run(lambda: __import__("os").getpid()).values()))
        other, _ = ahead[(2, "auto", False)].result()
        run_batch(tmp_path / "s.csv", tmp_path / "out", report=False, log_file=tmp_path / "log.jsonl")
        assert other.status == "closed"  # the other size: closed when the run asked
    record = json.loads((tmp_path / "log.jsonl").read_text())
    assert record["worker"].endswith(f":{pid}")
    assert cluster_mod._EARLY == {} and client.status == "closed"


def test_a_cluster_started_ahead_of_a_run_that_never_asks_is_closed(tmp_path):
    import cytopipe.batch.cluster as cluster_mod
    from cytopipe.batch.driver import run_batch
    from cytopipe.exceptions import SampleSheetError

    (tmp_path / "s.csv").write_text("file,patient_id,visit\nnope.fcs,P1,D1\n")
    with pytest.raises(SampleSheetError), cluster_mod.cluster_ahead(1, 1):
        client, _ = cluster_mod._EARLY[(1, "auto", False)].result()
        run_batch(tmp_path / "s.csv", tmp_path / "out")
    assert cluster_mod._EARLY == {} and client.status == "closed"


_FRESH_RUN = """
import sys
from cytopipe.batch.cluster import make_local_cluster, start_worker_processes

if __name__ == "__main__":
    start_worker_processes(default_strategy=True)  # as ``cytopipe run`` does, first thing
    print("dask" in sys.modules)
    from distributed import Client

    def state():
        import gc
        from threadpoolctl import threadpool_info

        from cytopipe.batch import task
        from cytopipe.review import plots

        blas = sorted({d["num_threads"] for d in threadpool_info()})
        return blas, gc.isenabled(), len(plots._FRAMES), task._strategy_loaded.cache_info().currsize
    with make_local_cluster(1) as cluster, Client(cluster) as client:
        print(list(client.run(state).values()))
"""


@pytest.mark.slow
def test_the_workers_process_starts_before_dask_loads_with_one_blas_thread_and_the_default_strategy(tmp_path):
    """``start_worker_processes`` imports no Dask (its settings are read in the forkserver); the forked
    workers run one BLAS thread (OpenBLAS fixes its threads as it loads: two a worker here when the
    forkserver started without the setting), have the garbage collector on, and, for a run of the
    default strategy, start with its gate plots' frames drawn and the strategy loaded.

    A fresh interpreter: the forkserver of this one is running already.
    """
    import subprocess
    import sys

    script = tmp_path / "fresh_run.py"
    script.write_text(_FRESH_RUN)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "False"
    (blas, gc_on, frames, strategies), = eval(lines[1])  # noqa: S307 - our own script's repr
    assert blas == [1] and gc_on and frames >= 4 and strategies == 1
