"""``RunFolder``: a generated run read back through it; a damaged record named with its path; decisions parsed
into ``Decision`` objects that match what was written; ``decide`` refused while the folder is locked."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cytopipe.exceptions import OutputError, ReviewError
from cytopipe.outputs import GENESIS, Decision, RunFolder, RunRecord

LYMPH = "root/Lymphocytes"


@pytest.fixture(scope="module")
def made_run(trial, tmp_path_factory, dask_client) -> Path:
    """The generated trial (4 patients x 3 visits) through the default strategy, no report."""
    from cytopipe.batch.driver import run_batch

    out = tmp_path_factory.mktemp("runfolder") / "run"
    run_batch(trial, out, client=dask_client, report=False)
    return out


@pytest.fixture
def run(made_run, tmp_path) -> RunFolder:
    """A copy of the run to decide on or damage."""
    dst = tmp_path / "run"
    shutil.copytree(made_run, dst)
    return RunFolder(dst)


def test_the_record_and_tables_of_a_generated_run(made_run, trial):
    folder = RunFolder(made_run)
    raw = json.loads((made_run / "run.json").read_text())
    rec = folder.record
    assert isinstance(rec, RunRecord)
    for key, value in raw.items():
        assert getattr(rec, key) == value, key
    assert rec.ref == f"{raw['strategy']}@{raw['strategy_version']}"
    assert rec.recomputed == {} and rec.review_decisions == 0
    assert rec.sample_path("P01_D1.fcs") == (Path(trial).parent / "P01_D1.fcs").resolve()
    assert rec.last_gated("P01_D1.fcs") == _dt.datetime.fromisoformat(raw["finished"])
    assert rec.strategy_folder() == Path(raw["strategy_dir"])
    table = folder.treg_by_visit()
    assert len(table) == rec.n_samples == 12 and list(table.columns[:4]) == ["patient_id", "visit", "day", "file"]
    pops = folder.populations()
    assert set(pops["file"]) == set(table["file"]) and (pops["gate_path"] == LYMPH).sum() == 12
    assert folder.decisions() == [] and folder.review_lines() == [] and folder.verify_chain() == []
    assert folder.stored_result_path("k") == made_run / "cache" / "k.json"
    assert [s["file"] for s in folder.miflowcyt()["samples"]] == list(table["file"])


def test_a_damaged_run_json_is_named_with_its_path(run, tmp_path):
    path = run.path / "run.json"
    raw = json.loads(path.read_text())
    path.write_text("{not json")
    with pytest.raises(OutputError, match="not readable JSON") as e:
        _ = run.record
    assert str(path) in str(e.value)
    path.write_text(json.dumps({**raw, "strategy_verison": "1.0.0"}))  # a misspelt key
    with pytest.raises(OutputError, match=r"unknown key\(s\) \['strategy_verison'\]") as e:
        _ = run.record
    assert str(e.value).startswith(f"{path}: ")
    path.write_text(json.dumps({k: v for k, v in raw.items() if k != "strategy_sha256"}))
    with pytest.raises(OutputError, match=r"lacks \['strategy_sha256'\]"):
        _ = run.record
    path.write_text(json.dumps([raw]))
    with pytest.raises(OutputError, match="must be a JSON object"):
        _ = run.record
    with pytest.raises(OutputError, match=f"{tmp_path / 'empty'} holds no run.json"):
        _ = RunFolder(tmp_path / "empty").record
    with pytest.raises(OutputError, match="unknown key"):
        run.write_record({**raw, "extra": 1})


def test_decisions_are_parsed_into_decision_objects_that_match_what_was_written(run):
    from cytopipe.review import decide

    # after the run: a decision older than the run's end would count as gated by it
    t0 = run.record.last_gated("P01_D8.fcs").replace(microsecond=123456) + _dt.timedelta(hours=1)
    approved = decide(run.path, "P01:D8", "approve", reviewer=" Dr A ", now=t0).records
    rejected = decide(run.path, "P02_D1.fcs", "reject", reviewer="Dr B", reason="clogged tube",
                      now=t0 + _dt.timedelta(minutes=1)).records
    adjusted = decide(run.path, "P03:D60", "adjust", reviewer="Dr A", reason="wider",
                      gates={LYMPH: {"bounds": {"FSC-A": (20000, 150000)}}}, now=t0 + _dt.timedelta(minutes=2))
    assert not adjusted.recomputed
    written = [*approved, *rejected, *adjusted.records]
    got = run.decisions()
    assert got == written and all(isinstance(d, Decision) for d in got)
    a, r, j = got
    assert (a.action, a.reviewer, a.reason, a.file, a.patient_id, a.visit) == ("approve", "Dr A", "", "P01_D8.fcs",
                                                                              "P01", "D8")
    assert a.time == t0.isoformat(timespec="milliseconds") and a.time.endswith(".123+00:00")
    assert a.meaning == "reviewed and approved"
    assert (r.action, r.reason, r.file) == ("reject", "clogged tube", "P02_D1.fcs")
    assert (j.action, j.gate_path, j.gate["type"]) == ("adjust", LYMPH, "RectangleGate")
    assert [d["linear"] for d in j.gate["dimensions"] if d["id"] == "FSC-A"] == [[20000, 150000]]
    table = run.treg_by_visit().set_index("file")
    for d in got:
        assert (d.file_sha256, d.strategy_sha256) == (table.loc[d.file, "file_sha256"],
                                                       table.loc[d.file, "strategy_sha256"])
    assert table.loc["P01_D8.fcs", "review_status"] == "approved"
    assert table.loc["P02_D1.fcs", "review_status"] == "rejected"
    assert table.loc["P03_D60.fcs", "review_status"] == "adjusted"
    # each line is the decision's own text, chained to the line before
    lines = run.review_lines()
    assert lines == [d.to_line() for d in got] and [json.loads(x) for x in lines] == [d.to_dict() for d in got]
    assert a.prev_sha256 == GENESIS and "gate" not in a.to_dict()
    assert run.verify_chain() == []
    # the adjusted gate is not in the numbers yet: approving it now is refused
    with pytest.raises(ReviewError, match="re-run"):
        decide(run.path, "P03:D60", "approve", reviewer="Dr A")
    # a decision line edited to carry a key no decision has is named with its line
    run.review_path.write_text("\n".join([lines[0], lines[1].replace('"reason"', '"raison"')]) + "\n")
    with pytest.raises(OutputError, match=r"review.jsonl: line 2: unknown key\(s\) \['raison'\]"):
        run.decisions()
    assert any("line 2: unknown key" in p for p in run.verify_chain())


def test_decide_is_refused_while_the_folder_is_locked(run):
    from cytopipe.review import decide

    before = (run.path / "treg_by_visit.csv").read_bytes()
    with run.lock("cytopipe run (a test)"), pytest.raises(OutputError, match=r"cytopipe run \(a test\)"):
        decide(run.path, "P01:D8", "approve", reviewer="Dr A")
    assert not run.review_path.exists()
    assert (run.path / "treg_by_visit.csv").read_bytes() == before
    assert len(decide(run.path, "P01:D8", "approve", reviewer="Dr A").records) == 1  # free again


def test_a_sample_gated_again_is_recorded_in_run_json(run):
    raw = (run.path / "run.json").read_text()
    when = _dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=_dt.UTC)
    run.mark_recomputed("P01_D1.fcs", when)
    assert run.record.recomputed == {"P01_D1.fcs": when.isoformat()}
    assert run.record.last_gated("P01_D1.fcs") == when
    assert run.record.last_gated("P01_D8.fcs") == _dt.datetime.fromisoformat(json.loads(raw)["finished"])
    # the rest of the record is as it was, written as cytopipe run writes it
    assert json.loads((run.path / "run.json").read_text()) == {**json.loads(raw),
                                                               "recomputed": {"P01_D1.fcs": when.isoformat()}}
    assert isinstance(run.populations(), pd.DataFrame)
