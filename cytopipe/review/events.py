"""Per-gate events for the report: re-read a file and re-gate it.

The run's tables keep counts, not events, so the report reads each FCS file
again and gates it with the same strategy and the same custom sample gates
the run applied (:func:`cytopipe.gating.api.gate_rows`, the engine of the run).
The values plotted are the ones the gate was applied to, compensated and
transformed as the gate's dimensions say, computed for the plotted
subsample only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["GateView", "gate_views"]


@dataclass
class GateView:
    """What one gate's plot shows.

    Attributes
    ----------
    path
        Full gate path, ``("root", ..., gate)``.
    gate
        The FlowKit gate applied to this sample (template or custom).
    custom
        True when the gate is a reviewer's custom sample gate.
    values
        ``(n, n_dims)`` parent events (subsampled) in the gate's units.
    inside
        Which of those events the gate keeps.
    count, parent_count
        Events in the gate and in its parent (all events, not subsampled).
    transforms
        Per dimension, the FlowKit transform (None for linear).
    """

    path: tuple[str, ...]
    gate: Any
    custom: bool
    values: np.ndarray
    inside: np.ndarray
    count: int
    parent_count: int
    transforms: list[Any] = field(default_factory=list)


def gate_views(path: str, strategy, adjustments: dict[str, dict[str, Any]], *, max_events: int = 20_000,
               seed: int = 0) -> tuple[list[GateView], Any]:
    """Re-gate one FCS file: one :class:`GateView` per gate (parents first) and the sample.

    Parameters
    ----------
    path
        The FCS file.
    strategy : cytopipe.strategy.registry.Strategy
        The strategy of the run.
    adjustments
        The sample's custom gates (:func:`cytopipe.review.decisions.gate_adjustments`).
    max_events
        Parent events kept per plot (a random subsample beyond that).
    seed
        Seed of the subsample, so a report is reproducible.

    Raises
    ------
    cytopipe.exceptions.CytopipeError
        The file cannot be read.
    """
    from ..gating.adaptive import data_driven_gates
    from ..fcs.read import default_sample_id
    from ..fcs.lean import read_for_gating
    from ..gating.api import gate_rows, gate_values
    from .decisions import adjusted_gating_strategy

    gs = adjusted_gating_strategy(strategy, default_sample_id(path), adjustments)
    sample = read_for_gating(path, gs)
    placed = data_driven_gates(sample, strategy, gating_strategy=gs, skip=adjustments)
    if placed is not None:  # deterministic: placing again draws exactly the gates the run used
        gs = placed.gating_strategy
    rows = gate_rows(sample, gs, strategy.gate_paths())
    rng = np.random.default_rng(seed)
    views = []
    for gate_path in strategy.gate_paths():
        name, parent = gate_path[-1], gate_path[:-1]
        gate = gs.get_gate(name, parent, sample_id=sample.id)
        parent_rows, member_rows = rows[parent], rows[gate_path]
        idx = parent_rows
        if idx.size > max_events:
            idx = np.sort(rng.choice(idx, size=max_events, replace=False))
        values = gate_values(sample, gs, gate, idx)
        transforms = [gs.get_transform(d.transformation_ref) if d.transformation_ref else None
                      for d in gate.dimensions]
        views.append(GateView(
            path=gate_path, gate=gate, custom=gs.is_custom_gate(sample.id, name, parent),
            values=values, inside=np.isin(idx, member_rows, assume_unique=True),
            count=int(member_rows.size), parent_count=int(parent_rows.size), transforms=transforms,
        ))
    return views, sample
