"""Every gate of the chain placed from the sample's own data, or the sample sent to a reviewer.

Positions of populations differ between labs, instruments, reagent lots and
days; only their order is fixed (negative below positive, CD25-intermediate
below CD25-high, FOXP3-negative below FOXP3+). So no gate here has a number
for where a population sits: each is placed from the sample by the method its
strategy manifest declares under ``placement``, in the order of the gate tree,
each on the events its (already placed) parent keeps, the way openCyto's
gating templates place gates:

``scatter_cloud`` (Lymphocytes)
    A 2-D Gaussian mixture (scikit-learn) on FSC-A x SSC-A of the events
    bright on the ``anchor`` marker (CD3: T cells are lymphocytes), the
    lymphocyte cloud being its heaviest component; the gate is the rectangle
    around that component's ellipse at Mahalanobis radius ``radius``.
``ratio_band`` (Singlets)
    A band around the FSC-A / FSC-H diagonal: the density of log(FSC-A / FSC-H)
    has the singlets' mode; the band ends at the density minimum towards the
    doublets, or ``edge_sd`` robust SDs from the mode where no doublet mode shows.
``density_valley`` (Live, CD3+, CD4+)
    On each dimension the 1-D density (scikit-learn ``KernelDensity`` on the
    binned events) and its modes; the threshold is the density minimum
    between the negative and the positive mode. ``keep`` says which side the
    gate keeps; a dimension whose ``second_mode`` is ``optional`` (dead cells
    may be few) takes the negative mode's upper edge when it shows one mode.
``treg_mixture`` (Treg)
    Gaussian mixtures (scikit-learn, the number of components by BIC) on the
    parent's CD25 x FOXP3 above the FOXP3-negative population; the Treg
    component is the one with the highest FOXP3 mean; the gate is the
    polygon at the posterior level where the expected cells wrongly in and
    wrongly out balance. The next-best mixture must agree on the Treg share.
``treg_cluster`` and ``treg_split`` (Treg and its child CD127lo)
    The Treg cluster of a mixture on CD25 x FOXP3 x CD127, its components
    merged by ridgeline modality; see :mod:`cytopipe.gating.treg_cluster`.

Every placed gate is an ordinary FlowKit gate added as a custom sample gate,
so the cascade and FlowKit count it alike and a reviewer's adjustment
replaces it. When a method finds no clear structure (one mode where two are
expected, too few events, a threshold at the edge of the axis, no separate
Treg cluster) the sample is flagged ``needs_review:<gate>:<reason>``: the
candidate gate (or, where there is none, the template's) is kept for the
reviewer, and the number does not enter the endpoint until a reviewer
approves or adjusts it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..exceptions import StrategyError
from .placement import AutoGateResult, sample_gatingml

__all__ = ["REVIEW_FLAG", "data_driven_gates", "needs_review_flags", "place_gates", "placement_specs"]

#: Flag token of a sample a reviewer must look at before its number counts.
REVIEW_FLAG = "needs_review"
_METHODS = ("scatter_cloud", "ratio_band", "density_valley", "treg_mixture", "treg_cluster", "treg_split")
_DEFAULTS: dict[str, Any] = {
    "prefilter_events": 50_000, "fit_events": 10_000, "seed": 0, "min_events": 200, "grid": 256,
    "min_mode_share": 0.02, "max_dip": 0.7, "edge_sd": 4.0, "edge_margin": 0.02,
}


def needs_review_flags(flags) -> list[str]:
    """The ``needs_review`` tokens among ``flags`` (a list, or the ``;``-joined column text)."""
    items = flags.split(";") if isinstance(flags, str) else list(flags or [])
    return [f for f in items if f == REVIEW_FLAG or f.startswith(REVIEW_FLAG + ":")]


def placement_specs(strategy) -> list[dict[str, Any]]:
    """The strategy's ``placement`` manifest entries with defaults filled (empty if none).

    Raises
    ------
    StrategyError
        An entry lacks ``gate_path`` or names an unknown ``method``.
    """
    out = []
    for i, spec in enumerate(strategy.manifest.get("placement") or []):
        if "gate_path" not in spec or spec.get("method") not in _METHODS:
            msg = (f"{strategy.directory / 'manifest.json'}: placement[{i}] needs a gate_path and a method "
                   f"among {list(_METHODS)}, got {spec!r}.")
            raise StrategyError(msg)
        out.append({**_DEFAULTS, **spec, "gate_path": tuple(spec["gate_path"])})
    return out


def data_driven_gates(sample, strategy, *, gating_strategy=None, skip=()) -> AutoGateResult | None:
    """The sample's gates placed from its data, by whichever way its strategy declares; None if it places none.

    ``placement`` (every gate of the chain, :func:`place_gates`) or the
    ``auto_gates`` of ``treg_auto@1.0.0`` (:func:`~cytopipe.gating.placement.fit_auto_gates`).
    Deterministic: placing again on the same file gives the same gates.
    """
    from .placement import auto_gate_specs, fit_auto_gates

    if placement_specs(strategy):
        return place_gates(sample, strategy, gating_strategy=gating_strategy, skip=skip)
    if auto_gate_specs(strategy):
        return fit_auto_gates(sample, strategy, gating_strategy=gating_strategy, skip=skip)
    return None


class _Review(Exception):
    """No clear structure: the message is the reason code and detail."""

    def __init__(self, code: str, detail: str, candidate=None, info=None):
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.candidate, self.info = code, detail, candidate, info or {}


def place_gates(sample, strategy, *, gating_strategy=None, skip=()) -> AutoGateResult:
    """Place every gate the strategy's manifest lists under ``placement`` on ``sample``.

    Parameters
    ----------
    sample : flowkit.Sample or cytopipe.fcs.LeanSample
        The sample, as read for gating.
    strategy : cytopipe.strategy.Strategy
        A strategy whose manifest declares ``placement``.
    gating_strategy : flowkit.GatingStrategy, optional
        The FlowKit strategy to add the placed gates to (e.g. one already
        carrying a reviewer's adjustments); a fresh one when omitted.
    skip
        Gate paths (``"root/..."``) a reviewer adjusted: their adjustment is
        used, and gates below are placed on the events it keeps.

    Returns
    -------
    AutoGateResult
        The strategy to count with, one record per gate (``status`` placed,
        review or reviewer, the ``reason``, the fitted values) and the
        ``needs_review:<gate>:<reason>`` flags.
    """

    from .engine import Context

    specs = placement_specs(strategy)
    gs = gating_strategy if gating_strategy is not None else strategy.gating_strategy()
    result = AutoGateResult(gating_strategy=gs)
    if not specs:
        return result
    raw = sample.get_events(source="raw")
    n = raw.shape[0]
    sub = raw if n <= int(specs[0]["prefilter_events"]) else np.take(raw, _prefilter_rows(n, specs[0]), axis=0)
    ctx = Context(sample, gs, sub)
    paths = strategy.gate_paths()
    parents = {p[:-1] for p in paths}
    ctx.prepare([gs.get_gate(p[-1], gate_path=p[:-1]) for p in paths])
    by_path = {s["gate_path"]: s for s in specs}
    rows: dict[tuple[str, ...], np.ndarray | None] = {("root",): None}
    skipped = set(skip)
    state: dict[str, Any] = {}  # what one placement leaves for a later one (the Treg cluster's fit)
    # BLAS/OpenMP threads cost more than they save on the few thousand points each fit sees, and a
    # batch already runs one sample per core: one thread for every fit (the numbers are the same)
    with _one_thread():
        for path in paths:
            parent = rows.get(path[:-1])
            spec = by_path.get(path)
            rec: dict[str, Any] = {"gate_path": "/".join(path)}
            if spec is not None and "/".join(path) in skipped:
                rec.update(status="reviewer", reason="a reviewer's adjustment of this gate is used")
                if spec["method"] == "treg_cluster":  # its fit still places the child gate below
                    try:
                        _place(spec, ctx, gs, gs.get_gate(path[-1], gate_path=path[:-1]), parent, path, state)
                    except _Review:
                        pass
            elif spec is not None:
                template = gs.get_gate(path[-1], gate_path=path[:-1])
                try:
                    gate, info = _place(spec, ctx, gs, template, parent, path, state)
                    rec.update(status="placed", **info)
                except _Review as e:
                    gate = e.candidate
                    rec.update(status="review", reason=str(e), **e.info)
                    result.qc_flags.append(f"{REVIEW_FLAG}:{path[-1]}:{e.code}")
                if gate is not None:
                    gs.add_gate(gate, path[:-1], sample_id=sample.id)
            if spec is not None:
                result.gates.append(rec)
            if path not in parents:  # a leaf: no gate is placed on its events
                continue
            gate = gs.get_gate(path[-1], gate_path=path[:-1], sample_id=sample.id)
            inside = ctx.inside(gate, parent)
            rows[path] = np.flatnonzero(inside) if parent is None else parent[inside]
    result.gatingml = sample_gatingml(gs, sample.id)
    return result


def _prefilter_rows(n: int, spec) -> np.ndarray:
    """The rows of an ``n``-event file that placement sees, spread evenly over the whole acquisition.

    With ``prefilter_exact`` exactly ``prefilter_events`` of them; otherwise
    (1.0.0, 1.1.0) every k-th event, k = ceil(n / prefilter_events), which
    leaves a file of 1.5 times the cap only half of it.
    """
    cap = int(spec["prefilter_events"])
    if spec.get("prefilter_exact"):
        return (np.arange(cap, dtype=np.int64) * n) // cap
    return np.arange(0, n, -(-n // cap))


_CONTROLLER: list = []


def _one_thread():
    """A context limiting BLAS and OpenMP to one thread, from one controller per process.

    ``threadpool_limits`` looks up the loaded libraries anew each time (about
    4 ms, a tenth of placing every gate); the controller is made once, after
    scikit-learn has loaded its own OpenMP runtime.
    """
    if not _CONTROLLER:
        import sklearn.cluster  # noqa: F401  (its OpenMP runtime, and scipy's BLAS, loaded first)
        import sklearn.mixture  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0].limit(limits=1)


def _subset(rows: np.ndarray | None, n_all: int, spec) -> np.ndarray:
    """At most ``fit_events`` of the parent's rows, a fixed-seed choice."""
    idx = np.arange(n_all) if rows is None else rows
    if idx.size > spec["fit_events"]:
        rng = np.random.default_rng(spec["seed"])
        # the rows are ascending, so a mask gives the chosen rows sorted, without sorting them
        chosen = np.zeros(idx.size, dtype=bool)
        chosen[rng.choice(idx.size, int(spec["fit_events"]), replace=False)] = True
        idx = idx[chosen]
    return idx


def _negative_spread(linear: np.ndarray) -> float:
    """The SD of the negative population, from the values below 0 (half-normal: median |x| is 0.6745 SD)."""
    below = -linear[linear < 0]
    return float(max(np.median(below) / 0.6745 if below.size >= 20 else np.std(linear) / 10, 1.0))


class _Axis:
    """A fluorescence dimension on the scale its populations are found on: arcsinh(x / c).

    The display transform (logicle with a fixed width) splits a negative
    population whose spread exceeds its linear region into two humps, a mode
    that is not there. Here the cofactor ``c`` is the sample's own spread of
    negatives (from the values below 0, which only negative populations
    reach), so a negative population is one mode near 0 and positive ones are
    on a log-like scale, whatever the instrument's gains. ``c`` may be given
    instead, measured on other events (:func:`_negative_spread`) when these
    have no negative population of their own.
    """

    def __init__(self, linear: np.ndarray, c: float | None = None):
        self.c = _negative_spread(linear) if c is None else float(c)
        self.u = np.arcsinh(linear / self.c)

    def linear(self, u: float) -> float:
        return float(self.c * np.sinh(u))


def _gate_units(gs, dim, linear: float) -> float:
    """A compensated linear value in the units of the gate's dimension (its transform applied)."""
    xf = gs.get_transform(dim.transformation_ref) if dim.transformation_ref else None
    return float(linear) if xf is None else float(np.asarray(xf.apply(np.array([[linear]]))).ravel()[0])


def _polygon_vertices(gs, dims, axes, vertices) -> list[list[float]]:
    """Polygon vertices on the fitting axes (arcsinh) in the units of the gate's dimensions.

    One transform call a dimension: the values are :func:`_gate_units`' (the
    transform works element by element), at a fraction of FlowKit's per-call cost.
    """
    cols = []
    for j, (d, ax) in enumerate(zip(dims, axes)):
        linear = np.array([[ax.linear(v[j])] for v in vertices], dtype=float)
        xf = gs.get_transform(d.transformation_ref) if d.transformation_ref else None
        cols.append(linear.ravel() if xf is None else np.asarray(xf.apply(linear), dtype=float).ravel())
    return [[float(c[i]) for c in cols] for i in range(len(vertices))]


def _place(spec, ctx, gs, template, parent, path, state):
    if spec["method"] == "treg_split":  # drawn from the Treg cluster's fit, on the events its parent keeps
        from .treg_cluster import treg_split

        return treg_split(spec, ctx, gs, template, parent, path, state)
    # the scatter cloud finds its CD3-bright anchor on more events than its mixture is fitted on
    rows = _subset(parent, ctx.raw.shape[0], {**spec, "fit_events": spec.get("anchor_events", spec["fit_events"])})
    if rows.size < spec["min_events"]:
        raise _Review("too_few_events", f"{rows.size} events to place {path[-1]} (< {spec['min_events']})")
    method = spec["method"]
    if method == "density_valley":
        return _density_valley(spec, ctx, gs, template, rows, path)
    if method == "ratio_band":
        return _ratio_band(spec, ctx, gs, template, rows, path)
    if method == "scatter_cloud":
        return _scatter_cloud(spec, ctx, gs, template, rows, path)
    if method == "treg_cluster":
        from .treg_cluster import treg_cluster

        return treg_cluster(spec, ctx, gs, template, rows, path, state)
    return _treg_mixture(spec, ctx, gs, template, rows, path)


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


def _extent(values: np.ndarray) -> tuple[float, float]:
    """The axis a density is drawn on: the data's 0.1-99.9 % range, padded by 5 % each side."""
    q0, q1 = np.quantile(values[np.isfinite(values)], [0.001, 0.999])
    pad = 0.05 * max(q1 - q0, 1e-6)
    return float(q0 - pad), float(q1 + pad)


def _robust_sd_left(x: np.ndarray, f: np.ndarray, peak: int) -> float:
    """SD of a mode from its lower half-width at half maximum (negatives are symmetric)."""
    half = f[peak] / 2
    left = np.flatnonzero(f[:peak] < half)
    width = (x[peak] - x[left[-1]]) if left.size else (x[1] - x[0])
    return max(width / 1.1774, x[1] - x[0])  # HWHM = 1.1774 SD for a Gaussian


def _threshold(values, spec, keep: str, optional: bool, name: str):
    """The threshold between a 1-D negative and positive mode, and what it rests on."""
    lo, hi = _extent(values)
    x, f = density(values, lo, hi, int(spec["grid"]))
    peaks, valleys = modes(f, min_share=spec["min_mode_share"], max_dip=spec["max_dip"])
    margin = spec["edge_margin"] * (hi - lo)
    if valleys:
        # above-gates keep the top mode (CD3+ T cells above the rest); below-gates the bottom one
        v = valleys[-1] if keep == "above" else valleys[0]
        t, basis = float(x[v]), "valley"
    elif optional:
        sd = _robust_sd_left(x, f, peaks[0])
        t, basis = float(x[peaks[0]] + spec["edge_sd"] * sd), "edge"
    else:
        raise _Review("one_mode", f"{name}: one mode where a negative and a positive are expected")
    if not lo + margin <= t <= hi - margin:
        raise _Review("at_edge", f"{name}: threshold {t:.3f} at the edge of the data [{lo:.3f}, {hi:.3f}]")
    return t, basis, [float(x[p]) for p in peaks]


def _density_valley(spec, ctx, gs, template, rows, path):
    import flowkit as fk

    keep = spec["keep"]  # {dimension: "above" | "below"}
    optional = set(spec.get("optional_second_mode", ()))
    dims, info = [], {"bounds": {}, "bounds_linear": {}, "basis": {}, "modes": {}, "n_fit": int(rows.size)}
    for d in template.dimensions:
        side = keep.get(d.id)
        lo, hi = d.min, d.max
        if side is not None:
            axis = _Axis(ctx.values(d, rows))
            t, basis, peaks = _threshold(axis.u, spec, side, d.id in optional, f"{path[-1]} on {d.id}")
            linear = axis.linear(t)
            t = _gate_units(gs, d, linear)
            lo, hi = (t, None) if side == "above" else (None, t)
            info["bounds"][d.id], info["basis"][d.id] = round(t, 5), basis
            info["modes"][d.id] = [round(axis.linear(u), 1) for u in peaks]
            info["bounds_linear"][d.id] = round(linear, 2)
        dims.append(fk.Dimension(d.id, compensation_ref=d.compensation_ref,
                                 transformation_ref=d.transformation_ref, range_min=lo, range_max=hi))
    return fk.gates.RectangleGate(path[-1], dims), info


# -- scatter ----------------------------------------------------------------------------------------

def _ratio_band(spec, ctx, gs, template, rows, path):
    import flowkit as fk

    a_dim, h_dim = template.dimensions  # FSC-A, FSC-H
    a, h = ctx.values(a_dim, rows), ctx.values(h_dim, rows)
    ok = (a > 0) & (h > 0)
    r = np.log(a[ok] / h[ok])
    lo, hi = float(spec.get("range", (-0.5, 1.5))[0]), float(spec.get("range", (-0.5, 1.5))[1])
    x, f = density(r, lo, hi, int(spec["grid"]))
    peaks, valleys = modes(f, min_share=spec["min_mode_share"], max_dip=spec["max_dip"])
    main = max(peaks, key=lambda p: f[p])  # the singlets are most events of the parent
    sd = _robust_sd_left(x, f, main)
    upper_valleys = [v for v in valleys if v > main]
    up = float(x[upper_valleys[0]]) if upper_valleys else float(x[main] + spec["edge_sd"] * sd)
    down = float(x[main] - spec["edge_sd"] * sd)
    if not lo < down < up < hi:
        raise _Review("at_edge", f"{path[-1]}: band {down:.3f}..{up:.3f} of log(FSC-A/FSC-H) at the axis edge")
    r_lo, r_hi = float(np.exp(down)), float(np.exp(up))
    top = 262144.0 * 4
    vertices = [[0.0, 0.0], [top, top / r_hi], [top, top / r_lo], [0.0, 0.0 + 1e-9]]
    gate = fk.gates.PolygonGate(path[-1], [fk.Dimension(a_dim.id, compensation_ref=a_dim.compensation_ref),
                                           fk.Dimension(h_dim.id, compensation_ref=h_dim.compensation_ref)],
                                vertices)
    info = {"ratio_band": [round(r_lo, 4), round(r_hi, 4)], "basis": "valley" if upper_valleys else "edge",
            "n_fit": int(rows.size)}
    return gate, info


def _scatter_cloud(spec, ctx, gs, template, rows, path):
    import flowkit as fk
    from sklearn.mixture import GaussianMixture

    anchor = _anchor_dimension(spec, gs, ctx)
    axis = _Axis(ctx.values(anchor, rows))
    t, _, _ = _threshold(axis.u, spec, "above", False, f"{path[-1]} anchor {anchor.id}")
    bright = _subset(rows[axis.u >= t], 0, spec)
    t = axis.linear(t)
    if bright.size < spec["min_events"]:
        raise _Review("too_few_events", f"{path[-1]}: {bright.size} {anchor.id}-bright events")
    fx, fy = template.dimensions
    pts = np.column_stack([ctx.values(fx, bright), ctx.values(fy, bright)])
    scale = np.maximum(pts.std(axis=0), 1.0)
    # tol: scikit-learn's default unless the manifest says (1.2.0 on: 0.01; what that moves is in its CHANGELOG)
    gm = GaussianMixture(int(spec.get("components", 3)), covariance_type="full", random_state=int(spec["seed"]),
                         init_params="k-means++", reg_covar=1e-4,  # k-means++: no Lloyd threads
                         tol=float(spec.get("tol", 1e-3))).fit(pts / scale)
    k = int(np.argmax(gm.weights_))
    mean, cov = gm.means_[k] * scale, gm.covariances_[k] * np.outer(scale, scale)
    # the box around the cloud's ellipse: the events of a rectangle are decided by two comparisons each
    half = float(spec.get("radius", 3.5)) * np.sqrt(np.diag(cov))
    gate = fk.gates.RectangleGate(path[-1], [
        fk.Dimension(d.id, compensation_ref=d.compensation_ref, range_min=float(mean[i] - half[i]),
                     range_max=float(mean[i] + half[i])) for i, d in enumerate((fx, fy))])
    info = {"centre": [round(float(c), 1) for c in mean], "weight": round(float(gm.weights_[k]), 4),
            "anchor": anchor.id, "anchor_threshold": round(t, 5), "n_fit": int(bright.size)}
    return gate, info


def _anchor_dimension(spec, gs, ctx):
    import flowkit as fk

    ref = spec["anchor"]  # {"dimension": PnN, "compensation_ref": ..., "transformation_ref": ...}
    return fk.Dimension(ref["dimension"], compensation_ref=ref.get("compensation_ref", "FCS"),
                        transformation_ref=ref.get("transformation_ref"))


# -- the Treg cluster -------------------------------------------------------------------------------

def _treg_mixture(spec, ctx, gs, template, rows, path):
    import flowkit as fk
    from sklearn.mixture import GaussianMixture

    dims = list(template.dimensions)
    ids = [d.id for d in dims]
    k_axis = ids.index(spec["treg_axis"])  # FOXP3
    axes = [_Axis(ctx.values(d, rows)) for d in dims]
    pts = np.column_stack([a.u for a in axes])
    # FOXP3-negative cells (most conventional CD4 cells) are a negative population: below
    # ``window_sd`` of the sample's own negative spread on FOXP3 they cannot be Tregs, and
    # their broad continuum would take the mixture's components from the clusters that matter
    floor = float(np.arcsinh(spec.get("window_sd", 2.0)))
    keep = pts[:, k_axis] >= floor
    fit = pts[keep]
    if fit.shape[0] < spec["min_events"] // 4:
        raise _Review("no_treg_cluster", f"{fit.shape[0]} CD4 cells above the FOXP3-negative population")
    if fit.shape[0] > spec["fit_events"]:
        fit = fit[np.random.default_rng(spec["seed"]).choice(fit.shape[0], int(spec["fit_events"]), replace=False)]
    fits = [GaussianMixture(k, covariance_type="full", random_state=int(spec["seed"]), reg_covar=1e-5,
                            max_iter=200).fit(fit) for k in spec.get("components", (2, 3, 4)) if k <= len(fit)]
    fits.sort(key=lambda g: g.bic(fit))
    gm = fits[0]
    k, group, rest = _treg_group(gm, k_axis, spec)
    sep = min((_distance(gm, j, k) for j in rest), default=float("inf"))
    # a second model about as well supported (BIC within ``max_bic_gap``: beyond 10 the evidence against
    # it is very strong) must give the same Treg share: a cluster merged with its neighbour in one model
    # and not in the other is no clear structure
    rivals = [g for g in fits[:2] if g.bic(fit) - fits[0].bic(fit) <= float(spec.get("max_bic_gap", 10.0))]
    shares = [_treg_share(g, pts[keep], k_axis, spec) * keep.mean() * 100 for g in rivals]
    info: dict[str, Any] = {"n_fit": int(rows.size), "n_window": int(keep.sum()), "components": gm.n_components,
                            "weights": np.round(gm.weights_, 4).tolist(), "means": np.round(gm.means_, 4).tolist(),
                            "separation": round(sep, 3) if np.isfinite(sep) else None}
    info["treg_pct_by_model"] = [round(v, 3) for v in shares]
    post = np.zeros(len(pts))
    post[keep] = gm.predict_proba(pts[keep])[:, group].sum(axis=1)
    level = _count_level(post) if spec.get("boundary", "count") == "count" else 0.5
    info["posterior_level"] = round(level, 4)
    vertices = _posterior_polygon(gm, group, pts, floor, k_axis, spec, level)
    if vertices is None:
        raise _Review("no_treg_cluster", "no closed region where the Treg component is the likeliest")
    from matplotlib.path import Path as _Path

    inside = _Path(vertices).contains_points(pts)
    ambiguous = 100.0 * ((1 - post[inside]).sum() + post[~inside].sum()) / len(pts)
    info["ambiguous_pct"] = round(float(ambiguous), 3)
    gate_vertices = _polygon_vertices(gs, dims, axes, vertices)
    new = [fk.Dimension(d.id, compensation_ref=d.compensation_ref, transformation_ref=d.transformation_ref)
           for d in dims]
    gate = fk.gates.PolygonGate(path[-1], new, gate_vertices)
    # every doubt below keeps this gate as the reviewer's candidate: the best model's, not the template's
    if sep < float(spec.get("min_separation", 2.0)):
        raise _Review("no_treg_cluster", f"the Treg component is {sep:.2f} pooled SDs from the next", gate, info)
    if len(shares) == 2 and abs(shares[0] - shares[1]) > float(spec.get("max_disagreement_pp", 0.5)):
        ks = [g.n_components for g in rivals]
        raise _Review("models_disagree", f"mixtures of {ks[0]} and {ks[1]} components give {shares[0]:.2f} and "
                      f"{shares[1]:.2f} % Tregs of CD4", gate, info)
    if ambiguous > float(spec.get("max_ambiguous_pct", 1.0)):
        raise _Review("ambiguous", f"{ambiguous:.2f} % of CD4 cells are as likely Treg as not", gate, info)
    return gate, info


def _treg_group(gm, k_axis: int, spec):
    """The Treg component (highest FOXP3 mean), the components of the same cluster, and the rest.

    A mixture may split one cluster into several components. A component is
    the Tregs' too when it lies within ``merge_sd`` pooled SDs of the Treg
    component, or when it is as FOXP3-bright (means less than
    ``merge_foxp3_sd`` pooled FOXP3 SDs apart: FOXP3 is what tells Tregs from
    activated conventional cells) and within ``merge_far_sd``.
    """
    k = int(np.argmax(gm.means_[:, k_axis]))
    near, far, fox = (float(spec.get(key, v)) for key, v in
                      (("merge_sd", 1.75), ("merge_far_sd", 3.0), ("merge_foxp3_sd", 1.0)))

    def same(j: int) -> bool:
        d = _distance(gm, j, k)
        sd = np.sqrt((gm.covariances_[j][k_axis, k_axis] + gm.covariances_[k][k_axis, k_axis]) / 2)
        return d < near or (d < far and abs(gm.means_[j, k_axis] - gm.means_[k, k_axis]) / sd < fox)

    group = [k] + [j for j in range(gm.n_components) if j != k and same(j)]
    return k, group, [j for j in range(gm.n_components) if j not in group]


def _treg_share(gm, pts: np.ndarray, k_axis: int, spec) -> float:
    """The mixture's expected share of Tregs among ``pts`` (mean posterior of the Treg group)."""
    _, group, _ = _treg_group(gm, k_axis, spec)
    return float(gm.predict_proba(pts)[:, group].sum(axis=1).mean())


def _distance(gm, i: int, j: int) -> float:
    d = gm.means_[i] - gm.means_[j]
    return float(np.sqrt(d @ np.linalg.solve((gm.covariances_[i] + gm.covariances_[j]) / 2, d)))


def _count_level(post: np.ndarray) -> float:
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


def _posterior_polygon(gm, group, pts, floor: float, k_axis: int, spec, level: float = 0.5):
    """The region where the Treg components' posterior is at least ``level``, as a polygon (or None)."""
    import contourpy

    n = int(spec.get("contour_grid", 96))
    lo, hi = np.quantile(pts, 0.0005, axis=0) - 0.5, np.quantile(pts, 0.9995, axis=0) + 0.5
    gx, gy = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    mesh = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
    p = gm.predict_proba(mesh)[:, group].sum(axis=1).reshape(n, n)
    p[(mesh[:, k_axis] < floor).reshape(n, n)] = 0.0  # FOXP3-negative: never Treg
    p[:, 0] = p[:, -1] = p[0, :] = p[-1, :] = 0.0  # closed contours
    centre = gm.means_[int(group[0])]
    best = None
    from matplotlib.path import Path as _Path

    for line in contourpy.contour_generator(gx, gy, p).lines(level):
        if _Path(line).contains_point(centre) and (best is None or len(line) > len(best)):
            best = line
    return None if best is None else _simplify(np.asarray(best), float(spec.get("simplify", 0.01)))


def _simplify(points: np.ndarray, eps: float) -> list[list[float]]:
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

