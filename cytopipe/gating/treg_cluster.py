"""The Treg cluster found in CD25 x FOXP3 x CD127, and its two gates (methods ``treg_cluster``, ``treg_split``).

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
    (``same_position_sd``) joins whatever its CD127.
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
    ``max_ambiguous_pct`` of CD4 cells are as likely Treg as not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .adaptive import _Axis, _distance, _negative_spread, _polygon_vertices, _Review, _simplify

__all__ = ["ridge_unimodal"]


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x; mean, cov) for the rows of ``x``."""
    d = x - mean
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, d.T)
    return -0.5 * (z * z).sum(axis=0) - np.log(np.diag(chol)).sum() - 0.5 * len(mean) * np.log(2 * np.pi)


def _ridgeline(m1, s1, m2, s2, n: int = 101) -> np.ndarray:
    """``n`` points of the ridgeline of (m1, s1) and (m2, s2), from m1 to m2.

    ``x(a) = [(1-a) S1^-1 + a S2^-1]^-1 [(1-a) S1^-1 m1 + a S2^-1 m2]``, ``a`` in
    [0, 1], holds every mode and saddle of a two-component density (Ray and
    Lindsay 2005), so the density along it decides their modality exactly in
    any dimension.
    """
    p1, p2 = np.linalg.inv(s1), np.linalg.inv(s2)
    a = np.linspace(0.0, 1.0, n)[:, None, None]
    return np.linalg.solve((1 - a) * p1 + a * p2, (1 - a) * (p1 @ m1)[:, None] + a * (p2 @ m2)[:, None])[..., 0]


def _ridge_density(m1, s1, m2, s2, comps, n: int = 101) -> np.ndarray:
    """The density of the weighted Gaussians ``comps`` along the ridgeline (:func:`_ridgeline`) of two of them."""
    xs = _ridgeline(m1, s1, m2, s2, n)
    return sum(w * np.exp(_log_normal_pdf(xs, m, s)) for m, s, w in comps)


def _no_dip(f: np.ndarray, ratio: float) -> bool:
    # the deepest dip: at each point, the density against the lower of the highest points either side
    # (the curve's lowest point may be an end, at a component's mean, with a dip between elsewhere)
    rim = np.minimum(np.maximum.accumulate(f), np.maximum.accumulate(f[::-1])[::-1])
    return bool(np.all(f >= ratio * rim))


def ridge_unimodal(m1, s1, w1, m2, s2, w2, ratio: float, n: int = 101) -> bool:
    """Whether two weighted Gaussians form one mode: no dip below ``ratio`` of the lower maximum on their ridgeline.

    Parameters
    ----------
    m1, s1, w1, m2, s2, w2
        Mean (d,), covariance (d, d) and weight of each Gaussian.
    ratio : float
        The shallowest dip that counts as a valley, as a fraction of the
        lower of the two maxima either side: 1.0 is strict unimodality.
    n : int
        Points along the ridgeline.

    Returns
    -------
    bool
        True when the two form one mode (or a shoulder).

    Examples
    --------
    >>> import numpy as np
    >>> one = np.eye(1)
    >>> ridge_unimodal(np.zeros(1), one, 0.5, np.full(1, 1.9), one, 0.5, 1.0)  # at most 2 SD apart
    True
    >>> ridge_unimodal(np.zeros(1), one, 0.5, np.full(1, 3.0), one, 0.5, 1.0)
    False
    """
    return _no_dip(_ridge_density(m1, s1, m2, s2, [(m1, s1, w1), (m2, s2, w2)], n), ratio)


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
            lines[j] = _ridgeline(gm.means_[top], gm.covariances_[top], gm.means_[j], gm.covariances_[j])
        if (i, j) not in dens:
            dens[i, j] = gm.weights_[i] * np.exp(_log_normal_pdf(lines[j], gm.means_[i], gm.covariances_[i]))
        return dens[i, j]

    group, grown = {top}, True
    while grown:
        grown = False
        for j in sorted(set(range(gm.n_components)) - group, key=lambda j: _distance(gm, top, j)):
            f = sum(along(i, j) for i in group | {j})
            if _no_dip(f, ratio):
                group.add(j)
                grown = True
    ix = np.ix_(defining, defining)
    for j in range(gm.n_components):
        d = gm.means_[j][defining] - gm.means_[top][defining]
        if np.sqrt(d @ np.linalg.solve((gm.covariances_[j][ix] + gm.covariances_[top][ix]) / 2, d)) < same_sd:
            group.add(j)
    return sorted(group)


