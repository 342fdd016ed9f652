"""Gating accuracy against the generator's truth, and the gate arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from cytopipe.fcs.read import read_fcs
from cytopipe.gating.api import gate_cascade, gate_sample, treg_percent
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.strategy.registry import load_strategy


@pytest.fixture(scope="module")
def strategy():
    return load_strategy("treg@1.0.0")


def test_accuracy_under_drift(tmp_path_factory, strategy):
    """|Treg % CD4 - truth| <= 0.3 pp per sample of >= 20,000 events, <= 0.1 on average."""
    out = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(20261125)
    errors = []
    for i in range(30):
        spec = SampleSpec(
            n_events=int(rng.integers(20_000, 60_000)),
            treg_pct_cd4=float(rng.uniform(3, 20)),
            seed=int(rng.integers(2**31)),
            fcs_version=("3.0", "3.1")[i % 2],
            byteorder=("little", "big")[(i // 2) % 2],
            drift=0.4,
        )
        truth = write_fcs(out / f"s{i}.fcs", spec)
        counts = gate_sample(read_fcs(out / f"s{i}.fcs"), strategy)
        cd4, treg, pct = treg_percent(counts, strategy)
        errors.append(pct - truth["treg_pct_cd4"])
        # the denominator is the CD4 T cells, not something else of similar size
        assert abs(cd4 - truth["n_cd4"]) <= 0.01 * truth["n_cd4"]
    errors = np.abs(errors)
    assert errors.max() <= 0.3, errors
    assert errors.mean() <= 0.1, errors


def test_counts_form_a_consistent_tree(tmp_path, strategy):
    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=20_000, seed=3))
    counts = gate_sample(read_fcs(tmp_path / "a.fcs"), strategy)
    assert list(counts) == strategy.gate_paths()
    for path, c in counts.items():
        parent = counts.get(path[:-1])
        assert c.parent_count == (parent.count if parent else 20_000)
        assert 0 <= c.count <= c.parent_count
        assert c.pct_parent == pytest.approx(100 * c.count / c.parent_count)
    cd4, treg, pct = treg_percent(counts, strategy)
    assert pct == pytest.approx(100 * treg / cd4)
    # FlowKit's own relative percent is to the direct parent only: Treg % CD4 is the same
    # here because CD4pos is Treg's parent, but not Treg % of Live.
    live = counts[strategy.denominator[:4]].count
    assert 100 * treg / live < pct


def test_each_gate_removes_its_population(tmp_path, strategy):
    """Without the singlet or live gate, doublets and dead cells would reach CD4."""
    from cytopipe.sim.sample import simulate_events

    spec = SampleSpec(n_events=30_000, seed=8, drift=0.0)
    truth = write_fcs(tmp_path / "a.fcs", spec)
    counts = gate_sample(read_fcs(tmp_path / "a.fcs"), strategy)
    singlets = counts[strategy.denominator[:3]].count
    lymph = counts[strategy.denominator[:2]].count
    # doublets within the lymphocyte gate are removed by the singlet gate
    assert lymph - singlets >= 0.5 * truth["n_doublet"]
    _, labels = simulate_events(spec)
    assert len(labels) == 30_000


@pytest.mark.parametrize("hard", [False, True])
def test_cascade_counts_equal_flowkit_gate_sample(tmp_path, strategy, hard):
    """The fast engine gives exactly GatingStrategy.gate_sample's counts, gate by gate."""
    rng = np.random.default_rng(7 + hard)
    for i in range(8):
        spec = SampleSpec(n_events=int(rng.integers(5_000, 40_000)), treg_pct_cd4=float(rng.uniform(2, 20)),
                          seed=int(rng.integers(2**31)), drift=float(rng.uniform(0, 0.5)), hard=hard,
                          fcs_version=("3.0", "3.1")[i % 2], byteorder=("big", "little")[i % 2])
        write_fcs(tmp_path / f"{i}.fcs", spec)
        sample = read_fcs(tmp_path / f"{i}.fcs")
        fast = gate_sample(sample, strategy, engine="cascade")
        ref = gate_sample(sample, strategy, engine="flowkit")
        assert {p: c.count for p, c in fast.items()} == {p: c.count for p, c in ref.items()}


