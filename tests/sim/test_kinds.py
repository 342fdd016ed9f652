"""Other labs' files: instrument families, the surface panel, real-cell shapes, unstained tubes, pre-gated exports."""

from __future__ import annotations

import flowio
import flowkit
import numpy as np
import pytest

from cytopipe.sim import SampleSpec, World, simulate_events, write_fcs

# What each family's files hold, written out here rather than taken from the generator.
FAMILY_CHANNELS = {
    "bd": ["FSC-A", "FSC-H", "SSC-A", "FITC-A", "PE-A", "PE-Cy7-A", "APC-A", "APC-H7-A", "V450-A", "V500-A",
           "PerCP-Cy5-5-A", "Time"],
    "cytoflex": ["FSC-A", "FSC-H", "SSC-A", "FITC-A", "PE-A", "PC7-A", "APC-A", "APC-A750-A", "PB450-A",
                 "KO525-A", "PC5.5-A", "Time"],
    "attune": ["FSC-A", "FSC-H", "SSC-A", "SSC-H"] + [f"{c}-{s}" for c in
                                                     ("BL1", "YL1", "YL4", "RL1", "RL3", "VL1", "VL2", "BL3")
                                                     for s in "AH"] + ["Time"],
    "ique": ["FSC-A", "FSC-H", "SSC-A", "SSC-H"] + [f"{c}-{s}" for c in
                                                   ("BL1", "BL2", "BL4", "RL1", "RL2", "VL1", "VL2", "BL3")
                                                   for s in "AH"] + ["Time"],
    "aurora": ["FSC-A", "FSC-H", "SSC-A", "FITC-A", "PE-A", "PE-Cy7-A", "Alexa Fluor 647-A", "APC-Fire 750-A",
               "BV421-A", "BV510-A", "7-AAD-A", "Time"],
}
PNR = {"bd": 262144, "cytoflex": 1048576, "attune": 1048576, "ique": 16777216, "aurora": 4194304}
SPILL_KEYS = ("$SPILLOVER", "SPILL", "$COMP")


def _text(path):
    return flowio.FlowData(str(path), only_text=True).text


def _spill(text):
    keys = [k for k in ("spillover", "spill", "comp") if k in text]
    return (keys[0], text[keys[0]].split(",")) if keys else (None, None)


@pytest.mark.parametrize("family", list(FAMILY_CHANNELS))
def test_each_family_reads_with_flowkit_with_its_names_range_and_scale(tmp_path, family):
    spec = dict(n_events=4000, seed=11, fcs_version="3.1")
    write_fcs(tmp_path / "bd.fcs", SampleSpec(**spec))
    truth = write_fcs(tmp_path / "a.fcs", SampleSpec(**spec, instrument=family))
    sample = flowkit.Sample(str(tmp_path / "a.fcs"))
    assert sorted(sample.pnn_labels) == sorted(FAMILY_CHANNELS[family])
    text = _text(tmp_path / "a.fcs")
    assert {text[f"p{i}r"] for i in range(1, int(text["par"]) + 1)} == {str(PNR[family])}
    assert truth["instrument"] == family and sample.event_count == 4000
    # the same events, scaled to the family's range (floats in the millions on iQue and Aurora)
    bd = flowkit.Sample(str(tmp_path / "bd.fcs")).as_dataframe(source="raw")
    ev = sample.as_dataframe(source="raw")
    fsc = "FSC-H"
    ratio = np.median(ev[fsc].to_numpy().ravel()) / np.median(bd[fsc].to_numpy().ravel())
    assert ratio == pytest.approx(PNR[family] / 262144, rel=1e-4)
    if PNR[family] >= 1 << 22:
        assert np.median(ev[fsc].to_numpy().ravel()) > 1_000_000
    # the truth names the file's detector of every marker
    assert set(truth["detectors"].values()) <= set(sample.pnn_labels)
    assert truth["detectors"]["CD25"] in {"PE-Cy7-A", "PC7-A", "YL4-A", "YL4-H", "BL4-H"}


def test_a_pregated_ique_export_holds_heights_only(tmp_path):
    # the iQue3 export of already-gated cells (issue 25) held only -H parameters; whole acquisitions have both
    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=3000, seed=3, instrument="ique", pregated="CD4pos"))
    names = flowkit.Sample(str(tmp_path / "a.fcs")).pnn_labels
    heights = [f"{c}-H" for c in ("BL1", "BL2", "BL4", "RL1", "RL2", "VL1", "VL2", "BL3")]
    assert sorted(names) == sorted(["FSC-H", "SSC-H", "Time", *heights])


def _first_world(family, want):
    """The first world of ``family`` whose drawn conventions satisfy ``want``."""
    from cytopipe.sim.sample import _instrument

    for seed in range(200):
        w = World.draw(seed, instrument=family)
        if want(_instrument(SampleSpec(n_events=50, world=w))):
            return w
    raise AssertionError("no such world in 200 seeds")


