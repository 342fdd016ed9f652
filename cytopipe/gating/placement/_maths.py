"""The maths the placement methods share: 1-D densities and their modes, the fitting axes, polygons,
Gaussian-mixture helpers and the ridgeline.

Nothing here reads a manifest: each function takes the numbers it uses.
"""

from __future__ import annotations

import numpy as np

from ._base import Review

__all__ = [
    "Axis", "PosteriorContours", "count_level", "density", "distance", "extent", "gate_points", "gate_units",
    "log_normal_pdf", "marginal_posterior", "modes", "negative_spread", "no_dip", "polygon_gate", "polygon_vertices",
    "posterior_polygon", "ridge_density", "ridge_unimodal", "ridgeline", "robust_sd_left", "scaled_to", "simplify",
    "simplify_to", "threshold", "truncated",
]


# -- 1-D densities ----------------------------------------------------------------------------------

def density(values: np.ndarray, lo: float, hi: float, grid: int = 256):
    """A Gaussian kernel density of ``values`` on ``grid`` points of [lo, hi]: ``(x, f)``.

    The binned kernel density estimate (events binned to the grid, the counts
    convolved with the Gaussian kernel), as R's ``density()`` computes it: the
    same estimate as scikit-learn's ``KernelDensity`` on the binned events to
    within rounding, at a fraction of its cost (it has no binned path and
    scores every grid point against every bin). Bandwidth: Silverman's rule.
    """
    v = values[np.isfinite(values)]
    edges = np.linspace(lo, hi, grid + 1)
    # equal bins: numpy's fast path, which counts against these same edges; events off the axis are left
    # out, never piled on its ends
    counts, _ = np.histogram(v, bins=grid, range=(lo, hi))
    x = (edges[:-1] + edges[1:]) / 2
    iqr = np.subtract(*np.percentile(v, [75, 25])) if v.size else 0.0
    sd = min(np.std(v), iqr / 1.349) if iqr > 0 else np.std(v)
    step = (hi - lo) / grid
    bw = max(0.9 * sd * max(v.size, 1) ** -0.2, 1.5 * step)
    half = int(np.ceil(4 * bw / step))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / bw) ** 2)
    f = np.convolve(counts.astype(float), kernel / (kernel.sum() * step * max(v.size, 1)), mode="same")
    return x, f


def modes(f: np.ndarray, *, min_share: float, max_dip: float) -> tuple[list[int], list[int]]:
    """Significant modes of a density on a grid and the minima between them: ``(peaks, valleys)``.

    Neighbouring peaks merge (into the higher) while the density at the minimum
    between them is above ``max_dip`` times the lower peak, or while either
    side holds less than ``min_share`` of the mass.
    """
    interior = np.flatnonzero((f[1:-1] > f[:-2]) & (f[1:-1] >= f[2:])) + 1
    peaks = list(interior) if interior.size else [int(np.argmax(f))]
    total = f.sum()
    while len(peaks) > 1:
        valleys = [a + int(np.argmin(f[a:b + 1])) for a, b in zip(peaks[:-1], peaks[1:])]
        bounds = [0, *valleys, len(f)]
        shares = [f[bounds[i]:bounds[i + 1]].sum() / total for i in range(len(peaks))]
        worst, merge = None, None
        for i, v in enumerate(valleys):
            dip = f[v] / min(f[peaks[i]], f[peaks[i + 1]])
            weak = min(shares[i], shares[i + 1]) < min_share
            score = dip + (1.0 if weak else 0.0)
            if (dip > max_dip or weak) and (worst is None or score > worst):
                worst, merge = score, i
        if merge is None:
            return peaks, valleys
        a, b = peaks[merge], peaks[merge + 1]
        peaks[merge:merge + 2] = [a if f[a] >= f[b] else b]
    return peaks, []