def test_cascade_honours_custom_sample_gates(tmp_path, strategy):
    """A sample-specific gate (a reviewer's adjustment) is used by both engines alike."""
    from flowkit import Dimension, gates

    write_fcs(tmp_path / "a.fcs", SampleSpec(n_events=20_000, seed=4))
    sample = read_fcs(tmp_path / "a.fcs")
    gs = strategy.gating_strategy()
    template = gs.get_gate("Treg", gate_path=strategy.numerator[:-1])
    dims = [Dimension(d.id, compensation_ref=d.compensation_ref, transformation_ref=d.transformation_ref,
                      range_min=d.min + 0.05, range_max=d.max) for d in template.dimensions]
    gs.add_gate(gates.RectangleGate("Treg", dims), strategy.numerator[:-1], sample_id=sample.id)
    fast = gate_sample(sample, strategy, gating_strategy=gs, engine="cascade")
    ref = gate_sample(sample, strategy, gating_strategy=gs, engine="flowkit")
    plain = gate_sample(sample, strategy)
    assert fast[strategy.numerator].count == ref[strategy.numerator].count
    assert fast[strategy.numerator].count < plain[strategy.numerator].count


def test_cascade_on_the_gatingml_reference_cases():
    """Every GatingML 2.0 compliance case: the cascade's counts equal the truth files."""
    import flowkit as fk

    from ..conftest import shared_dir

    ref = shared_dir("gatingml_ref")
    sample = fk.Sample(str(ref / "data1.fcs"))
    checked = 0
    for xml in sorted((ref / "gml").glob("*.xml")):
        try:
            gs = fk.parse_gating_xml(str(xml))
        except ValueError:  # gml_range_gate_attr_testing.xml: FlowKit itself refuses it
            continue
        paths = sorted((tuple(p) + (g,) for g, p in gs.get_gate_ids()), key=len)
        counts = gate_cascade(sample, gs, paths)
        if counts is None:  # boolean/quadrant/ratio: handled by FlowKit itself
            continue
        for path, count in counts.items():
            truth = ref / "truth" / f"Results_{path[-1]}.txt"
            if truth.is_file():
                expected = int(np.loadtxt(truth, dtype=int).sum())
                assert count == expected, (xml.name, path)
                checked += 1
    assert checked >= 30  # ranges, rectangles, polygons, ellipses, every transform, matrices


def test_cascade_in_event_blocks_equals_flowkit_memberships(tmp_path, strategy, monkeypatch):
    """A file of several event blocks: every gate's events are FlowKit's, in order, across block edges."""
    from cytopipe.fcs.lean import read_fcs_lean
    from cytopipe.gating import api as gating
    from cytopipe.gating import engine as cascade

    monkeypatch.setattr(cascade, "_EVENT_BLOCK", 7_919)  # a prime: blocks end mid-population
    write_fcs(tmp_path / "b.fcs", SampleSpec(n_events=50_000, seed=12, hard=True))
    gs = strategy.gating_strategy()
    paths = strategy.gate_paths()
    reference = gs.gate_sample(read_fcs(tmp_path / "b.fcs"))
    for sample in (read_fcs(tmp_path / "b.fcs"), read_fcs_lean(tmp_path / "b.fcs")):
        rows = gating.gate_rows(sample, strategy.gating_strategy(), paths)
        for path in paths:
            member = np.flatnonzero(reference.get_gate_membership(path[-1], gate_path=path[:-1]))
            np.testing.assert_array_equal(rows[path], member)
            assert np.all(np.diff(rows[path]) > 0)