@pytest.mark.parametrize("family", ["attune", "ique"])
def test_index_named_spillover_refers_to_real_parameters(tmp_path, family):
    world = _first_world(family, lambda i: i.spill_by_index and (family == "ique" or i.compensates == "H"))
    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=3000, seed=2, world=world))
    text = _text(tmp_path / "a.fcs")
    key, fields = _spill(text)
    assert key in ("spillover", "comp")
    n = int(fields[0])
    assert n == 8 and len(fields) == 1 + n + n * n
    idx = [int(f) for f in fields[1:1 + n]]
    names = [text[f"p{i}n"] for i in idx]
    assert all(1 <= i <= int(text["par"]) for i in idx) and len(set(idx)) == n
    assert all(name.endswith("-H") for name in names)  # both compensate heights here
    assert sorted(names) == sorted(c for c in FAMILY_CHANNELS[family] if c.endswith("-H") and c[:3] not in
                                   ("FSC", "SSC"))
    matrix = np.array(fields[1 + n:], dtype=float).reshape(n, n)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    assert (matrix[~np.eye(n, dtype=bool)] > 0).sum() >= 10
    # and FlowKit compensates with it once the indices are read as the parameters they name
    others = [c for c in FAMILY_CHANNELS[family] if c.endswith("-A") and c[:3] not in ("FSC", "SSC")]
    sample = flowkit.Sample(str(tmp_path / "a.fcs"), null_channel_list=others or None)
    sample.apply_compensation(",".join([fields[0], *names, *fields[1 + n:]]))
    assert sample.as_dataframe(source="comp").shape == (3000, len(FAMILY_CHANNELS[family]))


def test_aurora_has_no_spillover_and_unmixed_values(tmp_path):
    spec = SampleSpec(n_events=20000, seed=4, instrument="aurora")
    write_fcs(tmp_path / "a.fcs", spec)
    text = _text(tmp_path / "a.fcs")
    assert _spill(text) == (None, None) and not {"spillover", "spill", "comp"} & set(text)
    raw, labels = simulate_events(spec)
    true, _ = simulate_events(spec, compensated=True)
    ev = flowkit.Sample(str(tmp_path / "a.fcs")).as_dataframe(source="raw")
    ev.columns = ev.columns.get_level_values(0)
    resid = ev["APC-Fire 750-A"].to_numpy() - true["APC-Fire 750-A"].to_numpy()
    # unmixed: the FOXP3 dye's light is not in the CD8 detector (it is on the raw detectors)
    treg = labels == "treg"
    assert abs(np.median(ev.loc[treg, "APC-Fire 750-A"])) < 0.05 * np.median(ev.loc[treg, "Alexa Fluor 647-A"])
    assert abs(np.median(resid)) < 20 * 16 and 50 * 16 < resid.std() < 200 * 16  # the spread unmixing leaves


def test_surface_panel_has_no_foxp3_and_the_hipc_markers(tmp_path):
    truth = write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=3000, seed=5, panel="surface"))
    sample = flowkit.Sample(str(tmp_path / "a.fcs"))
    pns = dict(zip(sample.pnn_labels, sample.pns_labels))
    assert not any("foxp3" in s.lower() for s in pns.values())
    assert set(truth["detectors"]) == {"CD3", "CD4", "CD25", "CD127", "CCR4", "CD45RO", "HLA-DR", "viability"}
    spellings = {"CD3": ("cd3",), "CD4": ("cd4",), "CD25": ("cd25",), "CD127": ("cd127", "il7ra", "il-7ra"),
                 "CCR4": ("ccr4", "cd194"), "CD45RO": ("cd45ro",), "HLA-DR": ("hla-dr", "hladr"),
                 "viability": ("7-aad", "7aad", "l/d", "viability", "livedead")}
    for marker, det in truth["detectors"].items():
        assert any(s in pns[det].lower() for s in spellings[marker]), (marker, pns[det])
    # Tregs are the same CD25-high CD127-low population, counted from the labels
    assert truth["panel"] == "surface" and truth["treg_pct_cd4"] == pytest.approx(
        100 * truth["n_treg"] / truth["n_cd4"])


def _valley_depth(cd25, labels):
    """How far the CD4 cells' CD25 density dips below what follows it, between the main mode and the Tregs."""
    cd4 = np.isin(labels, ["treg", "cd4_activated", "cd4_conv"])
    v = np.arcsinh(cd25[cd4] / 150)
    h, e = np.histogram(v, bins=40, range=(np.quantile(v, 0.02), np.quantile(v, 0.999)))
    h = np.convolve(h, np.ones(3) / 3, mode="same")
    top = np.searchsorted(e, np.median(v[labels[cd4] == "treg"])) - 1
    peak = int(np.argmax(h[: top + 1]))
    return max(1 - h[i] / h[i:top + 3].max() for i in range(peak, top + 1))