def extent(values: np.ndarray) -> tuple[float, float]:
    """The axis a density is drawn on: the data's 0.1-99.9 % range, padded by 5 % each side."""
    q0, q1 = np.quantile(values[np.isfinite(values)], [0.001, 0.999])
    pad = 0.05 * max(q1 - q0, 1e-6)
    return float(q0 - pad), float(q1 + pad)


def robust_sd_left(x: np.ndarray, f: np.ndarray, peak: int) -> float:
    """SD of a mode from its lower half-width at half maximum (negatives are symmetric)."""
    half = f[peak] / 2
    left = np.flatnonzero(f[:peak] < half)
    width = (x[peak] - x[left[-1]]) if left.size else (x[1] - x[0])
    return max(width / 1.1774, x[1] - x[0])  # HWHM = 1.1774 SD for a Gaussian


def threshold(values, p, keep: str, optional: bool, name: str):
    """The threshold between a 1-D negative and positive mode, and what it rests on: ``(t, basis, modes)``.

    ``p`` gives ``grid``, ``min_mode_share``, ``max_dip``, ``edge_margin``
    and (for an ``optional`` second mode) ``edge_sd``.

    Raises
    ------
    Review
        One mode where two are expected (``one_mode``), or the threshold at
        the edge of the data (``at_edge``).
    """
    lo, hi = extent(values)
    x, f = density(values, lo, hi, int(p.grid))
    peaks, valleys = modes(f, min_share=p.min_mode_share, max_dip=p.max_dip)
    margin = p.edge_margin * (hi - lo)
    if valleys:
        # above-gates keep the top mode (CD3+ T cells above the rest); below-gates the bottom one
        v = valleys[-1] if keep == "above" else valleys[0]
        t, basis = float(x[v]), "valley"
    elif optional:
        sd = robust_sd_left(x, f, peaks[0])
        t, basis = float(x[peaks[0]] + p.edge_sd * sd), "edge"
    else:
        raise Review("one_mode", f"{name}: one mode where a negative and a positive are expected")
    if not lo + margin <= t <= hi - margin:
        raise Review("at_edge", f"{name}: threshold {t:.3f} at the edge of the data [{lo:.3f}, {hi:.3f}]")
    return t, basis, [float(x[k]) for k in peaks]


# -- the fitting axes and the gate's units ----------------------------------------------------------

def negative_spread(linear: np.ndarray) -> float:
    """The SD of the negative population, from the values below 0 (half-normal: median |x| is 0.6745 SD)."""
    below = -linear[linear < 0]
    return float(max(np.median(below) / 0.6745 if below.size >= 20 else np.std(linear) / 10, 1.0))


class Axis:
    """A fluorescence dimension on the scale its populations are found on: arcsinh(x / c).

    The display transform (logicle with a fixed width) splits a negative
    population whose spread exceeds its linear region into two humps, a mode
    that is not there. Here the cofactor ``c`` is the sample's own spread of
    negatives (from the values below 0, which only negative populations
    reach), so a negative population is one mode near 0 and positive ones are
    on a log-like scale, whatever the instrument's gains. ``c`` may be given
    instead, measured on other events (:func:`negative_spread`) when these
    have no negative population of their own.
    """

    def __init__(self, linear: np.ndarray, c: float | None = None):
        self.c = negative_spread(linear) if c is None else float(c)
        self.u = np.arcsinh(linear / self.c)

    def linear(self, u: float) -> float:
        return float(self.c * np.sinh(u))


def gate_units(gs, dim, linear: float) -> float:
    """A compensated linear value in the units of the gate's dimension (its transform applied)."""
    xf = gs.get_transform(dim.transformation_ref) if dim.transformation_ref else None
    return float(linear) if xf is None else float(np.asarray(xf.apply(np.array([[linear]]))).ravel()[0])


# -- polygons ---------------------------------------------------------------------------------------