def _marginal_posterior(gm, group, x: np.ndarray, dims: list[int]) -> np.ndarray:
    """The group's posterior from the mixture marginal to ``dims`` (the rows of ``x`` are in those dims)."""
    logs = np.column_stack([np.log(gm.weights_[j]) + _log_normal_pdf(x, gm.means_[j][dims],
                                                                     gm.covariances_[j][np.ix_(dims, dims)])
                            for j in range(gm.n_components)])
    logs -= logs.max(axis=1, keepdims=True)
    dens = np.exp(logs)
    return dens[:, group].sum(axis=1) / dens.sum(axis=1)


def _truncated(gm, group, k_axis: int, floor: float) -> float:
    """The share of the group's modelled cells below the window floor on FOXP3."""
    from scipy.stats import norm

    w = gm.weights_[group] / gm.weights_[group].sum()
    return float(sum(wi * norm.cdf(floor, gm.means_[j, k_axis], np.sqrt(gm.covariances_[j][k_axis, k_axis]))
                     for wi, j in zip(w, group)))


def _polygon(gm, group, pts2: np.ndarray, dims: list[int], floor: float, f_axis: int, level: float, spec):
    """The region where the group's marginal posterior on ``dims`` is at least ``level``, as a polygon (or None)."""
    import contourpy
    from matplotlib.path import Path as _Path

    n = int(spec.get("contour_grid", 64))
    lo, hi = np.quantile(pts2, 0.0005, axis=0) - 0.5, np.quantile(pts2, 0.9995, axis=0) + 0.5
    gx, gy = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    mesh = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    p = _marginal_posterior(gm, group, mesh, dims)
    p[mesh[:, f_axis] < floor] = 0.0  # FOXP3-negative: never Treg
    p = p.reshape(n, n)
    p[:, 0] = p[:, -1] = p[0, :] = p[-1, :] = 0.0  # closed contours
    w = gm.weights_[group] / gm.weights_[group].sum()
    centre = (w @ gm.means_[group])[dims]
    best = None
    for line in contourpy.contour_generator(gx, gy, p).lines(level):
        if _Path(line).contains_point(centre) and (best is None or len(line) > len(best)):
            best = line
    return None if best is None else _simplify(np.asarray(best), float(spec.get("simplify", 0.01)))


def _polygon_gate(name, dims, axes, gs, vertices):
    import flowkit as fk

    gate_vertices = _polygon_vertices(gs, dims, axes, vertices)
    new = [fk.Dimension(d.id, compensation_ref=d.compensation_ref, transformation_ref=d.transformation_ref)
           for d in dims]
    return fk.gates.PolygonGate(name, new, gate_vertices)


def _dimension(ref: str, like):
    import flowkit as fk

    return fk.Dimension(ref, compensation_ref=like.compensation_ref, transformation_ref=like.transformation_ref)


def _fit(spec, fit: np.ndarray):
    from sklearn.mixture import GaussianMixture

    # k-means places the components; EM refines them until the mean log-likelihood per event moves less
    # than ``tol`` (0.01: a few iterations; the clusters and their posteriors no longer change)
    fits = [GaussianMixture(k, covariance_type="full", random_state=int(spec["seed"]), reg_covar=1e-5,
                            max_iter=200, tol=float(spec.get("tol", 1e-3))).fit(fit)
            for k in spec.get("components", (2, 3, 4, 5)) if k < len(fit)]
    if len(fits) == 1:  # nothing to choose between (the BIC scores every event once more)
        return fits, [0.0]
    bics = [g.bic(fit) for g in fits]
    order = np.argsort(bics)
    return [fits[i] for i in order], [bics[i] for i in order]


