"""The synthetic FCS generator: readable files, working spillover, known truth."""

from __future__ import annotations

import fcsparser
import flowio
import flowkit
import numpy as np
import pandas as pd
import pytest

from cytopipe.sim.sample import (
    CHANNELS,
    FLUORESCENCE,
    POPULATIONS,
    SampleSpec,
    simulate_events,
    spillover_matrix,
    write_fcs,
)

FORMATS = [("3.0", "little"), ("3.0", "big"), ("3.1", "little"), ("3.1", "big")]


def _comp_events(path, spill_key: str) -> pd.DataFrame:
    sample = flowkit.Sample(str(path))
    sample.apply_compensation(sample.get_metadata()[spill_key])
    df = sample.as_dataframe(source="comp")
    df.columns = df.columns.get_level_values(0)
    return df


@pytest.mark.parametrize(("version", "byteorder"), FORMATS)
def test_every_reader_reads_every_format(tmp_path, version, byteorder):
    spec = SampleSpec(n_events=3000, seed=5, fcs_version=version, byteorder=byteorder)
    path = tmp_path / "a.fcs"
    truth = write_fcs(path, spec)
    raw, _ = simulate_events(spec)

    assert path.read_bytes()[:6] == f"FCS{version}".encode()
    fd = flowio.FlowData(str(path))
    assert (fd.version, fd.event_count, fd.channel_count) == (version, 3000, 12)
    assert sorted(fd.pnn_labels) == sorted(CHANNELS)
    events = np.asarray(fd.events, dtype=np.float32).reshape(-1, 12)
    np.testing.assert_array_equal(events, raw[fd.pnn_labels].to_numpy())  # byte order right

    meta = fcsparser.parse(str(path), meta_data_only=True)
    assert meta["__header__"]["FCS format"] == f"FCS{version}".encode()
    assert (int(meta["$TOT"]), int(meta["$PAR"])) == (3000, 12)  # fcsparser casts numbers
    assert meta["$BYTEORD"] == ("1,2,3,4" if byteorder == "little" else "4,3,2,1")
    assert (meta["$DATATYPE"], meta["$MODE"], int(meta["$NEXTDATA"])) == ("F", "L", 0)
    assert {int(meta[f"$P{i}R"]) for i in range(1, 13)} == {262144}
    assert int(meta["$ENDDATA"]) == path.stat().st_size - 1

    sample = flowkit.Sample(str(path))
    assert sample.event_count == truth["n_events"] == 3000
    assert sorted(sample.pnn_labels) == sorted(CHANNELS)


@pytest.mark.parametrize(("version", "key", "other"),
                         [("3.0", "SPILL", "$SPILLOVER"), ("3.1", "$SPILLOVER", "SPILL")])
def test_spillover_keyword_and_order(tmp_path, version, key, other):
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=500, seed=2, fcs_version=version))
    meta = fcsparser.parse(str(path), meta_data_only=True)
    assert other not in meta
    fields = meta[key].split(",")
    names = fields[1:9]
    assert fields[0] == "8" and sorted(names) == sorted(FLUORESCENCE) and len(fields) == 1 + 8 + 64
    data_order = [meta[f"$P{i}N"] for i in range(1, 13) if meta[f"$P{i}N"] in FLUORESCENCE]
    assert names != data_order
    # the written matrix is the generator's matrix, permuted consistently with its names
    written = np.array(fields[9:], dtype=float).reshape(8, 8)
    np.testing.assert_allclose(written, spillover_matrix(names).to_numpy())


@pytest.mark.parametrize(("version", "key"), [("3.0", "spill"), ("3.1", "spillover")])
def test_flowkit_compensation_recovers_true_signal(tmp_path, version, key):
    spec = SampleSpec(n_events=20000, seed=3, fcs_version=version, byteorder="big")
    path = tmp_path / "a.fcs"
    write_fcs(path, spec)
    comp = _comp_events(path, key)
    raw, labels = simulate_events(spec)
    true, _ = simulate_events(spec, compensated=True)
    fl = list(FLUORESCENCE)

    # per event: comp - true is detector noise carried through inv(S), sd ~80-100
    resid = comp[fl].to_numpy() - true[fl].to_numpy()
    assert np.abs(np.median(resid, axis=0)).max() < 10
    assert resid.std(axis=0).max() < 130
    # without compensation the spillover is visible: APC into APC-H7 on Tregs, V450 into V500
    treg = labels == "treg"
    assert raw.loc[treg, "APC-H7-A"].median() > 300 > abs(comp.loc[treg, "APC-H7-A"].median())
    lymph_cd4 = labels == "cd4_conv"
    gap_raw = raw.loc[lymph_cd4, "V500-A"].median() - true.loc[lymph_cd4, "V500-A"].median()
    gap_comp = comp.loc[lymph_cd4, "V500-A"].median() - true.loc[lymph_cd4, "V500-A"].median()
    assert gap_raw > 500 and abs(gap_comp) < 50