def polygon_vertices(gs, dims, axes, vertices) -> list[list[float]]:
    """Polygon vertices on the fitting axes (arcsinh) in the units of the gate's dimensions.

    One transform call a dimension: the values are :func:`gate_units`' (the
    transform works element by element), at a fraction of FlowKit's per-call cost.
    """
    return gate_points(gs, dims, axes, np.asarray(vertices, dtype=float)).tolist()


def gate_points(gs, dims, axes, points: np.ndarray) -> np.ndarray:
    """Points on the fitting axes (rows, arcsinh) in the units of the gate's dimensions, as an array.

    A polygon's edges are straight in the gate's units (FlowKit tests its
    events there), not on the fitting axes: what a polygon of few, long
    edges holds is measured on the events in these units.
    """
    cols = []
    for j, (d, ax) in enumerate(zip(dims, axes)):
        linear = (ax.c * np.sinh(points[:, j])).reshape(-1, 1)
        xf = gs.get_transform(d.transformation_ref) if d.transformation_ref else None
        cols.append(linear.ravel() if xf is None else np.asarray(xf.apply(linear), dtype=float).ravel())
    return np.column_stack(cols)


def polygon_gate(name, dims, axes, gs, vertices):
    """A FlowKit polygon gate on ``dims`` from vertices on the fitting ``axes``."""
    import flowkit as fk

    gate_vertices = polygon_vertices(gs, dims, axes, vertices)
    new = [fk.Dimension(d.id, compensation_ref=d.compensation_ref, transformation_ref=d.transformation_ref)
           for d in dims]
    return fk.gates.PolygonGate(name, new, gate_vertices)


def simplify(points: np.ndarray, eps: float) -> list[list[float]]:
    """Ramer-Douglas-Peucker: fewer vertices, none more than ``eps`` from the contour (fewer tests per event)."""
    keep = np.zeros(len(points), dtype=bool)
    far = int(np.argmax(np.hypot(*(points - points[0]).T)))  # a closed loop: simplify it as two open halves
    keep[[0, far, -1]] = True
    stack = [(0, far), (far, len(points) - 1)]
    while stack:
        a, b = stack.pop()
        if b <= a + 1:
            continue
        seg = points[b] - points[a]
        rel = points[a + 1:b] - points[a]
        norm = np.hypot(*seg) or 1.0
        d = np.abs(seg[0] * rel[:, 1] - seg[1] * rel[:, 0]) / norm
        i = int(np.argmax(d))
        if d[i] > eps:
            keep[a + 1 + i] = True
            stack += [(a, a + 1 + i), (a + 1 + i, b)]
    return points[keep][:-1].tolist() if np.allclose(points[0], points[-1]) else points[keep].tolist()


def simplify_to(points: np.ndarray, eps: float, max_vertices: int) -> list[list[float]]:
    """:func:`simplify` with the smallest tolerance from ``eps`` up (x1.25 a step) that leaves at most ``max_vertices``.

    A reviewer drags a gate by its handles: a contour simplified only to a
    fraction of a decade keeps some thirty vertices a few pixels apart. The
    tolerance grows until the polygon has few enough, so it stays as close
    to the contour as that many vertices allow.
    """
    tol = max(float(eps), 1e-6)
    vertices = simplify(points, tol)
    while len(vertices) > max_vertices:
        tol *= 1.25
        vertices = simplify(points, tol)
    return vertices


# -- Gaussian mixtures ------------------------------------------------------------------------------

def distance(gm, i: int, j: int) -> float:
    """The distance between two components of a mixture in pooled SDs (Mahalanobis, averaged covariance)."""
    d = gm.means_[i] - gm.means_[j]
    return float(np.sqrt(d @ np.linalg.solve((gm.covariances_[i] + gm.covariances_[j]) / 2, d)))


