"""From FCS files to the endpoint: a tube whose gates could not be placed waits for a reviewer."""

from __future__ import annotations

import pandas as pd
import pytest

from cytopipe.batch import run_batch
from cytopipe.endpoint import run_endpoint
from cytopipe.exceptions import EndpointError
from cytopipe.review import record_decision, update_review_columns
from cytopipe.sim import SampleSpec, write_fcs


def test_a_tube_sent_to_review_is_kept_out_of_the_endpoint_until_approved(tmp_path, dask_client):
    rows = []
    for k, patient in enumerate(("P1", "P2")):
        for visit, day, pct in (("D1", 1, 5.0), ("D60", 60, 9.0)):
            name = f"{patient}_{visit}.fcs"
            # P2's day-60 tube is a clog: 150 events, too few to place any gate from
            n = 150 if (patient, visit) == ("P2", "D60") else 20_000
            write_fcs(tmp_path / name, SampleSpec(n_events=n, seed=40 + 10 * k + day, treg_pct_cd4=pct))
            rows.append({"file": name, "patient_id": patient, "visit": visit, "day": day})
    pd.DataFrame(rows).to_csv(tmp_path / "samples.csv", index=False)
    pd.DataFrame({"patient_id": ["P1", "P2"], "arm": ["placebo", "3 MIU"]}).to_csv(tmp_path / "rand.csv", index=False)
    out = tmp_path / "run"
    result = run_batch(tmp_path / "samples.csv", out, client=dask_client, report=False)  # the default strategy
    flags = result.table.set_index("file")["qc_flags"]
    assert "needs_review:Lymphocytes:too_few_events" in flags["P2_D60.fcs"].split(";")
    assert not any(f.startswith("needs_review") for f in flags["P1_D60.fcs"].split(";"))

    with pytest.raises(EndpointError, match=r"P2:D60") as err:
        run_endpoint([out], tmp_path / "rand.csv", tmp_path / "ep", study_id="S1", figures=False)
    assert "P1:D60" not in str(err.value)

    prelim = run_endpoint([out], tmp_path / "rand.csv", tmp_path / "ep_pre", study_id="S1", figures=False,
                          include_unreviewed=True)
    assert prelim.preliminary

    record_decision(out, "P2:D60", action="approve", reviewer="Dr R")
    update_review_columns(out)  # as `cytopipe review` does after recording
    final = run_endpoint([out], tmp_path / "rand.csv", tmp_path / "ep_final", study_id="S1", figures=False)
    assert not final.preliminary
