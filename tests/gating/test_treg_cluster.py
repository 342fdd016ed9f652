"""The Treg cluster on CD25 x FOXP3 x CD127 and its two gates (gating.placement.treg_cluster, treg_split; the default
treg_adaptive@1.5.0, which is 1.3.0 with polygons of at most 12 vertices; 1.1.0 and 1.2.0 differ in how many
events the gates are placed on and where the axes' cofactors are measured, and are pinned by their golden counts).

Worlds are drawn from seeds no number of the strategy was chosen on (it was
developed on the worlds of seeds 100000, 200000, 300000, 500000 and 700000, 20 each); the
truth is the generator's labels.
"""

from __future__ import annotations

import flowio
import numpy as np
import pytest
from scipy.stats import norm

from cytopipe.batch.task import process_sample
from cytopipe.fcs.read import read_fcs
from cytopipe.gating.api import gate_sample, treg_percent
from cytopipe.gating.placement import needs_review_flags, place_gates, ridge_unimodal
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.sim.world import World
from cytopipe.strategy.registry import DEFAULT_STRATEGY, load_strategy

from .pinned import pinned_errors

TREG = ("root", "Lymphocytes", "Singlets", "Live", "CD3pos", "CD4pos", "Treg")


@pytest.fixture(scope="module")
def strategy():
    return load_strategy(DEFAULT_STRATEGY)


def test_the_default_places_every_gate_and_counts_cd127lo(strategy):
    assert strategy.ref == DEFAULT_STRATEGY and strategy.status == "released"
    assert [tuple(p["gate_path"]) for p in strategy.manifest["placement"]] == strategy.gate_paths()
    assert strategy.numerator == TREG + ("CD127lo",) and strategy.denominator == TREG[:-1]


@pytest.mark.parametrize("gap", [1.9, 2.1, 2.9, 3.3])
def test_ridgeline_modality_matches_the_closed_form_in_one_dimension(gap):
    """Two equal Gaussians (SD 1) are unimodal exactly when their means are at most 2 SD apart; beyond, the
    dip at the midpoint against the peaks' height is what a grid of the density says."""
    one = np.eye(1)
    assert ridge_unimodal((np.zeros(1), one, 0.5), (np.array([gap]), one, 0.5), ratio=1.0) == (gap <= 2.0)
    x = np.linspace(-4, gap + 4, 20001)
    f = 0.5 * norm.pdf(x) + 0.5 * norm.pdf(x, gap)
    dip = f[np.argmin(np.abs(x - gap / 2))] / f.max()
    for ratio in (dip - 0.02, dip + 0.02):
        assert ridge_unimodal((np.zeros(1), one, 0.5), (np.array([gap]), one, 0.5), ratio=ratio) == (dip >= ratio)


def test_ridgeline_sees_a_valley_off_the_line_between_the_means():
    """In 2-D with unequal covariances the ridgeline is curved; the test agrees with a dense grid's count of modes."""
    m1, m2 = np.array([0.0, 0.0]), np.array([3.0, 1.0])
    s1, s2 = np.array([[1.0, 0.8], [0.8, 1.0]]), np.array([[1.0, -0.7], [-0.7, 1.0]])
    from scipy.stats import multivariate_normal as mvn

    g = np.stack(np.meshgrid(np.linspace(-4, 7, 441), np.linspace(-4, 5, 361)), axis=-1)
    f = 0.5 * mvn(m1, s1).pdf(g) + 0.5 * mvn(m2, s2).pdf(g)
    inner = f[1:-1, 1:-1]
    peaks = sum((inner > np.roll(f, s, axis=a)[1:-1, 1:-1]).astype(int) for a in (0, 1) for s in (1, -1)) == 4
    assert ridge_unimodal((m1, s1, 0.5), (m2, s2, 0.5), ratio=1.0) == (int(peaks.sum()) == 1)


@pytest.mark.parametrize("hard", [False, True])
def test_pinned_worlds_land_within_target(tmp_path, strategy, hard):
    """Labs' geometries it never saw: every tube not sent to review is within the 0.3 pp target of the truth
    (mean within 0.1 pp), and at most one of twelve goes to review.

    Measured with 1.3.0: worst 0.02 pp with usual staining, 0.21 pp with staining variation (world 77001;
    1.2.0, its cofactors from the CD4 cells, had +0.33 pp there and 1.1.0 +0.28 pp).
    """
    reviewed, errors = pinned_errors(tmp_path, strategy, (424_242, 31_337, 77_001, 8_675_309), (4.0, 11.0, 19.0),
                                     hard=hard)
    assert len(reviewed) <= 1, reviewed
    assert all(abs(e) <= 0.3 for _, _, e in errors), errors
    assert np.mean([abs(e) for _, _, e in errors]) <= 0.1, errors


