"""``cytopipe verify``: a clean run verifies; every kind of later edit is caught, naming the file and the row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cytopipe.audit import verify_run
from cytopipe.batch.driver import run_batch
from cytopipe.cli import cli
from cytopipe.outputs.tables import POPULATION_COLUMNS, TREG_COLUMNS, write_table
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.sim.trial import generate_trial
from cytopipe.strategy.registry import load_strategy


@pytest.fixture(scope="module")
def reviewed_run(tmp_path_factory, dask_client):
    """2 patients x 3 visits through the default strategy, then three decisions signed through the CLI."""
    base = tmp_path_factory.mktemp("audit")
    sheet = generate_trial(base / "trial", n_patients=2, n_events=20_000, seed=21)
    out = base / "run"
    run_batch(sheet, out, client=dask_client, report=False)
    for args in (["P01:D1", "--approve", "--reviewer", "Dr A"], ["P01:D8", "--approve", "--reviewer", "Dr A"],
                 ["P02:D1", "--reject", "--reason", "clogged tube", "--reviewer", "Dr B"]):
        res = CliRunner().invoke(cli, ["review", str(out), *args, "--no-report"])
        assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def run(reviewed_run, tmp_path) -> Path:
    """A copy of the reviewed run to tamper with (its FCS files stay where the run read them)."""
    dst = tmp_path / "run"
    shutil.copytree(reviewed_run, dst)
    return dst


def _verify(run_dir: Path):
    res = CliRunner().invoke(cli, ["verify", str(run_dir)])
    return res.exit_code, res.output.splitlines()


def test_a_clean_reviewed_run_verifies(run):
    assert len((run / "review.jsonl").read_text().splitlines()) == 3
    assert len(list((run / "cache").glob("*.json"))) == 6
    assert verify_run(run) == []
    # no reviewer registry: the decisions are unsigned, allowed, and said so
    assert _verify(run) == (0, ["OK", "note: 3 review decision(s) are unsigned: no reviewer registry was given "
                                      "(--registry or CYTOPIPE_REVIEWERS)"])


def test_signed_decisions_verify_against_the_registry_and_refusals_write_nothing(run, tmp_path, monkeypatch):
    from cytopipe.outputs import RunFolder
    from cytopipe.review import ReviewerRegistry

    pw = "correct horse battery"
    (run / "review.jsonl").unlink()  # the run applied none of them (review_decisions 0): start the log again
    registry = tmp_path / "reviewers.json"
    ReviewerRegistry(registry).add("Dr A", pw)

    def review(*args, password=pw):
        return CliRunner().invoke(cli, ["review", str(run), *args, "--no-report", "--registry", str(registry),
                                        "--password-stdin"], input=f"{password}\n")

    res = review("P01:D1", "--approve", "--reviewer", "dr  a")
    assert res.exit_code == 0 and "signed" in res.output, res.output
    (line,) = RunFolder(run).decisions()
    assert (line.reviewer, line.meaning, line.signer_key) == ("Dr A", "reviewed and approved",
                                                              ReviewerRegistry(registry).get("Dr A").public_key)
    for args, password, said in [(["--reviewer", "Dr A"], "wrong password", "Wrong password for 'Dr A'"),
                                 (["--reviewer", "Dr Z"], pw, "'Dr Z' is not an enrolled reviewer"),
                                 (["--reviewer", "Dr\u200bA"], pw, "U+200B ZERO WIDTH SPACE")]:
        res = review("P01:D8", "--approve", *args, password=password)
        assert res.exit_code == 2 and said in res.output, res.output
    assert len(RunFolder(run).decisions()) == 1  # nothing written by a refusal
    monkeypatch.setenv("CYTOPIPE_REVIEWERS", str(registry))  # configured: an unsigned decision is refused too
    from cytopipe.exceptions import ReviewError
    from cytopipe.review import decide
    with pytest.raises(ReviewError, match="every decision must be signed"):
        decide(run, "P01:D8", "approve", reviewer="Dr A")
    monkeypatch.delenv("CYTOPIPE_REVIEWERS")

    res = CliRunner().invoke(cli, ["verify", str(run), "--registry", str(registry)])
    assert (res.exit_code, res.output.splitlines()) == (0, ["OK", "1 review decision(s) signed by enrolled reviewers"])
    code, lines = _verify(run)  # without the registry a signature cannot be checked: not OK
    assert code == 1 and lines[-1].endswith("1 signed decision(s) cannot be checked: no reviewer registry was given "
                                            "(--registry PATH or CYTOPIPE_REVIEWERS)")

    stranger = ReviewerRegistry(tmp_path / "elsewhere.json")
    stranger.add("Dr A", pw)  # the same name, enrolled somewhere else: a key the lab does not know
    res = CliRunner().invoke(cli, ["review", str(run), "P01:D8", "--approve", "--reviewer", "Dr A", "--no-report",
                                   "--registry", str(stranger.path), "--password-stdin"], input=f"{pw}\n")
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["verify", str(run), "--registry", str(registry)])
    assert res.exit_code == 1 and res.output.splitlines() == [
        f"{run / 'review.jsonl'}: line 2 (approve P01_D8.fcs by 'Dr A') is signed by a key no enrolled reviewer "
        f"of {registry} holds ({stranger.get('Dr A').public_key[:12]}...)"]


def test_a_value_edited_in_both_copies_is_caught_by_the_manifest_and_the_stored_result(run):
    t = pd.read_parquet(run / "treg_by_visit.parquet")
    true_value = float(t.loc[1, "treg_pct_cd4"])
    t.loc[1, "treg_pct_cd4"] = true_value + 2.0  # CSV and Parquet edited alike: they still agree
    t.to_parquet(run / "treg_by_visit.parquet", index=False)
    t.to_csv(run / "treg_by_visit.csv", index=False)
    code, lines = _verify(run)
    assert code == 1
    assert lines[0].startswith(f"{run}/treg_by_visit.parquet: sha256 ") and "treg_by_visit.manifest.json" in lines[0]
    assert lines[1].startswith(f"{run}/treg_by_visit.csv: sha256 ")
    assert lines[2].startswith(f"{run}/treg_by_visit.parquet: row 2 (P01:D8, P01_D8.fcs): treg_pct_cd4 is "
                               f"{true_value + 2.0!r}, its stored result cache/")
    assert lines[2].endswith(f"has {true_value!r}")
    assert len(lines) == 3


def test_a_table_rewritten_with_cytopipes_own_writer_is_caught_by_the_stored_results(run):
    """The manifest then matches: only the stored result and run.json give the edits away."""
    t = pd.read_parquet(run / "treg_by_visit.parquet")
    t.loc[4, "treg_count"] = t.loc[4, "treg_count"] + 10
    t.loc[5, "qc_flags"], t.loc[5, "qc_status"] = "", "ok"
    t.loc[0, "flowkit_version"] = "1.0.0"
    write_table(t, run / "treg_by_visit", TREG_COLUMNS)
    pops = pd.read_parquet(run / "populations.parquet")
    pops.loc[3, "count"] = pops.loc[3, "count"] - 1
    write_table(pops, run / "populations", POPULATION_COLUMNS, csv=False)
    lines = verify_run(run)
    gate = pops.loc[3, "gate_path"]
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{run}/treg_by_visit.parquet", "row 1 (P01:D1, P01_D1.fcs)"],  # flowkit_version
        [f"{run}/treg_by_visit.parquet", "row 5 (P02:D8, P02_D8.fcs)"],  # treg_count
        [f"{run}/populations.parquet", f"row 4 (P01_D1.fcs, {gate})"],  # pct_parent no longer count / parent
        [f"{run}/populations.parquet", f"row 4 (P01_D1.fcs, {gate})"],  # count against the stored result
    ]
    assert "flowkit_version is '1.0.0', its software set says '1.3.2'" in lines[0]
    assert "treg_count is" in lines[1] and "its stored result" in lines[1]
    assert "count is" in lines[3] and "the stored result has" in lines[3]


def test_qc_flags_removed_or_added_are_caught(run):
    """The flags are re-derived from the stored measures with run.json's thresholds."""
    t = pd.read_parquet(run / "treg_by_visit.parquet")
    assert list(t["qc_flags"]) == ["", "", "", "", "low_cd4", ""]  # this generated trial (seed 21)
    t.loc[4, "qc_flags"], t.loc[4, "qc_status"] = "", "ok"  # a flag hidden from the reviewer
    t.loc[0, "qc_flags"], t.loc[0, "qc_status"] = "low_events", "flag"
    write_table(t, run / "treg_by_visit", TREG_COLUMNS)
    assert verify_run(run) == [
        f"{run}/treg_by_visit.parquet: row 1 (P01:D1, P01_D1.fcs): qc_flags are ['low_events'], the stored "
        f"result with run.json's thresholds gives []",
        f"{run}/treg_by_visit.parquet: row 5 (P02:D8, P02_D8.fcs): qc_flags are [], the stored "
        f"result with run.json's thresholds gives ['low_cd4']",
    ]


