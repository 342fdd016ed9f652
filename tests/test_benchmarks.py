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
    for key in ("4x100k_workers1", "4x100k_workers2", "20x20k_workers1", "20x20k_workers2", "one_file",
                "20x20k_default_workers1", "20x20k_default_workers2"):
        r = report[key]
        assert r["wall_s"] > r["startup_s"] > 0 and r["batch_s"] > 0 and r["report_s"] > 0, key
    # the default places every gate: a tube's phases say where its time went, placing included
    phases = report["20x20k_default_workers1"]["phases_ms"]
    assert list(phases) == ["read", "conform", "place", "gate", "count", "plots", "time_qc", "store"]
    assert phases["place"] > 0 and "a tube's time, median per phase: read" in res.stdout


def _validate():
    import importlib.util

    spec = importlib.util.spec_from_file_location("validate", REPO / "benchmarks" / "validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_validate_cycles_every_pair_of_kinds():
    import itertools

    v = _validate()
    kinds = [v.world_kind(w) for w in range(20)]
    axes = ("instrument", "treg_panel", "export", "shape")
    for a, b in itertools.combinations(axes, 2):
        pairs = {(k[a], k[b]) for k in kinds}
        assert len(pairs) == len({k[a] for k in kinds}) * len({k[b] for k in kinds}), (a, b)
    assert {k["instrument"] for k in kinds} == {"bd", "cytoflex", "attune", "ique", "aurora"}


def test_validate_sheets_panel_files_and_starts_at(tmp_path):
    import pandas as pd

    v = _validate()
    sheets = v.write_worlds(tmp_path, 8, 1, 1500, 900_000)
    assert set(sheets) == {"foxp3", "surface"}
    s = pd.concat([pd.read_csv(p, keep_default_na=False) for p in sheets.values()])
    assert list(s.columns[:4]) == ["file", "patient_id", "visit", "world"]
    assert {"instrument", "treg_panel", "export", "shape", "stain", "truth_pct", "panel", "starts_at"} <= set(s.columns)
    pre = s["export"] == "pregated"
    assert (s.loc[pre, "starts_at"] == "CD4pos").all() and (s.loc[~pre, "starts_at"] == "").all()
    needs_panel = pre | (s["instrument"] != "bd")
    assert (s.loc[needs_panel, "panel"] != "").all() and (s.loc[~needs_panel, "panel"] == "").all()
    for _, row in s[needs_panel].drop_duplicates("world").iterrows():
        panel = pd.read_csv(tmp_path / row["panel"])
        assert list(panel.columns) == ["marker", "detector"] and "CD25" in set(panel["marker"])
        assert ("FOXP3" in set(panel["marker"])) == (row["treg_panel"] == "foxp3")
    # unstained tubes: CD25 in every world, FOXP3 in FOXP3-panel worlds; no truth to count
    unst = s[s["stain"] != "usual"]
    assert len(unst) == 8 + 4 and (unst["truth_pct"] == "").all()
    assert set(s.loc[s["treg_panel"] == "surface", "stain"]) == {"usual", "unstained CD25"}


def _made_up_results():
    import pandas as pd

    rows = []
    for w, (panel, shape, inst) in enumerate([("foxp3", "cluster", "bd"), ("surface", "real", "aurora")]):
        for t, err in enumerate([0.05, -0.2, 0.45 if w == 1 else 0.02]):
            rows.append({"file": f"w{w}_{t}.fcs", "world": w, "instrument": inst, "treg_panel": panel,
                         "export": "whole", "shape": shape, "stain": "usual", "truth_pct": 7.0,
                         "treg_pct_cd4": 7.0 + err, "qc_status": "ok", "qc_flags": ""})
        rows.append({"file": f"w{w}_u.fcs", "world": w, "instrument": inst, "treg_panel": panel, "export": "whole",
                     "shape": shape, "stain": "unstained CD25", "truth_pct": float("nan"),
                     "treg_pct_cd4": float("nan"), "qc_status": "needs_review",
                     "qc_flags": "needs_review:Treg:no_cd25_high"})
    return pd.DataFrame(rows)


def test_validate_summary_and_targets_on_a_made_up_table():
    v = _validate()
    table = _made_up_results()
    summary = v.summarise(table).set_index(["kind", "value"])
    assert list(summary.columns) == ["tubes", "refused", "sent_to_review_pct", "max_abs_err_pp",
                                     "mean_abs_err_pp", "unstained", "kept_from_number"]
    assert {"instrument", "treg_panel", "export", "shape", "world", "all"} == set(summary.index.get_level_values(0))
    assert summary.loc[("world", "1"), "max_abs_err_pp"] == pytest.approx(0.45)
    assert summary.loc[("all", "all"), "tubes"] == 6 and summary.loc[("all", "all"), "kept_from_number"] == 2
    assert summary.loc[("all", "all"), "sent_to_review_pct"] == 0  # unstained tubes are not stained tubes
    # surface on real cells: 0.45 pp is within its 0.5 pp, and its mean 0.233 over its 0.15 pp
    assert v.missed_targets(table) == ["world 1: mean |error| 0.233 > 0.15 pp"]

    worse = table.copy()
    worse.loc[worse["file"] == "w0_u.fcs", ["qc_status", "qc_flags", "treg_pct_cd4"]] = ["ok", "", 6.5]
    worse.loc[worse["file"] == "w0_0.fcs", ["qc_status", "qc_flags"]] = ["ok", "needs_review:CD4pos:x"]
    worse.loc[worse["file"] == "w0_1.fcs", ["qc_status", "treg_pct_cd4"]] = ["error", float("nan")]
    missed = " ".join(v.missed_targets(worse))
    assert "world 0: 1 unstained tubes given a number" in missed
    assert "world 0: 33.3 % sent to review" in missed and "1 tubes refused" in missed
    row = v.summarise(worse).set_index(["kind", "value"]).loc[("world", "0")]
    assert (row["refused"], row["kept_from_number"], row["max_abs_err_pp"]) == (1, 0, pytest.approx(0.02))