def _scramble_cd127(path, seed: int) -> None:
    """Make CD127 say nothing about the cells: permute the file's PE-A column across its events, in place."""
    fd = flowio.FlowData(str(path))
    names = [fd.channels[i + 1]["pnn"] for i in range(fd.channel_count)]
    events = np.reshape(np.asarray(fd.events, dtype=np.float32), (-1, fd.channel_count))
    j = names.index("PE-A")
    events[:, j] = np.random.default_rng(seed).permutation(events[:, j])
    order = ">f4" if fd.text["byteord"].startswith("4") else "<f4"
    raw = bytearray(path.read_bytes())
    start = int(fd.text["begindata"])
    block = events.astype(order).tobytes()
    raw[start:start + len(block)] = block
    path.write_bytes(bytes(raw))


def test_cd127_that_separates_nothing_leaves_the_count_right(tmp_path, strategy):
    """Nothing assumes Tregs are CD127 low: with CD127 scrambled the mixture separates on CD25 x FOXP3, and the
    count (what both gates together hold) is still within 0.3 pp on usual staining."""
    errors = []
    for k, world in enumerate((424_242, 31_337)):
        path = tmp_path / f"s{k}.fcs"
        truth = write_fcs(path, SampleSpec(n_events=40_000, seed=50 + k, world=World.draw(world), treg_pct_cd4=9.0,
                                           drift=0.4))
        _scramble_cd127(path, k)
        sample = read_fcs(path)
        placed = place_gates(sample, strategy)
        assert not needs_review_flags(placed.qc_flags), placed.qc_flags
        counts = gate_sample(sample, strategy, gating_strategy=placed.gating_strategy)
        errors.append(treg_percent(counts, strategy)[2] - truth["treg_pct_cd4"])
    assert all(abs(e) <= 0.3 for e in errors), errors


@pytest.mark.parametrize("world", [424_242, 8_675_309])
def test_cofactors_are_the_detectors_negative_spread_so_cd127lo_tregs_are_not_skewed(tmp_path, strategy, world):
    """1.3.0 measures each axis' cofactor on all the events placement sees. On the CD4 cells alone (1.2.0)
    the values below 0 on CD127 are the left tail of the Tregs' dim CD127, a fraction of the detector's
    negative spread, and the Tregs then lie skewed on the log part of the axis, where one Gaussian is too
    wide towards the activated cells. Checked with the generator's labels: the Tregs' CD127 skew on each
    version's fitting axis (a Gaussian needs it near 0)."""
    import flowkit as fk
    from scipy.stats import skew

    from cytopipe.gating.api import gate_rows, gate_values
    from cytopipe.gating.placement._maths import negative_spread as _negative_spread
    from cytopipe.sim.sample import simulate_events

    spec = SampleSpec(n_events=30_000, seed=world % 1000, world=World.draw(world), hard=True, treg_pct_cd4=6.0,
                      drift=0.4)
    write_fcs(tmp_path / "c.fcs", spec)
    _, labels = simulate_events(spec)
    sample = read_fcs(tmp_path / "c.fcs")
    probe = fk.gates.RectangleGate("probe", [fk.Dimension("PE-A", compensation_ref="FCS", range_min=0.0)])
    found = {}
    for ref in ("treg_adaptive@1.2.0", strategy.ref):
        s = load_strategy(ref)
        placed = place_gates(sample, s)
        rec = next(g for g in placed.gates if g["gate_path"].endswith("/Treg"))
        cd4 = gate_rows(sample, placed.gating_strategy, s.gate_paths())[TREG[:-1]]
        if "cofactors" in rec:  # 1.3.0 records its cofactors
            c = rec["cofactors"][rec["dimensions"].index("PE-A")]
        else:  # 1.2.0's: the negative spread measured on the CD4 cells' CD127
            c = _negative_spread(gate_values(sample, placed.gating_strategy, probe, rows=cd4)[:, 0])
        tregs = cd4[labels[cd4] == "treg"]
        cd127 = gate_values(sample, placed.gating_strategy, probe, rows=tregs)[:, 0]
        found[ref] = (c, float(skew(np.arcsinh(cd127 / c))))
    (c_old, skew_old), (c_new, skew_new) = found["treg_adaptive@1.2.0"], found[strategy.ref]
    # at these two worlds: c 94 -> 316 and 120 -> 238; skew -1.11 -> -0.21 and -0.86 -> -0.46
    assert c_new > 1.5 * c_old, found  # a detector's negative spread against a dim population's tail
    assert abs(skew_new) < 0.5 and abs(skew_new) < 0.6 * abs(skew_old), found


