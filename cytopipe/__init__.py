"""cytopipe: flow cytometry FCS files to Treg % of CD4 per patient-visit, reproducibly.

The public API; the ``cytopipe`` command is a thin skin over it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .exceptions import CytopipeError  # noqa: E402
from .fcs import read_fcs, scan_headers  # noqa: E402
from .fcs_lean import LeanSample, read_fcs_lean  # noqa: E402
from .strategy import Strategy, list_strategies, load_strategy  # noqa: E402
from .panel import resolve_panel  # noqa: E402
from .gating import gate_sample  # noqa: E402
from .samplesheet import read_sample_sheet  # noqa: E402
from .batch import BatchResult, run_batch  # noqa: E402
from .review import record_decision  # noqa: E402
from .endpoint import EndpointResult, run_endpoint  # noqa: E402

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
