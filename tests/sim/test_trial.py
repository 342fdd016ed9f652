"""Whole synthetic trials: the demo trial behind sample_fcs/, and the paper's trial with synth --trial -> run
-> endpoint recovering it."""

from __future__ import annotations

import json
import re

import flowio
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from cytopipe.batch.driver import run_batch
from cytopipe.cli import cli
from cytopipe.endpoint.analysis import run_endpoint
from cytopipe.outputs.miflowcyt import write_miflowcyt
from cytopipe.outputs.schema import read_output, validate_table
from cytopipe.sim.sample import FLUORESCENCE, PNS_SPELLINGS
from cytopipe.sim.trial import TRIAL_ARMS, generate_trial, simulate_trial
from cytopipe.strategy.registry import load_strategy


def test_design_blinding_and_truth(tmp_path):
    sheet = simulate_trial(tmp_path, n_events=2000, seed=3)
    s = pd.read_csv(sheet)
    assert list(s.columns) == ["file", "patient_id", "visit", "day"]  # blinded: no arm
    assert len(s) == 48 and set(s["visit"]) == {"D1", "D60"}
    rand = pd.read_csv(tmp_path / "randomisation.csv")
    assert rand["arm"].value_counts().to_dict() == {a: 6 for a, *_ in TRIAL_ARMS}
    truth = pd.read_csv(tmp_path / "truth.csv")
    per_patient = truth.drop_duplicates("patient_id").set_index("patient_id")
    for arm, _, mean, sd in TRIAL_ARMS:
        ch = per_patient.loc[per_patient["arm"] == arm, "change_target"]
        assert ch.mean() == pytest.approx(mean) and ch.std(ddof=1) == pytest.approx(sd)
    wide = truth.pivot(index="patient_id", columns="visit", values="treg_pct_cd4_target")
    np.testing.assert_allclose(wide["D60"] - wide["D1"], per_patient.loc[wide.index, "change_target"], atol=1e-3)
    names = " ".join((tmp_path / f).read_bytes()[:4000].decode("latin-1") for f in s["file"][:4])
    assert "placebo" not in names and "MIU" not in names  # the files do not unblind either
    again = simulate_trial(tmp_path / "again", n_events=2000, seed=3)
    assert (again.parent / s["file"][5]).read_bytes() == (tmp_path / s["file"][5]).read_bytes()


def test_cli_synth_trial(tmp_path):
    res = CliRunner().invoke(cli, ["synth", str(tmp_path / "t"), "--trial", "--events", "1500"])
    assert res.exit_code == 0, res.output
    s = pd.read_csv(tmp_path / "t" / "samples.csv")
    assert len(s) == 72 and list(pd.unique(s["visit"])) == ["D1", "D8", "D60"]
    assert (tmp_path / "t" / "randomisation.csv").is_file()


@pytest.fixture(scope="module")
def trial_endpoint(tmp_path_factory, dask_client):
    base = tmp_path_factory.mktemp("paper_trial")
    sheet = simulate_trial(base / "fcs", n_events=20_000, seed=2026)
    run = run_batch(sheet, base / "run", client=dask_client)
    res = run_endpoint([base / "run"], base / "fcs" / "randomisation.csv", base / "out", study_id="IL2-T1D")
    return base, run, res


@pytest.mark.slow
def test_run_then_endpoint_recovers_each_arm(trial_endpoint):
    base, run, res = trial_endpoint
    assert run.n_failed == 0
    truth = pd.read_csv(base / "fcs" / "truth.csv")
    realised = truth.pivot(index="patient_id", columns="visit", values="treg_pct_cd4")
    true_change = (realised["D60"] - realised["D1"]).rename("true")
    bp = res.by_patient.set_index("patient_id").join(true_change)
    assert (bp["status"] == "complete").all()
    # each patient's measured change is the realised truth up to gating error
    assert (bp["change_pp"] - bp["true"]).abs().max() < 0.8
    arm = res.arm_summary.set_index("arm")
    for name, _, mean, _sd in TRIAL_ARMS:
        sub = bp[bp["arm"] == name]
        assert arm.loc[name, "mean_change"] == pytest.approx(sub["change_pp"].mean())
        assert abs(arm.loc[name, "mean_change"] - sub["true"].mean()) < 0.35
        # and the abstract's mean within sampling error of the measurement (SE of a mean of 6 changes,
        # each measured with ~0.45 pp error at 20,000 events)
        assert abs(arm.loc[name, "mean_change"] - mean) < 3 * np.sqrt(0.45**2 / 6) + 0.2
    # p-values are scipy's on the same numbers
    placebo = bp.loc[bp["arm"] == "placebo", "change_pp"]
    for name, *_ in TRIAL_ARMS[1:]:
        x = bp.loc[bp["arm"] == name, "change_pp"]
        assert arm.loc[name, "p_mannwhitney_asymptotic"] == stats.mannwhitneyu(
            x, placebo, method="asymptotic", use_continuity=False).pvalue
        assert arm.loc[name, "p_mannwhitney_exact"] == stats.mannwhitneyu(x, placebo, method="exact").pvalue
        if x.min() > placebo.max():  # complete separation: the abstract's number
            assert round(arm.loc[name, "p_mannwhitney_asymptotic"], 4) == 0.0039
    assert res.trend["p_asymptotic_increasing"].iloc[0] < 0.01


