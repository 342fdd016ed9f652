"""Panel resolution: find each marker's detector in a file, whatever the instrument calls it.

A strategy names markers. Each has a *canonical* detector (the ``$PnN`` its
GatingML uses, e.g. ``PE-Cy7-A`` for CD25), but another instrument calls the
detector ``PC7-A``, ``YL4-A``, ``B2-A`` or, unmixed, ``BV421-A``. So a
marker's detector is found, in this order:

1. a lab panel file (``marker,detector``; any alias of the marker), which
   wins over ``$PnS`` (a ``$PnS`` naming another marker is then a QC flag);
2. the channel whose ``$PnS`` names the marker, whatever its ``$PnN``: the
   canonical detector when it is among them, else the area (``-A``) over
   the height (``-H``) parameter, unless the file's spillover compensates
   only the heights;
3. the canonical detector by ``$PnN``, when no ``$PnS`` names the marker.

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

import csv
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..exceptions import PanelError
from .registry import Marker, Strategy

__all__ = ["Panel", "normalise_label", "read_panel_file", "resolve_panel"]

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
        Marker name to the file's detector ``$PnN``, for every marker found.
    qc_flags
        ``unlabelled:<$PnN>`` for each detector whose ``$PnS`` names no
        marker (empty, absent, or e.g. ``"Comp-PE-A"``): gated by its
        ``$PnN``, for a reviewer to confirm; ``panel_disagrees:<$PnN>`` for
        a detector the lab's panel file assigns a marker its ``$PnS`` does
        not name.
    how
        Marker name to how its detector was found: ``"panel file"``,
        ``"$PnS"`` or ``"$PnN"``.
    """

    detectors: dict[str, str]
    qc_flags: tuple[str, ...] = ()
    how: dict[str, str] = field(default_factory=dict, compare=False)

    def renames(self, strategy: Strategy) -> dict[str, str]:
        """File ``$PnN`` to the strategy's canonical detector, for every marker found elsewhere."""
        canonical = {m.marker: m.detector for m in strategy.markers}
        return {d: canonical[m] for m, d in self.detectors.items() if canonical.get(m) not in (None, d)}


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


_PANEL_DISAGREES = "panel_disagrees"


