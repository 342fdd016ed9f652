"""The report's plot data: computed by the worker from the events in memory, the same as a re-read gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cytopipe.batch.task import PLOTS_DIR, process_sample
from cytopipe.review.events import (
    PLOT_BINS,
    POINTS_MAX,
    gate_views,
    load_plots,
    plot_key,
    save_plots,
)
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
