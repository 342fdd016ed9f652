"""No FCS free-text keyword reaches an output unless asked for."""

from __future__ import annotations

import pandas as pd

from cytopipe.batch.driver import run_batch
from cytopipe.sim.sample import SampleSpec, write_fcs

SECRET = "Jane Q Doe"


def _sheet(tmp_path):
    for i in range(2):
        write_fcs(tmp_path / f"s{i}.fcs", SampleSpec(
            n_events=20_000, seed=40 + i,
            keywords={"$SRC": SECRET, "$COM": f"blood of {SECRET}", "$OP": SECRET, "$FIL": f"{SECRET}.fcs",
                      "$CYT": "LSRFortessa"}))
    sheet = tmp_path / "s.csv"
    sheet.write_text("file,patient_id,visit\ns0.fcs,P01,D1\ns1.fcs,P01,D60\n")
    return sheet


def _all_output_bytes(out):
    return b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_default_outputs_carry_no_free_text_keywords(tmp_path, dask_client):
    out = tmp_path / "out"
    result = run_batch(_sheet(tmp_path), out, client=dask_client)
    assert result.n_ok == 2
    blob = _all_output_bytes(out)
    assert SECRET.encode() not in blob
    assert (out / "report" / "index.html").is_file()  # the report was among what was searched


def test_include_keywords_opts_in(tmp_path, dask_client):
    out = tmp_path / "out"
    result = run_batch(_sheet(tmp_path), out, client=dask_client, report=False,
                       include_keywords=["$SRC", "$CYT"])
    table = pd.read_csv(out / "treg_by_visit.csv")
    assert list(table["fcs_SRC"]) == [SECRET, SECRET]
    assert list(table["fcs_CYT"]) == ["LSRFortessa"] * 2
    assert "fcs_COM" not in table.columns and result.n_ok == 2
