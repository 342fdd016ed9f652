"""Tests for cytopipe.dispatch: task order and grouping, and a worker-killing file isolated."""

from __future__ import annotations

import os

import pytest

from cytopipe.dispatch import _GROUP_BYTES, _TASKS_PER_SLOT, plan_groups, run_each

MB = 1 << 20


def test_groups_keep_big_files_alone_and_put_small_ones_together():
    sizes = [48 * MB] * 4 + [2 * MB] * 40  # four 1M-event files, forty 50k-event files
    groups = plan_groups(sizes, n_slots=2)
    assert sorted(i for g in groups for i in g) == list(range(44))  # each file once
    assert groups[:4] == [[0], [1], [2], [3]]  # largest first, alone
    small = groups[4:]
    assert all(sum(sizes[i] for i in g) <= _GROUP_BYTES for g in small)
    assert len(small) == 4  # 80 MB of small files in tasks of at most 24 MB
    assert [len(g) for g in small] == [12, 12, 12, 4]


def test_groups_stay_balanced_for_a_small_batch():
    # 10 small files on 2 workers: at least 4 tasks per worker, not one task of 10 files
    groups = plan_groups([MB] * 10, n_slots=2)
    assert len(groups) >= min(10, _TASKS_PER_SLOT * 2)
    assert [i for g in groups for i in g] == list(range(10))  # equal sizes keep the sheet's order


def test_order_is_by_decreasing_size():
    sizes = [5, 1, 9, 3, 7]
    assert [i for g in plan_groups(sizes, n_slots=8) for i in g] == [2, 4, 0, 3, 1]


def test_slots_count_worker_threads(dask_client):
    from cytopipe.dispatch import task_slots

    assert task_slots(dask_client.scheduler_info()) == 2  # two single-threaded workers
    assert task_slots({"workers": {"tcp://a:1": {"nthreads": 8}, "tcp://b:1": {"nthreads": 8}}}) == 16


def _square_or_die(x: int, die_on: int) -> int:
    if x == die_on:
        os._exit(1)  # a crash that takes the worker process down (a C extension's segfault, say)
    return x * x


@pytest.mark.slow
def test_a_worker_killing_file_fails_alone(tmp_path):
    """Real worker deaths: the group holding the file is retried one file per task."""
    import dask
    from distributed import Client

    from cytopipe.cluster import make_local_cluster

    paths = []
    for i in range(8):
        (tmp_path / f"f{i}").write_bytes(b"x" * 1000)
        paths.append(str(tmp_path / f"f{i}"))
    calls = [((i,), {"die_on": 5}) for i in range(8)]
    assert any(5 in g and len(g) > 1 for g in plan_groups([1000] * 8, n_slots=1))  # the killer shares a task
    # no Dask retries, and one task at a time per worker: a dying worker then takes only its
    # running task with it (a task queued behind it would count as failed too), so the test is exact
    config = {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(config):
        with make_local_cluster(1) as cluster, Client(cluster) as client:
            results = dict(run_each(client, _square_or_die, calls, paths))
    assert sorted(results) == list(range(8))
    assert isinstance(results[5], Exception)
    assert {i: r for i, r in results.items() if i != 5} == {i: i * i for i in range(8) if i != 5}
