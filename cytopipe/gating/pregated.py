"""Pre-gated exports: files that hold only one population of the chain (e.g. CD3+ CD4+ cells).

FlowJo and instrument software export the events of one gate, often with
every ``$PnS`` empty. The lab says which gate (``--starts-at CD4pos`` or a
``starts_at`` column). The chain then starts there: the gates from the root
down to that gate are *not applied* — each is a gate that passes every event,
so the tables, ``run.json`` and the sample's GatingML keep the strategy's
gate paths, and Treg % of CD4 is counted on the file's own events. Those
gates are recorded as ``pregated`` (not applied), and their markers are not
required of the file.

A file that is visibly not what it claims is flagged for review: where the
start gate keeps one side of a marker (CD4 above its valley), most of the
file's events on the other side of a clear density valley mean the file is
not that population.
"""

from __future__ import annotations

import copy
import sys
import warnings

import numpy as np

from ..exceptions import StrategyError

__all__ = ["PREGATED_STATUS", "mark_pregated", "needed_markers", "pregated_flags", "pregated_gating_strategy",
           "pregated_paths"]

#: Status of a gate the file's export already applied (in the placement record and the tables).
PREGATED_STATUS = "pregated"
_REASON = "not applied (pre-gated)"


def pregated_paths(strategy, starts_at: str | None) -> list[tuple[str, ...]]:
    """The gate paths from the root down to and including ``starts_at`` ([] for a whole file).

    Parameters
    ----------
    strategy : cytopipe.strategy.Strategy
    starts_at
        A gate name (``"CD4pos"``) or full path (``"root/.../CD4pos"``) on
        the way to the strategy's denominator.

    Raises
    ------
    StrategyError
        ``starts_at`` is no gate above or at the denominator; the message
        lists those it may be.
    """
    if not starts_at:
        return []
    chain = [tuple(strategy.denominator[: i + 1]) for i in range(1, len(strategy.denominator))]
    text = starts_at.strip().strip("/")
    for i, path in enumerate(chain):
        if text in (path[-1], "/".join(path)):
            return chain[: i + 1]
    msg = (f"--starts-at {starts_at!r} is not a gate of {strategy.ref} at or above its denominator "
           f"{strategy.denominator[-1]!r}; it may be one of {[p[-1] for p in chain]}.")
    raise StrategyError(msg)


def _gate_dims(gate) -> list[str]:
    out = []
    for dim in getattr(gate, "dimensions", []) or []:
        if getattr(dim, "id", None):
            out.append(dim.id)
        for ref in getattr(dim, "dimension_ref", None) or []:  # a ratio's terms
            out.append(ref)
    return out


def needed_markers(strategy, gs, pregated) -> set[str] | None:
    """The markers (and scatter detectors) a file must have; None for all (a whole file).

    A pre-gated file needs those the gates below its start use.
    """
    if not pregated:
        return None
    by_detector = {m.detector: m.marker for m in strategy.markers}
    skip = set(pregated)
    need: set[str] = set()
    for path in strategy.gate_paths():
        if path in skip:
            continue
        for dim in _gate_dims(gs.get_gate(path[-1], gate_path=path[:-1])):
            need.add(by_detector.get(dim, dim))
    return need


def _pass_all(name: str, dimension: str):
    import flowkit as fk

    dim = fk.Dimension(dimension, compensation_ref="uncompensated", transformation_ref=None,
                       range_min=-sys.float_info.max)
    return fk.gates.RectangleGate(name, [dim])


def pregated_gating_strategy(gs, strategy, pregated, *, sample, adjustments=()):
    """A copy of ``gs`` whose gates in ``pregated`` pass every event of ``sample``.

    Each becomes a rectangle open above on one of the file's channels (the
    CD4 detector where the file has it), so the gate tree, its paths and
    the GatingML a sample gets keep the strategy's shape. Gates below keep
    their template and any custom gate of ``sample.id`` (a reviewer's).
    """
    import flowkit as fk

    new = fk.GatingStrategy()
    for xform_id, xform in gs.transformations.items():
        new.add_transform(xform_id, xform)
    for matrix_id, matrix in gs.comp_matrices.items():
        new.add_comp_matrix(matrix_id, matrix)
    cd4 = next((m.detector for m in strategy.markers if m.marker == "CD4"), None)
    channel = cd4 if cd4 in sample.pnn_labels else sample.pnn_labels[0]
    skip = set(pregated)
    adjusted = set(adjustments)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in strategy.gate_paths():
            if path in skip:
                new.add_gate(_pass_all(path[-1], channel), path[:-1])
                continue
            new.add_gate(copy.deepcopy(gs.get_gate(path[-1], gate_path=path[:-1])), path[:-1])
            if "/".join(path) in adjusted:
                custom = gs.get_gate(path[-1], gate_path=path[:-1], sample_id=sample.id)
                new.add_gate(copy.deepcopy(custom), path[:-1], sample_id=sample.id)
    return new


def mark_pregated(auto, pregated) -> None:
    """Record the pre-gated gates of a placement result as not applied (status ``pregated``)."""
    names = {"/".join(p) for p in pregated}
    for rec in auto.gates:
        if rec.get("gate_path") in names:
            path = rec["gate_path"]
            rec.clear()
            rec.update(gate_path=path, status=PREGATED_STATUS, reason=_REASON)


def pregated_flags(sample, strategy, pregated, *, min_events: int = 500, max_outside: float = 0.5) -> list[str]:
    """``needs_review:<gate>:not_pregated`` when most events fall outside the start gate's marker cut.

    The start gate's placement (``density_valley`` keeping a marker
    ``above``, as CD4pos keeps CD4) says which side of a valley its events
    lie on. Where the file's density on that marker has two clear modes and
    more than ``max_outside`` of its events lie on the other side of the
    valley between them, the file is not the population it claims.
    """
    from .api import gate_values
    from .placement import REVIEW_FLAG, placement_specs
    from .placement._maths import density, modes

    start = pregated[-1]
    spec = next((s for s in placement_specs(strategy) if tuple(s.gate_path) == start), None)
    if spec is None or spec.method != "density_valley" or sample.event_count < min_events:
        return []
    gs = strategy.gating_strategy()
    gate = gs.get_gate(start[-1], gate_path=start[:-1])
    dims = [d.id for d in gate.dimensions]
    n = int(sample.event_count)
    rows = np.arange(n) if n <= 30_000 else np.linspace(0, n - 1, 30_000).astype(np.int64)
    try:
        values = gate_values(sample, gs, gate, rows=rows)
    except Exception:  # noqa: BLE001 - a check only: the gates below still say what is wrong
        return []
    for i, dim in enumerate(dims):
        if dict(spec.keep).get(dim) != "above":
            continue
        v = values[:, i]
        v = v[np.isfinite(v)]
        if v.size < min_events:
            continue
        lo, hi = np.quantile(v, [0.001, 0.999])
        x, f = density(v, float(lo), float(hi))
        peaks, valleys = modes(f, min_share=0.02, max_dip=0.7)
        if not valleys:
            continue
        cut = x[valleys[-1]]  # the valley below the highest mode: events under it are not this population
        outside = float(np.mean(v < cut))
        if outside > max_outside:
            return [f"{REVIEW_FLAG}:{start[-1]}:not_pregated"]
    return []
