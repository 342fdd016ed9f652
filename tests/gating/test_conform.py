"""Any lab's files: other instruments' detectors and ranges, lab panels, pre-gated exports, failed stains.

Files come from the project's generator (:mod:`cytopipe.sim`), whose truth names
each marker's detector and the Treg share; expectations are that truth, or
FlowKit's own counts on the file as written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cytopipe.batch import run_batch
from cytopipe.batch.task import process_sample
from cytopipe.exceptions import PanelError
from cytopipe.fcs import read_fcs, spillover_channels
from cytopipe.gating import needs_review_flags
from cytopipe.gating.conform import ConformedSample, channel_map, conform_sample
from cytopipe.sim import SampleSpec, write_fcs
from cytopipe.strategy import load_strategy, read_panel_file, resolve_panel

from .flowkit_alone import flowkit_counts

FAMILIES = ("cytoflex", "attune", "ique", "aurora")
DEFAULT = "treg_adaptive@1.5.0"


def _write(tmp_path, name, **kw):
    spec = dict(n_events=20000, seed=kw.pop("seed", 5), fcs_version="3.1", treg_pct_cd4=kw.pop("treg", 8.0))
    truth = write_fcs(tmp_path / name, SampleSpec(**spec, **kw))
    return tmp_path / name, truth


@pytest.mark.parametrize("family", FAMILIES + ("bd",))
def test_every_marker_is_found_on_the_detector_the_generator_used(tmp_path, family):
    path, truth = _write(tmp_path, "a.fcs", instrument=family)
    strategy = load_strategy(DEFAULT)
    sample = read_fcs(path)
    panel = resolve_panel(sample.pnn_labels, sample.pns_labels, strategy, compensated=spillover_channels(sample))
    assert panel.detectors == {m: truth["detectors"][m] for m in panel.detectors}
    assert set(panel.detectors) == {m.marker for m in strategy.markers}


def test_a_bd_file_is_gated_as_it_is(tmp_path):
    path, _ = _write(tmp_path, "bd.fcs")
    strategy = load_strategy(DEFAULT)
    sample = read_fcs(path)
    panel = resolve_panel(sample.pnn_labels, sample.pns_labels, strategy)
    assert conform_sample(sample, panel, strategy) is sample


@pytest.mark.parametrize("family,scale", [("cytoflex", 0.25), ("attune", 0.25), ("aurora", 1 / 16)])
def test_another_range_is_scaled_by_a_power_of_two_and_renamed(tmp_path, family, scale):
    path, truth = _write(tmp_path, "a.fcs", instrument=family)
    strategy = load_strategy(DEFAULT)
    sample = read_fcs(path)
    panel = resolve_panel(sample.pnn_labels, sample.pns_labels, strategy, compensated=spillover_channels(sample))
    cmap = channel_map(sample, panel, strategy)
    assert cmap.fluorescence_scale == scale and cmap.scatter_scale == scale
    conformed = conform_sample(sample, panel, strategy)
    assert isinstance(conformed, ConformedSample)
    cd25 = conformed.pnn_labels.index("PE-Cy7-A")
    raw = sample.get_events(source="raw")[:, sample.pnn_labels.index(truth["detectors"]["CD25"])]
    np.testing.assert_array_equal(conformed.get_events()[:, cd25], raw * scale)


def test_a_heights_only_file_gated_as_a_whole_acquisition_is_refused_saying_why(tmp_path):
    # a pre-gated iQue export holds heights only: without --starts-at the Singlets gate has no FSC-A
    path, _ = _write(tmp_path, "a.fcs", instrument="ique", pregated="CD4pos")
    res = process_sample(str(path), str(load_strategy(DEFAULT).directory))
    assert "missing scatter detector(s) ['FSC-A', 'SSC-A'] (the file has only heights ['FSC-H', 'SSC-H']" in res.error


@pytest.mark.parametrize("family,start", [(f, None) for f in FAMILIES] + [("ique", "CD4pos")])
def test_each_instrument_family_is_gated_near_the_truth_and_flowkit_reproduces_its_counts(tmp_path, family, start):
    path, truth = _write(tmp_path, "a.fcs", instrument=family, seed=21, pregated=start)
    strategy = load_strategy(DEFAULT)
    # a pre-gated export's $PnS are empty: the lab's panel names the detectors
    res = process_sample(str(path), str(strategy.directory), starts_at=start,
                         lab_panel=truth["detectors"] if start else None)
    assert res.error == ""
    assert not needs_review_flags(res.qc_flags), res.qc_flags
    assert abs(res.treg_pct_cd4 - truth["treg_pct_cd4"]) < 1.0
    # the sample's GatingML names the file's own detectors: FlowKit alone, on the file as written (its
    # spillover read by cytopipe's reader, which translates index-named matrices), counts the same
    text = res.applied_gatingml()
    assert f'data-type:name="{truth["detectors"]["CD25"]}"' in text
    assert flowkit_counts(path, text) == {path: count for path, count, _ in res.gates}


def test_a_lab_panel_file_wins_over_pns_and_a_disagreement_is_flagged(tmp_path):
    path, truth = _write(tmp_path, "a.fcs", instrument="cytoflex")
    strategy = load_strategy(DEFAULT)
    sample = read_fcs(path)
    rows = dict(truth["detectors"])
    rows["IL-7Ra"] = rows.pop("CD127")  # an alias, as a lab writes it
    (tmp_path / "panel.csv").write_text("marker,detector\n" + "".join(f"{m},{d}\n" for m, d in rows.items()))
    lab = read_panel_file(tmp_path / "panel.csv")
    panel = resolve_panel(sample.pnn_labels, sample.pns_labels, strategy, lab_panel=lab)
    assert panel.detectors["CD127"] == truth["detectors"]["CD127"]
    assert set(panel.how.values()) == {"panel file"} and panel.qc_flags == ()
    swapped = dict(lab, CD25=truth["detectors"]["FOXP3"], FOXP3=truth["detectors"]["CD25"])
    panel = resolve_panel(sample.pnn_labels, sample.pns_labels, strategy, lab_panel=swapped)
    assert panel.detectors["CD25"] == truth["detectors"]["FOXP3"]
    assert sorted(panel.qc_flags) == sorted(f"panel_disagrees:{truth['detectors'][m]}" for m in ("CD25", "FOXP3"))


def test_a_panel_file_naming_a_detector_the_file_lacks_is_refused(tmp_path):
    path, _ = _write(tmp_path, "a.fcs", instrument="cytoflex")
    sample = read_fcs(path)
    with pytest.raises(PanelError, match=r"a\.fcs: the panel file puts CD25 on detector 'PE-Cy7-A', which the "):
        resolve_panel(sample.pnn_labels, sample.pns_labels, load_strategy(DEFAULT), source="a.fcs",
                      lab_panel={"CD25": "PE-Cy7-A"})


def test_a_surface_panel_file_is_refused_by_the_foxp3_strategy_naming_the_one_that_fits(tmp_path):
    path, _ = _write(tmp_path, "a.fcs", panel="surface")
    sample = read_fcs(path)
    with pytest.raises(PanelError) as e:
        resolve_panel(sample.pnn_labels, sample.pns_labels, load_strategy(DEFAULT), source="a.fcs")
    assert str(e.value).startswith("a.fcs: detector FITC-A should carry CD45RA but the file says 'CD45RO")
    assert str(e.value).endswith("treg_surface@1.0.0 (a draft: --allow-draft) needs only markers this file has.")


def test_treg_surface_gates_a_surface_panel_file(tmp_path):
    path, truth = _write(tmp_path, "a.fcs", panel="surface", seed=8, treg=10.0)
    strategy = load_strategy("treg_surface@1.0.0", allow_draft=True)
    res = process_sample(str(path), str(strategy.directory), allow_draft=True)
    assert res.error == ""
    if not needs_review_flags(res.qc_flags):
        assert abs(res.treg_pct_cd4 - truth["treg_pct_cd4"]) < 1.0


@pytest.mark.parametrize("marker", ["CD25", "FOXP3"])
@pytest.mark.parametrize("family", ["bd", "attune"])
def test_an_unstained_tube_never_yields_a_number(tmp_path, marker, family):
    path, truth = _write(tmp_path, "a.fcs", instrument=family, unstained=(marker,))
    assert truth["treg_pct_cd4"] is None
    res = process_sample(str(path), str(load_strategy(DEFAULT).directory))
    assert f"no_{marker}_positive_population" in ";".join(needs_review_flags(res.qc_flags))


def test_an_unstained_surface_tube_never_yields_a_number(tmp_path):
    path, _ = _write(tmp_path, "a.fcs", panel="surface", unstained=("CD25",))
    res = process_sample(str(path), str(load_strategy("treg_surface@1.0.0", allow_draft=True).directory),
                         allow_draft=True)
    assert "needs_review:Treg:no_CD25_positive_population" in res.qc_flags


def test_a_pregated_export_with_a_panel_file_starts_at_cd4pos(tmp_path, dask_client):
    rows, truths = [], {}
    for i, family in enumerate(("bd", "cytoflex", "attune")):
        name = f"p{i}.fcs"
        _, truth = _write(tmp_path, name, instrument=family, pregated="CD4pos", seed=30 + i)
        pd.DataFrame({"marker": list(truth["detectors"]), "detector": list(truth["detectors"].values())}).to_csv(
            tmp_path / f"panel{i}.csv", index=False)
        rows.append({"file": name, "patient_id": f"P{i}", "visit": "D1", "panel": f"panel{i}.csv"})
        truths[name] = truth
    pd.DataFrame(rows).to_csv(tmp_path / "samples.csv", index=False)
    result = run_batch(tmp_path / "samples.csv", tmp_path / "out", client=dask_client, starts_at="CD4pos",
                       report=False)
    table = result.table.set_index("file")
    for name, truth in truths.items():
        row = table.loc[name]
        assert row["error"] == "" or pd.isna(row["error"])
        assert row["cd4_count"] == truth["n_events"]  # every event of the file is a CD4 cell
        assert abs(row["treg_pct_cd4"] - truth["treg_pct_cd4"]) < 1.0
        assert row["starts_at"] == "CD4pos"
        # a CD4 export of a good tube holds a fraction of its acquisition: low_events judges whole tubes only
        assert row["events_total"] < 20_000 and "low_events" not in str(row["qc_flags"])
    from cytopipe.audit import verify_run

    assert verify_run(tmp_path / "out") == []  # verify recomputes the flags the same way
    pops = result.populations
    lymph = pops[pops["gate_path"] == "root/Lymphocytes"]
    assert (lymph["count"].to_numpy() == lymph["parent_count"].to_numpy()).all()


def test_a_file_that_is_not_the_population_it_claims_is_flagged(tmp_path):
    path, _ = _write(tmp_path, "whole.fcs")  # a whole file sent as if it held only CD4+ cells
    res = process_sample(str(path), str(load_strategy(DEFAULT).directory), starts_at="CD4pos")
    assert "needs_review:CD4pos:not_pregated" in res.qc_flags
