"""cytopipe: flow cytometry FCS files to Treg % of CD4 per patient-visit, reproducibly.

The public API; the ``cytopipe`` command is a thin skin over it. Each name
loads its stage on first use, so ``import cytopipe`` (and the command line's
start-up) pays only for what is used: FlowKit, Dask and matplotlib are heavy.
"""

from __future__ import annotations

from ._lazy import lazy_names
from ._version import __version__
from .exceptions import CytopipeError

# public name -> the stage that defines it
_STAGES = {
    "read_fcs": "fcs", "read_fcs_lean": "fcs", "LeanSample": "fcs", "scan_headers": "fcs",
    "Strategy": "strategy", "load_strategy": "strategy", "list_strategies": "strategy",
    "resolve_panel": "strategy", "Panel": "strategy",
    "gate_sample": "gating",
    "read_sample_sheet": "batch", "BatchResult": "batch", "run_batch": "batch",
    "record_decision": "review",
    "verify_run": "audit",
    "EndpointResult": "endpoint", "run_endpoint": "endpoint",
}

__all__ = ["__version__", "CytopipeError", *_STAGES]


__getattr__, __dir__ = lazy_names(__name__, _STAGES)
