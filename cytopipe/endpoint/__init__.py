"""Stage 7, after unblinding: change from baseline per patient, arm statistics, figures,
SDTM CP (CSV, SAS transport v5, define.xml) and the endpoint's own page.

The figures, the page and define.xml load on first use: they bring in matplotlib and lxml.
"""

from __future__ import annotations

from .._lazy import lazy_names
from .analysis import (
    EndpointResult,
    arm_summary,
    change_from_baseline,
    load_runs,
    read_randomisation,
    run_endpoint,
    trend_test,
)
from .sdtm import CP_VARIABLES, build_sdtm_cp, marker_string, sdtm_transport_frame, write_sdtm_xpt
from .stats import MannWhitneyResult, TrendResult, jonckheere_terpstra, mann_whitney

__all__ = [
    "MannWhitneyResult",
    "TrendResult",
    "mann_whitney",
    "jonckheere_terpstra",
    "CP_VARIABLES",
    "marker_string",
    "build_sdtm_cp",
    "sdtm_transport_frame",
    "write_sdtm_xpt",
    "define_xml",
    "write_define_xml",
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

_LAZY = {"plot_treg_by_visit": "plots", "plot_change_at_endpoint": "plots", "write_endpoint_report": "page",
         "define_xml": "define", "write_define_xml": "define"}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