def test_nominal_positions_without_drift():
    true, labels = simulate_events(SampleSpec(n_events=20000, seed=8, drift=0), compensated=True)
    med = true.groupby(labels).median()
    assert med.loc["treg", "PE-Cy7-A"] == pytest.approx(8000, rel=0.05)
    assert med.loc["treg", "APC-A"] == pytest.approx(4000, rel=0.05)
    assert med.loc["cd4_activated", "PE-Cy7-A"] == pytest.approx(1200, rel=0.08)
    assert med.loc["cd4_conv", "PE-A"] == pytest.approx(3000, rel=0.05)
    assert med.loc["cd4_conv", "V450-A"] == pytest.approx(6000, rel=0.05)
    assert med.loc["cd8", "V450-A"] == pytest.approx(0, abs=30)
    assert med.loc["dead", "PerCP-Cy5-5-A"] == pytest.approx(8000, rel=0.05)
    assert med.loc["debris", "FSC-A"] < 25000 < med.loc["cd4_conv", "FSC-A"]
    ratio = (true["FSC-A"] / true["FSC-H"]).groupby(labels).median()
    assert 1.0 < ratio["treg"] < 1.2 and 1.5 < ratio["doublet"] < 2.0
    assert (true.loc[labels == "debris", "FSC-A"] >= 200).all()


def test_drift_moves_positions_and_nothing_else():
    nominal, labels0 = simulate_events(SampleSpec(n_events=5000, seed=4, drift=0))
    drifted, labels1 = simulate_events(SampleSpec(n_events=5000, seed=4, drift=0.4))
    np.testing.assert_array_equal(labels0, labels1)
    shift = (drifted.groupby(labels1).median() / nominal.groupby(labels0).median())
    fsc = shift["FSC-A"]
    assert not np.allclose(fsc, 1, atol=0.02)
    assert ((fsc > 0.55) & (fsc < 1.45)).all()  # within the documented +-40 % (plus jitter)


def test_truth_follows_labels():
    spec = SampleSpec(n_events=30000, treg_pct_cd4=12.0, seed=9)
    _, labels = simulate_events(spec)
    assert len(labels) == 30000 and set(labels) == set(POPULATIONS)
    n = {p: int((labels == p).sum()) for p in POPULATIONS}
    n_cd4 = n["treg"] + n["cd4_activated"] + n["cd4_conv"]
    pct = 100 * n["treg"] / n_cd4
    se = 100 * np.sqrt(0.12 * 0.88 / n_cd4)
    assert abs(pct - 12.0) < 4 * se


def test_truth_row(tmp_path):
    row = write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=8000, treg_pct_cd4=5.0, seed=1))
    counts = [row[f"n_{p}"] for p in POPULATIONS]
    assert sum(counts) == row["n_events"] == 8000
    assert row["n_cd4"] == row["n_treg"] + row["n_cd4_activated"] + row["n_cd4_conv"]
    assert row["treg_pct_cd4"] == pytest.approx(100 * row["n_treg"] / row["n_cd4"])
    _, labels = simulate_events(SampleSpec(n_events=8000, treg_pct_cd4=5.0, seed=1))
    assert row["n_treg"] == int((labels == "treg").sum())


def test_same_spec_same_bytes_other_seed_other_bytes(tmp_path):
    spec = SampleSpec(n_events=2000, seed=42, fcs_version="3.0", byteorder="big", hard=True)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    write_fcs(tmp_path / "x" / "a.fcs", spec)
    write_fcs(tmp_path / "y" / "a.fcs", spec)
    write_fcs(tmp_path / "z.fcs", SampleSpec(n_events=2000, seed=43, fcs_version="3.0",
                                             byteorder="big", hard=True))
    a = (tmp_path / "x" / "a.fcs").read_bytes()
    assert a == (tmp_path / "y" / "a.fcs").read_bytes()
    other = (tmp_path / "z.fcs").read_bytes()
    assert a[-8000:] != other[-8000:]  # the DATA segments differ, not just a keyword


