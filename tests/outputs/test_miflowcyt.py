"""The MIFlowCyt-style analysis record, on generated files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cytopipe.outputs.miflowcyt import gatingml_definitions, write_miflowcyt
from cytopipe.strategy.registry import load_strategy
from cytopipe.sim.sample import SampleSpec, write_fcs


def test_gatingml_definitions_of_the_default_strategy():
    transforms, gates = gatingml_definitions(load_strategy("treg@1.0.0").gatingml_path)
    assert transforms == [{"id": "logicle", "type": "logicle", "T": 262144.0, "W": 0.5, "M": 4.5, "A": 0.0}]
    by_id = {g["id"]: g for g in gates}
    assert set(by_id) == {"Lymphocytes", "Singlets", "Live", "CD3pos", "CD4pos", "Treg"}
    live = by_id["Live"]
    assert live["type"] == "RectangleGate" and live["parent_id"] == "Singlets"
    assert live["dimensions"] == [{"channel": "PerCP-Cy5-5-A", "compensation": "FCS",
                                   "transformation": "logicle", "min": None, "max": 0.496}]
    lym = by_id["Lymphocytes"]
    assert lym["vertices"][0] == [25000.0, -2000.0] and lym["dimensions"][0]["compensation"] == "uncompensated"


def test_write_miflowcyt(tmp_path):
    strat = load_strategy()
    paths = []
    for i, kw in enumerate([{"$CYTSN": "R6600001"}, {}]):
        p = tmp_path / f"s{i}.fcs"
        write_fcs(p, SampleSpec(n_events=1000, seed=i, keywords=kw))
        paths.append(str(p))
    table = pd.DataFrame({"file": ["s0.fcs", "s1.fcs"], "patient_id": ["P1", "P2"], "visit": ["D1", "D1"],
                          "file_sha256": ["a" * 64, None], "qc_status": ["ok", "error"], "error": ["", "bad"]})
    pops = pd.DataFrame({"patient_id": ["P1"], "visit": ["D1"], "file": ["s0.fcs"],
                         "gate_path": ["root/Lymphocytes"], "gate": ["Lymphocytes"], "count": [600],
                         "parent_count": [1000], "pct_parent": [60.0], "pct_total": [60.0],
                         "strategy": ["treg"], "strategy_version": ["1.0.0"]})
    rec = json.loads(write_miflowcyt(tmp_path, strat, table, pops, paths=paths).read_text())
    assert [i["serial"] for i in rec["instrument"]] == ["R6600001", None]
    assert rec["instrument"][0]["spillover_keyword"] == "$SPILLOVER"
    cd25 = next(r for r in rec["reagents"] if r["marker"] == "CD25")
    assert cd25 == {"marker": "CD25", "fluorochrome": "PE-Cy7", "detector": "PE-Cy7-A",
                    "accepted_pns": ["CD25", "IL2Ra", "IL-2Ra"]}
    assert {c["ref"] for c in rec["compensation"]} == {"FCS", "uncompensated"}
    lym = next(g for g in rec["gates"] if g["id"] == "Lymphocytes")
    assert lym["path"] == "root/Lymphocytes"
    assert lym["per_sample"] == [{"file": "s0.fcs", "patient_id": "P1", "visit": "D1", "count": 600,
                                  "parent_count": 1000, "pct_parent": 60.0, "pct_total": 60.0}]
    assert rec["strategy"]["gatingml_sha256"] == strat.sha256
    assert rec["samples"][1]["error"] == "bad" and rec["samples"][1]["file_sha256"] is None
    assert pytest.approx(0.496) == next(g for g in rec["gates"] if g["id"] == "Live")["dimensions"][0]["max"]


def _corpus_paths() -> list[str]:
    from tests.fcs.test_read import CORPUS, ROWS, UNREADABLE

    return [str(CORPUS / r["relpath"]) for r in ROWS if r["relpath"] not in UNREADABLE]


@pytest.mark.parametrize("source", ["generated", "corpus"])
def test_instrument_fields_of_a_read_sample_equal_a_header_scan(tmp_path, source):
    """The batch's workers hand over the fields they read; the record must not change for it."""
    from cytopipe.fcs.read import read_fcs
    from cytopipe.fcs.lean import read_fcs_lean
    from cytopipe.outputs.miflowcyt import _scanned_fields, instrument_fields

    if source == "generated":
        paths = []
        for i, (version, order, kw) in enumerate([("3.1", "little", {"$CYTSN": "R66", "$CYT": "Fortessa X"}),
                                                   ("3.0", "big", {"$DATE": "05-MAR-2026"}), ("3.1", "big", {})]):
            p = tmp_path / f"g{i}.fcs"
            write_fcs(p, SampleSpec(n_events=500, seed=i, fcs_version=version, byteorder=order, keywords=kw))
            paths.append(str(p))
    else:
        paths = _corpus_paths()
        if not paths:
            pytest.skip("../shared/fcs_corpus not present: no corpus files to compare")
    compared = 0
    for path, scanned in zip(paths, _scanned_fields(paths)):
        readers = [read_fcs] if source == "corpus" else [read_fcs, read_fcs_lean]
        for reader in readers:
            try:
                sample = reader(path)
            except Exception:  # noqa: BLE001 - a file no reader takes is scanned, never handed over
                continue
            assert instrument_fields(sample) == scanned, (path, reader.__name__)
            compared += 1
    assert compared >= (6 if source == "generated" else 20)
