"""The endpoint analysis on hand-built run tables: joins, exclusions, supersession, SDTM CP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cytopipe.cli import cli
from cytopipe.endpoint.analysis import load_runs, read_randomisation, run_endpoint
from cytopipe.exceptions import EndpointError
from cytopipe.outputs.schema import read_output, validate_table
from cytopipe.outputs.tables import TREG_COLUMNS, write_table
from cytopipe.strategy.registry import load_strategy

STRAT = load_strategy()
ARMS = {"P1": "placebo", "P2": "placebo", "P3": "1 MIU", "P4": "1 MIU"}


def _run(folder, rows, **extra_cols):
    """A run folder with treg_by_visit as `cytopipe run` writes it; rows: (patient, visit, day, pct)."""
    recs = []
    for i, (pid, visit, day, pct) in enumerate(rows):
        err = pct is None
        recs.append({"patient_id": pid, "visit": visit, "day": day, "file": f"{pid}_{visit}.fcs",
                     "file_sha256": f"{i:064x}", "events_total": 50000, "cd4_count": None if err else 10000,
                     "treg_count": None if err else int(round(pct * 100)),
                     "treg_pct_cd4": np.nan if err else pct, "qc_status": "error" if err else "ok",
                     "qc_flags": "", "error": f"{pid}_{visit}.fcs: cannot read" if err else "",
                     "strategy": "treg", "strategy_version": "1.0.0", "strategy_sha256": STRAT.sha256,
                     "cytopipe_version": "0.1.0", "flowkit_version": "1.3.2"})
    df = pd.DataFrame(recs)
    for col, values in extra_cols.items():
        df[col] = values
    write_table(df, folder / "treg_by_visit", TREG_COLUMNS)
    return folder


@pytest.fixture
def rand(tmp_path):
    p = tmp_path / "randomisation.csv"
    pd.DataFrame({"patient_id": list(ARMS), "arm": list(ARMS.values())}).to_csv(p, index=False)
    return p


def _week1(tmp_path, **extra):
    return _run(tmp_path / "week1", [("P1", "D1", 1, 5.0), ("P2", "D1", 1, 6.0), ("P3", "D1", 1, 5.5),
                                     ("P4", "D1", 1, 4.0), ("P9", "D1", 1, 7.0)], **extra)


def _week9(tmp_path, **extra):
    return _run(tmp_path / "week9", [("P1", "D60", 60, 5.5), ("P2", "D60", 60, 6.1), ("P3", "D60", 60, 9.5),
                                     ("P4", "D60", 60, None), ("P9", "D60", 60, 7.5)], **extra)


def test_change_exclusions_and_every_table_validates(tmp_path, rand):
    w1 = _week1(tmp_path)
    w9 = _week9(tmp_path)
    res = run_endpoint([w1, w9], rand, tmp_path / "out", study_id="IL2-T1D", figures=False)
    bp = res.by_patient.set_index("patient_id")
    assert bp.loc["P3", "change_pp"] == pytest.approx(4.0)
    assert bp.loc["P3", "change_rel_pct"] == pytest.approx(100 * 4.0 / 5.5)
    assert bp.loc["P1", "treg_pct_cd4_D60"] == 5.5 and bp.loc["P1", "change_pp_D60"] == pytest.approx(0.5)
    assert bp.loc["P4", "status"] == "missing_visit"
    assert "no usable D60 sample (qc_error: P4_D60.fcs: cannot read)" in bp.loc["P4", "reason"]
    assert bp.loc["P9", "status"] == "not_randomised"  # listed, never dropped
    ex = pd.read_csv(tmp_path / "out" / "exclusions.csv")
    assert sorted(zip(ex["patient_id"], ex["visit"], ex["reason"])) == [
        ("P4", "D60", "qc_error"), ("P9", "D1", "not_randomised"), ("P9", "D60", "not_randomised")]
    arm = res.arm_summary.set_index("arm")
    assert list(res.arm_summary["arm"]) == ["placebo", "1 MIU"]
    assert arm.loc["1 MIU", "n"] == 1 and arm.loc["1 MIU", "n_missing"] == 1
    assert arm.loc["placebo", "mean_change"] == pytest.approx(0.3)
    assert arm.loc["placebo", "p_method"] == "reference arm"
    for name in ("change_by_patient", "arm_summary", "trend_test", "exclusions", "sdtm_cp"):
        for ext in ("csv", "parquet"):
            validate_table(read_output(tmp_path / "out" / f"{name}.{ext}", name), name)
    prov = json.loads((tmp_path / "out" / "endpoint.json").read_text())
    assert prov["study_id"] == "IL2-T1D" and prov["n_complete"] == 3 and len(prov["randomisation_sha256"]) == 64


def test_sdtm_rows(tmp_path, rand):
    res = run_endpoint([_week1(tmp_path), _week9(tmp_path)], rand, tmp_path / "out", study_id="S1",
                       figures=False)
    cp = read_output(tmp_path / "out" / "sdtm_cp.csv", "sdtm_cp")
    assert len(cp) == 2 * 10  # every per-visit sample, two tests each
    p3 = cp[cp["USUBJID"] == "S1-P3"]
    assert list(p3["CPSEQ"]) == [1, 2, 3, 4]
    treg = p3[p3["CPTESTCD"] == "TREGCD4"].set_index("VISIT")
    assert treg.loc["D60", "CPSTRESN"] == 9.5 and treg.loc["D60", "CPORRESU"] == "%"
    assert treg.loc["D1", "CPBLFL"] == "Y" and pd.isna(treg.loc["D60", "CPBLFL"])
    assert treg.loc["D1", "CPMRKSTR"] == "CD3+CD4+CD25hiFOXP3+/CD3+CD4+"
    assert treg.loc["D1", "CPGATE"] == "treg@1.0.0"
    assert treg.loc["D1", "CPGATDEF"].endswith("CD4pos/Treg of Lymphocytes/Singlets/Live/CD3pos/CD4pos")
    assert list(treg["VISITNUM"]) == [1.0, 2.0] and list(treg["VISITDY"]) == [1, 60]
    cd4 = p3[p3["CPTESTCD"] == "CD4T"]
    assert (cd4["CPSTRESN"] == 10000).all() and (cd4["CPORRESU"] == "cells").all()
    failed = cp[(cp["USUBJID"] == "S1-P4") & (cp["VISIT"] == "D60")]
    assert (failed["CPSTAT"] == "NOT DONE").all() and failed["CPSTRESN"].isna().all()
    assert failed["CPREASND"].str.contains("cannot read").all()
    assert (cp["DOMAIN"] == "CP").all() and (cp["CPMETHOD"] == "FLOW CYTOMETRY").all()
    assert len(res.sdtm) == len(cp)


def test_review_rejected_is_excluded_when_the_column_exists(tmp_path, rand):
    w1 = _week1(tmp_path, review_status=["approved", "rejected", "approved", "pending", "approved"])
    res = run_endpoint([w1, _week9(tmp_path)], rand, tmp_path / "out", study_id="S", figures=False)
    ex = res.exclusions
    row = ex[ex["reason"] == "review_rejected"]
    assert list(zip(row["patient_id"], row["visit"])) == [("P2", "D1")]
    assert res.by_patient.set_index("patient_id").loc["P2", "status"] == "missing_baseline"
    cp = res.sdtm[(res.sdtm["USUBJID"] == "S-P2") & (res.sdtm["VISIT"] == "D1")]
    assert (cp["CPREASND"] == "rejected in review").all()


def test_same_patient_visit_in_two_runs_is_an_error(tmp_path, rand):
    w1 = _week1(tmp_path)
    redo = _run(tmp_path / "redo", [("P3", "D1", 1, 6.5)])
    with pytest.raises(EndpointError, match=r"patient 'P3' visit 'D1' in .*week1.*redo.*--supersede"):
        load_runs([w1, redo])


def test_supersede_option_replaces_only_the_duplicated_samples(tmp_path, rand):
    w1, w9 = _week1(tmp_path), _week9(tmp_path)
    redo = _run(tmp_path / "redo", [("P3", "D1", 1, 6.5)])
    res = run_endpoint([w1, w9, redo], rand, tmp_path / "out", study_id="S", supersede=[w1], figures=False)
    bp = res.by_patient.set_index("patient_id")
    assert bp.loc["P3", "baseline_value"] == 6.5  # from the re-run
    assert bp.loc["P1", "baseline_value"] == 5.0  # week1's other samples stay
    sup = res.exclusions[res.exclusions["reason"] == "superseded"]
    assert list(sup["patient_id"]) == ["P3"] and "redo" in sup["detail"].iloc[0]
    assert len(res.sdtm[(res.sdtm["USUBJID"] == "S-P3") & (res.sdtm["VISIT"] == "D1")]) == 2


def test_superseded_column_from_the_sample_sheet(tmp_path, rand):
    w1 = _week1(tmp_path, superseded=["", "", "yes", "", ""])
    redo = _run(tmp_path / "redo", [("P3", "D1", 1, 6.5)])
    rows, excl = load_runs([w1, redo])
    assert rows["superseded"].sum() == 1
    assert list(zip(excl["patient_id"], excl["reason"])) == [("P3", "superseded")]
    bad = _run(tmp_path / "bad", [("P7", "D1", 1, 6.5)], superseded=["maybe"])
    with pytest.raises(EndpointError, match="superseded is 'maybe'"):
        load_runs([bad])


def test_randomisation_list_checks(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("patient_id,arm\nP1,placebo\nP2,0.33 MIU\nP1,3 MIU\nP4,high\n")
    with pytest.raises(EndpointError, match=r"patients listed twice: \['P1'\].*no dose for arm\(s\) \['high'\]"):
        read_randomisation(p)
    p.write_text("patient_id,arm\nP1,placebo\nP2,0.33 MIU\n")
    assert read_randomisation(p)["dose"].tolist() == [0.0, 0.33]
    p.write_text("patient,arm\n")
    with pytest.raises(EndpointError, match=r"missing column\(s\) \['patient_id'\]"):
        read_randomisation(p)


def test_cli_endpoint_and_its_errors(tmp_path, rand, monkeypatch):
    w1, w9 = _week1(tmp_path), _week9(tmp_path)
    out = tmp_path / "out"
    monkeypatch.delenv("CYTOPIPE_STUDY_ID", raising=False)
    res = CliRunner().invoke(cli, ["endpoint", str(w1), str(w9), "--randomisation", str(rand),
                                   "--out", str(out)])
    # without a study id only the SDTM file is skipped, with a one-line note
    assert res.exit_code == 0 and "sdtm_cp was not written" in res.output and "Traceback" not in res.output
    monkeypatch.setenv("CYTOPIPE_STUDY_ID", "ENV-STUDY")
    res = CliRunner().invoke(cli, ["endpoint", str(w1), str(w9), "--randomisation", str(rand),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 of 5 patients with a D1-to-D60 change" in res.output
    assert (pd.read_csv(out / "sdtm_cp.csv")["STUDYID"] == "ENV-STUDY").all()
    assert (out / "change_at_endpoint.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.html").read_text()
    assert report.count('src="data:image/png;base64,') == 2  # both figures embedded, self-contained
    assert "p_mannwhitney_exact" in report and "ENV-STUDY" in report
    res = CliRunner().invoke(cli, ["endpoint", str(w1), "--randomisation", str(rand), "--out", str(out),
                                   "--visit", "D90", "--study-id", "S"])
    assert res.exit_code == 2 and "Visit 'D90' is in none of the runs" in res.output


# --- samples flagged for review (needs_review, auto_gate_fallback) must be approved first ---

def _flag_p3_d60(tmp_path, flag="needs_review:Treg:one_mode", status="pending"):
    """week9 with P3's D60 sample (9.5 %) flagged for review; the other rows unflagged and pending."""
    return _week9(tmp_path, qc_flags=["", "", flag, "", ""],
                  review_status=["pending", "pending", status, "pending", "pending"])