def test_an_edited_review_line_is_caught(run):
    log = run / "review.jsonl"
    lines = log.read_text().splitlines()
    lines[0] = lines[0].replace('"reviewer": "Dr A"', '"reviewer": "Dr Z"')
    log.write_text("\n".join(lines) + "\n")
    code, out = _verify(run)
    assert code == 1
    assert out == [
        f"{log}: line 2 does not follow line 1's text: a line before it was edited, removed or inserted",
        f"{run}/treg_by_visit.parquet: row 1 (P01:D1, P01_D1.fcs): reviewer is 'Dr A', review.jsonl gives 'Dr Z'",
    ]


def test_a_deleted_review_line_is_caught_in_the_middle_and_at_the_end(run):
    log = run / "review.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], lines[2]]) + "\n")  # P01:D8's approval removed
    out = verify_run(run)
    assert out[0] == f"{log}: line 2 does not follow line 1's text: a line before it was edited, removed or inserted"
    assert out[1].startswith(f"{run}/treg_by_visit.parquet: row 2 (P01:D8, P01_D8.fcs): review_status is "
                             f"'approved', review.jsonl gives 'pending'")
    log.write_text("\n".join(lines[:2]) + "\n")  # the last line (P02:D1's rejection) removed: no link breaks
    out = verify_run(run)
    assert out[0] == (f"{run}/treg_by_visit.parquet: row 4 (P02:D1, P02_D1.fcs): review_status is 'rejected', "
                      f"review.jsonl gives 'pending'")


