"""The report's plot data: computed by the worker from the events in memory, the same as a re-read gives;
stored and read back (review.plotstore)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cytopipe.batch.task import PLOTS_DIR, process_sample
from cytopipe.review.plotdata import PLOT_BINS, POINTS_MAX, gate_views
from cytopipe.review.plotstore import load_plots, plot_key, save_plots
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.strategy.registry import load_strategy


def _stored(cache, res, strategy, adjustments=None):
    return load_plots(cache / PLOTS_DIR / f"{plot_key(res.file_sha256, strategy.sha256, adjustments or {})}.npz")


def _hist(values, dims):
    """The plot's histogram, computed here from a re-read's values with numpy alone."""
    lo_hi = [d.range for d in dims]
    clipped = [np.clip(values[:, j], *r) for j, r in enumerate(lo_hi)]
    if len(dims) == 1:
        return np.histogram(clipped[0], bins=PLOT_BINS, range=lo_hi[0])[0]
    return np.histogram2d(clipped[0], clipped[1], bins=PLOT_BINS, range=lo_hi)[0]


@pytest.mark.parametrize("ref", ["treg@1.0.0", "treg_adaptive@1.0.0"])
def test_the_worker_stores_what_a_re_read_would_plot(tmp_path, ref):
    """Counts, gate geometry and every histogram bin equal those of reading and gating the file again."""
    strategy = load_strategy(ref)
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=60_000, seed=7))
    cache = tmp_path / "cache"
    res = process_sample(str(path), str(strategy.directory), cache_dir=str(cache), plots=True)
    assert not res.error
    stored = _stored(cache, res, strategy)
    assert stored is not None and len(stored.pngs) == len(stored.plots) == len(strategy.gate_paths())
    assert stored.time_qc == res.time_qc
    views, _ = gate_views(str(path), strategy, {})
    gates = {tuple(g[0].split("/")): (g[1], g[2]) for g in res.gates}
    for plot, view in zip(stored.plots, views):
        assert plot.path == view.path
        assert (plot.count, plot.parent_count) == gates[plot.path] == (view.count, view.parent_count)
        assert [d.id for d in plot.dims] == [d.id for d in view.gate.dimensions]
        assert [d.min for d in plot.dims] == [d.min for d in view.gate.dimensions]
        if hasattr(view.gate, "vertices"):
            np.testing.assert_allclose(plot.vertices, np.asarray(view.gate.vertices, dtype=float))
        np.testing.assert_array_equal(plot.hist, _hist(view.values, plot.dims))
        # the plotted subsample: every parent event up to 20,000, then exactly 20,000
        assert plot.hist.sum() == min(plot.parent_count, 20_000)
    for png in stored.pngs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_small_population_keeps_its_events(tmp_path):
    strategy = load_strategy("treg@1.0.0")
    path = tmp_path / "small.fcs"
    write_fcs(path, SampleSpec(n_events=1_500, seed=3))
    cache = tmp_path / "cache"
    res = process_sample(str(path), str(strategy.directory), cache_dir=str(cache), plots=True)
    stored = _stored(cache, res, strategy)
    views, _ = gate_views(str(path), strategy, {})
    for plot, view in zip(stored.plots, views):
        assert plot.parent_count <= POINTS_MAX
        np.testing.assert_array_equal(plot.points, view.values.astype(np.float32))


def test_no_plots_unless_asked_and_none_from_another_version(tmp_path):
    strategy = load_strategy("treg@1.0.0")
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=5_000, seed=1))
    cache = tmp_path / "cache"
    process_sample(str(path), str(strategy.directory), cache_dir=str(cache))
    assert not (cache / PLOTS_DIR).exists()
    res = process_sample(str(path), str(strategy.directory), cache_dir=str(cache / "b"), plots=True)
    target = cache / "b" / PLOTS_DIR / f"{plot_key(res.file_sha256, strategy.sha256, {})}.npz"
    stored = load_plots(target)
    assert stored is not None
    save_plots(target, stored)  # a round trip keeps it readable
    assert load_plots(target) is not None
    # the same data as an older cytopipe wrote it: ignored, so the report reads the file instead
    with np.load(target) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].item())
    meta["cytopipe_version"] = "0.0.1"
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(target, **arrays)
    assert load_plots(target) is None
    target.write_bytes(b"not a zip")  # torn or foreign: ignored too
    assert load_plots(target) is None


def test_the_plots_key_follows_the_gate_adjustments():
    a, b = "a" * 64, "b" * 64
    adjusted = {"root/Lymphocytes": {"type": "RectangleGate", "dimensions": []}}
    assert plot_key(a, b, {}) == plot_key(a, b, {})
    assert len({plot_key(a, b, {}), plot_key(a, b, adjusted), plot_key(b, b, {}), plot_key(a, a, {})}) == 4


class _Dim:
    def __init__(self, compensation_ref):
        self.compensation_ref = compensation_ref


class _Context:
    """The two compensations of the gating engine's Context: exact (a solve) and fast (within rounding of it)."""

    def __init__(self, exact, fast):
        self.exact, self.fast = exact, fast

    def values_many(self, dims, rows, *, exact=False):
        src = self.exact if exact else self.fast
        return [src[j] if rows is None else src[j][rows] for j in range(len(dims))]


