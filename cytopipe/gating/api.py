"""The one place that calls FlowKit gating.

FlowKit is the engine: gates, transforms and compensation are FlowKit objects
parsed from the strategy's GatingML, and every gate's membership is decided by
FlowKit's own ``Gate.apply``. Gates are addressed by full path tuples.

Two engines give identical counts (tested on generated files and on the
GatingML 2.0 reference cases):

``"flowkit"``
    :meth:`flowkit.GatingStrategy.gate_sample`, called directly, one sample at
    a time (never ``Session.analyze_samples``, whose process pool must not nest
    inside Dask workers).
``"cascade"`` (default)
    The same FlowKit gate objects, transforms and compensation matrices, but
    each gate is evaluated only on its parent's events and only the channels it
    uses are compensated. ``gate_sample`` spends ~60 % of its time in logicle
    on every event of every gated channel; here a rectangle
    bound on a transformed dimension is compared in linear space against the
    inverse-transformed bound, and only events within 1e-6 (transformed units)
    of the bound are transformed with FlowKit's transform to decide exactly as
    ``gate_sample`` would. Polygon and ellipse gates on transformed
    dimensions transform their parent's events only. The whole cascade runs
    on blocks of 32,768 events, so each block's gates reuse data in the CPU
    core's own cache; membership is decided event by event, so blocks change nothing. Gate types the cascade
    does not handle (boolean, quadrant, ratio dimensions, dimensions named by
    ``$PnS`` or fluorochrome) make the whole sample fall back to ``"flowkit"``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np

from ..exceptions import GatingError
from ..strategy.registry import Strategy
from .engine import Context, cascade_rows

__all__ = ["ENGINES", "GateCount", "gate_cascade", "gate_rows", "gate_sample", "gate_values", "treg_percent"]


@dataclass(frozen=True)
class GateCount:
    """The count of one gate on one sample.

    Attributes
    ----------
    path
        Full gate path, ``("root", ..., gate_id)``.
    count, parent_count
        Events in the gate and in its parent.
    total
        Events in the sample.
    """

    path: tuple[str, ...]
    count: int
    parent_count: int
    total: int

    @property
    def pct_parent(self) -> float:
        """Percent of the parent population (NaN when the parent is empty)."""
        return 100.0 * self.count / self.parent_count if self.parent_count else float("nan")

    @property
    def pct_total(self) -> float:
        """Percent of all events."""
        return 100.0 * self.count / self.total if self.total else float("nan")


ENGINES = ("cascade", "flowkit")


def gate_sample(
    sample, strategy: Strategy, *, gating_strategy=None, engine: str = "cascade", known_rows=None
) -> dict[tuple[str, ...], GateCount]:
    """Gate one sample with a strategy and count every gate.

    Parameters
    ----------
    sample : flowkit.Sample or LeanSample
        The sample, as read by :func:`cytopipe.fcs.read.read_fcs` or
        :func:`cytopipe.fcs.lean.read_fcs_lean` (same counts).
    strategy
        The loaded strategy.
    gating_strategy : flowkit.GatingStrategy, optional
        A pre-parsed FlowKit strategy (e.g. carrying sample-specific custom
        gates); parsed from ``strategy`` when omitted.
    engine : {"cascade", "flowkit"}
        How to evaluate the gates (see the module docstring); same counts.
    known_rows : dict, optional
        Events of gates already evaluated on this sample with the same gate
        definitions (:func:`gate_rows` on ``gating_strategy`` before a
        custom gate was added below them); the cascade reuses them.

    Returns
    -------
    dict
        Full gate path to :class:`GateCount`, parents before children.

    Raises
    ------
    GatingError
        FlowKit failed on this sample; the message names the sample.
    """
    if engine not in ENGINES:
        msg = f"engine must be one of {ENGINES}, got {engine!r}."
        raise ValueError(msg)
    gs = gating_strategy if gating_strategy is not None else strategy.gating_strategy()
    total = int(sample.event_count)
    counts = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if engine == "cascade":
                counts = gate_cascade(sample, gs, strategy.gate_paths(), known=known_rows)
            if counts is None:
                counts = _gate_flowkit(_flowkit_sample(sample), gs)
    except Exception as e:
        msg = f"{sample.original_filename or sample.id}: FlowKit could not gate with {strategy.ref}: {e}"
        raise GatingError(msg) from e
    counts[("root",)] = total
    out = {}
    for path in sorted(counts, key=len):
        if path == ("root",):
            continue
        out[path] = GateCount(path=path, count=counts[path], parent_count=counts[path[:-1]], total=total)
    return out


def _flowkit_sample(sample):
    """FlowKit's own Sample for FlowKit's engine (a :class:`~cytopipe.fcs.lean.LeanSample` is re-read)."""
    return sample.to_flowkit() if hasattr(sample, "to_flowkit") else sample


def _gate_flowkit(sample, gs) -> dict[tuple[str, ...], int]:
    results = gs.gate_sample(sample)
    counts = {}
    for parent_path, gate_name, count in zip(
        results.report["gate_path"], results.report["gate_name"], results.report["count"]
    ):
        counts[tuple(parent_path) + (gate_name,)] = int(count)
    return counts


def gate_cascade(sample, gs, paths, *, known=None) -> dict[tuple[str, ...], int] | None:
    """Count every gate, each evaluated only on its parent's events.

    Parameters
    ----------
    sample : flowkit.Sample
    gs : flowkit.GatingStrategy
        Custom sample gates for ``sample.id`` are honoured, as in FlowKit.
    paths : list of tuple
        Full gate paths, parents before children.
    known : dict, optional
        Path to event indices of gates already evaluated (see :func:`gate_sample`).

    Returns
    -------
    dict or None
        Full gate path to count; None when a gate needs FlowKit's own engine.
    """
    rows = cascade_rows(sample, gs, paths, known=known)
    # root's rows are None (all events); every gate's are an array
    return None if rows is None else {p: int(r.size) for p, r in rows.items() if r is not None and p != ("root",)}


def gate_rows(sample, gs, paths) -> dict[tuple[str, ...], np.ndarray]:
    """The event indices in every gate (``("root",)``: all events), parents first.

    Uses the cascade, or FlowKit's ``gate_sample`` memberships for gate types
    the cascade does not handle; both give the same events.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = cascade_rows(sample, gs, paths)
        if rows is None:
            results = gs.gate_sample(_flowkit_sample(sample))
            rows = {("root",): np.arange(int(sample.event_count))}
            for path in paths:
                member = results.get_gate_membership(path[-1], gate_path=path[:-1])
                rows[path] = np.flatnonzero(np.asarray(member, dtype=bool))
    if rows[("root",)] is None:
        rows[("root",)] = np.arange(int(sample.event_count))
    return cast("dict[tuple[str, ...], np.ndarray]", rows)  # root filled above; the gates' rows are arrays


def gate_values(sample, gs, gate, *, rows: np.ndarray) -> np.ndarray:
    """``(len(rows), n_dims)`` values of ``rows`` in ``gate``'s dimensions, as the gate sees them.

    Compensated with flowutils' arithmetic and transformed with FlowKit's
    transforms, exactly as :meth:`flowkit.GatingStrategy.gate_sample` does.
    """
    # a context on the requested rows only: compensating them does not copy the whole sample
    ctx = Context(sample, gs, np.take(sample.get_events(source="raw"), np.asarray(rows), axis=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ctx.frame(gate, None).to_numpy(dtype=float)


def treg_percent(
    counts: dict[tuple[str, ...], GateCount], strategy: Strategy
) -> tuple[int, int, float]:
    """Return ``(cd4_count, treg_count, treg_pct_cd4)`` from gate counts.

    Treg % of CD4 is ``100 * count(numerator) / count(denominator)``, both
    paths from the strategy manifest; NaN when the denominator is empty.
    """
    cd4 = counts[strategy.denominator].count
    treg = counts[strategy.numerator].count
    pct = 100.0 * treg / cd4 if cd4 else float("nan")
    return cd4, treg, pct
