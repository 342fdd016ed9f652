"""The MIFlowCyt-style analysis record, on generated files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cytopipe.outputs.miflowcyt import gatingml_definitions, write_miflowcyt
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.strategy.registry import load_strategy


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
    rec = json.loads(write_miflowcyt(tmp_path, strat, table, populations=pops, paths=paths).read_text())
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
    from cytopipe.fcs.lean import read_fcs_lean
    from cytopipe.fcs.read import read_fcs
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


def _flowkit_counts(gates_file, fcs) -> dict[str, int]:
    """Counts FlowKit alone gives for ``fcs`` with the GatingML of ``gates_file``."""
    import flowkit as fk

    gs = fk.parse_gating_xml(str(gates_file))
    res = gs.gate_sample(fk.Sample(str(fcs)))
    return {"/".join((*p, g)): int(res.get_gate_count(g, gate_path=p)) for g, p in gs.get_gate_ids()}


def test_rows_whose_files_share_a_stem_each_get_their_own_applied_gates(tmp_path, dask_client):
    """a/P01.fcs and b/P01.fcs: two gates files, each named in the record, each reproducing its own counts."""
    import re

    from cytopipe.batch.driver import run_batch
    from cytopipe.sim.world import World

    for folder, seed in (("a", 3), ("b", 4)):
        (tmp_path / folder).mkdir()
        write_fcs(tmp_path / folder / "P01.fcs", SampleSpec(n_events=30_000, seed=seed, world=World.draw(seed)))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na/P01.fcs,P1,D1\nb/P01.fcs,P2,D1\n")
    out = tmp_path / "out"
    result = run_batch(tmp_path / "s.csv", out, client=dask_client, report=False)  # treg_adaptive: placed gates
    assert result.n_ok == 2
    rec = json.loads((out / "miflowcyt.json").read_text())
    names = [s["gates_file"] for s in rec["samples"]]
    assert len(set(names)) == 2 and all(re.fullmatch(r"sample_gates/000[12]_P01_[0-9a-f]{8}\.xml", n) for n in names)
    assert sorted(p.name for p in (out / "sample_gates").iterdir()) == sorted(n.split("/")[1] for n in names)
    pops = pd.read_parquet(out / "populations.parquet")
    texts = [(out / n).read_bytes() for n in names]
    assert texts[0] != texts[1]  # placed on each file's own data
    for sample, fcs in zip(rec["samples"], ("a/P01.fcs", "b/P01.fcs")):
        assert sample["file"] == fcs and sample["gates_applied"] == "placed from the sample's data"
        mine = pops[pops["file"] == fcs].set_index("gate_path")["count"].to_dict()
        assert _flowkit_counts(out / sample["gates_file"], tmp_path / fcs) == mine
        treg = next(g for g in sample["applied_gates"] if g["id"] == "Treg")
        assert treg["path"] == "root/Lymphocytes/Singlets/Live/CD3pos/CD4pos/Treg"
        assert [p["gate_path"] for p in sample["placement"]][-2:] == [treg["path"], treg["path"] + "/CD127lo"]


def test_a_reviewers_adjusted_gate_is_the_applied_gate_of_a_fixed_strategy(tmp_path, dask_client):
    from cytopipe.batch.driver import run_batch
    from cytopipe.review import record_decision

    treg_path = "root/Lymphocytes/Singlets/Live/CD3pos/CD4pos/Treg"
    for name, seed in (("a.fcs", 5), ("b.fcs", 6)):
        write_fcs(tmp_path / name, SampleSpec(n_events=20_000, seed=seed))
    (tmp_path / "s.csv").write_text("file,patient_id,visit\na.fcs,P1,D1\nb.fcs,P2,D1\n")
    out = tmp_path / "out"
    first = run_batch(tmp_path / "s.csv", out, client=dask_client, strategy="treg@1.0.0", report=False)
    strat = load_strategy("treg@1.0.0")
    rec = json.loads((out / "miflowcyt.json").read_text())
    assert [s["gates_applied"] for s in rec["samples"]] == ["the template gates of treg@1.0.0"] * 2
    assert (out / rec["samples"][0]["gates_file"]).read_bytes() == strat.gatingml_path.read_bytes()

    decision = record_decision(out, "a.fcs", action="adjust", reviewer="Dr A", reason="CD25 cut too low",
                               gate_path=treg_path, bounds={"PE-Cy7-A": (6000.0, None)})
    second = run_batch(tmp_path / "s.csv", out, client=dask_client, strategy="treg@1.0.0", report=False)
    assert second.table.loc[0, "treg_count"] < first.table.loc[0, "treg_count"]
    rec = json.loads((out / "miflowcyt.json").read_text())
    a, b = rec["samples"]
    assert a["gates_applied"] == f"adjusted by a reviewer: {treg_path}" and a["adjusted_gates"] == [treg_path]
    treg = next(g for g in a["applied_gates"] if g["id"] == "Treg")
    want = next(d["min"] for d in decision["gate"]["dimensions"] if d["id"] == "PE-Cy7-A")
    assert next(d["min"] for d in treg["dimensions"] if d["channel"] == "PE-Cy7-A") == pytest.approx(want)
    assert _flowkit_counts(out / a["gates_file"], tmp_path / "a.fcs")[treg_path] == second.table.loc[0, "treg_count"]
    assert (out / b["gates_file"]).read_bytes() == strat.gatingml_path.read_bytes()  # b: still the template


def test_sample_gates_names_never_collide_and_old_files_go(tmp_path):
    from cytopipe.outputs.miflowcyt import sample_gates_name, write_sample_gates

    files = ["a/P01.fcs", "b/P01.fcs", "P01.fcs", "a/P01.fcs"]
    assert len({sample_gates_name(i, f) for i, f in enumerate(files, start=1)}) == 4
    assert sample_gates_name(1, "a/P01.fcs")[:9] == "0001_P01_"
    first = write_sample_gates(tmp_path, files[:2], ["<a/>", None])
    assert first[1] is None and (tmp_path / first[0]["gates_file"]).read_text() == "<a/>"
    again = write_sample_gates(tmp_path, files[1:3], [b"<b/>", "<c/>"])  # the sheet changed: row 1 is gone
    assert sorted(p.name for p in (tmp_path / "sample_gates").iterdir()) == sorted(
        g["gates_file"].split("/")[1] for g in again)
