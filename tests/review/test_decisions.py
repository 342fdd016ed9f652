"""Sign-off: approve, reject and adjust round-trip through re-runs."""

from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner

from cytopipe.batch.driver import run_batch
from cytopipe.cli import cli
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.sim.trial import generate_trial

TREG = "root/Lymphocytes/Singlets/Live/CD3pos/CD4pos/Treg"


def _review(out, *args):
    return CliRunner().invoke(cli, ["review", str(out), *args, "--no-report"])


def _table(out):
    return pd.read_csv(out / "treg_by_visit.csv", keep_default_na=False).set_index("visit")


def test_approve_reject_adjust_round_trip(tmp_path, dask_client):
    # the fixed template: its Treg gate is a rectangle, adjusted by --bound
    sheet = generate_trial(tmp_path / "trial", n_patients=1, n_events=20_000, seed=3)
    out = tmp_path / "out"
    run_batch(sheet, out, client=dask_client, strategy="treg@1.0.0")
    first = _table(out)

    assert _review(out, "P01:D8", "--approve", "--reviewer", "Dr A").exit_code == 0
    res = _review(out, "P01:D60", "--reject", "--reviewer", "Dr A")
    assert res.exit_code == 2 and "--reason" in res.output
    assert _review(out, "P01:D60", "--reject", "--reason", "bubbles", "--reviewer", "Dr B").exit_code == 0
    assert _review(out, "P01:D9", "--approve", "--reviewer", "Dr A").exit_code == 2
    t = _table(out)
    assert (t.loc["D8", "review_status"], t.loc["D8", "reviewer"]) == ("approved", "Dr A")
    assert (t.loc["D60", "review_status"], t.loc["D60", "reviewer"]) == ("rejected", "Dr B")
    assert t.loc["D1", "review_status"] == "pending"

    res = _review(out, "P01_D1.fcs", "--adjust-gate", TREG, "--bound", "PE-Cy7-A=6000:", "--reason",
                  "CD25 cut-off sits in the activated cells", "--reviewer", "Dr A")
    assert res.exit_code == 0, res.output
    res = _review(out, "P01_D1.fcs", "--approve", "--reviewer", "Dr A")
    assert res.exit_code == 2 and "re-run" in res.output  # numbers do not use the new gate yet
    bad = _review(out, "P01_D1.fcs", "--adjust-gate", TREG, "--bound", "CD25=6000:", "--reason", "x",
                  "--reviewer", "Dr A")
    assert bad.exit_code == 2 and "has no dimension 'CD25'" in bad.output

    result = run_batch(sheet, out, client=dask_client, strategy="treg@1.0.0")
    t = _table(out)
    assert result.n_cached == 2  # D8 and D60 reused; D1 gated again with its custom gate
    assert t.loc["D1", "cd4_count"] == first.loc["D1", "cd4_count"]
    assert t.loc["D1", "treg_count"] < first.loc["D1", "treg_count"]
    assert t.loc["D8", "treg_count"] == first.loc["D8", "treg_count"]
    assert t.loc["D1", "review_status"] == "adjusted"
    assert (t.loc["D8", "review_status"], t.loc["D60", "review_status"]) == ("approved", "rejected")
    pops = pd.read_parquet(out / "populations.parquet")
    d1_treg = pops[(pops["visit"] == "D1") & (pops["gate"] == "Treg")]["count"].item()
    assert d1_treg == t.loc["D1", "treg_count"]

    assert _review(out, "P01_D1.fcs", "--approve", "--reviewer", "Dr C").exit_code == 0
    run_batch(sheet, out, client=dask_client, strategy="treg@1.0.0")
    t2 = _table(out)
    assert (t2.loc["D1", "review_status"], t2.loc["D1", "reviewer"]) == ("approved", "Dr C")
    assert t2.loc["D1", "treg_count"] == t.loc["D1", "treg_count"]  # the adjustment still applies

    # a re-acquired file (new content) voids the approval and the adjustment
    write_fcs(sheet.parent / "P01_D8.fcs", SampleSpec(n_events=20_000, seed=99))
    write_fcs(sheet.parent / "P01_D1.fcs", SampleSpec(n_events=20_000, seed=98))
    run_batch(sheet, out, client=dask_client, strategy="treg@1.0.0")
    t3 = _table(out)
    assert t3.loc["D8", "review_status"] == "pending" and t3.loc["D8", "reviewer"] == ""
    assert t3.loc["D1", "review_status"] == "pending"

    lines = (out / "review.jsonl").read_text().splitlines()
    assert [json.loads(x)["action"] for x in lines] == ["approve", "reject", "adjust", "approve"]
    adjust = json.loads(lines[2])
    assert adjust["gate_path"] == TREG and adjust["reason"].startswith("CD25")
    assert adjust["gate"]["dimensions"][0]["linear"] == [6000.0, None]
    page = next((out / "report" / "samples").glob("s000-*.html")).read_text()
    assert "Review history" in page and "CD25 cut-off" in page and 'class="void"' in page


def test_review_needs_one_action(tmp_path):
    (tmp_path / "x").mkdir()
    res = CliRunner().invoke(cli, ["review", str(tmp_path / "x"), "a.fcs", "--reviewer", "A"])
    assert res.exit_code == 2 and "--approve" in res.output
    res = CliRunner().invoke(cli, ["review", str(tmp_path / "x"), "a.fcs", "--approve", "--reviewer", "A"])
    assert res.exit_code == 2 and "treg_by_visit.parquet" in res.output


def test_every_decision_is_signed_and_chained_and_an_edit_or_removal_is_detected(tmp_path, dask_client):
    import getpass
    import hashlib

    from cytopipe.review import verify_review_chain

    sheet = generate_trial(tmp_path / "trial", n_patients=1, n_events=10_000, seed=4)
    out = tmp_path / "out"
    run_batch(sheet, out, client=dask_client, report=False)
    assert _review(out, "P01:D1", "--approve", "--reviewer", "Dr A").exit_code == 0
    assert _review(out, "P01:D8", "--reject", "--reason", "clog", "--reviewer", "Dr B").exit_code == 0
    assert _review(out, "P01:D60", "--approve", "--reviewer", "Dr A").exit_code == 0
    log = out / "review.jsonl"
    lines = log.read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert recs[0]["prev_sha256"] == "0" * 64
    assert recs[1]["prev_sha256"] == hashlib.sha256(lines[0].encode()).hexdigest()
    assert recs[2]["prev_sha256"] == hashlib.sha256(lines[1].encode()).hexdigest()
    assert [r["meaning"] for r in recs] == ["reviewed and approved", "reviewed and rejected", "reviewed and approved"]
    assert {r["os_user"] for r in recs} == {getpass.getuser()} and recs[1]["reviewer"] == "Dr B"
    assert verify_review_chain(out) == []

    log.write_text("\n".join([lines[0].replace("Dr A", "Dr Z"), *lines[1:]]) + "\n")  # an edited signature
    assert [p.split(": ", 1)[1] for p in verify_review_chain(out)] == [
        "line 2 does not follow line 1's text: a line before it was edited, removed or inserted"]
    log.write_text("\n".join([lines[0], lines[2]]) + "\n")  # a removed decision
    assert len(verify_review_chain(out)) == 1 and "line 2" in verify_review_chain(out)[0]