def count_level(post: np.ndarray) -> float:
    """The posterior level whose region holds as many non-Tregs as it leaves Tregs outside.

    Where two clusters overlap, the likelier-class boundary (0.5) misclassifies
    more cells of the larger one, and a count through it is biased towards
    the larger cluster. At this level the expected cells wrongly in and
    wrongly out are equal, so the count is the mixture's expected Treg count.
    """
    p = np.sort(post[post > 0])[::-1]
    if p.size == 0:
        return 0.5
    wrong_in = np.cumsum(1 - p)  # taking the k likeliest cells
    wrong_out = p.sum() - np.cumsum(p)
    k = int(np.argmin(np.abs(wrong_in - wrong_out)))
    return float(np.clip(p[k], 0.05, 0.95))


def log_normal_pdf(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x; mean, cov) for the rows of ``x``."""
    d = x - mean
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, d.T)
    return -0.5 * (z * z).sum(axis=0) - np.log(np.diag(chol)).sum() - 0.5 * len(mean) * np.log(2 * np.pi)


def marginal_posterior(gm, group, x: np.ndarray, dims: list[int]) -> np.ndarray:
    """The group's posterior from the mixture marginal to ``dims`` (the rows of ``x`` are in those dims)."""
    logs = np.column_stack([np.log(gm.weights_[j]) + log_normal_pdf(x, gm.means_[j][dims],
                                                                    gm.covariances_[j][np.ix_(dims, dims)])
                            for j in range(gm.n_components)])
    logs -= logs.max(axis=1, keepdims=True)
    dens = np.exp(logs)
    return dens[:, group].sum(axis=1) / dens.sum(axis=1)


def truncated(gm, group, k_axis: int, floor: float) -> float:
    """The share of the group's modelled cells below the window floor on FOXP3."""
    from scipy.stats import norm

    w = gm.weights_[group] / gm.weights_[group].sum()
    return float(sum(wi * norm.cdf(floor, gm.means_[j, k_axis], np.sqrt(gm.covariances_[j][k_axis, k_axis]))
                     for wi, j in zip(w, group)))


def posterior_polygon(gm, group, pts2: np.ndarray, dims: list[int], floor: float, f_axis: int, level: float,
                      *, contour_grid: int, eps: float, max_vertices: int | None = None):
    """The region where the group's marginal posterior on ``dims`` is at least ``level``, as a polygon (or None).

    Drawn on a ``contour_grid`` square grid over the points ``pts2``; zero
    below ``floor`` on the FOXP3 axis ``f_axis``; simplified to ``eps``, and
    further, when ``max_vertices`` is given, to at most that many vertices
    (:func:`simplify_to`).
    """
    contours = PosteriorContours(gm, group, pts2, dims, floor, f_axis, contour_grid=contour_grid)
    return contours.polygon(level, eps=eps, max_vertices=max_vertices)


class PosteriorContours:
    """The group's marginal posterior on a grid, computed once, and its polygon at any level.

    For a level search: each :meth:`polygon` is a contour of the same grid
    (a fraction of a millisecond), not a new evaluation of the mixture.
    """

    def __init__(self, gm, group, pts2: np.ndarray, dims: list[int], floor: float, f_axis: int, *,
                 contour_grid: int):
        import contourpy

        n = int(contour_grid)
        lo, hi = np.quantile(pts2, 0.0005, axis=0) - 0.5, np.quantile(pts2, 0.9995, axis=0) + 0.5
        gx, gy = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
        mesh = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
        p = marginal_posterior(gm, group, mesh, dims)
        p[mesh[:, f_axis] < floor] = 0.0  # FOXP3-negative: never Treg
        p = p.reshape(n, n)
        p[:, 0] = p[:, -1] = p[0, :] = p[-1, :] = 0.0  # closed contours
        w = gm.weights_[group] / gm.weights_[group].sum()
        self.centre = (w @ gm.means_[group])[dims]
        self._lines = contourpy.contour_generator(gx, gy, p)

    def polygon(self, level: float, *, eps: float, max_vertices: int | None = None):
        """The polygon at ``level`` around the group's centre, simplified (see :func:`posterior_polygon`), or None."""
        from matplotlib.path import Path as _Path

        best = None
        for line in self._lines.lines(level):
            if _Path(line).contains_point(self.centre) and (best is None or len(line) > len(best)):
                best = line
        if best is None:
            return None
        return simplify(np.asarray(best), float(eps)) if max_vertices is None else simplify_to(
            np.asarray(best), float(eps), int(max_vertices))


