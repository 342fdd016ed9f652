"""``treg_cluster`` (Treg, ``treg_adaptive@1.1.0`` on): the Treg cluster found in CD25 x FOXP3 x CD127.

This module places the Treg gate and keeps the fit for its child CD127lo,
which :mod:`.treg_split` places.

Where activated conventional cells are CD25-positive and FOXP3-dim, they and
the Tregs overlap on CD25 x FOXP3, and a mixture on those two markers alone
mistakes one for the other by up to several percentage points. Tregs are
"usually CD127 low" (``PANEL.md``), so the mixture here is fitted on CD25 x
FOXP3 x CD127 of the CD4+ cells above the FOXP3-negative population, each on
arcsinh(x / c) with ``c`` the marker's negative spread (since 1.3.0, with
``cofactor_from = "all_events"``, measured on all the events placement sees,
where every marker has negative cells; before, on the CD4 cells). Nothing
assumes CD127 does separate them: where it does not, the mixture separates
on CD25 and FOXP3 as before, and the count is the same either way (below).

The cluster
    Gaussian mixtures (scikit-learn, ``components`` tried, the lowest BIC).
    One population need not be one Gaussian (a low-intensity marker near the
    noise is skewed on any log-like scale), so the mixture has more
    components than there are populations, and the Treg cluster is grown
    from the component with the highest FOXP3 mean (only the order of
    populations is known: FOXP3+ above FOXP3-dim above negative). A
    component joins when the cluster's density along the ridgeline between
    it and that top component (Ray and Lindsay's exact modality path) has no
    dip deeper than ``ridge_ratio`` of the lower of its maxima: a shoulder,
    not a valley. The cluster's density, not the pair's: a small component
    between two clusters is unimodal with each, and pairwise tests would
    chain them. A component at the top component's place on CD25 x FOXP3
    (``same_position_sd``) joins whatever its CD127; since 1.4.0, at its
    place on FOXP3 alone (``same_position_axes``), whatever its CD25 and
    CD127: on real cells CD25 is a continuum along which the Tregs' own
    cloud is skewed, and a bright neighbour's compensation spreads the
    CD127-low Tregs over two decades of CD127, so the mixture cuts one
    FOXP3+ population into components at different CD25 and CD127 whose
    ridgeline can dip. Only FOXP3's order says which cells are Tregs
    (FOXP3+ above FOXP3-dim above negative).
The count
    The mixture's expected number of Tregs: the sum of the Treg cluster's
    posterior over the fitted events.
The gates (what FlowKit counts)
    ``treg_cluster`` places Treg, a polygon on CD25 x FOXP3: the region where
    the cluster's posterior *marginal to those two markers* is at least the
    level that keeps ``keep_mass`` of the cluster's expected cells, so it
    loses (almost) none. ``treg_split`` places its child CD127lo, a polygon
    on CD127 x FOXP3 drawn at the marginal posterior level at which the
    events inside both gates number the expected count. Both are ordinary
    polygons a reviewer can drag.
Sent to review
    The cluster stands less than ``min_separation`` pooled SDs from the rest;
    more than ``max_truncated_pct`` of it lies below the window (a fit at the
    edge of its window); the next-best mixture (BIC within ``max_bic_gap``)
    gives a share ``max_disagreement_pp`` away; more than
    ``max_ambiguous_pct`` of CD4 cells are as likely Treg as not; since
    1.4.0, the same mixture refitted from other starts (``restart_seeds``:
    k-means from another seed) gives a share ``max_disagreement_pp`` away.
    A count that depends on where EM started is no clear structure: on
    real-cell shapes, whose heavy tails and skew the Gaussian components
    approximate in several ways of about equal likelihood, it is where the
    largest errors are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._base import PlacementParams, Review, as_float, as_int, as_ints, as_str, as_strs, fit_rows, param
from ._maths import (
    Axis,
    PosteriorContours,
    distance,
    gate_points,
    log_normal_pdf,
    marginal_posterior,
    negative_spread,
    no_dip,
    polygon_gate,
    posterior_polygon,
    ridgeline,
    scaled_to,
    truncated,
)

__all__ = ["TregClusterParams", "place"]


@dataclass(frozen=True, kw_only=True)
class TregClusterParams(PlacementParams):
    """The keys of a ``treg_cluster`` entry (besides :class:`~._base.PlacementParams`').

    Attributes
    ----------
    treg_axis
        The detector of FOXP3 (one of the gate's two dimensions).
    support_axes
        Detectors fitted besides the gate's two (CD127).
    window_sd
        The fit leaves out the events below ``window_sd`` negative SDs on FOXP3.
    components
        The numbers of components tried; the lowest BIC wins.
    tol
        EM's convergence threshold.
    ridge_ratio
        A component joins the cluster when the cluster's density along its
        ridgeline with the top component has no dip below this share of the lower maximum.
    same_position_sd
        A component less than this many pooled SDs from the top one on ``same_position_axes`` joins.
    same_position_axes
        The detectors that position is judged on (1.4.0: FOXP3's); absent: the gate's two (CD25 x FOXP3).
    keep_mass
        The Treg gate keeps this share of the cluster's expected cells.
    min_separation, max_truncated_pct, max_bic_gap, max_disagreement_pp
        What sends the sample to review (see the module's docstring).
    restart_seeds
        Seeds of the mixture refitted from other starts (1.4.0: two); empty: none.
    cofactor_from
        ``"all_events"`` (1.3.0 on): each axis' cofactor is the detector's
        negative spread over all the events placement sees; ``"parent"`` or
        absent: over the parent's (the CD4 cells'). When given, the cofactors
        enter the gate's record.
    contour_grid, simplify
        The polygon's contour grid and its simplification tolerance.
    max_vertices
        At most this many vertices (1.5.0 on: 12, handles a reviewer can drag); absent: as ``simplify`` leaves.
    """

    feeds_child: ClassVar[bool] = True  # treg_split draws CD127lo from this fit, even under a reviewer's Treg

    treg_axis: str = param(kind=as_str)
    support_axes: tuple[str, ...] = param(kind=as_strs)
    window_sd: float = param(kind=as_float, lo=0)
    components: tuple[int, ...] = param((2, 3, 4, 5), as_ints, lo=1)
    tol: float = param(1e-3, as_float, lo=0, lo_open=True)
    ridge_ratio: float = param(kind=as_float, lo=0, hi=1)
    same_position_sd: float = param(kind=as_float, lo=0)
    same_position_axes: tuple[str, ...] | None = param(None, as_strs)
    keep_mass: float = param(kind=as_float, lo=0, hi=1, lo_open=True)
    min_separation: float = param(kind=as_float, lo=0)
    max_truncated_pct: float = param(kind=as_float, lo=0, hi=100)
    max_bic_gap: float = param(10.0, as_float, lo=0)
    max_disagreement_pp: float = param(0.5, as_float, lo=0, hi=100)
    cofactor_from: str | None = param(None, as_str, choices=("all_events", "parent"))
    restart_seeds: tuple[int, ...] = param((), lambda v: () if v == [] else as_ints(v), lo=0)
    contour_grid: int = param(64, as_int, lo=3)
    simplify: float = param(0.01, as_float, lo=0)
    max_vertices: int | None = param(None, as_int, lo=3)


@dataclass(frozen=True)
class TregFit:
    """What the Treg gate's placement leaves for its child's: the mixture, its cluster and the fitted events."""

    gm: Any
    group: list[int]
    pts: np.ndarray
    axes: list[Axis]
    dims: list
    rows: np.ndarray
    keep: np.ndarray
    post: np.ndarray
    expected: float
    floor: float
    k_axis: int


def _treg_group(gm, k_axis: int, ratio: float, same_sd: float, defining: list[int]) -> list[int]:
    """The components of the Treg cluster: the highest-FOXP3 component's cluster.

    Tregs are defined by the markers whose order is known (CD25 high, FOXP3+:
    ``defining``); a component at the same place on those (means less than
    ``same_sd`` pooled SDs apart) is Tregs too, whatever its CD127 (only
    "usually low"): a low-intensity marker near the noise is skewed, and a
    mixture cuts its tail into a component of its own.
    """
    top = int(np.argmax(gm.means_[:, k_axis]))
    # the cluster grown from the top component: a component joins when the cluster's density with it has no
    # dip on its ridgeline with the top component. The cluster's density, not the pair's: a small component
    # between two clusters is unimodal with each, and pairwise it would chain them into one
    lines: dict[int, np.ndarray] = {}  # each candidate's ridgeline with the top component, and
    dens: dict[tuple[int, int], np.ndarray] = {}  # each component's weighted density along it: computed once

    def along(i: int, j: int) -> np.ndarray:
        if j not in lines:
            lines[j] = ridgeline(gm.means_[top], gm.covariances_[top], gm.means_[j], gm.covariances_[j])
        if (i, j) not in dens:
            dens[i, j] = gm.weights_[i] * np.exp(log_normal_pdf(lines[j], gm.means_[i], gm.covariances_[i]))
        return dens[i, j]

    group, grown = {top}, True
    while grown:
        grown = False
        for j in sorted(set(range(gm.n_components)) - group, key=lambda j: distance(gm, top, j)):
            f = sum(along(i, j) for i in group | {j})
            if no_dip(f, ratio):
                group.add(j)
                grown = True
    ix = np.ix_(defining, defining)
    for j in range(gm.n_components):
        d = gm.means_[j][defining] - gm.means_[top][defining]
        if np.sqrt(d @ np.linalg.solve((gm.covariances_[j][ix] + gm.covariances_[top][ix]) / 2, d)) < same_sd:
            group.add(j)
    return sorted(group)


def _dimension(ref: str, like):
    import flowkit as fk

    return fk.Dimension(ref, compensation_ref=like.compensation_ref, transformation_ref=like.transformation_ref)


def _mixture(p: TregClusterParams, fit: np.ndarray, k: int, seed: int):
    """A Gaussian mixture of ``k`` components fitted to ``fit``, k-means started from ``seed``."""
    from sklearn.mixture import GaussianMixture

    # k-means places the components; EM refines them until the mean log-likelihood per event moves less
    # than ``tol`` (0.01: a few iterations; the clusters and their posteriors no longer change)
    return GaussianMixture(k, covariance_type="full", random_state=int(seed), reg_covar=1e-5, max_iter=200,
                           tol=float(p.tol)).fit(fit)


def _fit(p: TregClusterParams, fit: np.ndarray):
    fits = [_mixture(p, fit, k, p.seed) for k in p.components if k < len(fit)]
    if len(fits) == 1:  # nothing to choose between (the BIC scores every event once more)
        return fits, [0.0]
    bics = [g.bic(fit) for g in fits]
    order = np.argsort(bics)
    return [fits[i] for i in order], [bics[i] for i in order]


def place(p: TregClusterParams, ctx, gs, template, parent, path, state: dict[str, Any]):
    """Place the Treg gate (CD25 x FOXP3) from the mixture on CD25 x FOXP3 x CD127; keep the fit in ``state``."""
    rows = fit_rows(p, ctx, parent, path)
    dims = list(template.dimensions) + [_dimension(ref, template.dimensions[0]) for ref in p.support_axes]
    ids = [d.id for d in dims]
    k_axis = ids.index(p.treg_axis)
    if p.cofactor_from == "all_events":
        # CD4 cells have no CD25- or CD127-negative population: the values below 0 there are the left tail
        # of a dim positive one, and their spread is no detector's negative spread (1.1.0 and 1.2.0 took it
        # so, and a dim population then lay on the log part of its axis, skewed). Every marker has its
        # negative events among all the events placement sees
        every = ctx.values_many(dims, None)
        axes = [Axis(v[rows], negative_spread(v)) for v in every]
    else:
        axes = [Axis(v) for v in ctx.values_many(dims, rows)]
    pts = np.column_stack([a.u for a in axes])
    # FOXP3-negative cells (most conventional CD4 cells) are below ``window_sd`` of the sample's own
    # negative spread on FOXP3: their broad continuum would take the components from the clusters that matter
    floor = float(np.arcsinh(p.window_sd))
    keep = pts[:, k_axis] >= floor
    if keep.sum() < p.min_events // 4:
        raise Review("no_treg_cluster", f"{int(keep.sum())} CD4 cells above the FOXP3-negative population")
    fit = pts[keep]
    if fit.shape[0] > p.fit_events:
        fit = fit[np.random.default_rng(p.seed).choice(fit.shape[0], int(p.fit_events), replace=False)]

    stray = [a for a in p.same_position_axes or () if a not in ids]
    if stray:
        from ...exceptions import StrategyError

        msg = (f"{'/'.join(path)}: same_position_axes names {stray}, which the fit does not have; its detectors "
               f"are {ids} (the gate's two and support_axes). Fix the manifest's placement entry.")
        raise StrategyError(msg)
    defining = [0, 1] if p.same_position_axes is None else [ids.index(a) for a in p.same_position_axes]

    def group_of(g):
        return _treg_group(g, k_axis, float(p.ridge_ratio), float(p.same_position_sd), defining)

    fits, bics = _fit(p, fit)
    gm = fits[0]
    group = group_of(gm)
    rest = [j for j in range(gm.n_components) if j not in group]
    post = np.zeros(len(pts))
    post[keep] = gm.predict_proba(pts[keep])[:, group].sum(axis=1)
    expected = float(post.sum())
    shares = [100 * expected / len(pts)]
    if len(fits) > 1 and bics[1] - bics[0] <= float(p.max_bic_gap):
        g2 = fits[1]
        shares.append(100 * float(g2.predict_proba(pts[keep])[:, group_of(g2)].sum()) / len(pts))
    restarted = []
    for s in p.restart_seeds:  # the same model from other starts: its share must not move
        g = _mixture(p, fit, gm.n_components, s)
        restarted.append(100 * float(g.predict_proba(pts[keep])[:, group_of(g)].sum()) / len(pts))
    sep = min((distance(gm, i, j) for i in group for j in rest), default=float("inf"))
    cut = 100 * truncated(gm, group, k_axis, floor)
    # the Treg gate keeps ``keep_mass`` of the cluster's expected cells: its child draws the count's boundary
    two = [0, 1]
    q = np.zeros(len(pts))
    q[keep] = marginal_posterior(gm, group, pts[keep][:, two], two)
    order = np.argsort(-q[keep])
    cum = np.cumsum(post[keep][order])
    i = min(int(np.searchsorted(cum, float(p.keep_mass) * expected)), order.size - 1)
    level = float(np.clip(q[keep][order][i], 0.01, 0.95))
    info: dict[str, Any] = {
        "n_fit": int(rows.size), "n_window": int(keep.sum()), "components": gm.n_components,
        "group": [int(j) for j in group], "weights": np.round(gm.weights_, 4).tolist(),
        "means": np.round(gm.means_, 4).tolist(), "dimensions": ids,
        "separation": round(sep, 3) if np.isfinite(sep) else None, "truncated_pct": round(cut, 3),
        "treg_pct_by_model": [round(v, 3) for v in shares], "posterior_level": round(level, 4)}
    if p.cofactor_from is not None:  # 1.3.0 on; the records of released 1.1.0 and 1.2.0 stay as they were
        info["cofactors"] = [round(a.c, 2) for a in axes]
    if restarted:  # 1.4.0 on
        info["treg_pct_by_restart"] = [round(v, 3) for v in restarted]
    state["treg_cluster"] = TregFit(gm=gm, group=group, pts=pts, axes=axes, dims=dims, rows=rows, keep=keep,
                                    post=post, expected=expected, floor=floor, k_axis=k_axis)
    if p.max_vertices is None:
        vertices = posterior_polygon(gm, group, pts[:, two], two, floor, k_axis, level,
                                     contour_grid=p.contour_grid, eps=p.simplify)
    else:  # few vertices: the drawn polygon, not the contour, keeps ``keep_mass`` of the cluster
        from matplotlib.path import Path as _Path

        contours = PosteriorContours(gm, group, pts[:, two], two, floor, k_axis, contour_grid=p.contour_grid)
        vertices = contours.polygon(level, eps=p.simplify, max_vertices=p.max_vertices)
        if vertices is not None:
            # measured where FlowKit counts: in the gate's units, where the polygon's edges are straight
            xy, mass = gate_points(gs, dims[:2], axes[:2], pts[keep][:, two]), post[keep]
            vertices = scaled_to(vertices, contours.centre, lambda poly: float(
                mass[_Path(gate_points(gs, dims[:2], axes[:2], poly)).contains_points(xy)].sum()),
                float(p.keep_mass) * expected)
    if vertices is None:
        raise Review("no_treg_cluster", "no closed region where the Treg cluster is likely", None, info)
    gate = polygon_gate(path[-1], dims[:2], axes[:2], gs, vertices)
    # every doubt below keeps this gate as the reviewer's candidate: the best model's, not the template's
    if sep < float(p.min_separation):
        raise Review("no_treg_cluster", f"the Treg cluster is {sep:.2f} pooled SDs from the next", gate, info)
    if cut > float(p.max_truncated_pct):
        raise Review("at_edge", f"{cut:.2f} % of the Treg cluster lies below the FOXP3 window", gate, info)
    if len(shares) == 2 and abs(shares[0] - shares[1]) > float(p.max_disagreement_pp):
        ks = [g.n_components for g in fits[:2]]
        raise Review("models_disagree", f"mixtures of {ks[0]} and {ks[1]} components give {shares[0]:.2f} and "
                     f"{shares[1]:.2f} % Tregs of CD4", gate, info)
    far = max(restarted, key=lambda v: abs(v - shares[0]), default=None)
    if far is not None and abs(far - shares[0]) > float(p.max_disagreement_pp):
        raise Review("models_disagree", f"the mixture refitted from another start gives {far:.2f} % Tregs of CD4 "
                     f"where the first gave {shares[0]:.2f} %", gate, info)
    return gate, info