def test_a_reviewers_treg_gate_still_gets_its_cd127lo_child_placed(tmp_path, strategy):
    """When a reviewer adjusted Treg, the mixture is still fitted for CD127lo, placed inside the reviewer's gate."""
    path = tmp_path / "r.fcs"
    write_fcs(path, SampleSpec(n_events=30_000, seed=4, world=World.draw(31_337), hard=True, treg_pct_cd4=8.0))
    sample = read_fcs(path)
    first = place_gates(sample, strategy)
    placed = first.gating_strategy.get_gate("Treg", gate_path=TREG[:-1], sample_id=sample.id)
    # the reviewer's gate: the placed one (what a reviewer approving it as drawn keeps), all other gates template
    gs = strategy.gating_strategy()
    gs.add_gate(placed, TREG[:-1], sample_id=sample.id)
    res = place_gates(sample, strategy, gating_strategy=gs, skip=["/".join(TREG)])
    status = {g["gate_path"].split("/")[-1]: g for g in res.gates}
    assert status["Treg"]["status"] == "reviewer" and status["CD127lo"]["status"] == "placed"
    assert status["CD127lo"]["posterior_level"] == next(g for g in first.gates
                                                        if g["gate_path"].endswith("CD127lo"))["posterior_level"]
    assert not needs_review_flags(res.qc_flags), res.qc_flags
    # and a reviewer's Treg gate that leaves out most Tregs is no silent number: CD127lo goes to review
    narrow = strategy.gating_strategy()
    res = place_gates(sample, strategy, gating_strategy=narrow, skip=["/".join(TREG)])
    assert any(f.endswith("CD127lo:ambiguous") for f in needs_review_flags(res.qc_flags)), res.qc_flags


def test_flowkit_alone_reproduces_both_treg_gates_from_the_written_gatingml(tmp_path, strategy):
    import flowkit as fk

    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=30_000, seed=9, world=World.draw(5), hard=True))
    res = process_sample(str(path), str(strategy.directory))
    assert not res.error
    xml = tmp_path / "a.xml"
    xml.write_text(res.applied_gatingml(), encoding="utf-8")
    flowkit = fk.parse_gating_xml(str(xml)).gate_sample(fk.Sample(str(path)))
    seen = set()
    for gate_path, count, _ in res.gates:
        parts = tuple(gate_path.split("/"))
        assert flowkit.get_gate_count(parts[-1], gate_path=parts[:-1]) == count, gate_path
        seen.add(parts[-1])
    assert {"Treg", "CD127lo"} <= seen


class _Mixture:
    """A fitted mixture's three arrays, written out: CD25, FOXP3, CD127 means of four components."""

    def __init__(self, means, sd=0.3):
        self.means_ = np.array(means, dtype=float)
        self.n_components = len(self.means_)
        self.covariances_ = np.array([np.eye(3) * sd ** 2] * self.n_components)
        self.weights_ = np.full(self.n_components, 1.0 / self.n_components)


def test_one_foxp3_level_is_one_treg_population_whatever_its_cd25_and_cd127():
    """1.4.0's same_position_axes: the Tregs cut along CD25 (a continuum on real cells) and CD127 (spread by
    compensation) into components that a valley separates in 3-D still join on FOXP3; FOXP3-dim cells do not."""
    from cytopipe.gating.placement.treg_cluster import _treg_group

    # Tregs at FOXP3 3.0: one CD25-high CD127-low piece, one 2 units lower on CD25 and CD127 (7 SDs: a valley);
    # activated cells FOXP3-dim at 1.5; conventional cells FOXP3-negative-ish at 0.5
    gm = _Mixture([[4.5, 3.0, 1.0], [2.5, 3.05, -1.0], [3.5, 1.5, 2.0], [2.0, 0.5, 2.5]])
    assert _treg_group(gm, 1, 0.75, 1.0, [0, 1]) == [1]  # 1.3.0: on CD25 x FOXP3 the pieces are far apart
    assert _treg_group(gm, 1, 0.75, 1.0, [1]) == [0, 1]  # on FOXP3 they are one level; the dim cells stay out


def test_same_position_axes_are_checked_against_the_fit(tmp_path):
    import json
    import shutil

    from cytopipe.exceptions import StrategyError
    from cytopipe.gating.placement import placement_problems

    draft = load_strategy("treg_adaptive@1.4.0", allow_draft=True)
    entry = next(e for e in draft.manifest["placement"] if e["gate_path"][-1] == "Treg")
    assert entry["same_position_axes"] == ["APC-A"]  # FOXP3's detector in the strategy's terms
    bad = {"placement": [{**entry, "same_position_axes": "APC-A"}]}
    assert any("'same_position_axes' must be a list of strings" in p for p in placement_problems(bad, "m.json"))
    folder = tmp_path / "s"
    shutil.copytree(draft.directory, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    next(e for e in manifest["placement"] if e["gate_path"][-1] == "Treg")["same_position_axes"] = ["FITC-A"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=20_000, seed=3))
    with pytest.raises(StrategyError, match=r"same_position_axes names \['FITC-A'\]"):
        place_gates(read_fcs(path), load_strategy(folder, allow_draft=True))