def scaled_to(polygon, centre, measure, target: float, *, steps: int = 24) -> list[list[float]]:
    """``polygon`` scaled about ``centre`` so that ``measure`` of it is nearest ``target``.

    A contour simplified to few vertices is no longer the contour: it cuts
    corners off one side and takes space on the other, and what it holds
    moves. Scaling the drawn shape (by 1/2 to 2, bisection) brings what it
    holds back to the target, as a reviewer would by scaling a gate, and
    ``measure`` (the events or the posterior mass inside) rises with the
    scale, so the search is exact to one event.
    """
    poly, c = np.asarray(polygon, dtype=float), np.asarray(centre, dtype=float)
    lo, hi = 0.5, 2.0
    best = (abs(measure(poly) - target), 1.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = measure(c + (poly - c) * mid)
        if abs(m - target) < best[0]:
            best = (abs(m - target), mid)
        if m < target:
            lo = mid
        else:
            hi = mid
    return (c + (poly - c) * best[1]).tolist()


# -- the ridgeline ----------------------------------------------------------------------------------

def ridgeline(m1, s1, m2, s2, n: int = 101) -> np.ndarray:
    """``n`` points of the ridgeline of (m1, s1) and (m2, s2), from m1 to m2.

    ``x(a) = [(1-a) S1^-1 + a S2^-1]^-1 [(1-a) S1^-1 m1 + a S2^-1 m2]``, ``a`` in
    [0, 1], holds every mode and saddle of a two-component density (Ray and
    Lindsay 2005), so the density along it decides their modality exactly in
    any dimension.
    """
    p1, p2 = np.linalg.inv(s1), np.linalg.inv(s2)
    a = np.linspace(0.0, 1.0, n)[:, None, None]
    return np.linalg.solve((1 - a) * p1 + a * p2, (1 - a) * (p1 @ m1)[:, None] + a * (p2 @ m2)[:, None])[..., 0]


def ridge_density(m1, s1, m2, s2, comps, n: int = 101) -> np.ndarray:
    """The density of the weighted Gaussians ``comps`` along the ridgeline (:func:`ridgeline`) of two of them."""
    xs = ridgeline(m1, s1, m2, s2, n)
    return sum(w * np.exp(log_normal_pdf(xs, m, s)) for m, s, w in comps)


def no_dip(f: np.ndarray, ratio: float) -> bool:
    """Whether the curve ``f`` has no dip below ``ratio`` of the lower of the highest points either side."""
    # the deepest dip: at each point, the density against the lower of the highest points either side
    # (the curve's lowest point may be an end, at a component's mean, with a dip between elsewhere)
    rim = np.minimum(np.maximum.accumulate(f), np.maximum.accumulate(f[::-1])[::-1])
    return bool(np.all(f >= ratio * rim))


def ridge_unimodal(first: tuple, second: tuple, *, ratio: float, n: int = 101) -> bool:
    """Whether two weighted Gaussians form one mode: no dip below ``ratio`` of the lower maximum on their ridgeline.

    Parameters
    ----------
    first, second
        ``(mean (d,), covariance (d, d), weight)`` of each Gaussian.
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
    >>> ridge_unimodal((np.zeros(1), one, 0.5), (np.full(1, 1.9), one, 0.5), ratio=1.0)  # at most 2 SD apart
    True
    >>> ridge_unimodal((np.zeros(1), one, 0.5), (np.full(1, 3.0), one, 0.5), ratio=1.0)
    False
    """
    (m1, s1, _), (m2, s2, _) = first, second
    return no_dip(ridge_density(m1, s1, m2, s2, [first, second], n), ratio)