def test_a_csv_that_disagrees_with_its_parquet_is_caught_cell_by_cell(run):
    t = pd.read_parquet(run / "treg_by_visit.parquet")
    csv = (run / "treg_by_visit.csv").read_text().splitlines()
    old = f",{t.loc[2, 'treg_count']},"
    assert csv[3].count(old) == 1
    csv[3] = csv[3].replace(old, f",{t.loc[2, 'treg_count'] + 1},")  # line 4 = data row 3
    (run / "treg_by_visit.csv").write_text("\n".join(csv) + "\n")
    code, lines = _verify(run)
    assert code == 1
    assert lines[0].startswith(f"{run}/treg_by_visit.csv: sha256 ") and lines[0].endswith(
        "in treg_by_visit.manifest.json: the file changed after it was written")
    assert lines[1] == (f"{run}/treg_by_visit.csv: row 3 (P01:D60, P01_D60.fcs): treg_count is "
                        f"{t.loc[2, 'treg_count'] + 1} here, {t.loc[2, 'treg_count']} in treg_by_visit.parquet")
    assert len(lines) == 2


def test_a_manifest_left_behind_by_a_crash_is_caught(run, monkeypatch):
    """Both copies replaced, then the run died before the manifest: the old manifest names other hashes."""
    import cytopipe.outputs.tables as tables

    t = pd.read_parquet(run / "treg_by_visit.parquet")
    real = tables.write_json

    def crash(obj, path):
        if str(path).endswith(".manifest.json"):
            raise KeyboardInterrupt  # the process is killed here
        return real(obj, path)

    monkeypatch.setattr(tables, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        write_table(t.assign(reviewer="someone else"), run / "treg_by_visit", TREG_COLUMNS)
    lines = verify_run(run)
    assert any(line.startswith(f"{run}/treg_by_visit.parquet: sha256 ") for line in lines)
    assert any(line.startswith(f"{run}/treg_by_visit.csv: sha256 ") for line in lines)


def test_changed_fcs_files_and_strategy_are_caught_where_present(tmp_path, dask_client):
    folder = tmp_path / "lab" / "treg_copy"
    shutil.copytree(load_strategy("treg@1.0.0").directory, folder)
    for name, seed in (("a.fcs", 1), ("b.fcs", 2)):
        write_fcs(tmp_path / name, SampleSpec(n_events=5_000, seed=seed))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na.fcs,P1,D1\nb.fcs,P2,D1\n")
    out = tmp_path / "out"
    run_batch(tmp_path / "s.csv", out, client=dask_client, report=False, strategy=str(folder))
    assert verify_run(out) == []

    (tmp_path / "b.fcs").unlink()  # archived elsewhere: nothing to compare, not a discrepancy
    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=5_000, seed=3))  # same name, other content
    recorded = pd.read_parquet(out / "treg_by_visit.parquet").loc[0, "file_sha256"]
    lines = verify_run(out)
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path / 'a.fcs'}: sha256 ")
    assert lines[0].endswith(f"differs from {out}/treg_by_visit.parquet: row 1 (P1:D1, a.fcs) file_sha256 "
                             f"{recorded}: the FCS file changed since the run")

    gml = next(folder.glob("*.xml"))
    gml.write_text(gml.read_text() + "\n")  # a released strategy edited after the run
    lines = verify_run(out)
    assert len(lines) == 2 and lines[0].startswith(f"{out}/run.json: the run's strategy {folder.resolve()}: ")
    assert "no longer matches its released checksum" in lines[0]


