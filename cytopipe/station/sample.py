"""One sample opened in the station: its events kept in memory, its gates as drawn, recounts of moved gates.

Opening a sample reads its file once and gates it exactly as
:func:`cytopipe.batch.task.process_sample` does, with the same
:func:`cytopipe.gating.gate_file` (the reviewer adjustments already recorded
as FlowKit custom sample gates, another instrument's file conformed, the
run's lab panel and pre-gated start, then the strategy's data-driven gates
placed from the data), keeping every gate's event rows.
A moved gate is a candidate adjustment: it is turned into the very gate spec
``cytopipe review --adjust-gate`` would record
(:func:`cytopipe.review.decisions.build_gate_spec`, from compensated linear
values), and only that gate and the gates below it are evaluated again, by
the cascade engine of a re-run, on the events its parent kept. Gates placed
from the data below a moved gate are placed again, as a re-run would place
them on the new parent population (:meth:`cytopipe.gating.GatedSample.regate`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

from ..exceptions import ReviewError
from ..gating.gated import GatedSample
from .render import BINS, THUMB_BINS, axis_spec, contour_png, density_png, histogram

__all__ = ["PLOT_KINDS", "OpenSample", "display_to_linear"]

#: What a plot may show of a population: its density (PNG), probability contours (PNG), a histogram of one axis.
PLOT_KINDS = ("density", "contour", "hist")

_MAX_PLOT_EVENTS = 50_000  # parent events drawn per density image (a fixed-seed subsample beyond)
_KEPT_CANDIDATES = 4


def _round4(value: float) -> float:
    """4 significant digits: finer than a pixel on any axis, and readable in the audit trail."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.4g}")


def display_to_linear(transform, value: float) -> float:
    """A value in a gate dimension's units (logicle units when transformed) in compensated linear units."""
    if transform is None:
        return float(value)
    return float(np.asarray(transform.inverse(np.array([[float(value)]]))).ravel()[0])


def parse_gate_path(text: str) -> tuple[str, ...]:
    """A gate path as the browser sends it (``root/.../Treg``, ``/`` separated) as a tuple from ``root``.

    Examples
    --------
    >>> parse_gate_path("Lymphocytes/Treg")
    ('root', 'Lymphocytes', 'Treg')
    """
    parts = tuple(p for p in str(text).strip("/").split("/") if p)
    return parts if parts and parts[0] == "root" else ("root", *parts)


