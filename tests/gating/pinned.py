"""Tubes of pinned worlds (drawn from seeds no strategy number was chosen on), gated as a run gates them."""

from __future__ import annotations

from cytopipe.fcs.read import read_fcs
from cytopipe.gating.api import gate_sample, treg_percent
from cytopipe.gating.placement import needs_review_flags, place_gates
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.sim.world import World


def pinned_errors(folder, strategy, worlds, pcts, *, hard: bool = False):
    """``(reviewed, errors)``: the tubes sent to review, and Treg % CD4 minus the truth of the others.

    One 40,000-event tube per world and Treg share, drift 0.5; the truth is the generator's labels.
    """
    reviewed, errors = [], []
    for world in worlds:
        w = World.draw(world)
        for i, pct in enumerate(pcts):
            path = folder / f"{world}_{i}.fcs"
            truth = write_fcs(path, SampleSpec(n_events=40_000, seed=world + i, world=w, hard=hard,
                                               treg_pct_cd4=pct, drift=0.5))
            sample = read_fcs(path)
            placed = place_gates(sample, strategy)
            if needs_review_flags(placed.qc_flags):
                reviewed.append((world, i, placed.qc_flags))
                continue
            counts = gate_sample(sample, strategy, gating_strategy=placed.gating_strategy)
            errors.append((world, i, round(treg_percent(counts, strategy)[2] - truth["treg_pct_cd4"], 3)))
    return reviewed, errors
