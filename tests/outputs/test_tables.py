"""Outputs: atomic writes, failures that leave earlier outputs intact."""

from __future__ import annotations

import errno
import stat
from pathlib import Path

import pandas as pd
import pytest

from cytopipe.exceptions import OutputError
from cytopipe.outputs.tables import TREG_COLUMNS, atomic_write, write_table


def test_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "t.csv"
    atomic_write(target, lambda p: Path(p).write_text("complete,old\n"))

    def disk_full(p):
        Path(p).write_text("trunc")  # half-written, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"Cannot write .*t\.csv: No space left on device"):
        atomic_write(target, disk_full)
    assert target.read_text() == "complete,old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_written_files_are_readable_by_others(tmp_path):
    target = atomic_write(tmp_path / "r.json", lambda p: Path(p).write_text("{}"))
    assert target.stat().st_mode & stat.S_IRGRP


@pytest.mark.parametrize("method", ["to_parquet", "to_csv"])
def test_table_failure_midway_keeps_both_earlier_tables(tmp_path, monkeypatch, method):
    """Parquet and CSV are replaced together or not at all: they never disagree."""
    base = tmp_path / "treg_by_visit"
    df = pd.DataFrame({"patient_id": ["P1"], "visit": ["D1"], "file": ["a.fcs"]})
    write_table(df, base, TREG_COLUMNS)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(self, path, *a, **k):
        Path(path).write_bytes(b"PAR1")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, method, boom)
    with pytest.raises(OutputError):
        write_table(df.assign(visit=["D8"]), base, TREG_COLUMNS)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failed_output_write_in_the_cli_is_one_line(tmp_path, monkeypatch, trial, dask_client):
    from click.testing import CliRunner

    from cytopipe.cli import cli

    def boom(self, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    res = CliRunner().invoke(cli, ["run", str(trial), "--out", str(tmp_path / "o"),
                                   "--scheduler", dask_client.scheduler.address])
    assert res.exit_code == 2
    assert "Traceback" not in res.output and "No space left on device" in res.output


def test_the_manifest_is_written_last_and_names_both_copies(tmp_path, monkeypatch):
    """A crash after both copies were replaced leaves the old manifest, naming the old hashes."""
    import hashlib
    import json

    import cytopipe.outputs.tables as tables
    from cytopipe.outputs.tables import SCHEMA_VERSION, manifest_path

    base = tmp_path / "treg_by_visit"
    df = pd.DataFrame({"patient_id": ["P1", "P2"], "visit": ["D1", "D1"], "file": ["a.fcs", "b.fcs"]})
    files = write_table(df, base, TREG_COLUMNS)
    assert [f.name for f in files] == ["treg_by_visit.parquet", "treg_by_visit.csv", "treg_by_visit.manifest.json"]
    man = json.loads(manifest_path(base).read_text())
    assert man["rows"] == 2 and man["schema_version"] == SCHEMA_VERSION == "1.1"
    assert man["columns"] == list(TREG_COLUMNS)
    for name in ("treg_by_visit.parquet", "treg_by_visit.csv"):
        assert man["files"][name]["sha256"] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    order = []
    real = tables.write_json

    def killed(obj, path):
        order.append([p.name for p in tmp_path.iterdir()])
        raise KeyboardInterrupt  # the run dies before the manifest

    monkeypatch.setattr(tables, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        write_table(df.assign(visit=["D8", "D8"]), base, TREG_COLUMNS)
    assert pd.read_csv(base.with_suffix(".csv"))["visit"].tolist() == ["D8", "D8"]  # both copies were replaced
    assert json.loads(manifest_path(base).read_text()) == man  # the manifest still names the old ones
    now = hashlib.sha256(base.with_suffix(".csv").read_bytes()).hexdigest()
    assert now != man["files"]["treg_by_visit.csv"]["sha256"]
    monkeypatch.setattr(tables, "write_json", real)