def test_a_run_re_gated_with_an_adjusted_gate_verifies_and_its_old_result_does_not_pass_for_it(tmp_path, dask_client):
    """The stored result is found with the adjustments the run applied (run.json review_decisions)."""
    from cytopipe.review import record_decision, update_review_columns

    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=20_000, seed=7))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na.fcs,P1,D1\n")
    out = tmp_path / "out"
    before = run_batch(tmp_path / "s.csv", out, client=dask_client, strategy="treg@1.0.0", report=False)
    record_decision(out, "a.fcs", action="adjust", reviewer="Dr A", reason="CD25 cut too low",
                    gate_path="root/Lymphocytes/Singlets/Live/CD3pos/CD4pos/Treg", bounds={"PE-Cy7-A": (6000.0, None)})
    update_review_columns(out)
    assert verify_run(out) == []  # adjusted, not yet re-run: the numbers are still the first run's
    after = run_batch(tmp_path / "s.csv", out, client=dask_client, strategy="treg@1.0.0", report=False)
    assert after.table.loc[0, "treg_count"] < before.table.loc[0, "treg_count"]
    assert json.loads((out / "run.json").read_text())["review_decisions"] == 1
    assert len(list((out / "cache").glob("*.json"))) == 2 and verify_run(out) == []

    t = pd.read_parquet(out / "treg_by_visit.parquet")  # the first run's numbers put back, manifest and all
    for col in ("treg_count", "treg_pct_cd4"):
        t.loc[0, col] = before.table.loc[0, col]
    write_table(t, out / "treg_by_visit", TREG_COLUMNS)
    lines = verify_run(out)
    assert [line.split(": ", 2)[1] for line in lines] == ["row 1 (P1:D1, a.fcs)"] * 2
    assert "treg_count is" in lines[0] and "treg_pct_cd4 is" in lines[1]


def test_verify_of_a_folder_that_is_no_run_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert res.exit_code == 2 and "holds no run.json" in res.output
