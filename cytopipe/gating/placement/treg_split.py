"""``treg_split`` (CD127lo, Treg's child, ``treg_adaptive@1.1.0`` on): drawn from the Treg gate's mixture.

The polygon on CD127 x FOXP3 at the level of the Treg cluster's marginal
posterior (the fit :mod:`.treg_cluster` left) at which the events inside
both Treg and CD127lo number the mixture's expected Treg count. No fit of
its own: it takes the events its parent keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import PlacementParams, Review, as_float, as_int, param
from ._maths import PosteriorContours, gate_points, marginal_posterior, polygon_gate, posterior_polygon, scaled_to

__all__ = ["TregSplitParams", "place"]


@dataclass(frozen=True, kw_only=True)
class TregSplitParams(PlacementParams):
    """The keys of a ``treg_split`` entry (besides :class:`~._base.PlacementParams`'; ``fit_events``,
    ``min_events`` and ``anchor_events`` are not used: the Treg fit's events are).

    Attributes
    ----------
    max_ambiguous_pct
        More than this % of CD4 cells as likely Treg as not: review.
    contour_grid, simplify
        The polygon's contour grid and its simplification tolerance.
    max_vertices
        At most this many vertices (1.5.0 on: 12, handles a reviewer can drag); absent: as ``simplify`` leaves.
    """

    max_ambiguous_pct: float = param(kind=as_float, lo=0, hi=100)
    contour_grid: int = param(64, as_int, lo=3)
    simplify: float = param(0.01, as_float, lo=0)
    max_vertices: int | None = param(None, as_int, lo=3)


def place(p: TregSplitParams, ctx, gs, template, parent, path, state: dict[str, Any]):
    """Place CD127lo inside Treg (CD127 x FOXP3), where the events of both gates number the expected count."""
    fit = state.get("treg_cluster")
    if fit is None:
        raise Review("no_treg_cluster", f"{path[-1]} is drawn from the Treg cluster's fit, and there is none")
    gm, group, pts, keep = fit.gm, fit.group, fit.pts, fit.keep
    ids = [d.id for d in fit.dims]
    dims2 = [ids.index(d.id) for d in template.dimensions]  # e.g. [CD127, FOXP3]
    f_axis = dims2.index(fit.k_axis)
    inside = keep & np.isin(fit.rows, parent if parent is not None else fit.rows)
    q = np.zeros(len(pts))
    q[inside] = marginal_posterior(gm, group, pts[inside][:, dims2], dims2)
    target = int(round(fit.expected))
    ranked = np.sort(q[inside])[::-1]
    level = float(np.clip(ranked[min(target, ranked.size - 1)] if ranked.size else 0.5, 0.05, 0.95))
    from matplotlib.path import Path as _Path

    if p.max_vertices is None:
        vertices = posterior_polygon(gm, group, pts[:, dims2], dims2, fit.floor, f_axis, level,
                                     contour_grid=p.contour_grid, eps=p.simplify)
    else:  # few vertices: the drawn polygon scaled until the events inside both gates number the count
        contours = PosteriorContours(gm, group, pts[:, dims2], dims2, fit.floor, f_axis, contour_grid=p.contour_grid)
        vertices = contours.polygon(level, eps=p.simplify, max_vertices=p.max_vertices)
        if vertices is not None:
            # counted where FlowKit counts: in the gate's units, where the polygon's edges are straight
            gdims, gaxes = [fit.dims[j] for j in dims2], [fit.axes[j] for j in dims2]
            xy = gate_points(gs, gdims, gaxes, pts[inside][:, dims2])
            vertices = scaled_to(vertices, contours.centre, lambda poly: float(
                _Path(gate_points(gs, gdims, gaxes, poly)).contains_points(xy).sum()), float(target))
    info: dict[str, Any] = {"n_fit": int(inside.sum()), "posterior_level": round(level, 4),
                            "expected_pct": round(100 * fit.expected / len(pts), 3)}
    if vertices is None:
        raise Review("no_treg_cluster", f"no closed region where the Treg cluster is likely on {ids}", None, info)
    gate = polygon_gate(path[-1], [fit.dims[j] for j in dims2], [fit.axes[j] for j in dims2], gs, vertices)
    final = inside & _Path(np.asarray(vertices)).contains_points(pts[:, dims2])
    post = fit.post
    ambiguous = 100.0 * ((1 - post[final]).sum() + post[~final].sum()) / len(pts)
    info["ambiguous_pct"] = round(float(ambiguous), 3)
    if ambiguous > float(p.max_ambiguous_pct):
        raise Review("ambiguous", f"{ambiguous:.2f} % of CD4 cells are as likely Treg as not", gate, info)
    return gate, info
