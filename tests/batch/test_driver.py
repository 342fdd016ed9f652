"""The batch: a sample sheet through Dask to the per patient-visit table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe.batch.driver import run_batch
from cytopipe.outputs.tables import POPULATION_COLUMNS, TREG_COLUMNS
from cytopipe.sim.sample import SampleSpec, write_fcs


@pytest.fixture(scope="module")
def trial_run(trial, tmp_path_factory, dask_client):
    out = tmp_path_factory.mktemp("run")
    return run_batch(trial, out, client=dask_client), out


def test_table_schema_and_values(trial, trial_run):
    result, out = trial_run
    table = pd.read_csv(out / "treg_by_visit.csv")
    assert list(table.columns)[: len(TREG_COLUMNS)] == list(TREG_COLUMNS)
    parquet = pd.read_parquet(out / "treg_by_visit.parquet")
    assert list(parquet.columns) == list(table.columns)
    truth = pd.read_csv(trial.parent / "truth.csv")
    merged = table.merge(truth, on=["file", "patient_id", "visit"], suffixes=("", "_truth"))
    assert len(merged) == 12
    assert (merged["qc_status"] != "error").all()
    err = (merged["treg_pct_cd4"] - merged["treg_pct_cd4_truth"]).abs()
    assert err.max() <= 0.3
    np.testing.assert_allclose(merged["treg_pct_cd4"], 100 * merged["treg_count"] / merged["cd4_count"])
    assert (merged["events_total"] == merged["n_events"]).all()
    assert (table["strategy"] == "treg_adaptive").all() and (table["strategy_version"] == "1.5.0").all()
    assert table["file_sha256"].str.fullmatch("[0-9a-f]{64}").all()
    assert result.exit_code == 0 and result.n_ok == 12


def test_populations_and_run_json(trial, trial_run):
    result, out = trial_run
    pops = pd.read_parquet(out / "populations.parquet")
    assert list(pops.columns) == list(POPULATION_COLUMNS)
    assert len(pops) == 12 * 7  # the default's gates, CD127lo under Treg the seventh
    table = result.table.set_index("file")
    treg = pops[pops["gate"] == "CD127lo"].set_index("file")  # the default's numerator
    assert (treg["count"].to_numpy() == table.loc[treg.index, "treg_count"].to_numpy()).all()
    cd4 = pops[pops["gate"] == "CD4pos"].set_index("file")
    cd25 = pops[pops["gate"] == "Treg"].set_index("file")  # CD25hi FOXP3+, the numerator's parent
    assert (treg["parent_count"].to_numpy() == cd25.loc[treg.index, "count"].to_numpy()).all()
    assert (cd25["parent_count"].to_numpy() == cd4.loc[cd25.index, "count"].to_numpy()).all()
    run = json.loads((out / "run.json").read_text())
    assert run["n_ok"] == 12 and run["n_failed"] == 0
    assert run["strategy"] == "treg_adaptive" and len(run["strategy_sha256"]) == 64
    assert run["started"] <= run["finished"]


def test_failures_become_rows_and_the_batch_goes_on(tmp_path, dask_client, monkeypatch):
    import cytopipe.outputs.miflowcyt as mif

    scanned: list[str] = []
    scan = mif.scan_headers
    monkeypatch.setattr(mif, "scan_headers", lambda paths, **kw: (scanned.extend(paths), scan(paths, **kw))[1])
    write_fcs(tmp_path / "good.fcs", SampleSpec(n_events=20_000, seed=1, keywords={"$CYTSN": "R66"}))
    write_fcs(tmp_path / "mislabelled.fcs", SampleSpec(n_events=5_000, seed=2, pns_overrides={"PE-Cy7-A": "CD127"}))
    write_fcs(tmp_path / "nofoxp3.fcs", SampleSpec(n_events=5_000, seed=3, drop_detectors=("APC-A",)))
    (tmp_path / "broken.fcs").write_bytes(b"FCS3.1    garbage" * 10)
    sheet = tmp_path / "s.csv"
    sheet.write_text(
        "file,patient_id,visit,day,site\n"
        "good.fcs,P01,D1,1,A\nmislabelled.fcs,P02,D1,1,A\nnofoxp3.fcs,P03,D1,1,B\nbroken.fcs,P04,D1,1,B\n"
    )
    result = run_batch(sheet, tmp_path / "out", client=dask_client)
    t = result.table.set_index("file")
    assert result.exit_code == 1 and result.n_failed == 3 and result.n_ok == 1
    assert t.loc["good.fcs", "qc_status"] == "ok"
    assert "detector PE-Cy7-A should carry CD25 but the file says 'CD127'" in t.loc["mislabelled.fcs", "error"]
    assert "no detector for marker(s) ['FOXP3']" in t.loc["nofoxp3.fcs", "error"]
    assert "broken.fcs" in t.loc["broken.fcs", "error"]
    assert all("\n" not in e for e in t["error"])
    assert t.loc["mislabelled.fcs", "qc_status"] == "error"
    assert np.isnan(t.loc["mislabelled.fcs", "treg_pct_cd4"])
    assert list(t["site"]) == ["A", "A", "B", "B"]  # extra sheet columns carried through
    # the MIFlowCyt record takes the instrument from the workers that read the files: only the
    # file no worker could read is scanned again, and its header error is recorded
    assert [Path(p).name for p in scanned] == ["broken.fcs"]
    record = json.loads((tmp_path / "out" / "miflowcyt.json").read_text())
    inst = {i["file"]: i for i in record["instrument"]}
    assert inst["good.fcs"]["serial"] == "R66" and inst["good.fcs"]["header_error"] is None
    assert inst["mislabelled.fcs"]["spillover_keyword"] == "$SPILLOVER"
    assert inst["broken.fcs"]["header_error"] and inst["broken.fcs"]["fcs_version"] is None


def test_rerun_reuses_finished_samples(trial, tmp_path, dask_client):
    first = run_batch(trial, tmp_path, client=dask_client)
    assert first.n_cached == 0
    second = run_batch(trial, tmp_path, client=dask_client)
    assert second.n_cached == 12
    pd.testing.assert_frame_equal(first.table, second.table)
    # a changed file is recomputed, the others reused
    src = trial.parent
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    write_fcs(copy / "P01_D1.fcs", SampleSpec(n_events=20_000, seed=99))
    third = run_batch(copy / "samples.csv", tmp_path, client=dask_client)
    assert third.n_cached == 11


def test_low_event_sample_is_flagged(tmp_path, dask_client):
    write_fcs(tmp_path / "short.fcs", SampleSpec(n_events=4_000, seed=5))
    sheet = tmp_path / "s.csv"
    sheet.write_text("file,patient_id,visit\nshort.fcs,P01,D1\n")
    result = run_batch(sheet, tmp_path / "out", client=dask_client)
    row = result.table.iloc[0]
    assert row["qc_status"] == "flag"
    assert set(row["qc_flags"].split(";")) == {"low_events", "low_cd4"}
    assert result.exit_code == 0



def test_largest_files_start_first(tmp_path, dask_client):
    # a big file left for last keeps one worker busy while the others idle: the sheet lists
    # the largest last, and it must still be among the first two samples the two workers start
    sizes = {"a.fcs": 4_000, "b.fcs": 6_000, "c.fcs": 5_000, "d.fcs": 7_000, "e.fcs": 60_000}
    for i, (name, n) in enumerate(sizes.items()):
        write_fcs(tmp_path / name, SampleSpec(n_events=n, seed=40 + i))
    sheet = tmp_path / "s.csv"
    sheet.write_text("file,patient_id,visit\n" + "".join(f"{f},P{i},D1\n" for i, f in enumerate(sizes)))
    dask_client.run(__import__, "cytopipe.batch.driver")  # warm workers: a first import must not reorder the starts
    log = tmp_path / "log.jsonl"
    result = run_batch(sheet, tmp_path / "out", client=dask_client, report=False, log_file=log)
    assert result.n_failed == 0
    started = [r["file"] for r in sorted(map(json.loads, log.read_text().splitlines()), key=lambda r: r["start"])]
    assert set(started[:2]) == {"e.fcs", "d.fcs"}


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_first(tmp_path, dask_client):
    import os

    from cytopipe.batch.driver import _lock_folder
    from cytopipe.exceptions import OutputError

    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=5_000, seed=1))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na.fcs,P1,D1\n")
    (tmp_path / "out").mkdir()
    held = _lock_folder(tmp_path / "out")  # as a first run holds it
    try:
        with pytest.raises(OutputError, match=rf"in use by another cytopipe run \(pid {os.getpid()} on "):
            run_batch(tmp_path / "s.csv", tmp_path / "out", client=dask_client, report=False)
    finally:
        held.close()
    assert run_batch(tmp_path / "s.csv", tmp_path / "out", client=dask_client, report=False).n_ok == 1


def test_a_run_from_a_strategy_folder_stays_reviewable(tmp_path, dask_client):
    from cytopipe.review import record_decision, update_review_columns
    from cytopipe.strategy.registry import load_strategy

    folder = tmp_path / "lab_strategies" / "mine"
    shutil.copytree(load_strategy("treg@1.0.0").directory, folder)
    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=5_000, seed=2))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na.fcs,P1,D1\n")
    run_batch(tmp_path / "s.csv", tmp_path / "out", client=dask_client, report=False, strategy=str(folder))
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert Path(run["strategy_dir"]) == folder.resolve()
    record_decision(tmp_path / "out", "P1:D1", action="approve", reviewer="Dr R")
    table = update_review_columns(tmp_path / "out")
    assert table.loc[0, "review_status"] == "approved"


def test_rows_and_run_json_carry_the_workers_versions_and_an_upgrade_recomputes(tmp_path, monkeypatch):
    """Versions come from the worker that computed each number, not from the driver; after an upgrade
    of the worker (faked: an in-process worker sees the monkeypatch, the driver's FlowKit is unchanged)
    the stored results are not reused and the rows say so."""
    from distributed import Client

    import cytopipe.batch.task as task
    from cytopipe.audit import verify_run

    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=20_000, seed=4))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na.fcs,P1,D1\n")
    real = task.worker_versions()
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        first = run_batch(tmp_path / "s.csv", tmp_path / "out", client=client, strategy="treg@1.0.0", report=False)
        monkeypatch.setattr(task, "worker_versions", lambda: {**real, "flowkit": "9.9.9", "python": "3.99.0"})
        second = run_batch(tmp_path / "s.csv", tmp_path / "out", client=client, strategy="treg@1.0.0", report=False)
    assert first.table.loc[0, "flowkit_version"] == real["flowkit"] and first.n_cached == 0
    assert second.n_cached == 0  # recomputed, not reused under the new stamp
    table = pd.read_csv(tmp_path / "out" / "treg_by_visit.csv")
    pops = pd.read_parquet(tmp_path / "out" / "populations.parquet")
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert table.loc[0, "flowkit_version"] == "9.9.9" and (pops["flowkit_version"] == "9.9.9").all()
    [software] = run["software"]
    assert software["versions"]["python"] == "3.99.0" and software["n_samples"] == 1
    assert table.loc[0, "versions_sha"] == software["versions_sha"]
    assert (pops["versions_sha"] == software["versions_sha"]).all()
    assert run["flowkit_version"] == "9.9.9"
    assert set(software["versions"]) >= {"flowkit", "flowio", "flowutils", "numpy", "pandas", "pyarrow", "scikit-learn",
                                         "scipy", "dask", "distributed", "fcsparser", "cytopipe", "python", "platform"}
    assert verify_run(tmp_path / "out") == []


def test_the_workers_store_the_reports_plots_and_the_run_times_its_phases(tmp_path, dask_client):
    import time

    from cytopipe.review.plotstore import load_plots

    for i in range(3):
        write_fcs(tmp_path / f"f{i}.fcs", SampleSpec(n_events=8_000, seed=60 + i))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\n" + "".join(f"f{i}.fcs,P{i},D1\n" for i in range(3)))
    t0 = time.time()
    result = run_batch(tmp_path / "s.csv", tmp_path / "out", client=dask_client)
    wall = time.time() - t0
    stored = sorted((tmp_path / "out" / "cache" / "plots").glob("*.npz"))
    assert len(stored) == 3 and all(len(load_plots(p).pngs) == 7 for p in stored)
    t = result.timings
    phases = ("startup_s", "batch_s", "outputs_s", "report_s", "teardown_s")
    assert all(t[k] >= 0 for k in phases) and t["report_s"] > 0
    assert sum(t[k] for k in phases) <= wall + 0.05
    assert t0 <= t["started_at"] <= t0 + wall
    bare = run_batch(tmp_path / "s.csv", tmp_path / "bare", client=dask_client, report=False)
    assert not (tmp_path / "bare" / "cache" / "plots").exists() and bare.timings["report_s"] < 0.05


def test_the_command_and_the_driver_load_neither_flowkit_nor_sklearn_nor_matplotlib(tmp_path):
    """What ``cytopipe run`` loads before the workers' process is started, and what the driver's modules load:
    no FlowKit (~1.5 s), scikit-learn, matplotlib, bokeh or scipy; a header scan and a hash need none either.

    A fresh interpreter: this one has them all loaded.
    """
    import subprocess
    import sys

    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=500, seed=1))
    code = (
        "import sys\n"
        "heavy = ('flowkit', 'sklearn', 'matplotlib', 'bokeh', 'scipy')\n"
        "def loaded(): return sorted(m for m in heavy if m in sys.modules)\n"
        "import cytopipe.cli\n"
        "from cytopipe.batch.cluster import cluster_ahead, start_worker_processes\n"
        "print(loaded(), 'dask' in sys.modules)\n"
        "from cytopipe.batch import run_batch\n"
        "import cytopipe.batch.driver, cytopipe.batch.task, cytopipe.review.report, cytopipe.outputs\n"
        "from cytopipe.fcs import file_sha256, scan_header\n"
        f"scan_header({str(tmp_path / 'a.fcs')!r}), file_sha256({str(tmp_path / 'a.fcs')!r})\n"
        "print(loaded())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout.splitlines()
    assert out == ["[] False", "[]"]
