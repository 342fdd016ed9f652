"""Stage 3: gate one sample: the public gating API, the cascade engine, data-driven gate
placement, one file gated end to end (:func:`gate_file`, :class:`GatedSample`), and the
per-sample QC flags.
"""

from __future__ import annotations

from .api import ENGINES, GateCount, gate_cascade, gate_rows, gate_sample, gate_values, treg_percent
from .conform import ChannelMap, ConformedSample, channel_map, conform_sample, file_units_gatingml
from .engine import Context, Unsupported, cascade_rows
from .gated import GatedSample, adjusted_gating_strategy, gate_file, gate_from_spec
from .placement import (
    FALLBACK_FLAG,
    METHODS,
    REVIEW_FLAG,
    AutoGateResult,
    auto_gate_specs,
    data_driven_gates,
    fit_auto_gates,
    needs_review_flags,
    place_gates,
    placement_problems,
    placement_specs,
    ridge_unimodal,
    sample_gatingml,
)
from .pregated import (
    PREGATED_STATUS,
    mark_pregated,
    needed_markers,
    pregated_flags,
    pregated_gating_strategy,
    pregated_paths,
)
from .qc import QCThresholds, binomial_ci, flag_visit_outliers, load_thresholds, sample_flags, sample_time_qc, time_qc
from .stain import STAIN_REASON, TREG_HIGH, stain_flags, stained

__all__ = [
    "REVIEW_FLAG",
    "data_driven_gates",
    "needs_review_flags",
    "place_gates",
    "placement_specs",
    "placement_problems",
    "METHODS",
    "ENGINES",
    "GateCount",
    "gate_cascade",
    "gate_rows",
    "gate_sample",
    "gate_values",
    "treg_percent",
    "GatedSample",
    "adjusted_gating_strategy",
    "gate_file",
    "gate_from_spec",
    "Context",
    "Unsupported",
    "cascade_rows",
    "AutoGateResult",
    "FALLBACK_FLAG",
    "auto_gate_specs",
    "fit_auto_gates",
    "sample_gatingml",
    "QCThresholds",
    "binomial_ci",
    "flag_visit_outliers",
    "load_thresholds",
    "sample_flags",
    "sample_time_qc",
    "time_qc",
    "ridge_unimodal",
    "ChannelMap",
    "ConformedSample",
    "channel_map",
    "conform_sample",
    "file_units_gatingml",
    "PREGATED_STATUS",
    "pregated_paths",
    "mark_pregated",
    "needed_markers",
    "pregated_flags",
    "pregated_gating_strategy",
    "STAIN_REASON",
    "TREG_HIGH",
    "stain_flags",
    "stained",
]
