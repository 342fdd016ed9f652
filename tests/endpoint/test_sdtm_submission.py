"""SDTM CP for a submission: SAS transport v5 (sdtm_cp.xpt) and the define.xml describing it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from lxml import etree
from pandas.io.sas.sas_xport import XportReader

from cytopipe.batch import run_batch
from cytopipe.cli import cli
from cytopipe.endpoint import run_endpoint
from cytopipe.exceptions import EndpointError
from cytopipe.outputs.schema import read_output
from cytopipe.outputs.tables import TREG_COLUMNS, write_table
from cytopipe.sim import SampleSpec, write_fcs
from cytopipe.strategy.registry import load_strategy

NS = {"odm": "http://www.cdisc.org/ns/odm/v1.3", "def": "http://www.cdisc.org/ns/def/v2.0",
      "xlink": "http://www.w3.org/1999/xlink"}
# SDTMIG v3.4 CP labels, as the standard spells them
LABELS = {"STUDYID": "Study Identifier", "DOMAIN": "Domain Abbreviation", "USUBJID": "Unique Subject Identifier",
          "CPSEQ": "Sequence Number", "CPTESTCD": "Test or Examination Short Name",
          "CPTEST": "Name of Measurement, Test or Examination", "CPORRES": "Result or Finding in Original Units",
          "CPSTAT": "Completion Status", "CPREASND": "Reason Not Done", "VISITNUM": "Visit Number",
          "VISITDY": "Planned Study Day of Visit", "CPMRKSTR": "Marker String", "CPGATDEF": "Gate Definition"}


def _xpt(path):
    """Fields (name, type, length, label) and dataset header of a transport file, read by pandas' own parser."""
    r = XportReader(str(path))
    try:
        fields = [(f["name"].decode(), f["ntype"], f["field_length"], f["label"].decode()) for f in r.fields]
        return fields, r.member_info
    finally:
        r.close()


def _same_values(csv: pd.DataFrame, xpt: pd.DataFrame) -> None:
    """Every cell of the CSV equals the XPT's (empty text for missing, NaN for a missing number)."""
    assert list(xpt.columns) == list(csv.columns)
    assert len(xpt) == len(csv)
    for c in csv.columns:
        if pd.api.types.is_numeric_dtype(csv[c]):
            assert np.array_equal(csv[c].to_numpy(float, na_value=np.nan), xpt[c].to_numpy(float), equal_nan=True), c
        else:
            assert list(csv[c].fillna("")) == list(xpt[c]), c


def _check_define(define_path, xpt_path) -> etree._ElementTree:
    """define.xml is well-formed Define-XML 2.0 and describes every XPT variable as the file holds it."""
    doc = etree.parse(str(define_path))  # raises on XML that is not well-formed
    root = doc.getroot()
    assert root.tag == f"{{{NS['odm']}}}ODM" and root.nsmap["def"] == NS["def"] and root.get("ODMVersion") == "1.3.2"
    mdv = root.find("odm:Study/odm:MetaDataVersion", NS)
    assert mdv.get(f"{{{NS['def']}}}DefineVersion") == "2.0.0"
    ig = mdv.find("odm:ItemGroupDef[@Name='CP']", NS)
    assert ig.get("Domain") == "CP" and ig.get("SASDatasetName") == "CP" and ig.get("Purpose") == "Tabulation"
    leaf = ig.find("def:leaf", NS)
    assert leaf.get(f"{{{NS['xlink']}}}href") == "sdtm_cp.xpt" and ig.get(f"{{{NS['def']}}}ArchiveLocationID") == \
        leaf.get("ID")
    assert (define_path.parent / leaf.get(f"{{{NS['xlink']}}}href")).resolve() == xpt_path.resolve()
    fields, _ = _xpt(xpt_path)
    refs = ig.findall("odm:ItemRef", NS)
    items = {it.get("OID"): it for it in mdv.findall("odm:ItemDef", NS)}
    assert len(refs) == len(fields)
    data = pd.read_sas(xpt_path, format="xport", encoding="ascii")
    codelists = {cl.get("OID"): cl for cl in mdv.findall("odm:CodeList", NS)}
    methods = {m.get("OID") for m in mdv.findall("odm:MethodDef", NS)}
    for ref, (name, ntype, length, label) in zip(refs, fields):
        it = items[ref.get("ItemOID")]
        assert it.get("Name") == name and it.get("SASFieldName") == name
        assert it.findtext("odm:Description/odm:TranslatedText", namespaces=NS) == label
        if ntype == "char":
            assert it.get("DataType") in {"text", "date", "datetime"}, name
            assert int(it.get("Length")) == length, (name, it.get("Length"), length)
        else:
            assert it.get("DataType") in {"integer", "float"}, name
            assert length == 8
            longest = max((len(f"{v:g}") for v in data[name].dropna()), default=1)
            assert int(it.get("Length")) >= longest, name
        if ref.get("MethodOID"):
            assert ref.get("MethodOID") in methods
        if it.find("def:Origin", NS).get("Type") == "Derived":
            assert ref.get("MethodOID"), f"{name} is derived and names no method"
        cl_ref = it.find("odm:CodeListRef", NS)
        if cl_ref is not None:
            cl = codelists[cl_ref.get("CodeListOID")]
            allowed = {e.get("CodedValue") for e in cl.xpath("odm:CodeListItem|odm:EnumeratedItem", namespaces=NS)}
            used = set(data[name]) - {""}
            assert used <= allowed, (name, used - allowed)
    return doc


