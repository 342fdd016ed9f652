"""The report's plot data: per gate, what its plot draws, computed from a gated sample's events.

The run's tables keep counts, not events. So while a file's events are in
memory, the worker that gated it computes what the report's plots need
(:func:`gate_plots`): per gate, a histogram of the parent population on the
plot's fixed axes (the events a plot draws: a fixed-seed subsample of at most
``max_events``), the events themselves when there are few, the gate's
geometry and counts (:class:`GatePlot`). :mod:`cytopipe.review.plotstore`
stores them with the rendered PNGs; the report renders from those and reads
no FCS file.

When a sample has no stored plots (a result cached before plots were stored,
or a reviewer adjusted a gate since the run), :func:`gate_views` reads the
file again and gates it as the run did (:func:`cytopipe.gating.gate_file`:
the same strategy, custom sample gates, lab panel and pre-gated start). Both
paths draw the same subsample: the values plotted are the ones the gate was
applied to, compensated and transformed as the gate's dimensions say.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["GatePlot", "GateView", "PlotDim", "SamplePlots", "gate_plots", "gate_views", "plot_dims", "plot_of"]

#: Bins of a gate plot's axes. Every sample's plot of a gate has the same axes: linear scatter on
#: the detector's full range, logicle fluorescence on a fixed range, so samples compare at a glance.
PLOT_BINS = 128
SCATTER_RANGE = (0.0, 262144.0)
LOGICLE_RANGE = (-0.25, 1.0)
#: Tick positions of transformed axes, in compensated linear units.
TICKS = (-1000.0, 0.0, 1e3, 1e4, 1e5)
#: A plotted parent population this small is kept event by event (and drawn as dots).
POINTS_MAX = 2_000


@dataclass
class GateView:
    """What one gate's plot shows.

    Attributes
    ----------
    path
        Full gate path, ``("root", ..., gate)``.
    gate
        The FlowKit gate applied to this sample (template or custom).
    custom
        True when the gate is a reviewer's custom sample gate.
    values
        ``(n, n_dims)`` parent events (subsampled) in the gate's units.
    inside
        Which of those events the gate keeps.
    count, parent_count
        Events in the gate and in its parent (all events, not subsampled).
    transforms
        Per dimension, the FlowKit transform (None for linear).
    """

    path: tuple[str, ...]
    gate: Any
    custom: bool
    values: np.ndarray
    inside: np.ndarray
    count: int
    parent_count: int
    transforms: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class PlotDim:
    """One axis of a gate plot.

    Attributes
    ----------
    id
        The channel (``$PnN``).
    min, max
        The gate's bounds on it (None: open), in the gate's units.
    ticks
        Positions of :data:`TICKS` on a transformed axis; None on a linear one.
    """

    id: str
    min: float | None = None
    max: float | None = None
    ticks: tuple[float, ...] | None = None

    @property
    def range(self) -> tuple[float, float]:
        """The axis' fixed range, in the gate's units."""
        return SCATTER_RANGE if self.ticks is None else LOGICLE_RANGE


@dataclass
class GatePlot:
    """What one gate's plot of one sample needs, without the events.

    Attributes
    ----------
    path
        Full gate path, ``("root", ..., gate)``.
    custom
        True when the gate is a reviewer's custom sample gate.
    count, parent_count
        Events in the gate and in its parent (all events).
    dims
        The plot's axes (one or two).
    vertices
        ``(n, 2)`` polygon vertices in the gate's units; None for a rectangle.
    hist
        Plotted parent events per bin of the axes (:data:`PLOT_BINS` per
        axis; values outside an axis counted in its edge bins).
    points
        ``(n, n_dims)`` the plotted parent events themselves, float32, when
        there are at most :data:`POINTS_MAX`; else None.
    """

    path: tuple[str, ...]
    custom: bool
    count: int
    parent_count: int
    dims: list[PlotDim]
    vertices: np.ndarray | None
    hist: np.ndarray
    points: np.ndarray | None = None


@dataclass
class SamplePlots:
    """A sample's stored plot data (:func:`~cytopipe.review.plotstore.save_plots`).

    Attributes
    ----------
    plots
        One :class:`GatePlot` per gate, parents first.
    pngs
        The plots rendered by the worker, one PNG per gate (empty when not rendered).
    time_qc
        The Time-channel measures (:func:`~cytopipe.gating.qc.sample_time_qc`), None without Time.
    thresholds
        The QC thresholds ``time_qc`` was computed with.
    max_events
        Parent events drawn per plot at most.
    """

    plots: list[GatePlot]
    pngs: list[bytes] = field(default_factory=list)
    time_qc: dict[str, Any] | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    max_events: int = 20_000


def gate_views(path: str, strategy, adjustments: dict[str, dict[str, Any]], *, max_events: int = 20_000,
               seed: int = 0, lab_panel: dict[str, str] | None = None,
               starts_at: str | None = None) -> tuple[list[GateView], Any]:
    """Re-gate one FCS file: one :class:`GateView` per gate (parents first) and the sample as gated.

    The file is gated as the run gated it (:func:`cytopipe.gating.gate_file`):
    another instrument's file conformed to the strategy, the row's lab panel
    and pre-gated start honoured, the data-driven gates placed again.

    Parameters
    ----------
    path
        The FCS file.
    strategy : cytopipe.strategy.registry.Strategy
        The strategy of the run.
    adjustments
        The sample's custom gates (:func:`cytopipe.review.decisions.gate_adjustments`).
    max_events
        Parent events kept per plot (a random subsample beyond that).
    seed
        Seed of the subsample, so a report is reproducible.
    lab_panel, starts_at
        The run's lab panel and pre-gated start for this row
        (:func:`cytopipe.outputs.site_options`); None when it used neither.

    Raises
    ------
    cytopipe.exceptions.CytopipeError
        The file cannot be read or gated.
    """
    from ..gating.gated import gate_file

    # deterministic: placing again draws exactly the gates the run used
    gated = gate_file(path, strategy, adjustments=adjustments, lab_panel=lab_panel, starts_at=starts_at)
    views = _views(gated.sample, gated.gating_strategy, strategy, gated.all_rows(), max_events, seed)
    return views, gated.sample


def _draws(sample, gs, strategy, rows, max_events: int, seed: int):
    """Per gate, parents first: ``(path, gate, plotted parent rows, parent count, member rows)``.

    The plotted rows are the fixed-seed subsample of the parent's events, drawn gate after gate
    from one generator, so every caller draws the same ones.
    """
    rng = np.random.default_rng(seed)
    for gate_path in strategy.gate_paths():
        name, parent = gate_path[-1], gate_path[:-1]
        gate = gs.get_gate(name, parent, sample_id=sample.id)
        parent_rows, member_rows = rows[parent], rows[gate_path]
        if parent_rows is None:  # every event (the cascade's root), not spelled out: 8 bytes an event less
            n = int(sample.event_count)
            idx = np.sort(rng.choice(n, size=max_events, replace=False)) if n > max_events else np.arange(n)
            parent_count = n
        else:
            idx = parent_rows
            if idx.size > max_events:  # the same draw as from an arange: choice(array) is array[choice(size)]
                idx = np.sort(rng.choice(idx, size=max_events, replace=False))
            parent_count = int(parent_rows.size)
        yield gate_path, gate, idx, parent_count, member_rows


def _transforms(gs, gate) -> list[Any]:
    return [gs.get_transform(d.transformation_ref) if d.transformation_ref else None for d in gate.dimensions]


def _views(sample, gs, strategy, rows, max_events: int, seed: int, inside: bool = True) -> list[GateView]:
    from ..gating.api import gate_values

    views = []
    for gate_path, gate, idx, parent_count, member_rows in _draws(sample, gs, strategy, rows, max_events, seed):
        views.append(GateView(
            path=gate_path, gate=gate, custom=gs.is_custom_gate(sample.id, gate_path[-1], gate_path[:-1]),
            values=gate_values(sample, gs, gate, rows=idx),
            inside=np.isin(idx, member_rows, assume_unique=True) if inside else np.zeros(0, dtype=bool),
            count=int(member_rows.size), parent_count=parent_count, transforms=_transforms(gs, gate),
        ))
    return views


def gate_plots(sample, gs, strategy, *, rows, max_events: int = 20_000, seed: int = 0) -> list[GatePlot]:
    """Every gate's :class:`GatePlot` from a sample whose gates' events are in memory.

    Parameters
    ----------
    sample : flowkit.Sample or LeanSample
        The sample as gated.
    gs : flowkit.GatingStrategy
        The gating strategy it was gated with (placed and custom gates included).
    strategy : cytopipe.strategy.registry.Strategy
        The run's strategy (its gate paths).
    rows : dict
        Each gate's event indices, :func:`cytopipe.gating.api.gate_rows` of
        ``sample`` and ``gs`` (``("root",)`` may be None: every event).
    max_events, seed
        As :func:`gate_views`: the same subsample, so the same plots.

    Returns
    -------
    list of GatePlot
        Parents first. Each histogram is the one :func:`plot_of` makes of a
        :func:`gate_views` re-read, bin for bin, but found without
        transforming every plotted event (:func:`_binned`: ~0.25x the time).
    """
    from ..gating.api import gate_values
    from ..gating.engine import Context, Unsupported

    raw = sample.get_events(source="raw")
    comps: dict = {}  # the compensation matrices' inverses, shared by the gates
    plots = []
    for gate_path, gate, idx, parent_count, member_rows in _draws(sample, gs, strategy, rows, max_events, seed):
        transforms = _transforms(gs, gate)
        custom = gs.is_custom_gate(sample.id, gate_path[-1], gate_path[:-1])
        hist = None
        if idx.size > POINTS_MAX:  # (a smaller population is kept event by event: its exact values)
            dims = plot_dims(gate, transforms)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # the plotted rows gathered once, whole: a big file's columns one by one cost a cache miss
                    # an event each
                    ctx = Context(sample, gs, np.take(raw, idx, axis=0), comps=comps)
                    hist = _binned(ctx, gate.dimensions[:len(dims)], transforms[:len(dims)], dims)
            except Unsupported:  # a dimension or transform binned from its exact values, below
                hist = None
        if hist is None:
            # the plots draw the parent's events and the gate, not which events it keeps: no inside
            plots.append(plot_of(GateView(gate_path, gate, custom, gate_values(sample, gs, gate, rows=idx),
                                          np.zeros(0, dtype=bool), int(member_rows.size), parent_count,
                                          transforms)))
            continue
        vertices = getattr(gate, "vertices", None)
        plots.append(GatePlot(
            path=tuple(gate_path), custom=bool(custom), count=int(member_rows.size), parent_count=parent_count,
            dims=dims, vertices=None if vertices is None else np.asarray(vertices, dtype=float), hist=hist))
    return plots


#: Transformed units around a bin edge where an event's bin is decided from its exact value (as the
#: gating engine decides a rectangle's bounds); elsewhere the linear value decides.
_BAND = 1e-6


def _monotone(xform) -> bool:
    """A transform finite and increasing everywhere, whose inverse gives its bins' edges in linear units."""
    from flowkit import transforms as fk_transforms

    return isinstance(xform, (fk_transforms.LogicleTransform, fk_transforms.AsinhTransform,
                              fk_transforms.HyperlogTransform, fk_transforms.LinearTransform))


