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
from .render import BINS, THUMB_BINS, axis_spec, density_png, histogram

__all__ = ["OpenSample", "display_to_linear"]

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

    def population(self, path: tuple[str, ...], cand: str | None = None) -> tuple[str, bytes | list[int]]:
        """The parent population of a gate on its plot: ``("png", bytes)`` (2-D) or ``("hist", counts)`` (1-D).

        ``cand`` draws the parent as a candidate (a moved gate above) leaves it.
        """
        gated = self.gated
        if cand:
            if cand not in self._candidates:
                msg = f"The moved gate {cand!r} has expired (the last {_KEPT_CANDIDATES} are kept); drag it again."
                raise ReviewError(msg)
            gated = self._candidates[cand]
        idx = gated.rows(path[:-1])
        if idx.size > _MAX_PLOT_EVENTS:  # fixed seed: the same picture each time the sample opens
            rng = np.random.default_rng(0)
            idx = np.sort(rng.choice(idx, size=_MAX_PLOT_EVENTS, replace=False))
        ranges = [a["range"] for a in self.axes(path)]
        values = gated.values(path, idx) if idx.size else np.empty((0, len(ranges)))
        hist = histogram(values, ranges, BINS)
        if len(ranges) == 1:
            return "hist", [int(v) for v in hist]
        return "png", density_png(hist)

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
