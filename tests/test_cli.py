"""The command line, driven for real with click's CliRunner."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from cytopipe.cli import cli
from cytopipe.sim.sample import SampleSpec, write_fcs


def test_run_with_scheduler_address(trial, tmp_path, dask_client):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["run", str(trial), "--out", str(out),
                                   "--scheduler", dask_client.scheduler.address])
    assert res.exit_code == 0, res.output
    assert "12 of 12 samples gated" in res.output
    assert "Dask dashboard: http" in res.output
    assert len(pd.read_csv(out / "treg_by_visit.csv")) == 12


def test_run_without_strategy_uses_the_package_default(trial, tmp_path, dask_client):
    """`cytopipe run` (hence `make demo`) gates with DEFAULT_STRATEGY, the one that places every gate."""
    from cytopipe.strategy import DEFAULT_STRATEGY

    assert DEFAULT_STRATEGY == "treg_adaptive@1.5.0"
    assert DEFAULT_STRATEGY in CliRunner().invoke(cli, ["run", "--help"]).output
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["run", str(trial), "--out", str(out), "--scheduler", dask_client.scheduler.address])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "treg_by_visit.csv")
    assert set(table["strategy"]) == {"treg_adaptive"} and set(table["strategy_version"]) == {"1.5.0"}


def test_failed_sample_exits_1(tmp_path, dask_client):
    write_fcs(tmp_path / "bad.fcs", SampleSpec(n_events=3000, seed=2, pns_overrides={"V450-A": "CD8"}))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\nbad.fcs,P01,D1\n")
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "s.csv"), "--out", str(tmp_path / "o"),
                                   "--scheduler", dask_client.scheduler.address])
    assert res.exit_code == 1
    assert "should carry CD4 but the file says 'CD8'" in res.output


def test_user_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / "s.csv").write_text("file,patient_id,visit\nnope.fcs,P01,D1\n")
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "s.csv"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "line 2: file 'nope.fcs' not found" in lines[0]
    res = CliRunner().invoke(cli, ["--debug", "run", str(tmp_path / "s.csv"), "--out", str(tmp_path / "o")])
    assert res.exception is not None and type(res.exception).__name__ == "SampleSheetError"


def test_unknown_strategy_exits_2(trial, tmp_path):
    res = CliRunner().invoke(cli, ["run", str(trial), "--out", str(tmp_path), "--strategy", "treg@0.0.1"])
    assert res.exit_code == 2 and "Available strategies" in res.output


def test_strategy_list_and_show(tmp_path, monkeypatch):
    res = CliRunner().invoke(cli, ["strategy", "list"])
    assert res.exit_code == 0 and "treg@1.0.0" in res.output and "released" in res.output
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["strategy", "show", "treg@1.0.0"])
    assert res.exit_code == 0 and "CD4pos" in res.output and "PE-Cy7-A" in res.output
    assert (tmp_path / "treg@1.0.0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn by default
    res = CliRunner().invoke(cli, ["strategy", "show", "treg@1.0.0", "--no-image"])
    assert res.exit_code == 0 and "gate tree image" not in res.output


def test_help_documents_exit_codes():
    res = CliRunner().invoke(cli, ["run", "--help"])
    assert "Exit status" in res.output and "bad invocation" in res.output


def test_run_prints_where_its_time_went(tmp_path, dask_client):
    import re

    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=5000, seed=3))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na.fcs,P01,D1\n")
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "s.csv"), "--out", str(tmp_path / "o"),
                                   "--scheduler", dask_client.scheduler.address, "--timings"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("timings:")]
    assert len(lines) == 2
    found = re.fullmatch(r"timings: start-up ([0-9.]+) s \(until the first sample started\), batch ([0-9.]+) s, "
                         r"outputs ([0-9.]+) s, report ([0-9.]+) s, teardown ([0-9.]+) s", lines[0])
    assert found and float(found.group(4)) > 0  # a report was written
    phases = dict(re.findall(r"(\w+) ([0-9]+) ms", lines[1]))
    assert lines[1].startswith("timings: a freshly gated sample, median: ")
    assert list(phases) == ["read", "conform", "place", "gate", "count", "plots", "time_qc", "store"]
    assert int(phases["plots"]) > 0  # the report's plot data was made in the worker


def test_debug_shows_the_traceback_and_keeps_the_exit_status(tmp_path):
    """--debug re-raises for the traceback; the command still exits 2 for a user error, not Python's 1."""
    import subprocess
    import sys

    sheet = tmp_path / "s.csv"
    sheet.write_text("file,patient_id,visit\nmissing.fcs,P01,D1\n")  # a sheet naming a file that is not there
    args = [sys.executable, "-m", "cytopipe", "run", str(sheet), "--out", str(tmp_path / "o")]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=120)
    debug = subprocess.run(args[:3] + ["--debug"] + args[3:], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "missing.fcs" in plain.stderr
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr


def test_a_reader_that_goes_away_gets_no_traceback(tmp_path):
    # `cytopipe panel SHEET | head -1`: the pipe closes after the first line; the command stops quietly (as click
    # does for a closed pipe), not with an internal error.
    # 400 files print far more than a pipe's buffer holds, so the command is still writing when it closes
    import os
    import subprocess
    import sys

    from cytopipe.sim import SampleSpec, write_fcs

    src = tmp_path / "t0.fcs"
    write_fcs(src, SampleSpec(n_events=500, seed=1))
    rows = ["file,patient_id,visit"]
    for i in range(400):
        if i:
            os.link(src, tmp_path / f"t{i}.fcs")
        rows.append(f"t{i}.fcs,P{i:03d},D1")
    (tmp_path / "samples.csv").write_text("\n".join(rows) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "cytopipe", "panel", "samples.csv"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    first = proc.stdout.readline().decode()
    proc.stdout.close()  # the reader goes away before the command has written everything
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.wait(timeout=120)
    assert first.strip().endswith(".fcs")
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Internal error" not in err, err
    assert proc.returncode == 1  # click's status for a closed pipe


def test_run_loads_no_gating_or_plotting_stack_in_the_command_itself(tmp_path):
    """``cytopipe run`` with its local cluster, start to end: the command's own process never loads FlowKit,
    scikit-learn, SciPy, networkx, matplotlib or Bokeh (the workers gate and draw; the dashboard is off
    unless asked), and prints no dashboard address. A fresh interpreter: this one has them all loaded."""
    import subprocess
    import sys

    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=20_000, seed=3))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na.fcs,P01,D1\n")
    code = (
        "import sys\n"
        "from cytopipe.cli import cli\n"
        "try:\n"
        f"    cli.main(['run', {str(tmp_path / 's.csv')!r}, '--out', {str(tmp_path / 'out')!r}],"
        " standalone_mode=False)\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "heavy = ('flowkit', 'sklearn', 'scipy', 'networkx', 'matplotlib', 'bokeh', 'distributed.dashboard')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.stdout.splitlines()[-2:] == ["exit 0", "[]"], res.stdout + res.stderr
    assert "Dask dashboard" not in res.stdout + res.stderr
    assert (tmp_path / "out" / "report" / "index.html").is_file()