class OpenSample:
    """A sample's events, gates and per-gate event rows, for drawing and recounting.

    The file is gated as the run gated it (:func:`cytopipe.gating.gate_file`:
    another instrument's file conformed to the strategy, the row's lab panel
    and pre-gated start honoured) and kept as a :class:`~cytopipe.gating.GatedSample`.

    Parameters
    ----------
    path
        The FCS file.
    strategy : cytopipe.strategy.registry.Strategy
        The run's strategy.
    adjustments
        The sample's recorded gate adjustments
        (:func:`cytopipe.review.decisions.gate_adjustments`).
    lab_panel, starts_at
        The run's lab panel and pre-gated start for this sample
        (:meth:`cytopipe.outputs.RunRecord.site_options`); None when it used neither.

    Raises
    ------
    cytopipe.exceptions.CytopipeError
        The file cannot be read or gated.
    """

    def __init__(self, path: str, strategy, adjustments: dict[str, dict[str, Any]], *,
                 lab_panel: dict[str, str] | None = None, starts_at: str | None = None):
        from ..gating.gated import gate_file

        self.path, self.strategy = str(path), strategy
        self.adjustments = dict(adjustments)
        self.paths: list[tuple[str, ...]] = strategy.gate_paths()
        self.markers = {m.detector: m.marker for m in strategy.markers}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.gated = gate_file(self.path, strategy, adjustments=self.adjustments, lab_panel=lab_panel,
                                   starts_at=starts_at)
            self.gated.all_rows()  # every gate's events held (found again if the cascade could not)
        self.sample_id = self.gated.sample_id
        self._candidates: OrderedDict[str, GatedSample] = OrderedDict()
        self._ids = itertools.count(1)
        self._dims: dict[str, Any] | None = None  # each channel's dimension as plotted, found once
        self._axes: list[dict[str, Any]] | None = None
        self._time_values: np.ndarray | None = None

    @property
    def sample(self):
        """The sample as gated (in the strategy's terms)."""
        return self.gated.sample

    @property
    def gs(self):
        """The FlowKit gates applied to the opened sample."""
        return self.gated.gating_strategy

    # -- what is drawn ----------------------------------------------------------------------------

    def gate(self, path: tuple[str, ...], gs=None):
        """The FlowKit gate applied to this sample at ``path`` (custom or template)."""
        gs = gs if gs is not None else self.gs
        return gs.get_gate(path[-1], gate_path=path[:-1], sample_id=self.sample_id)

    def _transform(self, gs, dim):
        return gs.get_transform(dim.transformation_ref) if dim.transformation_ref else None

    def axes(self, path: tuple[str, ...]) -> list[dict[str, Any]]:
        """The plot axes of a gate: one per dimension (:func:`~cytopipe.station.render.axis_spec`)."""
        gate = self.gate(path)
        return [dict(axis_spec(d.id, self._transform(self.gs, d), self.markers), detector=d.id)
                for d in gate.dimensions]

    def geometry(self, path: tuple[str, ...], gs=None) -> dict[str, Any]:
        """A gate's shape in its own units: ``{"type": "rect", "bounds": [[min, max], ...]}``
        (None for an open side) or ``{"type": "polygon", "vertices": [[x, y], ...]}``."""
        gate = self.gate(path, gs)
        if hasattr(gate, "vertices"):
            return {"type": "polygon", "vertices": [[float(x), float(y)] for x, y in gate.vertices]}
        return {"type": "rect", "bounds": [[None if d.min is None else float(d.min),
                                            None if d.max is None else float(d.max)] for d in gate.dimensions]}

    def is_adjusted(self, path: tuple[str, ...]) -> bool:
        """True when a reviewer's recorded adjustment replaces this gate."""
        return "/".join(path) in self.adjustments

    def counts(self, gated: GatedSample | None = None) -> list[dict[str, Any]]:
        """Count and parent count of every gate (the opened state, or a candidate's), in gate-tree order."""
        counts = (gated or self.gated).counts()
        return [{"path": "/".join(p), "count": int(counts[p].count), "parent_count": int(counts[p].parent_count)}
                for p in self.paths]

    # -- any channel on any axis ------------------------------------------------------------------

    def _channel_dims(self) -> dict[str, Any]:
        """Each channel's FlowKit dimension as plotted: the gates' own compensation and transform.

        A channel some gate uses is plotted as that gate sees it; another
        fluorescence channel as the gates see fluorescence (the spillover they
        compensate with, their transform), so its decades line up with theirs;
        scatter and Time linear and uncompensated.
        """
        if self._dims is None:
            from flowkit import Dimension

            gated: dict[str, Any] = {}
            fluoro: tuple[str | None, str | None] = ("uncompensated", None)
            for p in self.paths:
                for d in self.gate(p).dimensions:
                    gated.setdefault(d.id, d)
                    if d.transformation_ref and fluoro[1] is None:
                        fluoro = (d.compensation_ref, d.transformation_ref)
            s = self.sample
            fl = {s.pnn_labels[k] for k in getattr(s, "fluoro_indices", [])}
            dims: dict[str, Any] = {}
            for name in s.pnn_labels:
                if name in gated:
                    dims[name] = gated[name]
                elif name in fl:
                    dims[name] = Dimension(name, compensation_ref=fluoro[0], transformation_ref=fluoro[1])
                else:
                    dims[name] = Dimension(name, compensation_ref="uncompensated")
            self._dims = dims
        return self._dims

    def _time_name(self) -> str | None:
        k = getattr(self.sample, "time_index", None)
        return None if k is None else str(self.sample.pnn_labels[k])

    def _time(self) -> np.ndarray:
        """The Time channel in float64 (a lean read keeps it exactly beside its float32 events)."""
        if self._time_values is None:
            s = self.sample
            exact = s.time_values() if hasattr(s, "time_values") else None
            self._time_values = (np.asarray(exact, dtype=float) if exact is not None
                                 else np.asarray(s.get_events(source="raw")[:, s.time_index], dtype=float))
        return self._time_values

    def channel_axes(self) -> list[dict[str, Any]]:
        """Every channel of the sample as a plot axis, in the file's order (scatter, markers, Time).

        Each is :func:`~cytopipe.station.render.axis_spec` with ``detector``;
        Time spans the sample's first to last event.
        """
        if self._axes is None:
            out = []
            time_name = self._time_name()
            for name, dim in self._channel_dims().items():
                span = None
                if name == time_name:
                    t = self._time()
                    span = (float(t.min()), float(t.max())) if t.size else (0.0, 1.0)
                out.append(dict(axis_spec(name, self._transform(self.gs, dim), self.markers, span=span),
                                detector=name))
            self._axes = out
        return self._axes

    def plot_axes(self, path: tuple[str, ...], channels: list[str] | None = None) -> list[dict[str, Any]]:
        """The axes of a plot of gate ``path``'s population: the gate's own, or ``channels`` (1 or 2 ``$PnN``).

        Raises
        ------
        ReviewError
            A channel the sample does not have (the message lists those it has).
        """
        if not channels:
            return self.axes(path)
        by_name = {a["detector"]: a for a in self.channel_axes()}
        for c in channels:
            if c not in by_name:
                msg = (f"{c!r} is not a channel of {self.path}: plot one of {list(by_name)} "
                       f"(the $PnN names, as the sample's plot lists them).")
                raise ReviewError(msg)
        return [by_name[c] for c in channels]

    def channel_values(self, channels: list[str], rows: np.ndarray) -> np.ndarray:
        """``(len(rows), len(channels))`` values of ``rows`` as plotted (compensated, transformed; Time as is)."""
        from types import SimpleNamespace

        from ..gating import gate_values

        dims, time_name = self._channel_dims(), self._time_name()
        out = np.empty((rows.size, len(channels)))
        others = [c for c in channels if c != time_name]
        if others and rows.size:
            # a stand-in gate of these dimensions: the gating engine's own compensation and transforms
            got = gate_values(self.sample, self.gs, SimpleNamespace(dimensions=[dims[c] for c in others]), rows=rows)
            for j, c in enumerate(others):
                out[:, channels.index(c)] = got[:, j]
        if time_name in channels:
            out[:, channels.index(time_name)] = self._time()[rows]
        return out

    def _gated(self, cand: str | None) -> GatedSample:
        if not cand:
            return self.gated
        if cand not in self._candidates:
            msg = f"The moved gate {cand!r} has expired (the last {_KEPT_CANDIDATES} are kept); drag it again."
            raise ReviewError(msg)
        return self._candidates[cand]

    def population(self, path: tuple[str, ...], cand: str | None = None, *, axes: list[dict[str, Any]] | None = None,
                   kind: str | None = None, events: str = "parent", window: list[list[float]] | None = None,
                   tint: tuple[int, int, int] | None = None) -> tuple[str, Any]:
        """A gate's parent population (or its own events) on a plot: ``("png", bytes)`` or ``("hist", dict)``.

        Parameters
        ----------
        path
            The gate.
        cand
            Draw the population as a candidate (moved gates) leaves it.
        axes
            The plot's axes (:meth:`plot_axes`; another sample's, to overlay
            this one on its plot); default the gate's own.
        kind
            ``"density"``, ``"contour"`` (2-D, PNG) or ``"hist"`` (the first
            axis; JSON). Default: a histogram for one axis, else density.
        events
            ``"parent"``: the events the gate is applied to; ``"gate"``: the
            events it keeps (the same fixed subsample's), to highlight them.
        window
            A zoomed part of the plot (``[lo, hi]`` per axis drawn).
        tint
            One colour for the picture (an overlay, a highlight).

        Returns
        -------
        kind, data
            ``("png", bytes)``; or ``("hist", {"hist": counts, "range": [lo, hi], "events": n})``.
        """
        gated = self._gated(cand)
        axes = axes or self.axes(path)
        kind = kind or ("hist" if len(axes) == 1 else "density")
        if kind not in PLOT_KINDS or events not in ("parent", "gate"):
            msg = (f"A plot of {'/'.join(path)} shows kind one of {list(PLOT_KINDS)} of events 'parent' or 'gate'; "
                   f"got kind={kind!r}, events={events!r}.")
            raise ReviewError(msg)
        if kind == "hist":
            axes = axes[:1]
        elif len(axes) < 2:
            msg = f"A {kind} plot needs two axes; {'/'.join(path)} was given {len(axes)}: add y, or ask kind=hist."
            raise ReviewError(msg)
        if window is not None and (len(window) < len(axes) or any(len(w) != 2 or not w[0] < w[1]
                                                                  for w in window[:len(axes)])):
            msg = f"A plot's window is [lo, hi] (lo < hi) for each of its {len(axes)} axes; got {window!r}."
            raise ReviewError(msg)
        idx = gated.rows(path[:-1])
        if idx.size > _MAX_PLOT_EVENTS:  # fixed seed: the same picture each time the sample opens
            rng = np.random.default_rng(0)
            idx = np.sort(rng.choice(idx, size=_MAX_PLOT_EVENTS, replace=False))
        if events == "gate":  # the gate's events among those drawn: a highlight sits on the parent's picture
            idx = idx[np.isin(idx, gated.rows(path), assume_unique=True)]
        channels = [a["detector"] for a in axes]
        ranges = [a["range"] for a in axes]
        own = channels == [a["detector"] for a in self.axes(path)][:len(channels)]
        if not idx.size:
            values = np.empty((0, len(ranges)))
        elif own:  # the gate's own dimensions: exactly what it was applied to
            values = gated.values(path, idx)[:, :len(channels)]
        else:
            values = self.channel_values(channels, idx)
        hist = histogram(values, ranges, BINS, window=window[:len(ranges)] if window else None)
        if kind == "hist":
            win = window[0] if window else ranges[0]
            return "hist", {"hist": [int(v) for v in hist], "range": [float(win[0]), float(win[1])],
                            "events": int(idx.size)}
        return "png", (contour_png(hist, tint=tint) if kind == "contour" else density_png(hist, tint=tint))

    def histograms(self) -> dict[str, np.ndarray]:
        """Every gate's parent-population histogram on its plot axes (for the batch view)."""
        out = {}
        for p in self.paths:
            idx = self.gated.rows(p[:-1])
            if idx.size > 20_000:
                idx = np.sort(np.random.default_rng(0).choice(idx, size=20_000, replace=False))
            ranges = [a["range"] for a in self.axes(p)]
            values = self.gated.values(p, idx) if idx.size else np.empty((0, len(ranges)))
            out["/".join(p)] = histogram(values, ranges, THUMB_BINS)
        return out

    # -- candidates -------------------------------------------------------------------------------

    def candidate_spec(self, path_text: str, geometry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The adjustment spec of a moved gate, and its linear values for ``cytopipe review``.

        Parameters
        ----------
        path_text
            ``root/.../Gate``.
        geometry
            ``{"bounds": [[min, max], ...]}`` (rectangles, gate units, None for
            an open side) or ``{"vertices": [[x, y], ...]}`` (polygons).

        Returns
        -------
        spec, linear
            The spec :func:`~cytopipe.review.decisions.build_gate_spec` makes
            (what ``review.jsonl`` will hold) and ``{"bounds": {detector: [lo,
            hi]}}`` or ``{"vertices": [[x, y], ...]}`` in compensated linear
            units. Values the reviewer did not move keep the gate's own value;
            moved ones are rounded to 4 significant digits.

        Raises
        ------
        ReviewError
            Unknown gate, wrong shape, or a geometry FlowKit refuses.
        """
        from ..review.decisions import build_gate_spec

        path = parse_gate_path(path_text)
        if path not in self.paths:
            msg = f"{path_text!r} is not a gate of {self.strategy.ref}; gates: {['/'.join(p) for p in self.paths]}"
            raise ReviewError(msg)
        gate = self.gate(path)
        dims = list(gate.dimensions)
        xforms = [self._transform(self.gs, d) for d in dims]

        def linear(new, old, xform):
            if new is None:
                return None
            new = float(new)
            if not math.isfinite(new):
                msg = f"{path_text}: gate values must be finite numbers, got {new!r}."
                raise ReviewError(msg)
            if old is not None and abs(new - float(old)) <= 1e-9:
                return display_to_linear(xform, float(old))  # not moved: the gate's own value
            return _round4(display_to_linear(xform, new))

        if hasattr(gate, "vertices"):
            verts = geometry.get("vertices")
            if not isinstance(verts, list) or len(verts) < 3 or any(len(v) != len(dims) for v in verts):
                msg = f"{path_text} is a polygon gate: send at least 3 vertices of {len(dims)} values."
                raise ReviewError(msg)
            same = len(gate.vertices) == len(verts)
            old = [list(v) for v in gate.vertices] if same else [[None] * len(dims)] * len(verts)
            lin = [[linear(v[j], o[j], xforms[j]) for j in range(len(dims))] for v, o in zip(verts, old)]
            if any(x is None for v in lin for x in v):
                msg = f"{path_text}: a polygon vertex needs both coordinates."
                raise ReviewError(msg)
            spec = build_gate_spec(self.strategy, "/".join(path), vertices=[tuple(v) for v in lin])
            return spec, {"vertices": lin}
        bounds = geometry.get("bounds")
        if not isinstance(bounds, list) or len(bounds) != len(dims) or any(len(b) != 2 for b in bounds):
            msg = f"{path_text} is a rectangle gate: send [min, max] for each of its {len(dims)} dimensions."
            raise ReviewError(msg)
        lin_bounds: dict[str, tuple[float | None, float | None]] = {}
        for d, xform, (lo, hi) in zip(dims, xforms, bounds):
            lo_l, hi_l = linear(lo, d.min, xform), linear(hi, d.max, xform)
            if lo_l is not None and hi_l is not None and lo_l >= hi_l:
                msg = f"{path_text}: on {d.id} the lower bound ({lo_l:g}) must stay below the upper ({hi_l:g})."
                raise ReviewError(msg)
            lin_bounds[d.id] = (lo_l, hi_l)
        spec = build_gate_spec(self.strategy, "/".join(path), bounds=lin_bounds)
        return spec, {"bounds": {k: list(v) for k, v in lin_bounds.items()}}

    def recount(self, specs: dict[str, dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
        """Counts of every gate with candidate adjustments ``specs`` (gate path to spec) in place.

        :meth:`cytopipe.gating.GatedSample.regate`: gates outside the moved
        gates' subtrees keep the rows of the opened state; the subtrees are
        gated again from their parents' rows by the cascade (what
        :func:`~cytopipe.gating.api.gate_sample` runs in a re-run), and gates
        placed from the data below a moved gate are placed again.

        Returns
        -------
        cand, counts
            A handle on the candidate's rows (for :meth:`population`; None
            when FlowKit's own engine had to count) and :meth:`counts`.
        """
        regated = self.gated.regate(specs)
        if not regated.has_rows:  # a gate type the cascade leaves to FlowKit: FlowKit counted, as in a re-run
            return None, self.counts(regated)
        cand = f"c{next(self._ids)}"
        self._candidates[cand] = regated
        while len(self._candidates) > _KEPT_CANDIDATES:
            self._candidates.popitem(last=False)
        return cand, self.counts(regated)

    def candidate_geometry(self, cand: str, path: tuple[str, ...]) -> dict[str, Any]:
        """A gate's shape in a candidate (the spec as recorded, rounding included)."""
        return self.geometry(path, self._candidates[cand].gating_strategy)
