"""Stage 2: versioned gating strategies: the registry, release workflow, descriptions, diffs,
FlowJo interchange, and panel resolution ($PnN/$PnS to the strategy's markers).
"""

from __future__ import annotations

from .describe import DimensionInfo, GateInfo, describe_gates, format_gate, write_gate_tree_image
from .diff import Change, diff_strategies, gatingml_of
from .flowjo import ImportResult, export_wsp, import_wsp
from .panel import Panel, normalise_label, read_panel_file, resolve_panel
from .registry import (
    DEFAULT_STRATEGY,
    Marker,
    Strategy,
    list_strategies,
    load_gatingml,
    load_strategy,
    parse_ref,
    strategies_root,
    strategy_dir,
)
from .release import ValidationReport, changelog_entry, new_version, release_version, validate_strategy

__all__ = [
    "Marker",
    "Strategy",
    "load_strategy",
    "list_strategies",
    "load_gatingml",
    "strategies_root",
    "strategy_dir",
    "parse_ref",
    "DEFAULT_STRATEGY",
    "Panel",
    "normalise_label",
    "resolve_panel",
    "read_panel_file",
    "ValidationReport",
    "changelog_entry",
    "new_version",
    "release_version",
    "validate_strategy",
    "DimensionInfo",
    "GateInfo",
    "describe_gates",
    "format_gate",
    "write_gate_tree_image",
    "Change",
    "diff_strategies",
    "gatingml_of",
    "ImportResult",
    "export_wsp",
    "import_wsp",
]