def test_a_count_that_moves_when_the_mixture_restarts_goes_to_review(tmp_path, monkeypatch):
    """1.4.0's restart_seeds: the same mixture from two other starts. On a clean tube they agree and the
    count is 1.3.0's; a restart that lands elsewhere (here made to: one component for the whole window) sends
    the sample to review with both shares, the gate kept as the reviewer's candidate."""
    import sklearn.mixture

    path = tmp_path / "a.fcs"
    truth = write_fcs(path, SampleSpec(n_events=30_000, seed=12))
    draft = load_strategy("treg_adaptive@1.4.0", allow_draft=True)
    old = process_sample(str(path), str(load_strategy("treg_adaptive@1.3.0").directory))
    new = process_sample(str(path), str(draft.directory), allow_draft=True)
    assert not needs_review_flags(new.qc_flags) and new.treg_count == old.treg_count
    assert abs(new.treg_pct_cd4 - truth["treg_pct_cd4"]) < 0.3
    rec = next(g for g in new.auto_gates["gates"] if g["gate_path"].endswith("/Treg"))
    first = rec["treg_pct_by_model"][0]
    assert len(rec["treg_pct_by_restart"]) == 2 and all(abs(v - first) <= 0.5 for v in rec["treg_pct_by_restart"])

    real = sklearn.mixture.GaussianMixture

    def elsewhere(n_components=1, **kw):
        return real(1 if kw.get("random_state") == 1 else n_components, **kw)

    monkeypatch.setattr(sklearn.mixture, "GaussianMixture", elsewhere)
    moved = process_sample(str(path), str(draft.directory), allow_draft=True)
    assert "needs_review:Treg:models_disagree" in moved.qc_flags
    rec = next(g for g in moved.auto_gates["gates"] if g["gate_path"].endswith("/Treg"))
    assert "refitted from another start" in rec["reason"] and abs(rec["treg_pct_by_restart"][0] - first) > 0.5


@pytest.mark.parametrize("world, hard", [(5, True), (11, False)])
def test_few_vertex_gates_count_the_mixtures_expected_tregs_in_flowkit(tmp_path, world, hard):
    """1.5.0 draws Treg and CD127lo with at most 12 vertices (handles a reviewer can drag), and still counts
    the mixture's expected Tregs: FlowKit alone, from the written GatingML, counts within one event of it."""
    import xml.etree.ElementTree as ET

    from .flowkit_alone import flowkit_counts

    strategy = load_strategy("treg_adaptive@1.5.0")
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=30_000, seed=21 + world, world=World.draw(world), hard=hard))
    res = process_sample(str(path), str(strategy.directory))
    assert not res.error and not res.qc_flags
    text = res.applied_gatingml()
    ns = "{http://www.isac-net.org/std/Gating-ML/v2.0/gating}"
    polygons = {g.get(f"{ns}id"): len(g.findall(f"{ns}vertex")) for g in ET.fromstring(text).iter(f"{ns}PolygonGate")}
    assert 3 <= polygons["Treg"] <= 12 and 3 <= polygons["CD127lo"] <= 12, polygons
    counts = flowkit_counts(path, text)
    numerator = "/".join(TREG + ("CD127lo",))
    assert counts[numerator] == res.treg_count
    [split] = [g for g in res.auto_gates["gates"] if g["gate_path"].endswith("/CD127lo")]
    expected = split["expected_pct"] / 100 * res.cd4_count  # the mixture's, before any polygon is drawn
    assert abs(res.treg_count - expected) <= 1.0, (res.treg_count, expected)


def test_a_polygon_scaled_to_a_count_holds_it_exactly():
    """scaled_to: a square of few vertices scaled about its centre until it holds a given number of points."""
    from matplotlib.path import Path as _Path

    from cytopipe.gating.placement._maths import scaled_to, simplify_to

    pts = np.random.default_rng(0).normal(size=(5000, 2))
    circle = np.column_stack([np.cos(np.linspace(0, 2 * np.pi, 200)), np.sin(np.linspace(0, 2 * np.pi, 200))])
    few = simplify_to(circle, 0.001, 8)
    assert 3 <= len(few) <= 8
    inside = np.hypot(*pts.T) < 1.5  # the target: what a circle of radius 1.5 holds
    poly = scaled_to(few, (0.0, 0.0), lambda p: float(_Path(p).contains_points(pts).sum()), float(inside.sum()))
    assert abs(_Path(poly).contains_points(pts).sum() - inside.sum()) <= 1