def test_real_shape_tregs_are_a_shoulder_without_a_valley():
    kw = dict(n_events=60_000, seed=3, treg_pct_cd4=12.0)
    real, lab_r = simulate_events(SampleSpec(**kw, world=World.draw(900_003, shape="real")), compensated=True)
    clus, lab_c = simulate_events(SampleSpec(**kw, world=World.draw(900_003)), compensated=True)
    np.testing.assert_array_equal(lab_r, lab_c)  # the shape changes positions, never labels
    assert _valley_depth(clus["PE-Cy7-A"].to_numpy(), lab_c) > 0.5  # clusters: Tregs a peak of their own
    assert _valley_depth(real["PE-Cy7-A"].to_numpy(), lab_r) < 0.1  # real cells: a shoulder
    # the CD4 cells' log CD25 leans: skewed, where the clusters' Tregs are symmetric
    def skew(x):
        x = np.log(x[x > 0])
        return float(np.mean((x - x.mean()) ** 3) / x.std() ** 3)
    assert abs(skew(real.loc[lab_r == "treg", "PE-Cy7-A"].to_numpy())) > 0.3
    assert abs(skew(clus.loc[lab_c == "treg", "PE-Cy7-A"].to_numpy())) < 0.15


def test_real_shape_compensation_spreads_negatives_next_to_a_bright_neighbour(tmp_path):
    # 7-AAD-bright dead cells spill into PE-Cy7 (CD25); compensated, their CD25 negatives are wider
    # than the live CD3- lymphocytes' on real cells (photon noise), and not on clusters
    def spread(shape):
        spec = SampleSpec(n_events=40_000, seed=6, drift=0, world=World.draw(5, shape=shape))
        write_fcs(tmp_path / f"{shape}.fcs", spec)
        s = flowkit.Sample(str(tmp_path / f"{shape}.fcs"))
        s.apply_compensation(s.get_metadata()["spillover"])
        comp = s.as_dataframe(source="comp")
        comp.columns = comp.columns.get_level_values(0)
        _, labels = simulate_events(spec)
        dead = comp.loc[labels == "dead", "PE-Cy7-A"]
        live = comp.loc[labels == "cd3neg_lymph", "PE-Cy7-A"]
        iqr = lambda x: np.subtract(*np.quantile(x, [0.75, 0.25]))  # noqa: E731
        return iqr(dead) / iqr(live)
    assert spread("cluster") < 1.15
    assert spread("real") > 1.3


@pytest.mark.parametrize(("panel", "marker", "channel"),
                         [("foxp3", "CD25", "PE-Cy7-A"), ("surface", "CD25", "PE-Cy7-A"),
                          ("foxp3", "FOXP3", "APC-A")])
def test_unstained_marker_has_one_distribution_in_tregs_and_conventional_cells(tmp_path, panel, marker, channel):
    spec = SampleSpec(n_events=30_000, seed=7, panel=panel, unstained=(marker,), hard=True)
    true, labels = simulate_events(spec, compensated=True)
    treg, conv = true.loc[labels == "treg", channel], true.loc[labels == "cd4_conv", channel]
    se = 1.25 * 200 * np.sqrt(1 / len(treg) + 1 / len(conv))
    assert abs(treg.median() - conv.median()) < 4 * se and abs(treg.median()) < 4 * se
    assert treg.std() == pytest.approx(conv.std(), rel=0.1)
    stained, lab_s = simulate_events(SampleSpec(n_events=30_000, seed=7, panel=panel, hard=True), compensated=True)
    assert stained.loc[lab_s == "treg", channel].median() > 10 * treg.std()  # the stain was there before
    truth = write_fcs(tmp_path / "a.fcs", spec)
    assert truth["treg_pct_cd4"] is None and truth["unstained"] == [marker]


def test_pregated_export_holds_only_cd4_t_cells_without_pns(tmp_path):
    spec = SampleSpec(n_events=20_000, seed=8, pregated="CD4pos", instrument="cytoflex")
    truth = write_fcs(tmp_path / "a.fcs", spec)
    events, labels = simulate_events(spec)
    assert set(labels) == {"treg", "cd4_activated", "cd4_conv"}
    assert truth["n_events"] == truth["n_cd4"] == len(labels) < truth["n_acquired"] == 20_000
    assert truth["treg_pct_cd4"] == pytest.approx(100 * (labels == "treg").mean())
    assert truth["pregated"] == "CD4pos"
    sample = flowkit.Sample(str(tmp_path / "a.fcs"))
    assert sample.event_count == len(labels)
    assert set(sample.pns_labels) == {""}
    t = sample.as_dataframe(source="raw")["Time"].to_numpy().ravel()
    assert (np.diff(t) >= 0).all()


def test_new_options_leave_a_worlds_draws_alone():
    w = World.draw(17)
    assert World.draw(17, instrument="ique", panel="surface", shape="real").gain == w.gain
    _, a = simulate_events(SampleSpec(n_events=3000, seed=2, world=w))
    _, b = simulate_events(SampleSpec(n_events=3000, seed=2, world=World.draw(17, instrument="attune")))
    np.testing.assert_array_equal(a, b)


def test_invalid_kinds_are_refused():
    with pytest.raises(ValueError, match="instrument"):
        SampleSpec(instrument="facscalibur")
    with pytest.raises(ValueError, match="unstained"):
        SampleSpec(panel="surface", unstained=("FOXP3",))
    with pytest.raises(ValueError, match="pregated"):
        SampleSpec(pregated="CD3pos")
    with pytest.raises(ValueError, match="shape"):
        World.draw(1, shape="blobs")