def _surely(gate_dim, xform, dim: PlotDim, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each linear value's bin on a plot axis where it is sure, and which values are not (near an inner edge).

    On a linear axis the bins are uniform, so a value's bin is arithmetic; a fast-compensated
    value within rounding (a relative 1e-9, as the gating engine allows) of an edge is not sure.
    On a transformed one each inner edge is taken back to linear units, widened by :data:`_BAND`
    transformed units either side, and a value's place among those bands is looked up.
    """
    from ..gating.engine import Unsupported

    lo, hi = dim.range
    edges = np.linspace(lo, hi, PLOT_BINS + 1)
    if xform is None:
        exact = gate_dim.compensation_ref in (None, "uncompensated")  # else within rounding of the exact value
        tol = np.zeros(edges.size) if exact else 1e-9 * np.maximum(1.0, np.abs(edges))
        b = np.clip(np.floor((v - lo) * (PLOT_BINS / (hi - lo))), 0, PLOT_BINS - 1).astype(np.intp)
        # sure: beyond the bin's lower edge and short of its upper one by more than the rounding
        # (the outer edges do not count: values beyond them are clipped into the outer bins)
        sure = ((b == 0) | (v - edges[b] > tol[b])) & ((b == PLOT_BINS - 1) | (edges[b + 1] - v > tol[b + 1]))
        return b, ~sure
    if not _monotone(xform):
        raise Unsupported(f"transform {type(xform).__name__}")
    inner = edges[1:-1]
    bands = np.column_stack([np.asarray(xform.inverse((inner - _BAND)[:, None]), dtype=float).ravel(),
                             np.asarray(xform.inverse((inner + _BAND)[:, None]), dtype=float).ravel()]).ravel()
    if not (np.all(np.isfinite(bands)) and np.all(np.diff(bands) > 0)):
        raise Unsupported("transform not increasing over the plot's axis")
    k = np.searchsorted(bands, v, side="right")  # past band j, short of band j + 1: k = 2j, bin j; in a band: odd
    return k // 2, k % 2 == 1


def _exact_bins(values: np.ndarray, dim: PlotDim) -> np.ndarray:
    """The bins np.histogram(2d) puts values in, clipped to the axis (its right edge in the last bin)."""
    edges = np.linspace(*dim.range, PLOT_BINS + 1)
    b = np.searchsorted(edges, np.clip(values, *dim.range), side="right") - 1
    b[b == PLOT_BINS] = PLOT_BINS - 1
    return b


def _binned(ctx, gate_dims, transforms, dims: list[PlotDim]) -> np.ndarray:
    """The plot's histogram of ``ctx``'s events: np.histogram(2d) of their exact values, clipped to the axes.

    The exact values (compensated by a solve, transformed by FlowKit) are what
    the gates see, but a logicle is ~70 ns an event and a solve half that. An
    event's bin is decided here from its fast-compensated linear value
    against each inner bin edge taken back to linear units, widened by
    :data:`_BAND`; only the events within those bands (about one in 10,000)
    get their exact values and bins. The same counts, bin for bin
    (``tests/review/test_plotdata.py`` compares them with a re-read's).
    """
    bins, near = [], []
    for g, x, d, v in zip(gate_dims, transforms, dims, ctx.values_many(list(gate_dims), None)):
        b, unsure = _surely(g, x, d, v)
        bins.append(b)
        near.append(unsure)
    undecided = np.flatnonzero(np.logical_or.reduce(near))
    if undecided.size:
        for b, x, d, v in zip(bins, transforms, dims, ctx.values_many(list(gate_dims), undecided, exact=True)):
            t = v if x is None else np.asarray(x.apply(v.reshape(-1, 1)), dtype=float).ravel()
            b[undecided] = _exact_bins(t, d)
    if len(dims) == 1:
        return np.bincount(bins[0], minlength=PLOT_BINS).astype(np.uint32)
    flat = bins[0] * PLOT_BINS + bins[1]
    return np.bincount(flat, minlength=PLOT_BINS * PLOT_BINS).reshape(PLOT_BINS, PLOT_BINS).astype(np.uint32)


def plot_dims(gate, transforms: Sequence[Any]) -> list[PlotDim]:
    """The axes of a gate's plot (its first two dimensions), with its bounds and ``transforms``' ticks."""
    dims = []
    for dim, transform in zip(gate.dimensions, transforms):
        ticks = None
        if transform is not None:
            ticks = tuple(float(t) for t in transform.apply(np.array(TICKS, dtype=float)[:, None]).ravel())
        dims.append(PlotDim(dim.id, None if dim.min is None else float(dim.min),
                            None if dim.max is None else float(dim.max), ticks))
    return dims[:2]


def plot_of(view: GateView) -> GatePlot:
    """The compact plot data of a :class:`GateView`: its histogram on the plot axes, its few events."""
    dims = plot_dims(view.gate, view.transforms)
    values = view.values[:, :len(dims)]
    clipped = [np.clip(values[:, j], *d.range) for j, d in enumerate(dims)]
    if len(dims) == 1:
        hist = np.histogram(clipped[0], bins=PLOT_BINS, range=dims[0].range)[0]
    else:
        hist = np.histogram2d(clipped[0], clipped[1], bins=PLOT_BINS, range=(dims[0].range, dims[1].range))[0]
    vertices = getattr(view.gate, "vertices", None)
    return GatePlot(
        path=tuple(view.path), custom=bool(view.custom), count=int(view.count), parent_count=int(view.parent_count),
        dims=dims, vertices=None if vertices is None else np.asarray(vertices, dtype=float),
        hist=hist.astype(np.uint32),
        points=values.astype(np.float32) if values.shape[0] <= POINTS_MAX else None,
    )
