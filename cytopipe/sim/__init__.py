"""Generated FCS files with known truth: one sample (:mod:`.sample`) and whole trials
(:mod:`.trial`), from labs of any kind: a lab's geometry (:mod:`.world`), its cytometer family
(:mod:`.instrument`), its Treg panel and real-cell shapes (:mod:`.shapes`). Nothing in the
pipeline imports it; tests, benchmarks and ``cytopipe synth`` do.
"""

from __future__ import annotations

from .instrument import FAMILIES, Instrument
from .sample import (
    CHANNELS,
    FLUORESCENCE,
    MARKERS,
    PANEL_MARKERS,
    PNS_SPELLINGS,
    POPULATIONS,
    SampleSpec,
    simulate_events,
    spillover_matrix,
    write_fcs,
)
from .shapes import RealShape, skew_t
from .trial import TRIAL_ARMS, generate_trial, simulate_trial
from .world import LABEL_STYLES, PANELS, SHAPES, World

__all__ = [
    "CHANNELS",
    "FLUORESCENCE",
    "MARKERS",
    "PANEL_MARKERS",
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
    "PANELS",
    "SHAPES",
    "FAMILIES",
    "Instrument",
    "RealShape",
    "skew_t",
]
