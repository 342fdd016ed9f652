"""cytopipe: flow cytometry FCS files to Treg % of CD4 per patient-visit, reproducibly.

The public API; the ``cytopipe`` command is a thin skin over it.
"""

from __future__ import annotations

from ._version import __version__
from .batch import BatchResult, read_sample_sheet, run_batch
from .endpoint import EndpointResult, run_endpoint
from .exceptions import CytopipeError
from .fcs import LeanSample, read_fcs, read_fcs_lean, scan_headers
from .gating import gate_sample
from .review import record_decision
from .strategy import Strategy, list_strategies, load_strategy, resolve_panel

__all__ = [
    "__version__",
    "CytopipeError",
    "read_fcs",
    "read_fcs_lean",
    "LeanSample",
    "scan_headers",
    "Strategy",
    "load_strategy",
    "list_strategies",
    "resolve_panel",
    "gate_sample",
    "read_sample_sheet",
    "BatchResult",
    "run_batch",
    "record_decision",
    "EndpointResult",
    "run_endpoint",
]
