"""``scatter_cloud`` (Lymphocytes): the rectangle around the lymphocytes' cloud on FSC-A x SSC-A.

A 2-D Gaussian mixture (scikit-learn) on FSC-A x SSC-A of the events bright
on the ``anchor`` marker (CD3: T cells are lymphocytes; bright = above the
density minimum of the anchor's 1-D density, as ``density_valley`` finds it),
the lymphocyte cloud being its heaviest component; the gate is the rectangle
around that component's ellipse at Mahalanobis radius ``radius``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._base import PlacementParams, Review, _Bad, as_float, as_int, fit_rows, param, subset
from ._maths import Axis, threshold

__all__ = ["Anchor", "ScatterCloudParams", "place"]


@dataclass(frozen=True)
class Anchor:
    """The marker whose bright events are the cloud's: a detector, its compensation and its transform."""

    dimension: str
    compensation_ref: str = "FCS"
    transformation_ref: str | None = None


def _as_anchor(v) -> Anchor:
    ok = (isinstance(v, dict) and not set(v) - {"dimension", "compensation_ref", "transformation_ref"}
          and isinstance(v.get("dimension"), str) and isinstance(v.get("compensation_ref", ""), str)
          and isinstance(v.get("transformation_ref", ""), str | None))
    if not ok:
        raise _Bad('an object {"dimension": detector, "compensation_ref": ..., "transformation_ref": ...} '
                   "with no other keys")
    return Anchor(**v)


@dataclass(frozen=True, kw_only=True)
class ScatterCloudParams(PlacementParams):
    """The keys of a ``scatter_cloud`` entry (besides :class:`~._base.PlacementParams`').

    ``anchor_events`` of the parent find the anchor's threshold; ``fit_events``
    of the bright ones are fitted.

    Attributes
    ----------
    anchor
        ``{"dimension": PnN, "compensation_ref": ..., "transformation_ref": ...}``.
    components
        Components of the mixture.
    radius
        Mahalanobis radius of the ellipse the rectangle surrounds.
    tol
        EM's convergence threshold (scikit-learn's default unless the manifest
        says; 1.2.0 on: 0.01, what that moves is in its CHANGELOG).
    grid, min_mode_share, max_dip, edge_margin
        The anchor's density and its threshold (as for ``density_valley``).
    """

    anchor: Anchor = param(kind=_as_anchor)
    components: int = param(3, as_int, lo=1)
    radius: float = param(3.5, as_float, lo=0, lo_open=True)
    tol: float = param(1e-3, as_float, lo=0, lo_open=True)
    grid: int = param(256, as_int, lo=3)
    min_mode_share: float = param(0.02, as_float, lo=0, hi=1)
    max_dip: float = param(0.7, as_float, lo=0, hi=1)
    edge_margin: float = param(0.02, as_float, lo=0, hi=0.5, hi_open=True)


def place(p: ScatterCloudParams, ctx, gs, template, parent, path, state):
    """A rectangle on the template's two scatter dimensions."""
    import flowkit as fk
    from sklearn.mixture import GaussianMixture

    # the anchor is found on more events (anchor_events) than the mixture is fitted on
    rows = fit_rows(p, ctx, parent, path)
    anchor = fk.Dimension(p.anchor.dimension, compensation_ref=p.anchor.compensation_ref,
                          transformation_ref=p.anchor.transformation_ref)
    axis = Axis(ctx.values(anchor, rows))
    t, _, _ = threshold(axis.u, p, "above", False, f"{path[-1]} anchor {anchor.id}")
    bright = subset(rows[axis.u >= t], 0, p.fit_events, p.seed)
    t = axis.linear(t)
    if bright.size < p.min_events:
        raise Review("too_few_events", f"{path[-1]}: {bright.size} {anchor.id}-bright events")
    fx, fy = template.dimensions
    pts = np.column_stack([ctx.values(fx, bright), ctx.values(fy, bright)])
    scale = np.maximum(pts.std(axis=0), 1.0)
    gm = GaussianMixture(int(p.components), covariance_type="full", random_state=int(p.seed),
                         init_params="k-means++", reg_covar=1e-4,  # k-means++: no Lloyd threads
                         tol=float(p.tol)).fit(pts / scale)
    k = int(np.argmax(gm.weights_))
    mean, cov = gm.means_[k] * scale, gm.covariances_[k] * np.outer(scale, scale)
    # the box around the cloud's ellipse: the events of a rectangle are decided by two comparisons each
    half = float(p.radius) * np.sqrt(np.diag(cov))
    gate = fk.gates.RectangleGate(path[-1], [
        fk.Dimension(d.id, compensation_ref=d.compensation_ref, range_min=float(mean[i] - half[i]),
                     range_max=float(mean[i] + half[i])) for i, d in enumerate((fx, fy))])
    info = {"centre": [round(float(c), 1) for c in mean], "weight": round(float(gm.weights_[k]), 4),
            "anchor": anchor.id, "anchor_threshold": round(t, 5), "n_fit": int(bright.size)}
    return gate, info
