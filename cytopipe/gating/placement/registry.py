"""The placement methods by name, and a manifest's ``placement`` entries read into their parameters.

:data:`METHODS` maps each method a manifest may name to its parameters'
dataclass and the function that places the gate; a new method is a module
of this package with both, and one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ...exceptions import StrategyError
from . import density_valley, ratio_band, scatter_cloud, treg_cluster, treg_mixture, treg_split
from ._base import PlacementParams, build_params, entry_where
from .treg_auto import auto_gate_problems

__all__ = ["METHODS", "placement_problems", "placement_specs"]

#: method name -> (its parameters' dataclass, ``place(params, ctx, gs, template, parent_rows, path, state)``)
METHODS: Mapping[str, tuple[type[PlacementParams], Callable[..., Any]]] = {
    "scatter_cloud": (scatter_cloud.ScatterCloudParams, scatter_cloud.place),
    "ratio_band": (ratio_band.RatioBandParams, ratio_band.place),
    "density_valley": (density_valley.DensityValleyParams, density_valley.place),
    "treg_mixture": (treg_mixture.TregMixtureParams, treg_mixture.place),
    "treg_cluster": (treg_cluster.TregClusterParams, treg_cluster.place),
    "treg_split": (treg_split.TregSplitParams, treg_split.place),
}


def _placement(manifest: Mapping[str, Any], where) -> tuple[list[PlacementParams], list[str]]:
    out, problems = [], []
    for i, spec in enumerate(manifest.get("placement") or []):
        at = entry_where(where, "placement", i, spec)
        method = spec.get("method") if isinstance(spec, Mapping) else None
        if not isinstance(spec, Mapping) or "gate_path" not in spec or method not in METHODS:
            problems.append(f"{at}: an entry needs a gate_path and a method among {list(METHODS)}, got {spec!r}.")
            continue
        params, found = build_params(METHODS[method][0], spec, at)
        problems += found
        if params is not None:
            out.append(params)
    # every gate is placed on the same events of the file: the first entry's choice
    for i, p in enumerate(out[1:], 1):
        for key in ("prefilter_events", "prefilter_exact"):
            if getattr(p, key) != getattr(out[0], key):
                problems.append(f"{entry_where(where, 'placement', i, {'gate_path': p.gate_path})}: {key!r} is "
                                f"{getattr(p, key)!r} but the first entry's is {getattr(out[0], key)!r}; every "
                                f"gate is placed on the same events, so give every entry the same {key}.")
    return out, problems


def placement_problems(manifest: Mapping[str, Any], where: str | Path) -> list[str]:
    """Every problem of a manifest's ``placement`` and ``auto_gates`` entries (empty when they are sound).

    The check :func:`cytopipe.strategy.validate_strategy` runs when given it
    (``cytopipe strategy validate`` does): an unknown or misspelt key, a
    required key missing, a value of the wrong type or out of range, an
    unknown method. Each message names the manifest file ``where``, the
    entry, its gate path and the key.

    Examples
    --------
    >>> placement_problems({"placement": [{"gate_path": ["root", "L"], "method": "ratio_band",
    ...                                     "edge_sdd": 4.0}]}, "m.json")  # doctest: +ELLIPSIS
    ["m.json: placement[0] (root/L): unknown key 'edge_sdd' (did you mean 'edge_sd'?) ..."]
    """
    return _placement(manifest, where)[1] + auto_gate_problems(manifest, where)[1]


def placement_specs(strategy) -> list[PlacementParams]:
    """The strategy's ``placement`` entries, each its method's parameters (empty if none).

    Built from the manifest at each call (a few microseconds an entry), so a
    strategy read from any folder is checked before a gate is placed.

    Raises
    ------
    StrategyError
        An entry names no gate path or an unknown method, or has an unknown
        key, lacks a required one, or has a value of the wrong type or out of
        range. The message names the manifest, the entry and the key.
    """
    out, problems = _placement(strategy.manifest, strategy.directory / "manifest.json")
    if problems:
        more = f" ({len(problems) - 1} more: see `cytopipe strategy validate`)" if len(problems) > 1 else ""
        raise StrategyError(problems[0] + more)
    return out