def test_flagged_pending_sample_at_the_endpoint_visit_blocks(tmp_path, rand):
    w1, w9 = _week1(tmp_path), _flag_p3_d60(tmp_path)
    with pytest.raises(EndpointError) as e:
        run_endpoint([w1, w9], rand, tmp_path / "out", study_id="S", figures=False)
    msg = str(e.value)
    assert msg.startswith("1 sample(s) the endpoint would use are flagged for review and not approved: ")
    assert f"{w9.resolve()} P3:D60 (file 'P3_D60.fcs'; needs_review:Treg:one_mode; review_status 'pending')" in msg
    assert "cytopipe review RUN_DIR PATIENT:VISIT --approve|--reject|--adjust-gate GATE_PATH" in msg
    assert "--include-unreviewed" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()  # nothing written


def test_auto_gate_fallback_blocks_too_and_adjusted_is_not_approved(tmp_path, rand):
    w1, w9 = _week1(tmp_path), _flag_p3_d60(tmp_path, flag="low_cd4;auto_gate_fallback", status="adjusted")
    with pytest.raises(EndpointError, match=r"P3:D60 \(file 'P3_D60.fcs'; auto_gate_fallback; "
                                            r"review_status 'adjusted'\)"):
        run_endpoint([w1, w9], rand, tmp_path / "out", study_id="S", figures=False)


