"""Tests for cytopipe.cluster: the local cluster's workers and the memory guard."""

from __future__ import annotations

from cytopipe.cluster import _check_memory
from cytopipe.exceptions import CytopipeError
from cytopipe.synth import SampleSpec, write_fcs


def test_local_workers_run_without_the_profiler_and_with_glibcs_malloc(dask_client):
    """make_local_cluster's workers: Dask's timers quieted, no MALLOC_TRIM_THRESHOLD_ (see cluster.py)."""
    import dask

    from cytopipe.cluster import QUIET_WORKERS

    profiling = dask_client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
    trim = dask_client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert len(profiling) == 2 and not any(profiling.values())
    assert not any(trim.values())
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
