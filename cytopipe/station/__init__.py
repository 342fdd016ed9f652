"""Stage 7: the immunologist's review station, a local web app over one run folder.

``cytopipe review RUN_DIR --serve`` (:func:`serve`): a queue in review order,
every gate of a sample drawn on its parent population and movable with the
mouse, counts recomputed on release by the re-run's engine, one gate across
the batch, and decisions appended to ``review.jsonl`` as the command line
appends them. Its names load on first use: they bring in Starlette,
uvicorn and FlowKit.
"""

from __future__ import annotations

from .._lazy import lazy_names

__all__ = [
    "COOKIE",
    "CSP",
    "CSRF_HEADER",
    "IDLE_TIMEOUT",
    "create_app",
    "RUN_LOCK",
    "recompute_sample",
    "run_folder_lock",
    "sample_path",
    "BINS",
    "OUTLIER_RULE",
    "axis_label",
    "axis_spec",
    "batch_outliers",
    "density_png",
    "histogram",
    "CONTOUR_LEVELS",
    "contour_levels",
    "contour_png",
    "linear_ticks",
    "ReportWriter",
    "OpenSample",
    "PLOT_KINDS",
    "display_to_linear",
    "DEFAULT_PORT",
    "StationServer",
    "check_host",
    "serve",
    "StaleError",
    "Station",
    "review_group",
]

_LAZY = {
    "COOKIE": "app", "CSP": "app", "CSRF_HEADER": "app", "IDLE_TIMEOUT": "app", "create_app": "app",
    "RUN_LOCK": "recompute", "recompute_sample": "recompute", "run_folder_lock": "recompute",
    "sample_path": "recompute",
    "BINS": "render", "OUTLIER_RULE": "render", "axis_label": "render", "axis_spec": "render",
    "batch_outliers": "render", "density_png": "render",
    "histogram": "render", "CONTOUR_LEVELS": "render", "contour_levels": "render", "contour_png": "render",
    "linear_ticks": "render",
    "ReportWriter": "pages",
    "OpenSample": "sample", "PLOT_KINDS": "sample", "display_to_linear": "sample",
    "DEFAULT_PORT": "server", "StationServer": "server", "check_host": "server", "serve": "server",
    "StaleError": "state", "Station": "state", "review_group": "state",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)
