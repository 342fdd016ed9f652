"""The one place that calls FlowKit gating.

FlowKit is the engine: gates, transforms and compensation are FlowKit objects
parsed from the strategy's GatingML, and counts come from
:meth:`flowkit.GatingStrategy.gate_sample`, called directly, one sample at a
time (never ``Session.analyze_samples``, whose process pool must not nest
inside Dask workers). Gates are addressed by full path tuples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .exceptions import GatingError
from .strategy import Strategy

__all__ = ["GateCount", "gate_sample", "treg_percent"]


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


def gate_sample(sample, strategy: Strategy, *, gating_strategy=None) -> dict[tuple[str, ...], GateCount]:
    """Gate one sample with a strategy and count every gate.

    Parameters
    ----------
    sample : flowkit.Sample
        The sample, as read by :func:`cytopipe.fcs.read_fcs`.
    strategy
        The loaded strategy.
    gating_strategy : flowkit.GatingStrategy, optional
        A pre-parsed FlowKit strategy (e.g. carrying sample-specific custom
        gates); parsed from ``strategy`` when omitted.

    Returns
    -------
    dict
        Full gate path to :class:`GateCount`, parents before children.

    Raises
    ------
    GatingError
        FlowKit failed on this sample; the message names the sample.
    """
    gs = gating_strategy if gating_strategy is not None else strategy.gating_strategy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = gs.gate_sample(sample)
    except Exception as e:
        msg = f"{sample.original_filename or sample.id}: FlowKit could not gate with {strategy.ref}: {e}"
        raise GatingError(msg) from e
    total = int(sample.event_count)
    counts: dict[tuple[str, ...], int] = {("root",): total}
    for parent_path, gate_name, count in zip(
        results.report["gate_path"], results.report["gate_name"], results.report["count"]
    ):
        counts[tuple(parent_path) + (gate_name,)] = int(count)
    out = {}
    for path in sorted(counts, key=len):
        if path == ("root",):
            continue
        out[path] = GateCount(path=path, count=counts[path], parent_count=counts[path[:-1]], total=total)
    return out


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