def test_flagged_sample_without_any_review_decision_blocks(tmp_path, rand):
    w9 = _week9(tmp_path, qc_flags=["", "", "needs_review", "", ""])  # review_status empty: review not run
    with pytest.raises(EndpointError, match=r"P3:D60 \(file 'P3_D60.fcs'; needs_review; no review decision\)"):
        run_endpoint([_week1(tmp_path), w9], rand, tmp_path / "out", study_id="S", figures=False)


@pytest.mark.parametrize("flag", ["needs_review:Treg:one_mode", "auto_gate_fallback"])
def test_approved_flagged_sample_is_used(tmp_path, rand, flag):
    w1, w9 = _week1(tmp_path), _flag_p3_d60(tmp_path, flag=flag, status="approved")
    res = run_endpoint([w1, w9], rand, tmp_path / "out", study_id="S", figures=False)
    bp = res.by_patient.set_index("patient_id")
    assert bp.loc["P3", "endpoint_value"] == 9.5 and bp.loc["P3", "change_pp"] == pytest.approx(4.0)
    assert res.arm_summary.set_index("arm").loc["1 MIU", "n"] == 1
    assert not res.preliminary and len(res.unreviewed) == 0
    for name in ("change_by_patient", "arm_summary", "trend_test", "exclusions", "sdtm_cp"):
        assert "preliminary" not in pd.read_csv(tmp_path / "out" / f"{name}.csv").columns
    prov = json.loads((tmp_path / "out" / "endpoint.json").read_text())
    assert prov["preliminary"] is False and prov["unreviewed_samples"] == []


