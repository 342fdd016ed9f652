"""The CD4 -> Treg rectangle of ``treg_auto@1.0.0``, declared under ``auto_gates`` in its manifest.

FOXP3 staining brightness changes from one staining run to the next (0.5x to
1.5x), CD25 is a continuum and activated conventional CD4 cells are CD25+
FOXP3-dim, so a fixed rectangle lands
percentage points off. Here the Treg gate of each sample is re-placed from its
own data and added to FlowKit as a *custom sample gate*: an ordinary
``RectangleGate`` with the template's dimensions, transforms and compensation,
so FlowKit (and the cascade) count it like any other gate, a reviewer's
``--adjust-gate`` replaces it like any other gate, and ``export_gatingml``
writes it to ``DIR/sample_gates/`` (one file a sheet row, named in ``miflowcyt.json``).

Method (declared per gate under ``auto_gates`` in the strategy manifest)
-----------------------------------------------------------------------
1. At most ``prefilter_events`` of the file's events, evenly spaced along
   the acquisition, are gated through the upstream gates with the cascade;
   at most ``subsample_events`` of the parent (CD4+) events in it are kept
   (a fixed-seed random choice), so the fit costs the same on any file size.
2. In the gate's transformed plane (logicle CD25 x FOXP3) the cells inside
   the ``fit_window`` (which leaves out the bulk of CD25-low FOXP3-negative
   conventional cells) are binned (``bins`` x ``bins``) and a Gaussian
   mixture is fitted to the bin counts by EM, started from ``init_means``
   (Treg, activated conventional, conventional tail). The Treg component is
   the one with the highest mean on the ``treg_component`` dimension (FOXP3).
3. The gate is the rectangle (lower bounds on both dimensions, open above)
   with the fewest expected misclassified cells (Treg outside + non-Treg
   inside, from the posteriors), thresholds on bin edges; it is then applied
   to *all* events of the sample.

How this method compares with others on the generator's hard files is in
docs/performance.md ("treg_auto@1.0.0's fit").

The conventional CD4 cells are not Gaussian in logicle space (a log-normal
CD25 continuum crossing logicle's linear region), so mixtures over all CD4
cells spend components on them and split or lose the Treg cluster; the fit
window removes most of them. ``make bench`` repeats the comparison with
scikit-learn's ``GaussianMixture(3)`` on the same window and subsample,
classifying events by posterior: it misses by several percentage points on
hard files, and its fit (10-30 ms on 20,000 points here; more with k-means
restarts) costs more than the binned EM's (~8 ms for ~1,300 filled bins,
whatever the event count). A fitted rectangle is an ordinary FlowKit gate
that FlowKit itself reproduces. In ``process_sample`` the fit gates its own
subsample through the upstream gates, then one blockwise pass gates every
event with the fitted gate in place: on a 1M-event file the fit adds ~11-17 %
to a sample's processing (``make bench``). Handing the whole sample's
upstream rows to the fit (``rows=``) and to the count (``known_rows=``) gives
the same gates and counts but measured slower (+37 vs +25 ms), as the final
gate then runs outside the cache-sized blocks.
It is deterministic: no random initialisation, the parent subset uses a fixed seed.

Guard rails: too few parent events in the subset, too few cells in the fit
window, one mode only (the Treg and the next component closer than
``min_separation`` pooled SDs on FOXP3, or a Treg weight under
``min_weight``), or a fitted threshold outside the manifest's ``plausible``
window: the template gate is kept and the sample gets the QC flag
``auto_gate_fallback`` with the reason in the result, never a silent number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...exceptions import StrategyError
from ._base import _Bad, as_float, as_int, as_str, as_strs, build_params, entry_where, param
from .result import AutoGateResult, sample_gatingml

__all__ = ["AutoGateParams", "FALLBACK_FLAG", "auto_gate_problems", "auto_gate_specs", "fit_auto_gates"]

FALLBACK_FLAG = "auto_gate_fallback"


def _as_window(v) -> dict[str, tuple[float, float | None]]:
    expected = "an object {detector: [low, high or null]}"
    if not isinstance(v, dict) or not v:
        raise _Bad(expected)
    out = {}
    for k, pair in v.items():
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise _Bad(expected)
        out[k] = (as_float(pair[0]), None if pair[1] is None else as_float(pair[1]))
    return out


def _as_ranges(v) -> dict[str, tuple[float, float]]:
    expected = "an object {detector: [low, high]} with low <= high"
    if not isinstance(v, dict) or not v:
        raise _Bad(expected)
    out = {}
    for k, pair in v.items():
        if not isinstance(pair, list | tuple) or len(pair) != 2 or pair[1] is None:
            raise _Bad(expected)
        lo, hi = as_float(pair[0]), as_float(pair[1])
        if lo > hi:
            raise _Bad(expected)
        out[k] = (pair[0], pair[1])  # as written: the fallback reason quotes them
    return out


def _as_means(v) -> tuple[tuple[float, float], ...]:
    expected = "a list of at least two [x, y] starting means"
    if not isinstance(v, list | tuple) or len(v) < 2 or not all(isinstance(m, list | tuple) and len(m) == 2
                                                                 for m in v):
        raise _Bad(expected)
    return tuple((as_float(m[0]), as_float(m[1])) for m in v)


@dataclass(frozen=True, kw_only=True)
class AutoGateParams:
    """The keys of an ``auto_gates`` entry of the manifest.

    Attributes
    ----------
    gate_path, method, description
        The gate fitted; the method (only ``binned_em_rectangle``); words for readers.
    treg_component
        The detector whose highest-mean component is the Tregs' (FOXP3).
    fit_window
        ``{detector: [low, high or null]}`` in the gate's transformed units: the events fitted.
    init_means
        The components' starting means (Treg, activated conventional, conventional tail).
    plausible
        ``{detector: [low, high]}``: a fitted threshold outside falls back to the template.
    prefilter_events, subsample_events, seed
        The file's events gated for the fit, the parent's events kept, the seed of that choice.
    bins, max_iter
        The histogram's bins a dimension; EM's iterations at most.
    min_parent_events, min_window_events, min_separation, min_weight
        Guard rails: fewer events, a Treg component closer (pooled FOXP3 SDs)
        or lighter than these fall back to the template.
    """

    gate_path: tuple[str, ...] = param(kind=as_strs)
    method: str = param("binned_em_rectangle", as_str, choices=("binned_em_rectangle",))
    description: str = param("", kind=lambda v: v if isinstance(v, str) else as_str(v), repr=False)
    treg_component: str = param(kind=as_str)
    fit_window: dict[str, tuple[float, float | None]] = param(kind=_as_window)
    init_means: tuple[tuple[float, float], ...] = param(kind=_as_means)
    plausible: dict[str, tuple[float, float]] = param(kind=_as_ranges)
    prefilter_events: int = param(80_000, as_int, lo=1)
    subsample_events: int = param(20_000, as_int, lo=1)
    seed: int = param(0, as_int, lo=0)
    bins: int = param(100, as_int, lo=2)
    max_iter: int = param(100, as_int, lo=1)
    min_parent_events: int = param(1000, as_int, lo=0)
    min_window_events: int = param(100, as_int, lo=0)
    min_separation: float = param(2.0, as_float, lo=0)
    min_weight: float = param(0.01, as_float, lo=0, hi=1)

    def check(self) -> list[tuple[str, str]]:
        if set(self.fit_window) != set(self.plausible) or self.treg_component not in self.fit_window:
            return [("fit_window", f"names {sorted(self.fit_window)}, 'plausible' {sorted(self.plausible)} "
                                   f"and 'treg_component' {self.treg_component!r}: all must name the gate's "
                                   "two dimensions.")]
        return []


def auto_gate_problems(manifest: dict[str, Any], where) -> tuple[list[AutoGateParams], list[str]]:
    """``(params, problems)`` of the manifest's ``auto_gates`` entries; ``where`` is the manifest file."""
    out, problems = [], []
    for i, spec in enumerate(manifest.get("auto_gates") or []):
        at = entry_where(where, "auto_gates", i, spec)
        if not isinstance(spec, dict):
            problems.append(f"{at}: an entry must be an object, got {spec!r}.")
            continue
        params, found = build_params(AutoGateParams, spec, at)
        problems += found
        if params is not None:
            out.append(params)
    return out, problems