def _near_every_edge(edges_linear, rng, n_random, spread):
    """Values on, just either side of, and well away from every bin edge (in linear units), and random ones."""
    offsets = np.array([0.0, 1e-12, -1e-12, 1e-9, -1e-9, 1e-7, -1e-7, 1e-4, -1e-4])
    near = (edges_linear[:, None] * (1 + offsets[None, :]) + offsets[None, :]).ravel()
    return np.concatenate([near, rng.uniform(*spread, n_random)])


@pytest.mark.parametrize("transform", ["logicle", "asinh", "hyperlog"])
def test_bins_decided_in_linear_units_are_numpys_bins_of_the_exact_values(transform):
    """The worker's fast binning (review.plotdata._binned) equals np.histogram2d of the exact transformed values,
    clipped to the axes, bin for bin, also for values on and within rounding of every edge."""
    import flowkit as fk

    from cytopipe.review.plotdata import LOGICLE_RANGE, SCATTER_RANGE, PlotDim, _binned

    xform = {"logicle": fk.transforms.LogicleTransform(262144, 0.5, 4.5, 0),
             "asinh": fk.transforms.AsinhTransform(262144, 4.0, 0.5),
             "hyperlog": fk.transforms.HyperlogTransform(262144, 0.5, 4.5, 0)}[transform]
    rng = np.random.default_rng(11)
    fluo_edges = np.asarray(xform.inverse(np.linspace(*LOGICLE_RANGE, PLOT_BINS + 1)[:, None])).ravel()
    scatter_edges = np.linspace(*SCATTER_RANGE, PLOT_BINS + 1)
    fluo = _near_every_edge(fluo_edges, rng, 20_000, (-5_000.0, 300_000.0))
    scatter = _near_every_edge(scatter_edges, rng, fluo.size - scatter_edges.size * 9, (-10_000.0, 280_000.0))
    rng.shuffle(scatter)
    # the fast compensation: within a few units in the last place of the exact one
    fast = [v * (1 + rng.uniform(-4e-16, 4e-16, v.size)) for v in (fluo, scatter)]
    dims = [PlotDim("PE-Cy7-A", ticks=(0.0,)), PlotDim("FSC-A")]
    for comp in ("FCS", None):  # scatter compensated (fast values inexact), or not (values exact)
        exact = [fluo, scatter if comp else fast[1]]
        got = _binned(_Context(exact, fast), [_Dim("FCS"), _Dim(comp)], [xform, None], dims)
        t = np.asarray(xform.apply(fluo[:, None])).ravel()
        want = np.histogram2d(np.clip(t, *LOGICLE_RANGE), np.clip(exact[1], *SCATTER_RANGE), bins=PLOT_BINS,
                              range=(LOGICLE_RANGE, SCATTER_RANGE))[0]
        np.testing.assert_array_equal(got, want)
        one = _binned(_Context(exact[1:], fast[1:]), [_Dim(comp)], [None], dims[1:])
        np.testing.assert_array_equal(one, np.histogram(np.clip(exact[1], *SCATTER_RANGE), bins=PLOT_BINS,
                                                        range=SCATTER_RANGE)[0])


@pytest.mark.parametrize("ref", ["treg_auto@1.0.0", "treg_cd127lo@1.0.0"])
def test_stored_plots_equal_a_re_reads_on_varied_files(tmp_path, ref):
    """Bin for bin, on files with staining-run variation and drift, of several sizes."""
    strategy = load_strategy(ref)
    for i, n in enumerate((3_000, 25_000, 90_000)):
        path = tmp_path / f"h{i}.fcs"
        write_fcs(path, SampleSpec(n_events=n, seed=300 + i, hard=True, drift=0.4))
        cache = tmp_path / f"cache{i}"
        res = process_sample(str(path), str(strategy.directory), cache_dir=str(cache), plots=True)
        assert not res.error
        views, _ = gate_views(str(path), strategy, {})
        for plot, view in zip(_stored(cache, res, strategy).plots, views):
            np.testing.assert_array_equal(plot.hist, _hist(view.values, plot.dims))


def test_a_report_page_loads_the_pngs_without_the_histograms(tmp_path):
    strategy = load_strategy("treg@1.0.0")
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=5_000, seed=1))
    res = process_sample(str(path), str(strategy.directory), cache_dir=str(tmp_path), plots=True)
    target = tmp_path / PLOTS_DIR / f"{plot_key(res.file_sha256, strategy.sha256, {})}.npz"
    full, light = load_plots(target), load_plots(target, pngs_only=True)
    assert light.pngs == full.pngs and [p.path for p in light.plots] == [p.path for p in full.plots]
    assert all(p.hist.size == 0 and p.points is None for p in light.plots) and full.plots[0].hist.size > 0
    save_plots(target, dataclasses.replace(full, pngs=[]))  # no PNGs stored: everything is loaded
    assert all(p.hist.size for p in load_plots(target, pngs_only=True).plots)
