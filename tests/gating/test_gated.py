"""One file gated end to end (:func:`cytopipe.gating.gate_file`) and its moved gates (:meth:`GatedSample.regate`).

Expectations come from elsewhere than the code under test: FlowKit's own engine
on the file (``gate_sample(engine="flowkit")``, or FlowKit alone on the
applied GatingML over the file as written), the generator's truth, or a
fresh :func:`gate_file` with the moved gate recorded as an adjustment.
"""

from __future__ import annotations

import numpy as np
import pytest

from cytopipe.batch.task import process_sample
from cytopipe.fcs import read_fcs
from cytopipe.gating import GatedSample, gate_file, gate_sample
from cytopipe.gating.placement import driver
from cytopipe.review.decisions import build_gate_spec
from cytopipe.sim import SampleSpec, write_fcs
from cytopipe.strategy import load_strategy

from .flowkit_alone import flowkit_counts

DEFAULT = "treg_adaptive@1.5.0"
CD4 = ("root", "Lymphocytes", "Singlets", "Live", "CD3pos", "CD4pos")
TREG = (*CD4, "Treg")
CD127LO = (*TREG, "CD127lo")


def _write(tmp_path, name, **kw):
    spec = dict(n_events=20_000, seed=kw.pop("seed", 5), fcs_version="3.1", treg_pct_cd4=kw.pop("treg", 8.0))
    truth = write_fcs(tmp_path / name, SampleSpec(**spec, **kw))
    return tmp_path / name, truth


def _counts(gated: GatedSample) -> dict[str, tuple[int, int]]:
    return {"/".join(p): (c.count, c.parent_count) for p, c in gated.counts().items()}


def _to_linear(gated: GatedSample, path, dim_index: int, value: float) -> float:
    """A value in a gate dimension's own units in compensated linear units (what build_gate_spec takes)."""
    dim = gated.gate(path).dimensions[dim_index]
    if not dim.transformation_ref:
        return float(value)
    xform = gated.gating_strategy.get_transform(dim.transformation_ref)
    return float(np.asarray(xform.inverse(np.array([[float(value)]]))).ravel()[0])


def _raised_lower_edge(gated: GatedSample, path, shift: float) -> dict:
    """The spec of the rectangle at ``path`` with its first dimension's lower edge ``shift`` gate units higher."""
    gate = gated.gate(path)
    bounds = {}
    for i, d in enumerate(gate.dimensions):
        lo = None if d.min is None else _to_linear(gated, path, i, d.min + (shift if i == 0 else 0.0))
        hi = None if d.max is None else _to_linear(gated, path, i, d.max)
        bounds[d.id] = (lo, hi)
    return build_gate_spec(gated.strategy, "/".join(path), bounds=bounds)


def _shrunk_polygon(gated: GatedSample, path, factor: float) -> dict:
    """The spec of the polygon at ``path`` shrunk towards its centroid (in gate units)."""
    verts = np.asarray(gated.gate(path).vertices, dtype=float)
    centre = verts.mean(axis=0)
    moved = centre + factor * (verts - centre)
    linear = [tuple(_to_linear(gated, path, j, v[j]) for j in range(len(v))) for v in moved]
    return build_gate_spec(gated.strategy, "/".join(path), vertices=linear)


@pytest.fixture(scope="module")
def bd_file(tmp_path_factory):
    path, _ = _write(tmp_path_factory.mktemp("gated"), "bd.fcs", seed=11, hard=True)
    return path


@pytest.fixture(scope="module")
def adaptive(bd_file):
    strategy = load_strategy(DEFAULT)
    return strategy, gate_file(str(bd_file), strategy)


def test_a_fixed_template_counts_as_flowkits_own_engine(bd_file):
    strategy = load_strategy("treg@1.0.0")
    gated = gate_file(str(bd_file), strategy)
    expected = gate_sample(read_fcs(bd_file), strategy, engine="flowkit")
    assert _counts(gated) == {"/".join(p): (c.count, c.parent_count) for p, c in expected.items()}
    assert gated.placement is None and not gated.conformed and gated.has_rows
    # a gate's rows are its events: as many as its count, inside its parent's
    treg = ("root", "Lymphocytes", "Singlets", "Live", "CD3pos", "CD4pos", "Treg")
    rows, parent = gated.rows(treg), gated.rows(treg[:-1])
    assert rows.size == expected[treg].count and np.isin(rows, parent).all()
    assert gated.values(treg).shape == (parent.size, len(gated.gate(treg).dimensions))


