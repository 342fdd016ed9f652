"""The driver: every gate of the chain placed from the sample's own data, or the sample sent to a reviewer.

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
    merged by ridgeline modality; see :mod:`.treg_cluster`.

Each method is a module of this package with its parameters' frozen
dataclass (the keys of its manifest entry, checked when the manifest is
read: :func:`.registry.placement_specs`) and its ``place`` function; the
registry :data:`.registry.METHODS` maps the method's name to both.

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

import contextlib
import hashlib
from typing import Any

import numpy as np

from ._base import Review
from .registry import METHODS, placement_specs
from .result import AutoGateResult, sample_gatingml
from .treg_auto import auto_gate_specs, fit_auto_gates

__all__ = ["REVIEW_FLAG", "data_driven_gates", "needs_review_flags", "place_gates", "prefilter_rows"]

#: Flag token of a sample a reviewer must look at before its number counts.
REVIEW_FLAG = "needs_review"


def needs_review_flags(flags) -> list[str]:
    """The ``needs_review`` tokens among ``flags`` (a list, or the ``;``-joined column text)."""
    items = flags.split(";") if isinstance(flags, str) else list(flags or [])
    return [f for f in items if f == REVIEW_FLAG or f.startswith(REVIEW_FLAG + ":")]


def data_driven_gates(sample, strategy, *, gating_strategy=None, skip=(), fits=None) -> AutoGateResult | None:
    """The sample's gates placed from its data, by whichever way its strategy declares; None if it places none.

    ``placement`` (every gate of the chain, :func:`place_gates`) or the
    ``auto_gates`` of ``treg_auto@1.0.0`` (:func:`~.treg_auto.fit_auto_gates`).
    Deterministic: placing again on the same file gives the same gates.
    ``fits``: an earlier placement's :attr:`AutoGateResult.fits` on the same sample, to take a fit
    instead of fitting again where the gate's parent events are the same (see :func:`place_gates`).

    Raises
    ------
    cytopipe.exceptions.StrategyError
        The manifest's ``placement`` or ``auto_gates`` entries are not sound
        (an unknown key, a value out of range, ...).
    """
    specs = placement_specs(strategy)
    if specs:
        return _place_all(sample, strategy, specs, gating_strategy=gating_strategy, skip=skip, fits=fits)
    if auto_gate_specs(strategy):
        return fit_auto_gates(sample, strategy, gating_strategy=gating_strategy, skip=skip)
    return None


def place_gates(sample, strategy, *, gating_strategy=None, skip=(), fits=None) -> AutoGateResult:
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
    fits
        An earlier placement's :attr:`AutoGateResult.fits` on the same sample:
        a skipped gate whose fit places its child (the Treg cluster's, for
        CD127lo) takes that fit when its parent's events are the same, instead
        of fitting again (placing is deterministic: the same fit either way).

    Returns
    -------
    AutoGateResult
        The strategy to count with, one record per gate (``status`` placed,
        review or reviewer, the ``reason``, the fitted values) and the
        ``needs_review:<gate>:<reason>`` flags.

    Raises
    ------
    cytopipe.exceptions.StrategyError
        The manifest's ``placement`` entries are not sound.
    """
    return _place_all(sample, strategy, placement_specs(strategy), gating_strategy=gating_strategy, skip=skip,
                      fits=fits)


def _digest(rows: np.ndarray | None) -> str:
    """A digest of a gate's parent events (None: every event)."""
    if rows is None:
        return "all"
    return hashlib.blake2b(np.ascontiguousarray(rows).tobytes(), digest_size=16).hexdigest()


def _place_all(sample, strategy, specs, *, gating_strategy, skip, fits=None) -> AutoGateResult:
    from ..engine import Context

    gs = gating_strategy if gating_strategy is not None else strategy.gating_strategy()
    result = AutoGateResult(gating_strategy=gs)
    if not specs:
        return result
    raw = sample.get_events(source="raw")
    n = raw.shape[0]
    first = specs[0]
    sub = raw if n <= first.prefilter_events else np.take(
        raw, prefilter_rows(n, first.prefilter_events, exact=first.prefilter_exact), axis=0)
    ctx = Context(sample, gs, sub)
    paths = strategy.gate_paths()
    parents = {p[:-1] for p in paths}
    ctx.prepare([gs.get_gate(p[-1], gate_path=p[:-1]) for p in paths])
    by_path = {s.gate_path: s for s in specs}
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
                if spec.feeds_child:  # its fit still places the child gate below
                    earlier = (fits or {}).get("/".join(path))
                    if earlier is not None and earlier[0] == _digest(parent):  # fitted on these events already
                        state.update(earlier[1])
                    else:
                        with contextlib.suppress(Review):
                            _place(spec, ctx, gs, gs.get_gate(path[-1], gate_path=path[:-1]), parent, path, state)
            elif spec is not None:
                template = gs.get_gate(path[-1], gate_path=path[:-1])
                try:
                    gate, info = _place(spec, ctx, gs, template, parent, path, state)
                    rec.update(status="placed", **info)
                except Review as e:
                    gate = e.candidate
                    rec.update(status="review", reason=str(e), **e.info)
                    result.qc_flags.append(f"{REVIEW_FLAG}:{path[-1]}:{e.code}")
                if gate is not None:
                    gs.add_gate(gate, path[:-1], sample_id=sample.id)
            if spec is not None:
                result.gates.append(rec)
                if spec.feeds_child:
                    result.fits["/".join(path)] = (_digest(parent), dict(state))
            if path not in parents:  # a leaf: no gate is placed on its events
                continue
            gate = gs.get_gate(path[-1], gate_path=path[:-1], sample_id=sample.id)
            inside = ctx.inside(gate, parent)
            rows[path] = np.flatnonzero(inside) if parent is None else parent[inside]
    result.gatingml = sample_gatingml(gs, sample.id)
    return result


def _place(spec, ctx, gs, template, parent, path, state):
    """The gate and its record, by the method the entry names (each method takes its own rows of ``parent``)."""
    return METHODS[spec.method][1](spec, ctx, gs, template, parent, path, state)


def prefilter_rows(n: int, cap: int, *, exact: bool = False) -> np.ndarray:
    """The rows of an ``n``-event file that placement sees, spread evenly over the whole acquisition.

    With ``exact`` (``prefilter_exact``) exactly ``cap`` (``prefilter_events``)
    of them; otherwise (1.0.0, 1.1.0) every k-th event, k = ceil(n / cap),
    which leaves a file of 1.5 times the cap only half of it.
    """
    cap = int(cap)
    if exact:
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