def _check_transport(xpt_path, *, label="Cell Phenotype Findings") -> None:
    """SDTM's transport rules: version 5, dataset CP, names <= 8 upper case, labels <= 40, text <= 200."""
    assert xpt_path.read_bytes()[:48] == b"HEADER RECORD*******LIBRARY HEADER RECORD!!!!!!!"  # v8 says LIBV8
    fields, member = _xpt(xpt_path)
    assert member["set_name"] == "CP" and member["label"] == label
    for name, ntype, length, lab in fields:
        assert len(name) <= 8 and name == name.upper(), name
        assert 0 < len(lab) <= 40, name
        assert ntype == "numeric" or length <= 200, name
        if name in LABELS:
            assert lab == LABELS[name]


# --- from generated FCS files, through `cytopipe run` and the `cytopipe endpoint` command ---

def test_from_fcs_files_the_xpt_holds_the_csv_values_and_define_xml_describes_it(tmp_path, dask_client):
    rows = []
    for k, (patient, pct) in enumerate((("P1", 4.0), ("P2", 8.0))):
        for visit, day, date in (("D1", 1, "2026-01-05"), ("D60", 60, "2026-03-06")):
            name = f"{patient}_{visit}.fcs"
            write_fcs(tmp_path / name, SampleSpec(n_events=20_000, seed=70 + 10 * k + day, treg_pct_cd4=pct))
            rows.append({"file": name, "patient_id": patient, "visit": visit, "day": day, "collection_date": date})
    (tmp_path / "P2_D60.fcs").write_bytes(b"not an FCS file")  # a failed sample: a NOT DONE row
    pd.DataFrame(rows).to_csv(tmp_path / "samples.csv", index=False)
    pd.DataFrame({"patient_id": ["P1", "P2"], "arm": ["placebo", "1 MIU"]}).to_csv(tmp_path / "rand.csv", index=False)
    run_batch(tmp_path / "samples.csv", tmp_path / "run", strategy="treg@1.0.0", client=dask_client, report=False)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["endpoint", str(tmp_path / "run"), "--randomisation", str(tmp_path / "rand.csv"),
                                   "--out", str(out), "--study-id", "IL2-T1D"])
    assert res.exit_code == 0, res.output

    csv = read_output(out / "sdtm_cp.csv", "sdtm_cp")
    xpt = pd.read_sas(out / "sdtm_cp.xpt", format="xport", encoding="ascii")
    _same_values(csv, xpt)
    assert len(xpt) == 8  # 4 samples, two tests each
    p1 = xpt[(xpt["USUBJID"] == "IL2-T1D-P1") & (xpt["CPTESTCD"] == "TREGCD4")]
    assert ((p1["CPSTRESN"] - 4.0).abs() < 1.0).all()  # the generated truth, within sampling error
    assert list(p1["CPDTC"]) == ["2026-01-05", "2026-03-06"] and list(p1["CPBLFL"]) == ["Y", ""]
    failed = xpt[(xpt["USUBJID"] == "IL2-T1D-P2") & (xpt["VISIT"] == "D60")]
    assert list(failed["CPSTAT"]) == ["NOT DONE"] * 2 and failed["CPSTRESN"].isna().all()
    assert failed["CPREASND"].str.len().gt(0).all()
    _check_transport(out / "sdtm_cp.xpt")
    doc = _check_define(out / "define.xml", out / "sdtm_cp.xpt")
    dtc = doc.getroot().find(".//odm:ItemDef[@Name='CPDTC']", NS)
    assert dtc.get("DataType") == "date" and dtc.get("Length") == "10"
    assert doc.getroot().find("odm:Study/odm:GlobalVariables/odm:StudyName", NS).text == "IL2-T1D"