def test_placed_gates_reproduce_with_flowkit_alone_from_the_applied_gatingml(bd_file, adaptive):
    _, gated = adaptive
    assert gated.placement is not None and gated.is_custom(TREG)
    assert flowkit_counts(bd_file, gated.gatingml()) == {k: c for k, (c, _) in _counts(gated).items()}


def test_a_moved_cd4_gate_regates_as_a_fresh_gate_file_and_places_only_the_gates_below(bd_file, adaptive,
                                                                                        monkeypatch):
    strategy, gated = adaptive
    before = _counts(gated)
    spec = _raised_lower_edge(gated, CD4, 0.15)  # fewer CD4+ cells: Treg and CD127lo placed again on them
    placed = []
    real = driver._place
    monkeypatch.setattr(driver, "_place", lambda spec_, ctx, gs, template, parent, path, state:
                        placed.append(path) or real(spec_, ctx, gs, template, parent, path, state))
    moved = gated.regate({"/".join(CD4): spec})
    assert placed == [TREG, CD127LO]  # nothing above the moved gate placed again
    monkeypatch.undo()

    fresh = gate_file(str(bd_file), strategy, adjustments={"/".join(CD4): spec})
    assert _counts(moved) == _counts(fresh)
    assert _counts(moved)["/".join(CD4)][0] < _counts(gated)["/".join(CD4)][0]
    assert moved.placement.gates == fresh.placement.gates
    assert moved.placement.qc_flags == fresh.placement.qc_flags
    assert moved.gatingml() == fresh.gatingml()
    # gates above kept their events; the opened sample is unchanged
    lymph = ("root", "Lymphocytes")
    assert moved.rows(lymph) is gated.rows(lymph)
    assert gated.adjustments == {} and _counts(gated) == before


def test_a_moved_placed_leaf_regates_as_a_fresh_gate_file_without_placing(bd_file, adaptive, monkeypatch):
    strategy, gated = adaptive
    spec = _shrunk_polygon(gated, CD127LO, 0.8) if hasattr(gated.gate(CD127LO), "vertices") \
        else _raised_lower_edge(gated, CD127LO, 0.1)
    monkeypatch.setattr(driver, "_place", lambda *a: pytest.fail(f"placed {a[5]} again"))
    moved = gated.regate({"/".join(CD127LO): spec})
    monkeypatch.undo()
    fresh = gate_file(str(bd_file), strategy, adjustments={"/".join(CD127LO): spec})
    assert _counts(moved) == _counts(fresh)
    assert moved.placement.gates == fresh.placement.gates
    assert moved.placement.qc_flags == fresh.placement.qc_flags
    assert moved.gatingml() == fresh.gatingml()


def test_a_moved_treg_gate_regates_as_a_fresh_gate_file(bd_file, adaptive, monkeypatch):
    """The Treg cluster's fit, which CD127lo below is drawn from, is taken from the opening placement (its
    parent, CD4pos, did not move): no mixture is fitted again, and the counts are a fresh gate_file's."""
    from cytopipe.gating.placement import treg_cluster

    strategy, gated = adaptive
    spec = _shrunk_polygon(gated, TREG, 0.7)
    with monkeypatch.context() as m:
        m.setattr(treg_cluster, "_fit", lambda *a: pytest.fail("the Treg mixture was fitted again"))
        moved = gated.regate({"/".join(TREG): spec})
    fresh = gate_file(str(bd_file), strategy, adjustments={"/".join(TREG): spec})
    assert _counts(moved) == _counts(fresh)
    assert _counts(moved)["/".join(TREG)][0] < _counts(gated)["/".join(TREG)][0]
    assert moved.placement.gates == fresh.placement.gates
    assert set(moved.adjustments) == {"/".join(TREG)}


@pytest.fixture(scope="module")
def cytoflex(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("cytoflex"), "cf.fcs", instrument="cytoflex", seed=21)


def test_another_instruments_file_counts_as_the_batch_and_as_flowkit_on_the_file_as_written(cytoflex):
    path, truth = cytoflex
    strategy = load_strategy(DEFAULT)
    gated = gate_file(str(path), strategy)
    assert gated.conformed
    res = process_sample(str(path), str(strategy.directory))
    assert res.error == ""
    assert {p: c for p, c, _ in res.gates} == {k: c for k, (c, _) in _counts(gated).items()}
    assert flowkit_counts(path, gated.gatingml()) == {k: c for k, (c, _) in _counts(gated).items()}
    assert abs(res.treg_pct_cd4 - truth["treg_pct_cd4"]) < 1.0