def auto_gate_specs(strategy) -> list[AutoGateParams]:
    """The strategy's ``auto_gates`` manifest entries as checked parameters (empty if none).

    Raises
    ------
    StrategyError
        An entry has an unknown key, lacks a required one (``gate_path``,
        ``fit_window``, ``init_means``, ``plausible``, ``treg_component``) or
        has a value of the wrong type or out of range.
    """
    out, problems = auto_gate_problems(strategy.manifest, strategy.directory / "manifest.json")
    if problems:
        more = f" ({len(problems) - 1} more: see `cytopipe strategy validate`)" if len(problems) > 1 else ""
        raise StrategyError(problems[0] + more)
    return out


def fit_auto_gates(sample, strategy, *, gating_strategy=None, skip=(), rows=None) -> AutoGateResult:
    """Fit every auto gate of ``strategy`` on ``sample`` and add it as a custom sample gate.

    Parameters
    ----------
    sample : flowkit.Sample
        As read by :func:`cytopipe.fcs.read.read_fcs`.
    strategy : cytopipe.strategy.registry.Strategy
        A strategy whose manifest declares ``auto_gates``.
    gating_strategy : flowkit.GatingStrategy, optional
        The FlowKit strategy to add the gates to (e.g. one already carrying a
        reviewer's adjustments); a fresh one when omitted.
    skip
        Gate paths (``"root/..."`` strings) a reviewer adjusted: their
        adjustment wins and no gate is fitted.
    rows : dict, optional
        The sample's events in the gates above the auto gates, as
        :func:`cytopipe.gating.api.gate_rows` gives them on ``gating_strategy``
        (path to event indices): the fit's parent events are taken from
        them instead of gating the fit's subsample again. Same events, same
        fit.

    Returns
    -------
    AutoGateResult

    Examples
    --------
    >>> res = fit_auto_gates(read_fcs("tube.fcs"), load_strategy("treg_auto@1.0.0"))  # doctest: +SKIP
    >>> res.gates[0]["status"]  # doctest: +SKIP
    'fitted'
    """
    import flowkit as fk

    gs = gating_strategy if gating_strategy is not None else strategy.gating_strategy()
    result = AutoGateResult(gating_strategy=gs)
    fitted: list[tuple[str, ...]] = []
    for spec in auto_gate_specs(strategy):
        path = spec.gate_path
        rec: dict[str, Any] = {"gate_path": "/".join(path), "status": "fallback", "reason": ""}
        if "/".join(path) in set(skip):
            rec.update(status="reviewer", reason="a reviewer's adjustment of this gate is used")
        else:
            template = gs.get_gate(path[-1], gate_path=path[:-1])
            try:
                above = rows if rows is not None and not any(
                    path[:len(p)] == p for p in fitted) else None  # not below a gate fitted just now
                bounds, info = _fit_rectangle(sample, gs, strategy, path, template, spec, above)
            except _Fallback as e:
                rec["reason"] = str(e)
            else:
                dims = [fk.Dimension(d.id, compensation_ref=d.compensation_ref,
                                     transformation_ref=d.transformation_ref,
                                     range_min=bounds[d.id], range_max=d.max) for d in template.dimensions]
                gs.add_gate(fk.gates.RectangleGate(path[-1], dims), path[:-1], sample_id=sample.id)
                rec.update(status="fitted", **info)
                fitted.append(tuple(path))
        if rec["status"] == "fallback" and FALLBACK_FLAG not in result.qc_flags:
            result.qc_flags.append(FALLBACK_FLAG)
        result.gates.append(rec)
    result.gatingml = sample_gatingml(gs, sample.id)
    return result