@pytest.mark.parametrize(("block", "foxp3_xform", "complement"), [
    (7_919, "logicle", False),  # several blocks sharing one raster
    (1 << 20, "logicle", False),  # one block building it
    (7_919, None, True),  # a compensated axis without a transform, and the complement
])
def test_transformed_polygon_raster_equals_flowkit(tmp_path, strategy, monkeypatch, block, foxp3_xform, complement):
    """A polygon with its vertices on events: the raster's lookups give FlowKit's memberships.

    Events sit exactly on the vertices, and a thin spike of the polygon passes
    between events, where a raster decided by its cells' centres alone
    would be wrong; the test also checks that a raster with cells inside,
    outside and near an edge was built.
    """
    import flowkit as fk

    from cytopipe.gating import api as gating
    from cytopipe.gating import engine as cascade

    monkeypatch.setattr(cascade, "_EVENT_BLOCK", block)
    write_fcs(tmp_path / "p.fcs", SampleSpec(n_events=60_000, seed=31, hard=True))
    sample = read_fcs(tmp_path / "p.fcs")
    gs = strategy.gating_strategy()
    dims = [fk.Dimension("PE-Cy7-A", compensation_ref="FCS", transformation_ref="logicle"),
            fk.Dimension("APC-A", compensation_ref="FCS", transformation_ref=foxp3_xform)]
    at = gating.gate_values(sample, gs, fk.gates.PolygonGate("probe", dims, [[0, 0], [1, 0], [1, 1]]),
                            rows=np.arange(sample.event_count))
    rng = np.random.default_rng(5)
    centre = np.median(at, axis=0)
    picks = at[rng.choice(len(at), 40, replace=False)]
    angle = np.arctan2(*(picks - centre).T[::-1])
    vertices = picks[np.argsort(angle)]  # a star polygon through 40 events
    spike = vertices[5] + 3 * (vertices[5] - centre)  # a thin spike out to far events
    vertices = np.vstack([vertices[:6], spike, vertices[5] + 1e-7, vertices[6:]])
    gs.add_gate(fk.gates.PolygonGate("star", dims, vertices.tolist(), use_complement=complement), ("root",))
    built = []
    real = cascade.Context._raster
    monkeypatch.setattr(cascade.Context, "_raster",
                        lambda self, *a: built.append(real(self, *a)) or built[-1])
    rows = gating.gate_rows(sample, gs, [("root", "star")])[("root", "star")]
    member = gs.gate_sample(sample).get_gate_membership("star", gate_path=("root",))
    np.testing.assert_array_equal(rows, np.flatnonzero(member))
    states = built[-1][1]
    assert states is not None and {0, 1, 2} <= set(np.unique(states).tolist())
    assert 0 < rows.size < sample.event_count


def test_transformed_polygon_leaves_non_finite_and_huge_values_to_flowkit(strategy):
    """NaN, infinities and values beyond 1e100 are not where a monotone transform puts them (flowutils' logicle
    maps them to -1): with the polygon reaching below -1 they are inside for FlowKit, and so here."""
    import flowkit as fk

    from cytopipe.gating import api as gating

    rng = np.random.default_rng(3)
    linear = rng.normal(0, 2000, (20_000, 2))
    linear[:5, 0] = [np.nan, np.inf, -np.inf, -1e250, 1e250]
    linear[:5, 1] = 0.0  # inside the box on Y
    gs = fk.GatingStrategy()
    gs.add_transform("logicle", strategy.gating_strategy().get_transform("logicle"))
    dims = [fk.Dimension(d, compensation_ref="uncompensated", transformation_ref="logicle") for d in ("X", "Y")]
    for complement in (False, True):
        name = f"box{int(complement)}"
        gs.add_gate(fk.gates.PolygonGate(name, dims, [[-1.5, -0.3], [0.6, -0.3], [0.6, 0.6], [-1.5, 0.6]],
                                         use_complement=complement), ("root",))
        sample = fk.Sample(linear, sample_id="odd", channel_labels=["X", "Y"])
        rows = gating.gate_rows(sample, gs, [("root", name)])[("root", name)]
        member = gs.gate_sample(sample).get_gate_membership(name, gate_path=("root",))
        np.testing.assert_array_equal(rows, np.flatnonzero(member))
        assert set(range(5)) <= set(rows.tolist()) if not complement else not set(range(5)) & set(rows.tolist())