def test_other_flags_and_lookalike_tokens_do_not_block(tmp_path, rand):
    w9 = _week9(tmp_path, qc_flags=["low_cd4;treg_outlier", "needs_reviewed", "flow_rate:3.1%", "", ""])
    res = run_endpoint([_week1(tmp_path), w9], rand, tmp_path / "out", study_id="S", figures=False)
    assert not res.preliminary and res.by_patient.set_index("patient_id").loc["P1", "endpoint_value"] == 5.5


def test_include_unreviewed_marks_every_output_preliminary(tmp_path, rand):
    w1, w9 = _week1(tmp_path), _flag_p3_d60(tmp_path)
    out = tmp_path / "out"
    res = run_endpoint([w1, w9], rand, out, study_id="S", include_unreviewed=True)
    assert res.preliminary
    bp = res.by_patient.set_index("patient_id")
    assert bp.loc["P3", "endpoint_value"] == 9.5 and bp.loc["P3", "change_pp"] == pytest.approx(4.0)
    for name in ("change_by_patient", "arm_summary", "trend_test", "exclusions", "sdtm_cp"):
        for ext in ("csv", "parquet"):
            df = read_output(out / f"{name}.{ext}", name)
            validate_table(df, name)
            assert df["preliminary"].tolist() == [True] * len(df), (name, ext)
    assert len(pd.read_csv(out / "sdtm_cp.csv")) == 20  # 10 samples, two tests each
    prov = json.loads((out / "endpoint.json").read_text())
    assert prov["preliminary"] is True and prov["include_unreviewed"] is True
    assert prov["unreviewed_samples"] == [{"run_dir": str(w9.resolve()), "patient_id": "P3", "visit": "D60",
                                           "file": "P3_D60.fcs", "flags": "needs_review:Treg:one_mode",
                                           "review_status": "pending"}]
    html = (out / "report.html").read_text()
    assert "<title>PRELIMINARY: cytopipe endpoint report</title>" in html
    assert "<h1>PRELIMINARY: Endpoint: change in Treg % CD4 from D1 to D60</h1>" in html
    assert "Included without review (PRELIMINARY)" in html and "needs_review:Treg:one_mode" in html
    for png in ("treg_by_visit_per_arm.png", "change_at_endpoint.png"):  # the title, also as PNG text
        assert b"tEXtTitle\x00PRELIMINARY: includes samples not yet reviewed" in (out / png).read_bytes(), png


def test_include_unreviewed_without_unreviewed_samples_is_final(tmp_path, rand):
    res = run_endpoint([_week1(tmp_path), _week9(tmp_path)], rand, tmp_path / "out", study_id="S",
                       include_unreviewed=True)
    assert not res.preliminary and "preliminary" not in res.arm_summary.columns
    html = (tmp_path / "out" / "report.html").read_text()
    assert "PRELIMINARY" not in html
    assert b"PRELIMINARY" not in (tmp_path / "out" / "change_at_endpoint.png").read_bytes()