class _Fallback(Exception):
    """No clear population: keep the template gate (the message is the reason)."""


def _parent_subset(sample, gs, strategy, parent: tuple[str, ...], spec, known=None):
    """A cascade Context on a fixed-seed subset of events and the parent's rows in it.

    The subset is every k-th event; its parent rows are gated here, or taken
    from ``known`` (the whole sample's rows of ``parent``) when given.
    """
    from ..engine import Context

    raw = sample.get_events(source="raw")
    n = raw.shape[0]
    rng = np.random.default_rng(spec.seed)
    step = -(-n // spec.prefilter_events) if n > spec.prefilter_events else 1
    if step > 1:  # every k-th event: spans the whole acquisition, no sort
        raw = np.take(raw, np.arange(0, n, step), axis=0)  # one pass (np.take: 2x a strided copy); then cache-resident
    ctx = Context(sample, gs, raw)
    if known is not None and known.get(parent) is not None:
        full = known[parent]
        kept = full[full % step == 0] // step if step > 1 else full
        ctx.prepare([gs.get_gate(spec.gate_path[-1], gate_path=spec.gate_path[:-1])])
        if kept.size > spec.subsample_events:
            kept = np.sort(rng.choice(kept, spec.subsample_events, replace=False))
        return ctx, kept
    rows: dict[tuple[str, ...], np.ndarray | None] = {("root",): None}
    upstream = [p for p in strategy.gate_paths() if len(p) <= len(parent) and p == parent[: len(p)]]
    gates = [gs.get_gate(p[-1], gate_path=p[:-1], sample_id=sample.id) for p in upstream]
    ctx.prepare(gates + [gs.get_gate(spec.gate_path[-1], gate_path=spec.gate_path[:-1])])
    for p, gate in zip(upstream, gates):
        before = rows[p[:-1]]
        inside = ctx.inside(gate, before)
        rows[p] = np.flatnonzero(inside) if before is None else before[inside]
    kept = rows[parent]
    if kept.size > spec.subsample_events:
        kept = np.sort(rng.choice(kept, spec.subsample_events, replace=False))
    return ctx, kept


def _fit_rectangle(sample, gs, strategy, path, template, spec, known=None):
    dims = list(template.dimensions)
    ids = [d.id for d in dims]
    if len(dims) != 2 or set(spec.fit_window) != set(ids) or spec.treg_component not in ids:
        msg = (f"auto gate {'/'.join(path)}: fit_window and treg_component must name the gate's two "
               f"dimensions {ids}.")
        raise StrategyError(msg)
    ctx, rows = _parent_subset(sample, gs, strategy, path[:-1], spec, known)
    if rows.size < spec.min_parent_events:
        raise _Fallback(f"too few parent events to fit ({rows.size} < {spec.min_parent_events})")
    xforms = [gs.get_transform(d.transformation_ref) if d.transformation_ref else None for d in dims]
    vals = []
    for d, xf in zip(dims, xforms):
        v = ctx.values(d, rows)
        vals.append(v if xf is None else np.asarray(xf.apply(v.reshape(-1, 1))).ravel())
    lo = [float(spec.fit_window[i][0]) for i in ids]
    hi = [float(spec.fit_window[i][1]) if spec.fit_window[i][1] is not None else 1.0 for i in ids]
    inwin = (vals[0] >= lo[0]) & (vals[1] >= lo[1])
    if int(inwin.sum()) < spec.min_window_events:
        raise _Fallback(f"too few events in the fit window ({int(inwin.sum())} < {spec.min_window_events})")
    nb = int(spec.bins)
    h, ex, ey = np.histogram2d(vals[0][inwin], vals[1][inwin], bins=nb, range=[[lo[0], hi[0]], [lo[1], hi[1]]])
    ii, jj = np.nonzero(h)
    w = h[ii, jj]
    centres = np.column_stack([(ex[ii] + ex[ii + 1]) / 2, (ey[jj] + ey[jj + 1]) / 2])
    weights, means, covs, resp = _em(centres, w, np.asarray(spec.init_means, dtype=float), spec.max_iter)
    k_axis = ids.index(spec.treg_component)
    order = np.argsort(means[:, k_axis])[::-1]
    k, nxt = order[0], order[1]
    sep = (means[k, k_axis] - means[nxt, k_axis]) / np.sqrt(
        (covs[k][k_axis, k_axis] + covs[nxt][k_axis, k_axis]) / 2)
    if not np.isfinite(sep) or sep < spec.min_separation or weights[k] < spec.min_weight:
        raise _Fallback(f"one mode only (Treg component {sep:.2f} pooled SDs from the next on "
                        f"{spec.treg_component}, weight {weights[k]:.3f})")
    a, b = _best_rectangle(ex[ii], ey[jj], resp[:, k], w)
    bounds = {ids[0]: float(a), ids[1]: float(b)}
    for i, val in bounds.items():
        plo, phi = spec.plausible[i]
        if not plo <= val <= phi:
            raise _Fallback(f"fitted {i} threshold {val:.4f} outside the plausible window [{plo}, {phi}]")
    linear = {i: (float(np.asarray(xf.inverse(np.array([[v]]))).ravel()[0]) if xf is not None else v)
              for (i, v), xf in zip(bounds.items(), xforms)}
    info = {"bounds": bounds, "bounds_linear": linear, "n_fit": int(rows.size), "n_window": int(inwin.sum()),
            "weights": [round(float(x), 4) for x in weights], "means": np.round(means, 4).tolist(),
            "separation": round(float(sep), 3)}
    return bounds, info


def _em(c: np.ndarray, w: np.ndarray, means: np.ndarray, max_iter: int):
    """EM of a full-covariance 2-D Gaussian mixture on weighted points (bin centres and counts).

    Vectorised over components with closed-form 2 x 2 inverses (einsum and
    ``linalg.inv`` per component cost ~2x more on a few thousand bins), in
    components x bins layout: each numpy call runs along the bins, ~3.5x
    faster than bins x components for 3 components.
    """
    K, total = len(means), w.sum()
    sxx = np.full((K, 1), 0.05**2)
    syy = np.full((K, 1), 0.05**2)
    sxy = np.zeros((K, 1))
    pi = np.full(K, 1.0 / K)
    x, y = c[:, 0], c[:, 1]
    resp = np.zeros((K, len(c)))
    dx, dy = x - means[:, :1], y - means[:, 1:]
    for _ in range(int(max_iter)):
        det = sxx * syy - sxy**2
        quad = (dx * dx * syy - 2 * dx * dy * sxy + dy * dy * sxx) / det
        logp = np.log(np.maximum(pi, 1e-300))[:, None] - 0.5 * np.log(det) - 0.5 * quad
        logp -= logp.max(axis=0, keepdims=True)
        resp = np.exp(logp)
        resp /= resp.sum(axis=0, keepdims=True)
        rw = resp * w
        nk = rw.sum(axis=1) + 1e-12
        new = (rw @ c) / nk[:, None]
        dx, dy = x - new[:, :1], y - new[:, 1:]
        sxx = ((rw * dx * dx).sum(axis=1) / nk + 1e-6)[:, None]
        syy = ((rw * dy * dy).sum(axis=1) / nk + 1e-6)[:, None]
        sxy = ((rw * dx * dy).sum(axis=1) / nk)[:, None]
        pi = nk / total
        done = np.abs(new - means).max() < 1e-5
        means = new  # dx, dy above are already x, y minus these means: the next E step reuses them
        if done:
            break
    covs = np.stack([np.array([[a, b], [b, d]]) for a, b, d in zip(sxx.ravel(), sxy.ravel(), syy.ravel())])
    return pi, means, covs, resp.T


def _best_rectangle(x_edges: np.ndarray, y_edges: np.ndarray, p: np.ndarray, w: np.ndarray):
    """Lower bounds (on bin edges) minimising expected Treg-outside + non-Treg-inside."""
    xs, ys = np.unique(x_edges), np.unique(y_edges)
    ia, ib = np.searchsorted(xs, x_edges), np.searchsorted(ys, y_edges)
    pos = np.zeros((xs.size, ys.size))
    neg = np.zeros((xs.size, ys.size))
    np.add.at(pos, (ia, ib), p * w)
    np.add.at(neg, (ia, ib), (1 - p) * w)
    # events inside (x >= xs[i], y >= ys[j]): reverse cumulative sums over both axes
    inside_pos = pos[::-1, ::-1].cumsum(0).cumsum(1)[::-1, ::-1]
    inside_neg = neg[::-1, ::-1].cumsum(0).cumsum(1)[::-1, ::-1]
    cost = inside_neg + (pos.sum() - inside_pos)
    i, j = np.unravel_index(np.argmin(cost), cost.shape)
    return xs[i], ys[j]