def test_transformed_polygon_raster_on_events_hugging_the_edges(strategy):
    """Events 1e-5 either side of every edge, on logicle axes: each decided as FlowKit decides it.

    Where an edge only clips a raster cell's corner, no sample of the edge
    falls in that cell: only the cells grown around the sampled ones keep
    such events from being decided by a centre on the wrong side.
    """
    import flowkit as fk

    from cytopipe.gating import api as gating

    xform = strategy.gating_strategy().get_transform("logicle")
    gs = fk.GatingStrategy()
    gs.add_transform("logicle", xform)
    rng = np.random.default_rng(11)
    angle = np.sort(rng.uniform(0, 2 * np.pi, 24))
    radius = rng.uniform(0.05, 0.3, 24)
    vertices = np.column_stack([0.5 + radius * np.cos(angle), 0.5 + radius * np.sin(angle)])
    a, b = vertices, np.roll(vertices, -1, axis=0)
    t = rng.uniform(0, 1, (24, 2000, 1))
    normal = np.stack([-(b - a)[:, 1], (b - a)[:, 0]], axis=1) / np.linalg.norm(b - a, axis=1)[:, None]
    side = rng.choice([-1e-5, 1e-5], (24, 2000, 1))
    hugging = (a[:, None, :] + t * (b - a)[:, None, :] + side * normal[:, None, :]).reshape(-1, 2)
    spread = rng.uniform(vertices.min(axis=0) - 0.05, vertices.max(axis=0) + 0.05, (20_000, 2))
    at = np.vstack([hugging, spread])
    linear = np.column_stack([np.asarray(xform.inverse(at[:, [j]])).ravel() for j in range(2)])
    sample = fk.Sample(linear, sample_id="hug", channel_labels=["X", "Y"])
    dims = [fk.Dimension(d, compensation_ref="uncompensated", transformation_ref="logicle") for d in ("X", "Y")]
    gs.add_gate(fk.gates.PolygonGate("star", dims, vertices.tolist()), ("root",))
    rows = gating.gate_rows(sample, gs, [("root", "star")])[("root", "star")]
    member = gs.gate_sample(sample).get_gate_membership("star", gate_path=("root",))
    np.testing.assert_array_equal(rows, np.flatnonzero(member))
    assert 0.2 < rows.size / len(at) < 0.8


def test_a_transform_without_an_inverse_is_left_to_flowkit():
    """FlowKit's WSPLogTransform (FlowJo workspaces) has no inverse, which deciding bounds in linear units
    needs: polygons and rectangles on it are counted by FlowKit, not refused with an AttributeError."""
    import flowkit as fk

    from cytopipe.gating import api as gating

    rng = np.random.default_rng(0)
    sample = fk.Sample(np.abs(rng.normal(0, 2000, (20_000, 2))) + 1, sample_id="wsp", channel_labels=["X", "Y"])
    gs = fk.GatingStrategy()
    gs.add_transform("wl", fk.transforms.WSPLogTransform(offset=1.0, decades=4.5))
    dims = [fk.Dimension(d, compensation_ref="uncompensated", transformation_ref="wl") for d in ("X", "Y")]
    gs.add_gate(fk.gates.PolygonGate("poly", dims, [[0.1, 0.1], [0.7, 0.1], [0.7, 0.7]]), ("root",))
    box = [fk.Dimension("X", compensation_ref="uncompensated", transformation_ref="wl", range_min=0.5)]
    gs.add_gate(fk.gates.RectangleGate("box", box), ("root",))
    reference = gs.gate_sample(sample)
    for name in ("poly", "box"):
        rows = gating.gate_rows(sample, gs, [("root", name)])[("root", name)]
        member = np.flatnonzero(reference.get_gate_membership(name, gate_path=("root",)))
        assert 0 < member.size < 20_000
        np.testing.assert_array_equal(rows, member)
