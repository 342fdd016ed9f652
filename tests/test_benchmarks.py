"""`make bench --quick` runs; benchmarks measure, tests only check they run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gating.py"), "--quick",
                          "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "counts: identical to FlowKit on every file" in res.stdout
    report = json.loads(out.read_text())
    for key in ("vs_flowkit", "vs_numpy", "memory_x_raw", "scaling_2_workers", "many_files_wall_s"):
        assert report[key] > 0


@pytest.mark.slow
def test_quick_whole_command_benchmark_runs(tmp_path):
    out = tmp_path / "whole.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_whole.py"), "--quick", "--repeat", "1",
                          "--data", str(tmp_path / "data"), "--json", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("counts: identical to the numpy reference on every file") == 2
    report = json.loads(out.read_text())
    for key in ("4x100k_workers1", "4x100k_workers2", "20x20k_workers1", "20x20k_workers2", "one_file"):
        r = report[key]
        assert r["wall_s"] > r["startup_s"] > 0 and r["batch_s"] > 0 and r["report_s"] > 0, key