def treg_cluster(spec, ctx, gs, template, rows, path, state: dict[str, Any]):
    """Place the Treg gate (CD25 x FOXP3) from the mixture on CD25 x FOXP3 x CD127; keep the fit in ``state``."""
    dims = list(template.dimensions) + [_dimension(ref, template.dimensions[0]) for ref in spec["support_axes"]]
    ids = [d.id for d in dims]
    k_axis = ids.index(spec["treg_axis"])
    if spec.get("cofactor_from") == "all_events":
        # CD4 cells have no CD25- or CD127-negative population: the values below 0 there are the left tail
        # of a dim positive one, and their spread is no detector's negative spread (1.1.0 and 1.2.0 took it
        # so, and a dim population then lay on the log part of its axis, skewed). Every marker has its
        # negative events among all the events placement sees
        every = ctx.values_many(dims, None)
        axes = [_Axis(v[rows], _negative_spread(v)) for v in every]
    else:
        axes = [_Axis(v) for v in ctx.values_many(dims, rows)]
    pts = np.column_stack([a.u for a in axes])
    # FOXP3-negative cells (most conventional CD4 cells) are below ``window_sd`` of the sample's own
    # negative spread on FOXP3: their broad continuum would take the components from the clusters that matter
    floor = float(np.arcsinh(spec["window_sd"]))
    keep = pts[:, k_axis] >= floor
    if keep.sum() < spec["min_events"] // 4:
        raise _Review("no_treg_cluster", f"{int(keep.sum())} CD4 cells above the FOXP3-negative population")
    fit = pts[keep]
    if fit.shape[0] > spec["fit_events"]:
        fit = fit[np.random.default_rng(spec["seed"]).choice(fit.shape[0], int(spec["fit_events"]), replace=False)]
    def group_of(g):
        return _treg_group(g, k_axis, float(spec["ridge_ratio"]), float(spec["same_position_sd"]), [0, 1])

    fits, bics = _fit(spec, fit)
    gm = fits[0]
    group = group_of(gm)
    rest = [j for j in range(gm.n_components) if j not in group]
    post = np.zeros(len(pts))
    post[keep] = gm.predict_proba(pts[keep])[:, group].sum(axis=1)
    expected = float(post.sum())
    shares = [100 * expected / len(pts)]
    if len(fits) > 1 and bics[1] - bics[0] <= float(spec.get("max_bic_gap", 10.0)):
        g2 = fits[1]
        shares.append(100 * float(g2.predict_proba(pts[keep])[:, group_of(g2)].sum()) / len(pts))
    sep = min((_distance(gm, i, j) for i in group for j in rest), default=float("inf"))
    truncated = 100 * _truncated(gm, group, k_axis, floor)
    # the Treg gate keeps ``keep_mass`` of the cluster's expected cells: its child draws the count's boundary
    two = [0, 1]
    q = np.zeros(len(pts))
    q[keep] = _marginal_posterior(gm, group, pts[keep][:, two], two)
    order = np.argsort(-q[keep])
    cum = np.cumsum(post[keep][order])
    i = min(int(np.searchsorted(cum, float(spec["keep_mass"]) * expected)), order.size - 1)
    level = float(np.clip(q[keep][order][i], 0.01, 0.95))
    info: dict[str, Any] = {
        "n_fit": int(rows.size), "n_window": int(keep.sum()), "components": gm.n_components,
        "group": [int(j) for j in group], "weights": np.round(gm.weights_, 4).tolist(),
        "means": np.round(gm.means_, 4).tolist(), "dimensions": ids,
        "separation": round(sep, 3) if np.isfinite(sep) else None, "truncated_pct": round(truncated, 3),
        "treg_pct_by_model": [round(v, 3) for v in shares], "posterior_level": round(level, 4)}
    if "cofactor_from" in spec:  # 1.3.0 on; the records of released 1.1.0 and 1.2.0 stay as they were
        info["cofactors"] = [round(a.c, 2) for a in axes]
    state["treg_cluster"] = {"gm": gm, "group": group, "pts": pts, "axes": axes, "dims": dims, "rows": rows,
                             "keep": keep, "post": post, "expected": expected, "floor": floor, "k_axis": k_axis}
    vertices = _polygon(gm, group, pts[:, two], two, floor, k_axis, level, spec)
    if vertices is None:
        raise _Review("no_treg_cluster", "no closed region where the Treg cluster is likely", None, info)
    gate = _polygon_gate(path[-1], dims[:2], axes[:2], gs, vertices)
    # every doubt below keeps this gate as the reviewer's candidate: the best model's, not the template's
    if sep < float(spec["min_separation"]):
        raise _Review("no_treg_cluster", f"the Treg cluster is {sep:.2f} pooled SDs from the next", gate, info)
    if truncated > float(spec["max_truncated_pct"]):
        raise _Review("at_edge", f"{truncated:.2f} % of the Treg cluster lies below the FOXP3 window", gate, info)
    if len(shares) == 2 and abs(shares[0] - shares[1]) > float(spec.get("max_disagreement_pp", 0.5)):
        ks = [g.n_components for g in fits[:2]]
        raise _Review("models_disagree", f"mixtures of {ks[0]} and {ks[1]} components give {shares[0]:.2f} and "
                      f"{shares[1]:.2f} % Tregs of CD4", gate, info)
    return gate, info


