"""Panel resolution: find each marker's detector by ``$PnN`` and check its ``$PnS``.

Detectors are found by name, never by position. ``$PnS`` is typed by hand at
acquisition, so its spelling drifts ("CD25", "cd25 PE-Cy7", "CD4-V450",
"FoxP3", "7AAD"); comparison ignores case, separators and an appended
fluorochrome. A ``$PnS`` that names a different marker is a mislabelled tube
and stops the sample.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..exceptions import PanelError
from .registry import Marker, Strategy

__all__ = ["normalise_label", "resolve_panel"]


def normalise_label(text: str) -> str:
    """Lower-case ``text`` and drop everything but letters and digits.

    Examples
    --------
    >>> normalise_label("CD25 PE-Cy7")
    'cd25pecy7'
    """
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _matches(pns: str, marker: Marker) -> bool:
    label = normalise_label(pns)
    fluors = [normalise_label(f) for f in marker.fluorochromes]
    for alias in marker.aliases + (marker.marker,):
        a = normalise_label(alias)
        if label == a or any(label in (a + f, f + a) for f in fluors if f):
            return True
    return False


def resolve_panel(
    pnn: Sequence[str],
    pns: Sequence[str],
    strategy: Strategy,
    *,
    source: str = "",
) -> dict[str, str]:
    """Check a file's channels against a strategy's panel.

    Parameters
    ----------
    pnn, pns
        The file's ``$PnN`` and ``$PnS`` values, in DATA order (``""`` where
        ``$PnS`` is absent).
    strategy
        The strategy whose manifest declares markers, detectors and aliases.
    source
        The file, named in error messages.

    Returns
    -------
    dict
        Marker name to detector ``$PnN``.

    Raises
    ------
    PanelError
        A required detector is missing (the message lists the detectors the
        file has), or a detector's ``$PnS`` names another marker or is empty.

    Examples
    --------
    >>> from cytopipe.strategy.registry import load_strategy
    >>> s = load_strategy("treg@1.0.0")
    >>> names = [m.detector for m in s.markers] + list(s.scatter)
    >>> labels = [m.marker for m in s.markers] + ["", "", ""]
    >>> resolve_panel(names, labels, s)["CD25"]
    'PE-Cy7-A'
    """
    where = f"{source}: " if source else ""
    by_name = dict(zip(pnn, pns))
    missing = [d for d in strategy.required_detectors if d not in by_name]
    if missing:
        msg = (
            f"{where}missing detector(s) {missing} required by {strategy.ref}; "
            f"the file has {list(pnn)}."
        )
        raise PanelError(msg)
    resolved: dict[str, str] = {}
    for marker in strategy.markers:
        label = (by_name[marker.detector] or "").strip()
        if not label:
            msg = (
                f"{where}detector {marker.detector} has no $PnS; it should carry "
                f"{marker.marker}. Label the channel in the acquisition software and re-export."
            )
            raise PanelError(msg)
        if not _matches(label, marker):
            other = [m.marker for m in strategy.markers if m is not marker and _matches(label, m)]
            hint = f" (that is the {other[0]} marker: a mislabelled tube?)" if other else ""
            accepted = list(marker.aliases)
            msg = (
                f"{where}detector {marker.detector} should carry {marker.marker} but the file "
                f"says {label!r}{hint}; accepted $PnS spellings: {accepted}."
            )
            raise PanelError(msg)
        resolved[marker.marker] = marker.detector
    return resolved
