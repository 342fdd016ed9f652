"""Batches at scale, for real: SIGKILL and resume, a real Dask cluster, a killed worker.

These start real processes (``cytopipe run``, ``dask scheduler``, ``dask worker``)
and are marked slow; CI still runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cytopipe.sim.sample import SampleSpec, write_fcs

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _sheet(folder: Path, n: int, events: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file,patient_id,visit,day"]
    for i in range(n):
        write_fcs(folder / f"f{i:02d}.fcs", SampleSpec(n_events=events, seed=1000 + i,
                                                      treg_pct_cd4=3 + i % 15))
        lines.append(f"f{i:02d}.fcs,P{i:02d},D1,1")
    (folder / "samples.csv").write_text("\n".join(lines) + "\n")
    return folder / "samples.csv"


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "cytopipe"), *args], capture_output=True, text=True, timeout=600, **kw)


def _stable(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("file").reset_index(drop=True)


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale")
    sheet = _sheet(folder / "files", 24, 150_000)
    ref = _run(["run", str(sheet), "--out", str(folder / "reference"), "--workers", "1"])
    assert ref.returncode == 0, ref.stderr
    return sheet, pd.read_parquet(folder / "reference" / "treg_by_visit.parquet")


def test_sigkill_mid_batch_then_rerun_loses_nothing(batch, tmp_path):
    sheet, reference = batch
    out = tmp_path / "out"
    proc = subprocess.Popen([str(BIN / "cytopipe"), "run", str(sheet), "--out", str(out), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cache = out / "cache"
    _wait_for(lambda: cache.is_dir() and len(list(cache.glob("*.json"))) >= 3, 300, "3 finished samples")
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its Dask workers, no clean-up
    proc.wait()
    done_before = len(list(cache.glob("*.json")))
    assert 3 <= done_before < 24, "the kill must land mid-batch"
    assert not (out / "treg_by_visit.csv").exists() or len(pd.read_csv(out / "treg_by_visit.csv")) == 24
    rerun = _run(["run", str(sheet), "--out", str(out), "--workers", "1"])
    assert rerun.returncode == 0, rerun.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["n_cached"] >= done_before and run["n_samples"] == 24
    table = pd.read_parquet(out / "treg_by_visit.parquet")
    assert table["file"].is_unique and len(table) == 24
    pd.testing.assert_frame_equal(_stable(table), _stable(reference))
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"


@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    _wait_for(sched_file.is_file, 60, "the scheduler")
    address = json.loads(sched_file.read_text())["address"]
    workers = []
    for _ in range(2):
        w = subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                              "--no-dashboard", "--host", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        workers.append(w)
    procs += workers
    from distributed import Client

    with Client(address) as c:
        c.wait_for_workers(2, timeout=60)
    yield address, workers
    for p in procs:
        p.kill()
        p.wait()


def test_real_cluster_matches_local_and_survives_a_killed_worker(batch, dask_cluster, tmp_path):
    sheet, reference = batch
    address, workers = dask_cluster
    res = _run(["run", str(sheet), "--out", str(tmp_path / "a"), "--scheduler", address,
                "--log-file", str(tmp_path / "a.jsonl")])
    assert res.returncode == 0, res.stderr
    pd.testing.assert_frame_equal(_stable(pd.read_parquet(tmp_path / "a" / "treg_by_visit.parquet")),
                                  _stable(reference))
    log = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(log) == 24 and {r["outcome"] for r in log} == {"ok"}
    assert len({r["worker"] for r in log}) == 2, "both workers took samples"

    out = tmp_path / "b"
    proc = subprocess.Popen([str(BIN / "cytopipe"), "run", str(sheet), "--out", str(out),
                             "--scheduler", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cache = out / "cache"
    _wait_for(lambda: cache.is_dir() and len(list(cache.glob("*.json"))) >= 2, 300, "first samples")
    workers[0].kill()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    pd.testing.assert_frame_equal(_stable(pd.read_parquet(out / "treg_by_visit.parquet")), _stable(reference))


@pytest.fixture(scope="module")
def five_million(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    write_fcs(folder / "big.fcs", SampleSpec(n_events=5_000_000, seed=77))
    (folder / "samples.csv").write_text("file,patient_id,visit\nbig.fcs,P01,D1\n")
    return folder / "samples.csv"


_PEAK_CHILD = r"""
import os, sys, threading, time
from cytopipe.fcs.read import read_fcs
from cytopipe.gating.api import gate_sample
from cytopipe.strategy.registry import load_strategy
s = load_strategy("treg@1.0.0")
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
base = rss(); peak = [base]; done = False
def watch():
    while not done:
        peak[0] = max(peak[0], rss()); time.sleep(0.001)
t = threading.Thread(target=watch, daemon=True); t.start()
counts = gate_sample(read_fcs(sys.argv[1]), s)
done = True; t.join()
print(peak[0] - base, counts[s.numerator].count)
"""


def test_five_million_event_file_gates_within_the_memory_bound(five_million):
    """Read + gate of a 5M-event file peaks below 4x its raw float32 matrix above baseline."""
    path = five_million.parent / "big.fcs"
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(path)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    peak, treg = (int(x) for x in out.stdout.split())
    raw = 5_000_000 * 12 * 4
    assert peak <= 4 * raw, f"peak {peak / raw:.2f}x the raw float32 matrix"
    assert treg > 0


def test_a_file_over_the_worker_memory_limit_fails_with_the_limit_named(five_million, tmp_path):
    res = _run(["run", str(five_million), "--out", str(tmp_path / "o"), "--workers", "1",
                "--memory-limit", "600MB"])
    assert res.returncode == 1, res.stderr
    table = pd.read_csv(tmp_path / "o" / "treg_by_visit.csv")
    assert "more than the Dask worker memory limit of 0.6 GB" in table["error"].iloc[0]
    assert "--memory-limit" in table["error"].iloc[0]


def test_a_float32_file_too_big_for_flowkits_reader_is_gated_lean_within_the_limit(five_million, tmp_path):
    """5M x 12 float32 values: FlowKit's reader would need ~1.3 GB, a lean read ~0.9 GB; 1.2 GB gates it."""
    res = _run(["run", str(five_million), "--out", str(tmp_path / "o"), "--workers", "1",
                "--memory-limit", "1.2GB"])
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "o" / "treg_by_visit.csv", keep_default_na=False)
    assert table["error"].iloc[0] == "" and table["events_total"].iloc[0] == 5_000_000
    assert table["treg_count"].iloc[0] > 0
