"""A small generated run to review: staining variation on (so moving a CD25 edge moves cells), a
hostile patient id, and one short tube that gets a QC flag."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

XSS = "<img src=x onerror=alert(1)>"
TREG = "root/Lymphocytes/Singlets/Live/CD3pos/CD4pos/Treg"


@pytest.fixture(scope="session")
def station_run(tmp_path_factory, dask_client) -> Path:
    """``cytopipe run`` output of 2 patients x 3 visits + one 8,000-event tube (fixed Treg rectangle)."""
    from cytopipe.batch.driver import run_batch
    from cytopipe.sim.sample import SampleSpec, write_fcs
    from cytopipe.sim.trial import generate_trial

    d = tmp_path_factory.mktemp("station")
    sheet = generate_trial(d / "trial", n_patients=2, n_events=20_000, seed=5, hard=True)
    write_fcs(d / "trial" / "short.fcs", SampleSpec(n_events=8_000, seed=9, hard=True))
    table = pd.read_csv(sheet, dtype=str)
    table.loc[table["patient_id"] == "P02", "patient_id"] = XSS
    table.loc[len(table)] = {"file": "short.fcs", "patient_id": "P03", "visit": "D1", "day": "1"}
    table.to_csv(sheet, index=False)
    out = d / "run"
    run_batch(sheet, out, client=dask_client, strategy="treg@1.0.0", report=False)
    return out


@pytest.fixture
def run_copy(station_run, tmp_path) -> Path:
    """A copy of the run that a test may change (decisions, tables); the FCS files are shared."""
    dst = tmp_path / "run"
    shutil.copytree(station_run, dst)
    return dst
