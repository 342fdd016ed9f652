"""Generated FCS files with known truth: one sample (:mod:`.sample`) and whole trials
(:mod:`.trial`). Nothing in the pipeline imports it; tests, benchmarks and ``cytopipe synth`` do.
"""

from __future__ import annotations

from .sample import (
    CHANNELS,
    FLUORESCENCE,
    MARKERS,
    PNS_SPELLINGS,
    POPULATIONS,
    SampleSpec,
    simulate_events,
    spillover_matrix,
    write_fcs,
)
from .trial import TRIAL_ARMS, generate_trial, simulate_trial
from .world import LABEL_STYLES, World

__all__ = [
    "CHANNELS",
    "FLUORESCENCE",
    "MARKERS",
    "PNS_SPELLINGS",
    "POPULATIONS",
    "SampleSpec",
    "simulate_events",
    "spillover_matrix",
    "write_fcs",
    "TRIAL_ARMS",
    "generate_trial",
    "simulate_trial",
    "LABEL_STYLES",
    "World",
]
