"""``treg_mixture`` (Treg, ``treg_adaptive@1.0.0``): the Treg component of a mixture on CD25 x FOXP3.

Gaussian mixtures (scikit-learn, the number of ``components`` by BIC) on the
parent's CD25 x FOXP3 (arcsinh with the sample's own negative spread as
cofactor) above the FOXP3-negative population (``window_sd``); the Treg
component is the one with the highest FOXP3 mean, joined by the components
of the same cluster (:func:`_treg_group`); the gate is the polygon at the
posterior level where the expected cells wrongly in and wrongly out balance
(``boundary = "count"``) or at 0.5 (``"likelier"``). The next-best mixture
must agree on the Treg share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import PlacementParams, Review, as_float, as_int, as_ints, as_str, fit_rows, param
from ._maths import Axis, count_level, distance, polygon_vertices, simplify

__all__ = ["TregMixtureParams", "place"]


@dataclass(frozen=True, kw_only=True)
class TregMixtureParams(PlacementParams):
    """The keys of a ``treg_mixture`` entry (besides :class:`~._base.PlacementParams`').

    Attributes
    ----------
    treg_axis
        The detector of FOXP3 (one of the gate's two dimensions).
    window_sd
        The fit leaves out the events below ``window_sd`` negative SDs on FOXP3.
    components
        The numbers of components tried; the lowest BIC wins.
    merge_sd, merge_far_sd, merge_foxp3_sd
        When another component is the Tregs' too (:func:`_treg_group`).
    min_separation
        The Treg component's pooled-SD distance from the rest below which the sample goes to review.
    max_bic_gap, max_disagreement_pp
        A second model within ``max_bic_gap`` of BIC giving a Treg share more
        than ``max_disagreement_pp`` percentage points away: review.
    max_ambiguous_pct
        More than this % of CD4 cells as likely Treg as not: review.
    boundary
        ``"count"``: the posterior level where the cells wrongly in and out
        balance; ``"likelier"``: 0.5.
    contour_grid, simplify
        The polygon's contour grid and its simplification tolerance (fitting axes' units).
    """

    treg_axis: str = param(kind=as_str)
    window_sd: float = param(2.0, as_float, lo=0)
    components: tuple[int, ...] = param((2, 3, 4), as_ints, lo=1)
    merge_sd: float = param(1.75, as_float, lo=0)
    merge_far_sd: float = param(3.0, as_float, lo=0)
    merge_foxp3_sd: float = param(1.0, as_float, lo=0)
    min_separation: float = param(2.0, as_float, lo=0)
    max_bic_gap: float = param(10.0, as_float, lo=0)
    max_disagreement_pp: float = param(0.5, as_float, lo=0, hi=100)
    max_ambiguous_pct: float = param(1.0, as_float, lo=0, hi=100)
    boundary: str = param("count", as_str, choices=("count", "likelier"))
    contour_grid: int = param(96, as_int, lo=3)
    simplify: float = param(0.01, as_float, lo=0)


def place(p: TregMixtureParams, ctx, gs, template, parent, path, state):
    """A polygon on the template's CD25 x FOXP3."""
    import flowkit as fk
    from sklearn.mixture import GaussianMixture

    rows = fit_rows(p, ctx, parent, path)
    dims = list(template.dimensions)
    ids = [d.id for d in dims]
    k_axis = ids.index(p.treg_axis)  # FOXP3
    axes = [Axis(ctx.values(d, rows)) for d in dims]
    pts = np.column_stack([a.u for a in axes])
    # FOXP3-negative cells (most conventional CD4 cells) are a negative population: below
    # ``window_sd`` of the sample's own negative spread on FOXP3 they cannot be Tregs, and
    # their broad continuum would take the mixture's components from the clusters that matter
    floor = float(np.arcsinh(p.window_sd))
    keep = pts[:, k_axis] >= floor
    fit = pts[keep]
    if fit.shape[0] < p.min_events // 4:
        raise Review("no_treg_cluster", f"{fit.shape[0]} CD4 cells above the FOXP3-negative population")
    if fit.shape[0] > p.fit_events:
        fit = fit[np.random.default_rng(p.seed).choice(fit.shape[0], int(p.fit_events), replace=False)]
    fits = [GaussianMixture(k, covariance_type="full", random_state=int(p.seed), reg_covar=1e-5,
                            max_iter=200).fit(fit) for k in p.components if k <= len(fit)]
    fits.sort(key=lambda g: g.bic(fit))
    gm = fits[0]
    k, group, rest = _treg_group(gm, k_axis, p)
    sep = min((distance(gm, j, k) for j in rest), default=float("inf"))
    # a second model about as well supported (BIC within ``max_bic_gap``: beyond 10 the evidence against
    # it is very strong) must give the same Treg share: a cluster merged with its neighbour in one model
    # and not in the other is no clear structure
    rivals = [g for g in fits[:2] if g.bic(fit) - fits[0].bic(fit) <= float(p.max_bic_gap)]
    shares = [_treg_share(g, pts[keep], k_axis, p) * keep.mean() * 100 for g in rivals]
    info: dict[str, Any] = {"n_fit": int(rows.size), "n_window": int(keep.sum()), "components": gm.n_components,
                            "weights": np.round(gm.weights_, 4).tolist(), "means": np.round(gm.means_, 4).tolist(),
                            "separation": round(sep, 3) if np.isfinite(sep) else None}
    info["treg_pct_by_model"] = [round(v, 3) for v in shares]
    post = np.zeros(len(pts))
    post[keep] = gm.predict_proba(pts[keep])[:, group].sum(axis=1)
    level = count_level(post) if p.boundary == "count" else 0.5
    info["posterior_level"] = round(level, 4)
    vertices = _posterior_polygon(gm, group, pts, floor, k_axis, p, level)
    if vertices is None:
        raise Review("no_treg_cluster", "no closed region where the Treg component is the likeliest")
    from matplotlib.path import Path as _Path

    inside = _Path(vertices).contains_points(pts)
    ambiguous = 100.0 * ((1 - post[inside]).sum() + post[~inside].sum()) / len(pts)
    info["ambiguous_pct"] = round(float(ambiguous), 3)
    gate_vertices = polygon_vertices(gs, dims, axes, vertices)
    new = [fk.Dimension(d.id, compensation_ref=d.compensation_ref, transformation_ref=d.transformation_ref)
           for d in dims]
    gate = fk.gates.PolygonGate(path[-1], new, gate_vertices)
    # every doubt below keeps this gate as the reviewer's candidate: the best model's, not the template's
    if sep < float(p.min_separation):
        raise Review("no_treg_cluster", f"the Treg component is {sep:.2f} pooled SDs from the next", gate, info)
    if len(shares) == 2 and abs(shares[0] - shares[1]) > float(p.max_disagreement_pp):
        ks = [g.n_components for g in rivals]
        raise Review("models_disagree", f"mixtures of {ks[0]} and {ks[1]} components give {shares[0]:.2f} and "
                     f"{shares[1]:.2f} % Tregs of CD4", gate, info)
    if ambiguous > float(p.max_ambiguous_pct):
        raise Review("ambiguous", f"{ambiguous:.2f} % of CD4 cells are as likely Treg as not", gate, info)
    return gate, info


def _treg_group(gm, k_axis: int, p: TregMixtureParams):
    """The Treg component (highest FOXP3 mean), the components of the same cluster, and the rest.

    A mixture may split one cluster into several components. A component is
    the Tregs' too when it lies within ``merge_sd`` pooled SDs of the Treg
    component, or when it is as FOXP3-bright (means less than
    ``merge_foxp3_sd`` pooled FOXP3 SDs apart: FOXP3 is what tells Tregs from
    activated conventional cells) and within ``merge_far_sd``.
    """
    k = int(np.argmax(gm.means_[:, k_axis]))
    near, far, fox = float(p.merge_sd), float(p.merge_far_sd), float(p.merge_foxp3_sd)

    def same(j: int) -> bool:
        d = distance(gm, j, k)
        sd = np.sqrt((gm.covariances_[j][k_axis, k_axis] + gm.covariances_[k][k_axis, k_axis]) / 2)
        return d < near or (d < far and abs(gm.means_[j, k_axis] - gm.means_[k, k_axis]) / sd < fox)

    group = [k] + [j for j in range(gm.n_components) if j != k and same(j)]
    return k, group, [j for j in range(gm.n_components) if j not in group]


def _treg_share(gm, pts: np.ndarray, k_axis: int, p: TregMixtureParams) -> float:
    """The mixture's expected share of Tregs among ``pts`` (mean posterior of the Treg group)."""
    _, group, _ = _treg_group(gm, k_axis, p)
    return float(gm.predict_proba(pts)[:, group].sum(axis=1).mean())


def _posterior_polygon(gm, group, pts, floor: float, k_axis: int, p: TregMixtureParams, level: float = 0.5):
    """The region where the Treg components' posterior is at least ``level``, as a polygon (or None)."""
    import contourpy

    n = int(p.contour_grid)
    lo, hi = np.quantile(pts, 0.0005, axis=0) - 0.5, np.quantile(pts, 0.9995, axis=0) + 0.5
    gx, gy = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    mesh = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    prob = gm.predict_proba(mesh)[:, group].sum(axis=1).reshape(n, n)
    prob[(mesh[:, k_axis] < floor).reshape(n, n)] = 0.0  # FOXP3-negative: never Treg
    prob[:, 0] = prob[:, -1] = prob[0, :] = prob[-1, :] = 0.0  # closed contours
    centre = gm.means_[int(group[0])]
    best = None
    from matplotlib.path import Path as _Path

    for line in contourpy.contour_generator(gx, gy, prob).lines(level):
        if _Path(line).contains_point(centre) and (best is None or len(line) > len(best)):
            best = line
    return None if best is None else simplify(np.asarray(best), float(p.simplify))
