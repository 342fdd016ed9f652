"""Stage 5: reviewers' decisions and their audit trail, and the HTML review report.

The report's names load on first use: they bring in matplotlib.
"""

from __future__ import annotations

from .._lazy import lazy_names
from .decisions import (
    REVIEW_FILE,
    Decided,
    GateChange,
    StaleError,
    adjusted_gating_strategy,
    adjustments_digest,
    build_gate_spec,
    decide,
    find_sample,
    gate_adjustments,
    read_decisions,
    record_decision,
    review_fields,
    sample_version,
    update_review_columns,
    verify_review_chain,
)
from .outliers import OUTLIER_Z, robust_outliers
from .plotdata import GatePlot, GateView, PlotDim, SamplePlots, gate_plots, gate_views, plot_dims, plot_of
from .plotstore import load_plots, plot_key, replace_file, save_plots, store_sample_plots
from .png import png_bytes, viridis
from .reviewers import REGISTRY_ENV, Reviewer, ReviewerRegistry, Signer, name_key, normalise_name, registry_path
from .signatures import SignatureReport, signature_report

__all__ = [
    "REVIEW_FILE",
    "Decided",
    "GateChange",
    "StaleError",
    "decide",
    "sample_version",
    "adjusted_gating_strategy",
    "adjustments_digest",
    "build_gate_spec",
    "find_sample",
    "gate_adjustments",
    "read_decisions",
    "record_decision",
    "review_fields",
    "update_review_columns",
    "verify_review_chain",
    "REGISTRY_ENV",
    "Reviewer",
    "ReviewerRegistry",
    "Signer",
    "name_key",
    "normalise_name",
    "registry_path",
    "SignatureReport",
    "signature_report",
    "GatePlot",
    "GateView",
    "PlotDim",
    "SamplePlots",
    "gate_plots",
    "gate_views",
    "load_plots",
    "plot_dims",
    "plot_key",
    "plot_of",
    "replace_file",
    "save_plots",
    "store_sample_plots",
    "OUTLIER_Z",
    "robust_outliers",
    "png_bytes",
    "viridis",
    "write_report",
    "gate_png",
    "patient_png",
    "batch_png",
    "draw_frames",
]

_LAZY = {"write_report": "report", "gate_png": "plots", "patient_png": "plots", "batch_png": "plots",
         "draw_frames": "plots"}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