def test_the_reports_reread_gates_another_instruments_file_as_the_batch(cytoflex):
    """Before gate_file the report's re-read did not conform the file: the canonical detectors were missing."""
    from cytopipe.review.plotdata import gate_views

    path, _ = cytoflex
    strategy = load_strategy(DEFAULT)
    res = process_sample(str(path), str(strategy.directory))
    views, _ = gate_views(str(path), strategy, {})
    assert {"/".join(v.path): (v.count, v.parent_count) for v in views} == {p: (c, n) for p, c, n in res.gates}


def test_the_station_opens_a_pregated_export_with_its_lab_panel_as_the_batch_gates_it(tmp_path):
    """An iQue pre-gated export (heights only, empty $PnS): gated at all only with the lab panel and the start."""
    from cytopipe.station.sample import OpenSample

    path, truth = _write(tmp_path, "ique.fcs", instrument="ique", pregated="CD4pos", seed=21)
    strategy = load_strategy(DEFAULT)
    site = {"lab_panel": truth["detectors"], "starts_at": "CD4pos"}
    res = process_sample(str(path), str(strategy.directory), **site)
    assert res.error == "" and res.cd4_count == truth["n_events"]  # every event of the file is a CD4 cell
    opened = OpenSample(str(path), strategy, {}, **site)
    assert {c["path"]: (c["count"], c["parent_count"]) for c in opened.counts()} == \
        {p: (c, n) for p, c, n in res.gates}
    # a moved Treg gate recounts as a re-run with that adjustment does
    spec = _shrunk_polygon(opened.gated, TREG, 0.7)
    _, counts = opened.recount({"/".join(TREG): spec})
    rerun = process_sample(str(path), str(strategy.directory), **site,
                           reviews=[{"action": "adjust", "gate_path": "/".join(TREG), "gate": spec,
                                     "file_sha256": res.file_sha256, "strategy_sha256": strategy.sha256}])
    assert {c["path"]: c["count"] for c in counts} == {p: c for p, c, _ in rerun.gates}


def test_a_run_of_other_instruments_opens_in_the_station_and_its_report_rereads_as_the_run_gated(
        tmp_path, dask_client):
    """The station and the report's re-read take each row's lab panel and start from the run (state.py, report.py)."""
    import pandas as pd

    from cytopipe.batch import run_batch
    from cytopipe.review.report import write_report
    from cytopipe.station import Station

    _, ique = _write(tmp_path, "ique.fcs", instrument="ique", pregated="CD4pos", seed=21)
    _write(tmp_path, "cf.fcs", instrument="attune", seed=22)
    pd.DataFrame({"marker": list(ique["detectors"]), "detector": list(ique["detectors"].values())}).to_csv(
        tmp_path / "panel.csv", index=False)
    pd.DataFrame([{"file": "ique.fcs", "patient_id": "P1", "visit": "D1", "panel": "panel.csv", "starts_at": "CD4pos"},
                  {"file": "cf.fcs", "patient_id": "P2", "visit": "D1", "panel": "", "starts_at": ""}]).to_csv(
        tmp_path / "samples.csv", index=False)
    result = run_batch(tmp_path / "samples.csv", tmp_path / "out", client=dask_client, strategy=DEFAULT,
                       report=False)
    assert (result.table["error"].fillna("") == "").all(), result.table["error"].tolist()
    pops = result.populations
    station = Station(tmp_path / "out")
    try:
        for i, file in enumerate(result.table["file"]):
            opened = station.open(i)
            assert "load_error" not in opened, opened.get("load_error")
            mine = pops[pops["file"] == file]
            assert {g["path"]: g["count"] for g in opened["gates"]} == dict(zip(mine["gate_path"], mine["count"]))
    finally:
        station.close()
    # no stored plots: every page's plots come from re-reading its file
    write_report(tmp_path / "out")
    for page in (tmp_path / "out" / "report" / "samples").glob("*.html"):
        text = page.read_text()
        assert "Cannot re-read" not in text and text.count('class="gate"') == len(mine), page.name