def read_panel_file(path: str | Path) -> dict[str, str]:
    """Read a lab's panel file: a CSV with columns ``marker,detector``.

    Parameters
    ----------
    path
        The CSV file. ``marker`` may be any alias of a strategy's marker
        (``IL-7Ra`` for CD127); ``detector`` is the file's ``$PnN``.

    Returns
    -------
    dict
        Marker as written to detector, in file order.

    Raises
    ------
    PanelError
        The file is missing, lacks either column, has an empty cell, or
        names a marker twice; the message names the file and the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        msg = f"panel file {path}: cannot be read ({e.strerror or e}); give a CSV with columns marker,detector."
        raise PanelError(msg) from e
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "marker" not in columns or "detector" not in columns:
        msg = f"panel file {path}: needs the columns marker,detector; it has {reader.fieldnames!r}."
        raise PanelError(msg)
    out: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        marker, detector = row.get("marker", ""), row.get("detector", "")
        if not marker and not detector:
            continue
        if not marker or not detector:
            msg = f"panel file {path}: line {line}: both marker and detector are needed, got {marker!r}, {detector!r}."
            raise PanelError(msg)
        key = normalise_label(marker)
        if key in seen:
            msg = f"panel file {path}: line {line}: marker {marker!r} is already on line {seen[key]}."
            raise PanelError(msg)
        seen[key] = line
        out[marker] = detector
    if not out:
        msg = f"panel file {path}: no marker,detector rows."
        raise PanelError(msg)
    return out


def _kind(name: str) -> int:
    """Area before height before anything else: ``-A`` 0, ``-H`` 1, other 2."""
    upper = name.upper()
    return 0 if upper.endswith("-A") else 1 if upper.endswith("-H") else 2


def _pick(marker: Marker, candidates: list[str], compensated: Collection[str]) -> str | None:
    """The one detector of ``candidates`` (all naming ``marker``), or None when two are equally good."""
    if marker.detector in candidates:
        return marker.detector
    if compensated:  # a spillover that compensates only heights: the heights are the compensated detectors
        comp = [c for c in candidates if c in compensated]
        candidates = comp or candidates
    best = min(_kind(c) for c in candidates)
    top = [c for c in candidates if _kind(c) == best]
    if len(top) == 1:
        return top[0]
    # BL1-A and BL1-H are one detector; two detectors of one kind are not
    stems = {c[:-2] if _kind(c) < 2 else c for c in top}
    return top[0] if len(stems) == 1 else None


def _others_that_fit(strategy: Strategy, found: Collection[str]) -> list[str]:
    """Shipped strategies (newest version of each) whose markers the file has."""
    from .registry import list_strategies, load_strategy  # noqa: PLC0415 - only on the error path

    names = []
    for row in list_strategies():
        if row.get("name") == strategy.name:
            continue
        names.append((row["name"], row["version"]))
    newest: dict[str, str] = {}
    for name, version in names:
        if name not in newest or tuple(map(int, version.split("."))) > tuple(map(int, newest[name].split("."))):
            newest[name] = version
    fits = []
    for name, version in sorted(newest.items()):
        try:
            other = load_strategy(f"{name}@{version}", allow_draft=True)
        except Exception:  # noqa: BLE001 - a hint only
            continue
        if {m.marker for m in other.markers} <= set(found):
            fits.append(other.ref + (" (a draft: --allow-draft)" if other.is_draft else ""))
    return fits


def resolve_panel(
    pnn: Sequence[str],
    pns: Sequence[str],
    strategy: Strategy,
    *,
    source: str = "",
    lab_panel: Mapping[str, str] | None = None,
    needed: Collection[str] | None = None,
    compensated: Collection[str] = (),
) -> Panel:
    """Find the file's detector of every marker of a strategy's panel.

    A ``$PnS`` names a marker when one of its tokens (letters and digits
    apart, split at every other character; a fluorochrome glued to a word,
    as in "CD45RAFITC", cut off), or a run of adjacent tokens joined, spells
    the marker's name or one of its manifest aliases. Any other CD marker is
    named by a token ``cd`` followed by a number ("CD45RO" names CD45;
    "CD45" does not name CD4). Each marker's detector is then, in order: the
    lab panel's; the one channel whose ``$PnS`` names it (the canonical
    detector first, then ``-A`` before ``-H``); the canonical detector by
    ``$PnN`` when no ``$PnS`` names the marker, flagged ``unlabelled`` when
    its ``$PnS`` names nothing, refused as a mislabelled tube when it names
    another marker.

    Parameters
    ----------
    pnn, pns
        The file's ``$PnN`` and ``$PnS`` values, in DATA order (``""`` where
        ``$PnS`` is absent).
    strategy
        The strategy whose manifest declares markers, detectors and aliases.
    source
        The file, named in error messages.
    lab_panel
        A lab's panel (:func:`read_panel_file`): marker (any alias) to
        ``$PnN``. It wins over ``$PnS``.
    needed
        The markers the file must have (all of the strategy's when None; a
        pre-gated file needs only those of the gates it still goes through).
    compensated
        The ``$PnN`` its spillover names: where the spillover compensates
        only heights, a marker on both ``-A`` and ``-H`` is read on ``-H``.

    Returns
    -------
    Panel
        Each marker's detector, how it was found, and QC flags.

    Raises
    ------
    PanelError
        A needed marker has no detector (the message lists the file's
        channels and names a shipped strategy that fits them, if one does),
        the lab panel names a detector the file lacks, two detectors name
        one marker, or a detector's ``$PnS`` names another marker where the
        expected one was looked for.

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
    >>> names[names.index("PE-Cy7-A")] = "YL4-A"   # another instrument's name for the detector
    >>> resolve_panel(names, labels, s).detectors["CD25"]
    'YL4-A'
    """
    where = f"{source}: " if source else ""
    pns = [(p or "").strip() for p in pns]
    by_name = dict(zip(pnn, pns))
    need = {m.marker for m in strategy.markers} | set(strategy.scatter) if needed is None else set(needed)
    missing_scatter = [d for d in strategy.scatter if d in need and d not in by_name]
    # longest first, so "PE-Cy7" is cut off before "PE"
    fluors = sorted({tuple(_tokens(f)) for m in strategy.markers for f in m.fluorochromes} - {()},
                    key=lambda f: (-len(f), f))
    spellings = {m.marker: _spellings(m) for m in strategy.markers}
    longest = max((len(s) for names in spellings.values() for s in names), default=0)
    # a generic CD name that is also a panel marker's spelling is that marker, reported once
    panel_names = set().union(*spellings.values())
    named_by: dict[str, list[str]] = {}  # $PnN -> panel markers its $PnS names
    generic: dict[str, list[str]] = {}  # $PnN -> other CD markers it names
    for name, label in zip(pnn, pns):
        tokens = _tokens(label, fluors)
        runs = _runs(tokens, longest)
        named_by[name] = [m.marker for m in strategy.markers if runs & spellings[m.marker]]
        generic[name] = [c for c in _cd_markers(tokens) if normalise_label(c) not in panel_names]
    lab = {}
    for written, detector in (lab_panel or {}).items():  # a marker written as in $PnS: "IL7Ra-PE" is CD127
        runs = _runs(_tokens(written, fluors), longest)
        named = [m.marker for m in strategy.markers if runs & spellings[m.marker]]
        if len(named) == 1:
            lab[named[0]] = detector
    detectors: dict[str, str] = {}
    how: dict[str, str] = {}
    flags: list[str] = []
    missing: list[str] = []
    mislabelled: list[str] = []
    for marker in strategy.markers:
        m = marker.marker
        if m in lab:
            d = lab[m]
            if d not in by_name:
                if m not in need:
                    continue
                msg = (f"{where}the panel file puts {m} on detector {d!r}, which the file does not have; "
                       f"its detectors are {list(pnn)}.")
                raise PanelError(msg)
            if by_name[d] and m not in named_by[d] and (named_by[d] or generic[d]):
                flags.append(f"{_PANEL_DISAGREES}:{d}")
            detectors[m], how[m] = d, "panel file"
            continue
        candidates = [n for n in pnn if m in named_by[n]]
        if candidates:
            picked = _pick(marker, candidates, compensated)
            if picked is None:
                if m not in need:
                    continue
                msg = (f"{where}{m} is named by the $PnS of several detectors {candidates}; say which one "
                       f"carries it with a panel file (--panel PANEL.csv, columns marker,detector).")
                raise PanelError(msg)
            detectors[m], how[m] = picked, "$PnS"
            continue
        if marker.detector in by_name:
            label = by_name[marker.detector]
            other = named_by[marker.detector] + generic[marker.detector]
            if not other:  # names no marker: the detector is known by its $PnN
                flags.append(f"{_UNLABELLED}:{marker.detector}")
                detectors[m], how[m] = marker.detector, "$PnN"
                continue
            if m not in need:
                continue
            hint = f" (that is the {other[0]} marker: a mislabelled tube?)"
            accepted = list(marker.aliases)
            mislabelled.append(
                f"{where}detector {marker.detector} should carry {m} but the file "
                f"says {label!r}{hint}; accepted $PnS spellings: {accepted}."
            )
            missing.append(m)
            continue
        if m in need:
            missing.append(m)
    if missing or missing_scatter:
        channels = ", ".join(f"{n} ({s!r})" if s else n for n, s in zip(pnn, pns))
        what = []
        if missing:
            what.append(f"no detector for marker(s) {missing}: no $PnS names them and the file has no "
                        f"{[m.detector for m in strategy.markers if m.marker in missing]}")
        if missing_scatter:
            heights = [d[:-2] + "-H" for d in missing_scatter if d.endswith("-A") and d[:-2] + "-H" in by_name]
            why = (f" (the file has only heights {heights}: the Singlets gate needs FSC-A / FSC-H; gate such files "
                   f"from a pre-gated export with --starts-at)" if heights else "")
            what.append(f"missing scatter detector(s) {missing_scatter}{why}")
        fits = _others_that_fit(strategy, set(detectors)) if missing else []
        if mislabelled:
            raise PanelError(mislabelled[0] + (f" {', '.join(fits)} needs only markers this file has." if fits else ""))
        hint = (f" {', '.join(fits)} needs only markers this file has." if fits else "")
        msg = (f"{where}{'; '.join(what)} (required by {strategy.ref}); the file's channels: {channels}. "
               f"Name each marker's detector in a panel file (--panel PANEL.csv, columns marker,detector)."
               f"{hint}")
        raise PanelError(msg)
    return Panel(detectors=detectors, qc_flags=tuple(flags), how=how)