@pytest.mark.parametrize("where", ["D8", "not_randomised"])
def test_flagged_samples_in_the_per_visit_outputs_block(tmp_path, rand, where):
    # a D8 value goes into change_by_patient (treg_pct_cd4_D8), the by-visit figure and sdtm_cp; so does
    # every visit of a patient not in the randomisation list (P9, listed with status not_randomised)
    runs = [_week1(tmp_path, qc_flags=["", "", "", "", "needs_review" if where == "not_randomised" else ""]),
            _week9(tmp_path)]
    if where == "D8":
        runs.append(_run(tmp_path / "week2", [("P1", "D8", 8, 5.2), ("P2", "D8", 8, 6.0)],
                         qc_flags=["needs_review:CD4pos:no_valley", ""]))
    with pytest.raises(EndpointError, match="P1:D8 .file 'P1_D8.fcs'" if where == "D8" else "P9:D1 .file 'P9_D1.fcs'"):
        run_endpoint(runs, rand, tmp_path / "out", study_id="S", figures=False)


def test_flagged_samples_the_endpoint_does_not_use_do_not_block(tmp_path, rand):
    # P2 D1 rejected in review, P4 D60 failed (qc_error), P3 D1 superseded by a re-run: no number of theirs
    # reaches an output, so they are listed in exclusions.csv as before and need no approval
    w1 = _week1(tmp_path, qc_flags=["", "needs_review", "auto_gate_fallback", "", ""],
                review_status=["pending", "rejected", "pending", "pending", "pending"],
                superseded=["", "", "yes", "", ""])
    w9 = _week9(tmp_path, qc_flags=["", "", "", "needs_review:Treg:one_mode", ""])
    redo = _run(tmp_path / "redo", [("P3", "D1", 1, 6.5)])
    res = run_endpoint([w1, w9, redo], rand, tmp_path / "out", study_id="S", figures=False)
    assert not res.preliminary
    ex = res.exclusions
    assert sorted(zip(ex["patient_id"], ex["visit"], ex["reason"])) == [
        ("P2", "D1", "review_rejected"), ("P3", "D1", "superseded"), ("P4", "D60", "qc_error"),
        ("P9", "D1", "not_randomised"), ("P9", "D60", "not_randomised")]
    assert res.by_patient.set_index("patient_id").loc["P3", "change_pp"] == pytest.approx(3.0)  # 9.5 - 6.5


def test_cli_refuses_unreviewed_then_runs_preliminary(tmp_path, rand):
    w1, w9 = _week1(tmp_path), _flag_p3_d60(tmp_path)
    out = tmp_path / "out"
    args = ["endpoint", str(w1), str(w9), "--randomisation", str(rand), "--out", str(out), "--study-id", "S"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: 1 sample(s) the endpoint would use are flagged")
    assert "P3:D60 (file 'P3_D60.fcs'; needs_review:Treg:one_mode" in lines[0]
    assert "--include-unreviewed" in lines[0] and not out.exists()
    res = CliRunner().invoke(cli, [*args, "--include-unreviewed"])
    assert res.exit_code == 0, res.output
    assert ("PRELIMINARY (1 sample(s) flagged for review and not approved included, listed in endpoint.json): "
            "3 of 5 patients with a D1-to-D60 change") in res.output
    assert f"unreviewed: {w9.resolve()} P3:D60 (P3_D60.fcs; needs_review:Treg:one_mode)" in res.output
    assert json.loads((out / "endpoint.json").read_text())["preliminary"] is True


def test_without_a_study_id_everything_but_sdtm_is_written(tmp_path, rand, monkeypatch):
    monkeypatch.delenv("CYTOPIPE_STUDY_ID", raising=False)
    w1, w9 = _week1(tmp_path), _week9(tmp_path)
    res = CliRunner().invoke(cli, ["endpoint", str(w1), str(w9), "--randomisation", str(rand),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "sdtm_cp was not written" in res.output
    out = tmp_path / "out"
    assert not (out / "sdtm_cp.csv").exists()
    for name in ("change_by_patient.csv", "arm_summary.csv", "trend_test.csv", "exclusions.csv", "endpoint.json"):
        assert (out / name).is_file(), name
    prov = json.loads((out / "endpoint.json").read_text())
    assert prov["study_id"] is None and prov["sdtm_written"] is False