@pytest.mark.slow
def test_every_written_table_validates(trial_endpoint):
    base, _, _ = trial_endpoint
    written = {"treg_by_visit": [base / "run" / "treg_by_visit.csv", base / "run" / "treg_by_visit.parquet"],
               "populations": [base / "run" / "populations.parquet"]}
    for name in ("change_by_patient", "arm_summary", "trend_test", "exclusions", "sdtm_cp"):
        written[name] = [base / "out" / f"{name}.csv", base / "out" / f"{name}.parquet"]
    for name, paths in written.items():
        for p in paths:
            validate_table(read_output(p, name), name)
    cp = read_output(base / "out" / "sdtm_cp.csv", "sdtm_cp")
    assert len(cp) == 2 * 48 and cp["CPSTRESN"].notna().all()
    for png in ("treg_by_visit_per_arm.png", "change_at_endpoint.png"):
        assert (base / "out" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_miflowcyt_record_of_the_run(trial_endpoint):
    base, run, _ = trial_endpoint
    strat = load_strategy()
    paths = [str(base / "fcs" / f) for f in run.table["file"]]
    path = write_miflowcyt(base / "run", strat, run.table, populations=run.populations, paths=paths)
    rec = json.loads(path.read_text())
    assert {i["cytometer"] for i in rec["instrument"]} == {"LSRFortessa"}
    treg = next(g for g in rec["gates"] if g["id"] == strat.numerator[-1])  # CD127lo under Treg since 1.1.0
    assert treg["path"] == "/".join(strat.numerator) and len(treg["per_sample"]) == 48
    cd4 = {s["file"]: s["count"] for s in next(g for g in rec["gates"] if g["id"] == "CD4pos")["per_sample"]}
    by_file = run.table.set_index("file")
    for s in treg["per_sample"][:5]:
        assert 100 * s["count"] / cd4[s["file"]] == pytest.approx(by_file.loc[s["file"], "treg_pct_cd4"])


def test_generate_trial(trial):
    out = trial.parent
    sheet = pd.read_csv(trial)
    truth = pd.read_csv(out / "truth.csv")
    assert list(sheet.columns) == ["file", "patient_id", "visit", "day"]
    assert list(truth.columns[:4]) == ["file", "patient_id", "visit", "day"]
    assert {"n_events", "n_cd4", "n_treg", "treg_pct_cd4", "fcs_version", "byteorder",
            "seed"} <= set(truth.columns)
    assert len(sheet) == 12 and sheet["file"].is_unique
    assert sorted(sheet["patient_id"].unique()) == ["P01", "P02", "P03", "P04"]
    assert all((out / f).is_file() for f in sheet["file"])
    assert set(zip(truth["fcs_version"].astype(str), truth["byteorder"])) == {
        ("3.0", "little"), ("3.0", "big"), ("3.1", "little"), ("3.1", "big")}
    assert truth["seed"].is_unique

    base = truth[truth["visit"] == "D1"]["treg_pct_cd4"]
    assert base.between(2.5, 10.5).all()
    assert truth["treg_pct_cd4"].max() > 12  # some patients respond as under IL-2

    # $PnS spellings vary across files, and every one is a known spelling
    seen = {d: set() for d in FLUORESCENCE}
    for f in sheet["file"]:
        fd = flowio.FlowData(str(out / f), only_text=True)
        for pnn, pns in zip(fd.pnn_labels, fd.pns_labels):
            if pnn in seen:
                seen[pnn].add(pns)
    assert sum(len(v) > 1 for v in seen.values()) >= 4
    for det, spellings in seen.items():
        for s in spellings:
            base_spelling = re.sub(r"[ -](FITC|PE|PE-Cy7|Alexa Fluor 647|APC-H7|V450|V500)$", "", s)
            assert base_spelling.lower() in {x.lower() for x in PNS_SPELLINGS[det]}, (det, s)


def test_generate_trial_is_deterministic(tmp_path):
    kw = dict(n_patients=1, visits=(("D1", 1), ("D60", 60)), n_events=1000, seed=7)
    generate_trial(tmp_path / "a", **kw)
    generate_trial(tmp_path / "b", **kw)
    for name in ("P01_D1.fcs", "P01_D60.fcs", "samples.csv", "truth.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_committed_sample_fcs_regenerates_byte_for_byte(tmp_path):
    """`make sample-fcs` (3 patients, 20,000 events, seed 2026) rebuilds sample_fcs/ exactly."""
    from pathlib import Path

    committed = Path(__file__).resolve().parents[2] / "sample_fcs"
    generate_trial(tmp_path, n_patients=3, n_events=20_000, seed=2026)
    names = sorted(p.name for p in committed.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (committed / name).read_bytes() == (tmp_path / name).read_bytes(), name
