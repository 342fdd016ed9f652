"""Panel resolution: find each marker's detector by ``$PnN`` and check its ``$PnS``.

Detectors are found by name, never by position. ``$PnS`` is free text typed
by hand at acquisition: besides the marker it may carry a fluorochrome, a
clone name, the marker's other name, odd case and punctuation ("CD25 (M-A251)",
"IL-2Ra/CD25", "FOXP3 259D/C7", "Live/Dead"). So a label is read as tokens,
not compared as a whole: it *names* a marker when a token, or a run of
adjacent tokens joined, spells one of the marker's aliases. A label that
names the expected marker is right whatever else it says; one that names
only a different marker is a mislabelled tube and stops the sample; one that
names no marker at all is gated by its ``$PnN`` and flagged for review.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..exceptions import PanelError
from .registry import Marker, Strategy

__all__ = ["Panel", "normalise_label", "resolve_panel"]

# QC flag of a detector whose $PnS names no marker: "unlabelled:<$PnN>"
_UNLABELLED = "unlabelled"

# letters and digits apart, so "CD25PE-Cy7" -> cd 25 pe cy 7 and "7AAD" -> 7 aad
_TOKEN = re.compile(r"[a-z]+|[0-9]+")


@dataclass(frozen=True)
class Panel:
    """A file's channels resolved against a strategy's panel.

    Attributes
    ----------
    detectors
        Marker name to detector ``$PnN``, for every marker of the panel.
    qc_flags
        ``unlabelled:<$PnN>`` for each detector whose ``$PnS`` names no
        marker (empty, absent, or e.g. ``"Comp-PE-A"``): gated by its
        ``$PnN``, for a reviewer to confirm.
    """

    detectors: dict[str, str]
    qc_flags: tuple[str, ...] = ()


def normalise_label(text: str) -> str:
    """Lower-case ``text`` and drop everything but letters and digits.

    Examples
    --------
    >>> normalise_label("CD25 PE-Cy7")
    'cd25pecy7'
    """
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _tokens(text: str, fluors: Sequence[tuple[str, ...]] = ()) -> list[str]:
    """Letters and digits of ``text`` apart, and a fluorochrome glued to a word split off.

    "CD45RAFITC" -> cd 45 ra fitc, "IL7RaPE-Cy7" -> il 7 ra pe cy 7: a word
    (letters only) that ends with a fluorochrome's first token (its other tokens following)
    or starts with its last (the others before) is cut there. Cutting only
    adds candidates, since adjacent tokens are joined again when matching.
    """
    tokens = _TOKEN.findall(text.lower())
    out: list[str] = []
    for i, token in enumerate(tokens):
        pieces = [token]
        for f in fluors if token.isalpha() else ():  # a number is never cut: "CD47AAD" is CD47, not CD4
            head, tail = f[0], f[-1]
            if len(token) > len(head) and token.endswith(head) and tuple(tokens[i + 1 : i + len(f)]) == f[1:]:
                pieces = [token[: -len(head)], head]
                break
            before = i - len(f) + 1
            if before >= 0 and len(token) > len(tail) and token.startswith(tail) and tuple(tokens[before:i]) == f[:-1]:
                pieces = [tail, token[len(tail) :]]
                break
        out.extend(pieces)
    return out


def _runs(tokens: list[str], longest: int) -> set[str]:
    """Every run of adjacent tokens joined, up to ``longest`` characters."""
    out = set()
    for i in range(len(tokens)):
        joined = ""
        for token in tokens[i:]:
            joined += token
            if len(joined) > longest:
                break
            out.add(joined)
    return out


def _cd_markers(tokens: list[str]) -> list[str]:
    """Generic CD markers: a token ``cd`` followed by a digits token ("CD45RO" -> CD45)."""
    return [f"CD{b}" for a, b in zip(tokens, tokens[1:]) if a == "cd" and b.isdigit()]


def _spellings(marker: Marker) -> set[str]:
    """Normalised spellings that name ``marker``: its name and its manifest aliases."""
    return {normalise_label(a) for a in (marker.marker, *marker.aliases)} - {""}


def resolve_panel(
    pnn: Sequence[str],
    pns: Sequence[str],
    strategy: Strategy,
    *,
    source: str = "",
) -> Panel:
    """Check a file's channels against a strategy's panel.

    A ``$PnS`` names a marker when one of its tokens (letters and digits
    apart, split at every other character; a fluorochrome glued to a word,
    as in "CD45RAFITC", cut off), or a run of adjacent tokens joined, spells
    the marker's name or one of its manifest aliases. Any other CD marker is
    named by a token ``cd`` followed by a number ("CD45RO" names CD45;
    "CD45" does not name CD4). A ``$PnS`` that names the expected marker
    passes, whatever else it carries (clone, fluorochrome, the other name);
    one that names only other markers is a mislabelled tube; one that names
    none is gated by its ``$PnN`` and flagged.

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
    Panel
        Each marker's detector, and an ``unlabelled:<$PnN>`` QC flag for each
        detector whose ``$PnS`` names no marker at all (gated by ``$PnN``).

    Raises
    ------
    PanelError
        A required detector is missing (the message lists the detectors the
        file has), or a detector's ``$PnS`` names another marker of the panel
        or another CD marker, and not the expected one.

    Examples
    --------
    >>> from cytopipe.strategy.registry import load_strategy
    >>> s = load_strategy("treg@1.0.0")
    >>> names = [m.detector for m in s.markers] + list(s.scatter)
    >>> labels = [m.marker for m in s.markers] + ["", "", ""]
    >>> resolve_panel(names, labels, s).detectors["CD25"]
    'PE-Cy7-A'
    >>> labels[names.index("PE-Cy7-A")] = "IL-2Ra/CD25 (M-A251)"
    >>> labels[names.index("APC-A")] = "Comp-APC-A"
    >>> resolve_panel(names, labels, s).qc_flags
    ('unlabelled:APC-A',)
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
    # longest first, so "PE-Cy7" is cut off before "PE"
    fluors = sorted({tuple(_tokens(f)) for m in strategy.markers for f in m.fluorochromes} - {()},
                    key=lambda f: (-len(f), f))
    spellings = {m.marker: _spellings(m) for m in strategy.markers}
    longest = max((len(s) for names in spellings.values() for s in names), default=0)
    # a generic CD name that is also a panel marker's spelling is that marker, reported once
    panel_names = set().union(*spellings.values())
    detectors: dict[str, str] = {}
    flags: list[str] = []
    for marker in strategy.markers:
        label = (by_name[marker.detector] or "").strip()
        tokens = _tokens(label, fluors)
        runs = _runs(tokens, longest)
        named = [m.marker for m in strategy.markers if runs & spellings[m.marker]]
        if marker.marker not in named:
            other = named + [c for c in _cd_markers(tokens) if normalise_label(c) not in panel_names]
            if not other:  # names no marker: the detector is known by its $PnN
                flags.append(f"{_UNLABELLED}:{marker.detector}")
                detectors[marker.marker] = marker.detector
                continue
            hint = f" (that is the {other[0]} marker: a mislabelled tube?)"
            accepted = list(marker.aliases)
            msg = (
                f"{where}detector {marker.detector} should carry {marker.marker} but the file "
                f"says {label!r}{hint}; accepted $PnS spellings: {accepted}."
            )
            raise PanelError(msg)
        detectors[marker.marker] = marker.detector
    return Panel(detectors=detectors, qc_flags=tuple(flags))
