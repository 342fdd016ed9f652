"""Tests for cytopipe.batch.dispatch: task order and grouping, and a worker-killing file isolated."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cytopipe.batch.dispatch import _GROUP_MAX, _GROUP_MAX_BYTES, _GROUP_MIN_BYTES, _SHARE, plan_groups, run_each

MB = 1 << 20


def _share_bound(sizes, groups, n_slots, index):
    """The bytes a task may hold by plan_groups' rule: its share of what is left, clipped."""
    remaining = sum(sizes[i] for g in groups[index:] for i in g)
    return min(_GROUP_MAX_BYTES, max(_GROUP_MIN_BYTES, remaining / (_SHARE * n_slots)))


@pytest.mark.parametrize("n_slots", [1, 2, 8])
def test_each_task_takes_its_share_of_what_is_left_and_no_less(n_slots):
    """Guided self-scheduling: big tasks while much is left, single files at the end."""
    rng = np.random.default_rng(n_slots)
    sizes = [int(s) for s in rng.integers(1 * MB, 48 * MB, 150)] + [48 * MB] * 10 + [300 * MB]
    groups = plan_groups(sizes, n_slots=n_slots)
    flat = [i for g in groups for i in g]
    assert sorted(flat) == list(range(len(sizes)))  # each file once
    assert [sizes[i] for i in flat] == sorted(sizes, reverse=True)  # largest first
    for k, group in enumerate(groups):
        total = sum(sizes[i] for i in group)
        bound = _share_bound(sizes, groups, n_slots, k)
        assert len(group) == 1 or total <= bound  # within its share (a bigger file goes alone)
        if k + 1 < len(groups) and len(group) < _GROUP_MAX:  # and as big as its share allows
            assert total + sizes[groups[k + 1][0]] > bound
    assert groups[0] == [len(sizes) - 1]  # the 300 MB file alone, first
    assert sum(sizes[i] for i in groups[-1]) <= _GROUP_MIN_BYTES or len(groups[-1]) == 1


def test_a_batch_of_big_files_needs_half_the_tasks_and_ends_on_single_files():
    groups = plan_groups([48 * MB] * 24, n_slots=2)  # 24 files of 1M events, 2 workers
    assert [len(g) for g in groups] == [4, 4, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1]
    assert [i for g in groups for i in g] == list(range(24))  # equal sizes keep the sheet's order


def test_small_files_go_together_up_to_the_floor_at_the_end():
    sizes = [48 * MB] * 4 + [2 * MB] * 40  # four 1M-event files, forty 50k-event files
    groups = plan_groups(sizes, n_slots=2)
    assert groups[:4] == [[0], [1], [2], [3]]  # the big files alone: each is over a quarter of what is left
    small = [sum(sizes[i] for i in g) for g in groups[4:]]
    assert small[0] == 20 * MB  # 80 MB left for 2 workers: a quarter of it
    assert all(a >= b for a, b in zip(small, small[1:]))  # tasks shrink
    assert all(s >= _GROUP_MIN_BYTES for s in small[:-1])  # never below the floor but the last


def test_a_small_batch_still_gives_every_worker_a_task():
    groups = plan_groups([MB] * 10, n_slots=2)
    assert len(groups) >= 2
    assert [i for g in groups for i in g] == list(range(10))


def test_order_is_by_decreasing_size():
    sizes = [5, 1, 9, 3, 7]
    assert [i for g in plan_groups(sizes, n_slots=8) for i in g] == [2, 4, 0, 3, 1]


def test_slots_count_worker_threads(dask_client):
    from cytopipe.batch.dispatch import task_slots

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

    from cytopipe.batch.cluster import make_local_cluster

    paths = []
    for i in range(8):
        (tmp_path / f"f{i}").write_bytes(b"x" * 1000)
        paths.append(str(tmp_path / f"f{i}"))
    calls = [((i,), {"die_on": 5}) for i in range(8)]
    assert any(5 in g and len(g) > 1 for g in plan_groups([1000] * 8, n_slots=1))  # the killer shares a task
    # no Dask retries, and one task at a time per worker: a dying worker then takes only its
    # running task with it (a task queued behind it would count as failed too), so the test is exact
    config = {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(config), make_local_cluster(1) as cluster, Client(cluster) as client:
        results = dict(run_each(client, _square_or_die, calls, paths=paths))
    assert sorted(results) == list(range(8))
    assert isinstance(results[5], Exception)
    assert {i: r for i, r in results.items() if i != 5} == {i: i * i for i in range(8) if i != 5}