def treg_split(spec, ctx, gs, template, parent, path, state: dict[str, Any]):
    """Place CD127lo inside Treg (CD127 x FOXP3), where the events of both gates number the expected count."""
    fit = state.get("treg_cluster")
    if fit is None:
        raise _Review("no_treg_cluster", f"{path[-1]} is drawn from the Treg cluster's fit, and there is none")
    gm, group, pts, keep = fit["gm"], fit["group"], fit["pts"], fit["keep"]
    ids = [d.id for d in fit["dims"]]
    dims2 = [ids.index(d.id) for d in template.dimensions]  # e.g. [CD127, FOXP3]
    f_axis = dims2.index(fit["k_axis"])
    inside = keep & np.isin(fit["rows"], parent if parent is not None else fit["rows"])
    q = np.zeros(len(pts))
    q[inside] = _marginal_posterior(gm, group, pts[inside][:, dims2], dims2)
    target = int(round(fit["expected"]))
    ranked = np.sort(q[inside])[::-1]
    level = float(np.clip(ranked[min(target, ranked.size - 1)] if ranked.size else 0.5, 0.05, 0.95))
    vertices = _polygon(gm, group, pts[:, dims2], dims2, fit["floor"], f_axis, level, spec)
    info: dict[str, Any] = {"n_fit": int(inside.sum()), "posterior_level": round(level, 4),
                            "expected_pct": round(100 * fit["expected"] / len(pts), 3)}
    if vertices is None:
        raise _Review("no_treg_cluster", f"no closed region where the Treg cluster is likely on {ids}", None, info)
    gate = _polygon_gate(path[-1], [fit["dims"][j] for j in dims2], [fit["axes"][j] for j in dims2], gs, vertices)
    from matplotlib.path import Path as _Path

    final = inside & _Path(np.asarray(vertices)).contains_points(pts[:, dims2])
    post = fit["post"]
    ambiguous = 100.0 * ((1 - post[final]).sum() + post[~final].sum()) / len(pts)
    info["ambiguous_pct"] = round(float(ambiguous), 3)
    if ambiguous > float(spec["max_ambiguous_pct"]):
        raise _Review("ambiguous", f"{ambiguous:.2f} % of CD4 cells are as likely Treg as not", gate, info)
    return gate, info