# --- from hand-built run tables (fast) ---

STRAT = load_strategy("treg@1.0.0")


def _run(folder, rows, **extra_cols):
    """A run folder with treg_by_visit as `cytopipe run` writes it; rows: (patient, visit, day, pct or error)."""
    recs = []
    for i, (pid, visit, day, pct) in enumerate(rows):
        err = isinstance(pct, str)
        recs.append({"patient_id": pid, "visit": visit, "day": day, "file": f"{pid}_{visit}.fcs",
                     "file_sha256": f"{i:064x}", "events_total": 50000, "cd4_count": None if err else 10000,
                     "treg_count": None if err else int(round(pct * 100)),
                     "treg_pct_cd4": np.nan if err else pct, "qc_status": "error" if err else "ok",
                     "qc_flags": "", "error": pct if err else "", "strategy": "treg", "strategy_version": "1.0.0",
                     "strategy_sha256": STRAT.sha256, "cytopipe_version": "0.1.0", "flowkit_version": "1.3.2"})
    df = pd.DataFrame(recs)
    for col, values in extra_cols.items():
        df[col] = values
    write_table(df, folder / "treg_by_visit", TREG_COLUMNS)
    return folder


@pytest.fixture
def rand(tmp_path):
    p = tmp_path / "randomisation.csv"
    pd.DataFrame({"patient_id": ["P1", "P2"], "arm": ["placebo", "1 MIU"]}).to_csv(p, index=False)
    return p


def test_a_long_non_ascii_reason_is_cut_to_200_ascii_characters_in_every_copy(tmp_path, rand):
    reason = "P2_D60.fcs: cannot read \u2192 offset \u00b5 " + "x" * 300
    run = _run(tmp_path / "run", [("P1", "D1", 1, 5.123456), ("P2", "D1", 1, 6.0), ("P1", "D60", 60, 7.0),
                                  ("P2", "D60", 60, reason)])
    run_endpoint([run], rand, tmp_path / "out", study_id="S", figures=False)
    csv = read_output(tmp_path / "out" / "sdtm_cp.csv", "sdtm_cp")
    xpt = pd.read_sas(tmp_path / "out" / "sdtm_cp.xpt", format="xport", encoding="ascii")
    _same_values(csv, xpt)
    why = xpt.loc[xpt["CPSTAT"] == "NOT DONE", "CPREASND"]
    assert len(why) == 2 and (why.str.len() == 200).all()
    assert why.iloc[0].startswith("P2_D60.fcs: cannot read -> offset u xxx") and why.iloc[0].endswith("x...")
    fields = {n: length for n, _, length, _ in _xpt(tmp_path / "out" / "sdtm_cp.xpt")[0]}
    assert fields["CPREASND"] == 200 and fields["CPSTAT"] == 8
    # the standard result: CPSTRESN is the number CPSTRESC shows (4 decimals), not more
    treg = xpt[(xpt["USUBJID"] == "S-P1") & (xpt["VISIT"] == "D1") & (xpt["CPTESTCD"] == "TREGCD4")]
    assert treg["CPSTRESC"].iloc[0] == "5.1235" and treg["CPSTRESN"].iloc[0] == 5.1235
    doc = _check_define(tmp_path / "out" / "define.xml", tmp_path / "out" / "sdtm_cp.xpt")
    stresn = doc.getroot().find(".//odm:ItemDef[@Name='CPSTRESN']", NS)
    assert stresn.get("DataType") == "float" and stresn.get("SignificantDigits") == "4"
    assert doc.getroot().find(".//odm:ItemDef[@Name='CPSEQ']", NS).get("DataType") == "integer"
    assert doc.getroot().find(".//odm:ItemDef[@Name='CPDTC']", NS).get("Length") == "1"  # no dates: the 1 XPT minimum


