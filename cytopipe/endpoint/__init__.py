"""Stage 7, after unblinding: change from baseline per patient, arm statistics, figures,
SDTM CP and the endpoint's own page.

The figures and the page load on first use: they bring in matplotlib.
"""

from __future__ import annotations

from .stats import MannWhitneyResult, TrendResult, mann_whitney, jonckheere_terpstra
from .sdtm import marker_string, build_sdtm_cp
from .analysis import (
    EndpointResult,
    load_runs,
    read_randomisation,
    change_from_baseline,
    arm_summary,
    trend_test,
    run_endpoint,
)

__all__ = [
    "MannWhitneyResult",
    "TrendResult",
    "mann_whitney",
    "jonckheere_terpstra",
    "marker_string",
    "build_sdtm_cp",
    "EndpointResult",
    "load_runs",
    "read_randomisation",
    "change_from_baseline",
    "arm_summary",
    "trend_test",
    "run_endpoint",
    "plot_treg_by_visit",
    "plot_change_at_endpoint",
    "write_endpoint_report",
]

_LAZY = {"plot_treg_by_visit": "plots", "plot_change_at_endpoint": "plots", "write_endpoint_report": "page"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