def test_channel_order_shuffled_or_not(tmp_path):
    orders = set()
    for seed in range(4):
        write_fcs(tmp_path / f"{seed}.fcs", SampleSpec(n_events=200, seed=seed))
        orders.add(tuple(flowio.FlowData(str(tmp_path / f"{seed}.fcs"), only_text=True).pnn_labels))
    assert len(orders) == 4 and tuple(CHANNELS) not in orders
    write_fcs(tmp_path / "plain.fcs", SampleSpec(n_events=200, shuffle_channels=False))
    assert flowio.FlowData(str(tmp_path / "plain.fcs")).pnn_labels == list(CHANNELS)


def test_pns_overrides_and_dropped_detectors(tmp_path):
    spec = SampleSpec(n_events=1000, seed=6, pns_overrides={"PE-Cy7-A": "CD127", "APC-A": "L/D"},
                      drop_detectors=("APC-H7-A", "FSC-H"))
    path = tmp_path / "a.fcs"
    write_fcs(path, spec)
    sample = flowkit.Sample(str(path))
    pns = dict(zip(sample.pnn_labels, sample.pns_labels))
    assert pns["PE-Cy7-A"] == "CD127" and pns["APC-A"] == "L/D"  # '/' escaped in TEXT
    assert "APC-H7-A" not in pns and "FSC-H" not in pns and len(pns) == 10
    spill = sample.get_metadata()["spillover"]
    assert spill.startswith("7,") and "APC-H7-A" not in spill
    comp = _comp_events(path, "spillover")  # FlowKit accepts the reduced matrix
    assert comp.shape == (1000, 10)
    events, _ = simulate_events(spec)
    assert list(events.columns) == [c for c in CHANNELS if c not in ("APC-H7-A", "FSC-H")]
    assert set(events.dtypes) == {np.dtype("float32")}


def test_scatter_and_time_have_no_pns(tmp_path):
    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=200, seed=1))
    fd = flowio.FlowData(str(tmp_path / "a.fcs"))
    pns = dict(zip(fd.pnn_labels, fd.pns_labels))
    assert {pns[c] for c in ("FSC-A", "FSC-H", "SSC-A", "Time")} == {""}
    assert all(pns[d] for d in FLUORESCENCE)
    assert fd.text["timestep"] == "0.01" and fd.text["fil"] == "a.fcs"


def test_hard_scales_foxp3_and_widens_cd25():
    easy, lab_e = simulate_events(SampleSpec(n_events=20000, seed=12, drift=0), compensated=True)
    hard, lab_h = simulate_events(SampleSpec(n_events=20000, seed=12, drift=0, hard=True),
                                  compensated=True)
    scale = (hard.loc[lab_h == "treg", "APC-A"].median()
             / easy.loc[lab_e == "treg", "APC-A"].median())
    assert 0.5 <= scale <= 1.5 and abs(scale - 1) > 0.01
    q = [0.5, 0.95]
    assert (hard.loc[lab_h == "cd4_conv", "PE-Cy7-A"].quantile(q).to_numpy()
            > easy.loc[lab_e == "cd4_conv", "PE-Cy7-A"].quantile(q).to_numpy()).all()
    # activated conventional cells: CD25+ and FOXP3-dim, below the Tregs on both axes
    act, treg = hard[lab_h == "cd4_activated"].median(), hard[lab_h == "treg"].median()
    assert act["APC-A"] < treg["APC-A"] / 3 and act["PE-Cy7-A"] < treg["PE-Cy7-A"] / 2
    assert (lab_h == "cd4_activated").sum() > (lab_e == "cd4_activated").sum()


def test_invalid_spec_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fcs_version"):
        SampleSpec(fcs_version="2.0")
    with pytest.raises(ValueError, match="NOPE-A"):
        SampleSpec(drop_detectors=("NOPE-A",))
    with pytest.raises(ValueError, match=r"\$TOT"):
        write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=10, keywords={"$TOT": "5"}))
