"""The data dictionary: up to date on disk, complete, and strict enough to catch a bad table."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cytopipe.exceptions import OutputSchemaError
from cytopipe.outputs.schema import TABLES, read_output, render_json, render_markdown, validate_table
from cytopipe.outputs.tables import POPULATION_COLUMNS, TREG_COLUMNS

from ..conftest import REPO


def test_docs_are_generated_from_the_dictionary():
    assert (REPO / "docs" / "outputs.md").read_text(encoding="utf-8") == render_markdown(), \
        "regenerate with: python -m cytopipe.outputs.schema docs"
    on_disk = json.loads((REPO / "docs" / "outputs.schema.json").read_text(encoding="utf-8"))
    assert on_disk == render_json(), "regenerate with: python -m cytopipe.outputs.schema docs"


def test_every_table_and_column_is_described():
    assert {"treg_by_visit", "populations", "change_by_patient", "arm_summary", "trend_test",
            "exclusions", "sdtm_cp"} <= set(TABLES)
    assert [f["name"] for f in TABLES["treg_by_visit"]["columns"]] == list(TREG_COLUMNS)
    assert [f["name"] for f in TABLES["populations"]["columns"]] == list(POPULATION_COLUMNS)
    for name, spec in TABLES.items():
        for f in [*spec["columns"], *spec.get("optional_columns", []), *spec.get("column_patterns", [])]:
            assert f["description"] and f["description"] != "UNDOCUMENTED", (name, f["name"])
    arm = [f["name"] for f in TABLES["arm_summary"]["columns"]][:10]
    assert arm == ["arm", "n", "mean_change", "sd_change", "median_change", "q1_change", "q3_change",
                   "p_mannwhitney_asymptotic", "p_mannwhitney_exact", "p_method"]


def _exclusions():
    return pd.DataFrame({"patient_id": ["P1"], "visit": ["D1"], "run_dir": ["/r"], "file": ["a.fcs"],
                         "reason": ["qc_error"], "detail": ["x"]})


def test_validate_accepts_a_good_table_and_lists_every_problem_of_a_bad_one():
    validate_table(_exclusions(), "exclusions")
    bad = _exclusions().assign(reason=["forgot"], patient_id=[None], extra=[1])
    with pytest.raises(OutputSchemaError) as e:
        validate_table(bad, "exclusions")
    text = str(e.value)
    assert "'reason' has values ['forgot']" in text
    assert "'patient_id' has missing values" in text
    assert "undocumented column 'extra'" in text
    with pytest.raises(OutputSchemaError, match="missing column"):
        validate_table(_exclusions().drop(columns="detail"), "exclusions")
    with pytest.raises(OutputSchemaError, match="first columns are"):
        validate_table(_exclusions()[["visit", "patient_id", "run_dir", "file", "reason", "detail"]], "exclusions")
    with pytest.raises(OutputSchemaError, match="Unknown output table 'nope'"):
        validate_table(_exclusions(), "nope")


def test_types_patterns_and_per_visit_columns():
    trend = pd.DataFrame({"test": ["JT"], "arms_in_order": ["a;b"], "n": [2.5], "statistic": [1.0], "z": [0.1],
                          "p_asymptotic_increasing": [0.5], "p_asymptotic_two_sided": [1.0],
                          "p_permutation_increasing": [0.5], "n_permutations": [10], "p_method": ["m"]})
    with pytest.raises(OutputSchemaError, match="'n' should be Int64"):
        validate_table(trend, "trend_test")
    sd = TABLES["sdtm_cp"]
    row = {f["name"]: "x" for f in sd["columns"]}
    row.update(DOMAIN="CP", CPSEQ=1, CPSTRESN=1.0, VISITNUM=1.0, VISITDY=1, CPTESTCD="TREGCD4LONG",
               CPSTAT=None, CPBLFL="Y")
    with pytest.raises(OutputSchemaError, match="CPTESTCD"):  # more than 8 characters
        validate_table(pd.DataFrame([row]), "sdtm_cp")
    from cytopipe.outputs.schema import dtypes_for
    d = dtypes_for("change_by_patient", ["patient_id", "treg_pct_cd4_D8", "change_rel_pct_D8", "other"])
    assert d["treg_pct_cd4_D8"] == "float64" and d["change_rel_pct_D8"] == "float64" and d["other"] == "string"


def test_read_output_parses_csv_with_the_documented_types(tmp_path):
    p = tmp_path / "exclusions.csv"
    p.write_text("patient_id,visit,run_dir,file,reason,detail\n007,1,/r,a.fcs,qc_error,\n")
    df = read_output(p, "exclusions")
    assert df["patient_id"].iloc[0] == "007" and df["visit"].iloc[0] == "1"  # text stays text
    validate_table(df, "exclusions")
    q = tmp_path / "trend.csv"
    q.write_text("test,arms_in_order,n,statistic,z,p_asymptotic_increasing,p_asymptotic_two_sided,"
                 "p_permutation_increasing,n_permutations,p_method\nJT,a;b,many,1,1,1,1,1,1,m\n")
    with pytest.raises(OutputSchemaError, match="column 'n' does not parse as Int64"):
        read_output(q, "trend_test")
