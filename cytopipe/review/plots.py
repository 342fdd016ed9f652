"""The report's plots, rendered with matplotlib (Agg) to PNG bytes.

Why matplotlib and not bokeh: the report must open from disk, offline, and
stay readable for years in a trial's archive. Static PNGs embedded as
``data:`` URIs need no JavaScript, no CDN and no running server; a bokeh
page needs BokehJS (a CDN, or ~1 MB inlined per page) and a browser with JS
to show anything. Reviewers need to look, not to pan and zoom.

Every gate plot of every sample uses the same axes: logicle fluorescence on
a fixed range (ticks in compensated linear units) and linear scatter on the
detector's full range, so samples compare at a glance.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Polygon, Rectangle

from .events import GateView

__all__ = ["gate_png", "patient_png", "batch_png"]

_SCATTER_RANGE = (0.0, 262144.0)
_LOGICLE_RANGE = (-0.25, 1.0)
_TICKS = (-1000.0, 0.0, 1e3, 1e4, 1e5)
_TICK_LABELS = ("-10³", "0", "10³", "10⁴", "10⁵")
_BINS = 128
_GATE_COLOUR = "#d62728"


def _png(fig: Figure, dpi: int = 80) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _axis(ax, which: str, dim, transform) -> tuple[float, float]:
    label = dim.id + ("" if transform is None else " (logicle)")
    if transform is None:
        lo, hi = _SCATTER_RANGE
        ticks = np.linspace(0, 250_000, 6)
        labels = [f"{t / 1000:.0f}k" for t in ticks]
    else:
        lo, hi = _LOGICLE_RANGE
        ticks = transform.apply(np.array(_TICKS, dtype=float)[:, None]).ravel()
        labels = list(_TICK_LABELS)
    getattr(ax, f"set_{which}lim")(lo, hi)
    getattr(ax, f"set_{which}ticks")(ticks, labels)
    getattr(ax, f"set_{which}label")(label)
    return lo, hi


def _edge(value, lo: float, hi: float, pick: str) -> float:
    if value is None:
        return lo - (hi - lo) if pick == "min" else hi + (hi - lo)
    return float(value)


def gate_png(view: GateView) -> bytes:
    """One gate on one sample: the parent population's density with the gate drawn."""
    fig = Figure(figsize=(3.4, 3.2))
    ax = fig.add_subplot()
    dims = view.gate.dimensions
    pct = 100.0 * view.count / view.parent_count if view.parent_count else float("nan")
    custom = " (sample gate)" if view.custom else ""
    ax.set_title(f"{view.path[-1]}{custom}: {view.count:,} ({pct:.1f} % of parent)", fontsize=8)
    if len(dims) == 1:
        lo, hi = _axis(ax, "x", dims[0], view.transforms[0])
        x = np.clip(view.values[:, 0], lo, hi)
        hist, edges = np.histogram(x, bins=_BINS, range=(lo, hi))
        ax.fill_between(edges[:-1], hist, step="post", color="#4c72b0", alpha=0.7)
        ax.set_ylabel("events")
        g_lo, g_hi = _edge(dims[0].min, lo, hi, "min"), _edge(dims[0].max, lo, hi, "max")
        ax.axvspan(max(g_lo, lo), min(g_hi, hi), color=_GATE_COLOUR, alpha=0.12)
        for v in (dims[0].min, dims[0].max):
            if v is not None:
                ax.axvline(v, color=_GATE_COLOUR, lw=1.5)
    else:
        xlo, xhi = _axis(ax, "x", dims[0], view.transforms[0])
        ylo, yhi = _axis(ax, "y", dims[1], view.transforms[1])
        x = np.clip(view.values[:, 0], xlo, xhi)
        y = np.clip(view.values[:, 1], ylo, yhi)
        hist, xe, ye = np.histogram2d(x, y, bins=_BINS, range=((xlo, xhi), (ylo, yhi)))
        if hist.max() > 0:  # imshow: one image, much cheaper to render than a pcolormesh
            ax.imshow(np.ma.masked_equal(hist.T, 0), origin="lower", extent=(xlo, xhi, ylo, yhi),
                      aspect="auto", interpolation="nearest", norm=LogNorm(vmin=1, vmax=hist.max()),
                      cmap="viridis")
        if hasattr(view.gate, "vertices"):
            ax.add_patch(Polygon(np.asarray(view.gate.vertices), closed=True, fill=False,
                                 edgecolor=_GATE_COLOUR, lw=1.5))
        else:
            x0, x1 = _edge(dims[0].min, xlo, xhi, "min"), _edge(dims[0].max, xlo, xhi, "max")
            y0, y1 = _edge(dims[1].min, ylo, yhi, "min"), _edge(dims[1].max, ylo, yhi, "max")
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=_GATE_COLOUR, lw=1.5))
        ax.set_xlim(xlo, xhi)
        ax.set_ylim(ylo, yhi)
    ax.tick_params(labelsize=7)
    # fixed margins: tight_layout measures every tick label and was half the plot's cost
    fig.subplots_adjust(left=0.2, right=0.96, bottom=0.16, top=0.9)
    return _png(fig)


def patient_png(patient: str, visits: Sequence[str], pct: Sequence[float], lo: Sequence[float],
                hi: Sequence[float]) -> bytes:
    """Treg % CD4 of one patient across visits, with 95 % CIs."""
    fig = Figure(figsize=(3.6, 2.6))
    ax = fig.add_subplot()
    x = np.arange(len(visits))
    p = np.asarray(pct, dtype=float)
    err = np.vstack([p - np.asarray(lo, dtype=float), np.asarray(hi, dtype=float) - p])
    ax.errorbar(x, p, yerr=np.nan_to_num(err), fmt="o-", color="#4c72b0", capsize=3)
    ax.set_xticks(x, list(visits))
    ax.set_ylabel("Treg % CD4")
    ax.set_ylim(0, max(25.0, float(np.nanmax(np.asarray(hi, dtype=float), initial=0)) + 2))
    ax.set_title(f"patient {patient}", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _png(fig)


def _robust_outliers(values: np.ndarray, z: float = 3.5) -> np.ndarray:
    ok = np.isfinite(values)
    out = np.zeros(values.shape, dtype=bool)
    if ok.sum() < 4:
        return out
    med = np.median(values[ok])
    mad = 1.4826 * np.median(np.abs(values[ok] - med))
    if mad == 0:
        return out
    out[ok] = np.abs(values[ok] - med) / mad > z
    return out


def batch_png(labels: Sequence[str], series: dict[str, Sequence[float]]) -> tuple[bytes, dict[str, list[str]]]:
    """Treg % CD4, CD4 count and event count across the batch's samples.

    Returns
    -------
    png, outliers
        The figure, and per series the labels of samples more than 3.5
        robust SDs from the batch median (drawn in red).
    """
    fig = Figure(figsize=(max(6.0, 0.35 * len(labels) + 2), 2.2 * len(series)))
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(labels))
    found: dict[str, list[str]] = {}
    for ax, (name, vals) in zip(axes, series.items()):
        v = np.asarray(vals, dtype=float)
        bad = _robust_outliers(v)
        ax.scatter(x[~bad], v[~bad], s=14, color="#4c72b0")
        ax.scatter(x[bad], v[bad], s=30, color=_GATE_COLOUR, marker="D")
        if np.isfinite(v).any():
            ax.axhline(float(np.nanmedian(v)), color="grey", lw=0.8, ls="--")
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        found[name] = [labels[i] for i in np.flatnonzero(bad)]
    axes[-1].set_xticks(x, list(labels), rotation=90, fontsize=6)
    fig.tight_layout()
    return _png(fig), found