def test_a_file_name_longer_than_transport_allows_is_refused_before_anything_is_written(tmp_path, rand):
    run = _run(tmp_path / "run", [("P1", "D1", 1, 5.0), ("P2", "D1", 1, 6.0), ("P1", "D60", 60, 7.0),
                                  ("P2", "D60", 60, 6.5)])
    df = pd.read_parquet(run / "treg_by_visit.parquet")
    df.loc[3, "file"] = "a" * 230 + ".fcs"
    write_table(df, run / "treg_by_visit", TREG_COLUMNS)
    with pytest.raises(EndpointError, match=r"CPREFID of S-P2 visit D60 is 234 characters .*over the 200 .*"
                                            r"shorten the FCS file name"):
        run_endpoint([run], rand, tmp_path / "out", study_id="S", figures=False)
    assert not (tmp_path / "out").exists()


def test_a_preliminary_analysis_says_so_in_the_transport_file_and_define_xml(tmp_path, rand):
    run = _run(tmp_path / "run", [("P1", "D1", 1, 5.0), ("P2", "D1", 1, 6.0), ("P1", "D60", 60, 7.0),
                                  ("P2", "D60", 60, 6.5)], qc_flags=["", "", "needs_review", ""])
    res = run_endpoint([run], rand, tmp_path / "out", study_id="S", figures=False, include_unreviewed=True)
    assert res.preliminary
    xpt = pd.read_sas(tmp_path / "out" / "sdtm_cp.xpt", format="xport", encoding="ascii")
    assert list(xpt.columns)[-1] == "PRELIM" and (xpt["PRELIM"] == "Y").all()
    _check_transport(tmp_path / "out" / "sdtm_cp.xpt", label="Cell Phenotype Findings PRELIMINARY")
    doc = _check_define(tmp_path / "out" / "define.xml", tmp_path / "out" / "sdtm_cp.xpt")
    label = doc.getroot().findtext(".//odm:ItemGroupDef/odm:Description/odm:TranslatedText", namespaces=NS)
    assert label == "Cell Phenotype Findings PRELIMINARY"


def test_without_a_study_id_no_sdtm_file_of_any_kind_is_written(tmp_path, rand, monkeypatch):
    monkeypatch.delenv("CYTOPIPE_STUDY_ID", raising=False)
    run = _run(tmp_path / "run", [("P1", "D1", 1, 5.0), ("P2", "D1", 1, 6.0), ("P1", "D60", 60, 7.0),
                                  ("P2", "D60", 60, 6.5)])
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["endpoint", str(run), "--randomisation", str(rand), "--out", str(out)])
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note:")]
    assert notes == ["note: no study id (--study-id or CYTOPIPE_STUDY_ID): sdtm_cp was not written "
                     "(nor sdtm_cp.xpt, define.xml)"]
    assert not any((out / f).exists() for f in ("sdtm_cp.csv", "sdtm_cp.parquet", "sdtm_cp.xpt", "define.xml"))
    assert (out / "change_by_patient.csv").is_file() and (out / "endpoint.json").is_file()
