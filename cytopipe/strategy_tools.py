"""Look at, check and version strategies: describe, validate, new-version, release.

The registry (:mod:`cytopipe.strategy`) loads a version and verifies its hash;
this module is what an immunologist uses around it: the gate tree with each
gate's type, dimensions, transform and parent (as text and as an image), a
validation that names the XSD line of every schema error and checks the
manifest, a draft copied from a released version with a CHANGELOG stub, and
the release step, which refuses a version whose CHANGELOG entry lacks an
author, a date or a reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from .exceptions import StrategyError
from .strategy import _MANIFEST, _check_xml_is_safe, _sha256, load_gatingml, strategies_root

__all__ = [
    "DimensionInfo",
    "GateInfo",
    "ValidationReport",
    "changelog_entry",
    "describe_gates",
    "new_version",
    "release_version",
    "validate_strategy",
    "write_gate_tree_image",
]

_HEADING = re.compile(r"^##\s+(?P<version>\S+)\s*(?:[—–-]+\s*(?P<date>.*?))?\s*$")
_FIELD = re.compile(r"^-\s*(?P<key>Author|Reason|Date)\s*:\s*(?P<value>.*)$", re.IGNORECASE)
_TODO = ("", "todo", "tbd", "yyyy-mm-dd", "unreleased")


@dataclass(frozen=True)
class DimensionInfo:
    """One dimension of a gate: detector, compensation, transform and range."""

    detector: str
    compensation: str | None
    transform: str | None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class GateInfo:
    """What an immunologist needs to know about one gate.

    Attributes
    ----------
    path
        Full gate path, ``("root", ..., gate_id)``.
    gate_type
        FlowKit class name, e.g. ``"RectangleGate"``.
    dimensions
        The gate's dimensions in order.
    vertices
        Polygon vertices (in the transformed scale), else empty.
    extra
        Type-specific details (boolean references, quadrant ids, ellipse mean).
    """

    path: tuple[str, ...]
    gate_type: str
    dimensions: tuple[DimensionInfo, ...]
    vertices: tuple[tuple[float, ...], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """The gate id."""
        return self.path[-1]

    @property
    def parent(self) -> str:
        """The parent gate id (``"root"`` for a top gate)."""
        return self.path[-2]


@dataclass
class ValidationReport:
    """Result of :func:`validate_strategy`: every problem found, with where it is."""

    path: Path
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no error was found."""
        return not self.errors


def describe_gates(gating_strategy) -> list[GateInfo]:
    """Describe every gate of a FlowKit strategy, parents before children.

    Parameters
    ----------
    gating_strategy : flowkit.GatingStrategy

    Returns
    -------
    list of GateInfo
    """
    from flowkit.exceptions import QuadrantReferenceError

    out = []
    for gate_id, parent_path in gating_strategy.get_gate_ids():
        path = tuple(parent_path) + (gate_id,)
        try:
            gate = gating_strategy.get_gate(gate_id, tuple(parent_path))
        except QuadrantReferenceError:
            out.append(GateInfo(path, "Quadrant", (), extra={"quadrant_of": parent_path[-1]}))
            continue
        dims = tuple(
            DimensionInfo(
                detector=getattr(d, "id", None) or getattr(d, "ratio_ref", "?"),
                compensation=getattr(d, "compensation_ref", None),
                transform=getattr(d, "transformation_ref", None),
                min=getattr(d, "min", None),
                max=getattr(d, "max", None),
            )
            for d in gate.dimensions
        )
        extra: dict[str, Any] = {}
        if hasattr(gate, "gate_refs"):
            extra["boolean"] = gate.type
            extra["refs"] = [("not " if r.get("complement") else "") + r["ref"] for r in gate.gate_refs]
        if hasattr(gate, "quadrants"):
            extra["quadrants"] = list(gate.quadrants)
        if hasattr(gate, "covariance_matrix"):
            extra["mean"] = [float(c) for c in gate.coordinates]
            extra["distance_square"] = float(gate.distance_square)
        vertices = tuple(tuple(float(c) for c in v) for v in getattr(gate, "vertices", None) or ())
        out.append(GateInfo(path, type(gate).__name__, dims, vertices, extra))
    return sorted(out, key=lambda g: len(g.path))


def _dim_text(d: DimensionInfo) -> str:
    rng = []
    if d.min is not None:
        rng.append(f">= {d.min:g}")
    if d.max is not None:
        rng.append(f"< {d.max:g}")
    comp = d.compensation or "uncompensated"
    return f"{d.detector} [comp {comp}, transform {d.transform or 'linear'}]" + (f" {' '.join(rng)}" if rng else "")


def format_gate(info: GateInfo) -> str:
    """One line per gate for ``cytopipe strategy show``."""
    depth = "  " * (len(info.path) - 2)
    dims = "; ".join(_dim_text(d) for d in info.dimensions) or "-"
    more = ""
    if info.vertices:
        more = f"; {len(info.vertices)} vertices"
    if "refs" in info.extra:
        more = f"; {info.extra['boolean']} of {', '.join(info.extra['refs'])}"
    return f"{depth}{info.name:<14} {info.gate_type:<14} parent {info.parent:<12} {dims}{more}"


def write_gate_tree_image(gating_strategy, path: str | os.PathLike, *, title: str = "") -> Path:
    """Draw the gate tree (one box per gate: id, type, dimensions) with matplotlib.

    FlowKit's ``export_gate_hierarchy_image`` needs the graphviz ``dot``
    program, which a fresh clone does not have; matplotlib is a dependency.

    Parameters
    ----------
    gating_strategy : flowkit.GatingStrategy
    path
        Image file; the format follows the extension (``.png``, ``.svg``, ``.pdf``).
    title
        Drawn above the tree.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    gates = describe_gates(gating_strategy)
    children: dict[tuple[str, ...], list[GateInfo]] = {}
    for g in gates:
        children.setdefault(g.path[:-1], []).append(g)
    pos: dict[tuple[str, ...], tuple[float, float]] = {}
    next_x = [0.0]

    def place(node: tuple[str, ...], depth: int) -> float:
        kids = children.get(node, [])
        if not kids:
            x = next_x[0]
            next_x[0] += 1.0
        else:
            xs = [place(k.path, depth + 1) for k in kids]
            x = sum(xs) / len(xs)
        pos[node] = (x, -depth)
        return x

    place(("root",), 0)
    width = max(next_x[0], 1.0)
    depth = max(len(g.path) for g in gates) if gates else 1
    fig, ax = plt.subplots(figsize=(max(4.0, 3.2 * width), 1.3 * (depth + 1)))
    try:
        by_path = {g.path: g for g in gates}
        for node, (x, y) in pos.items():
            if node != ("root",):
                px, py = pos[node[:-1]]
                ax.plot([px, x], [py - 0.18, y + 0.18], color="0.5", lw=1, zorder=1)
            g = by_path.get(node)
            label = "root (all events)" if g is None else (
                f"{g.name}\n{g.gate_type}\n" + ", ".join(
                    f"{d.detector}" + (f" ({d.transform})" if d.transform else "") for d in g.dimensions))
            ax.text(x, y, label, ha="center", va="center", fontsize=8, zorder=2,
                    bbox={"boxstyle": "round", "fc": "#eef3fb", "ec": "#4a6fa5"})
        ax.set_xlim(-0.7, width - 0.3)
        ax.set_ylim(-depth - 0.6, 0.6)
        ax.axis("off")
        if title:
            ax.set_title(title)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out


def changelog_entry(changelog: str | os.PathLike, version: str) -> dict[str, str] | None:
    """Return the CHANGELOG entry of a version as ``{"date", "author", "reason"}``, or None.

    An entry starts with ``## <version> — <YYYY-MM-DD>`` and has ``- Author:``
    and ``- Reason:`` lines (a ``- Date:`` line may give the date instead).
    """
    path = Path(changelog)
    if not path.is_file():
        return None
    entry: dict[str, str] | None = None
    key = None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _HEADING.match(line)
        if m:
            if entry is not None:
                break
            if m["version"] == version:
                entry = {"date": (m["date"] or "").strip(), "author": "", "reason": ""}
            continue
        if entry is None:
            continue
        f = _FIELD.match(line.strip())
        if f:
            key = f["key"].lower()
            entry[key] = f["value"].strip()
        elif key == "reason" and line.startswith("  ") and line.strip():
            entry["reason"] += " " + line.strip()
        elif line.strip().startswith("-"):
            key = None
    return entry


def _changelog_problems(directory: Path, version: str) -> list[str]:
    path = directory / "CHANGELOG.md"
    entry = changelog_entry(path, version)
    if entry is None:
        return [f"{path}: no entry '## {version} — YYYY-MM-DD' with '- Author:' and '- Reason:' lines."]
    problems = []
    try:
        _dt.date.fromisoformat(entry["date"])
    except ValueError:
        problems.append(f"{path}: the entry of {version} has no date (got {entry['date']!r}, "
                        f"expected YYYY-MM-DD in its heading).")
    for key in ("author", "reason"):
        if entry[key].strip().lower() in _TODO:
            problems.append(f"{path}: the entry of {version} has no {key} (got {entry[key]!r}).")
    return problems


def _xml_problems(gml: Path) -> list[str]:
    """Well-formedness, DOCTYPE and every XSD error, each with its line."""
    try:
        _check_xml_is_safe(gml)
    except StrategyError as e:
        return [str(e)]
    from flowkit._resources import gml_schema

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    doc = etree.parse(str(gml), parser)
    if gml_schema.validate(doc):
        return []
    return [f"{gml}: line {err.line}: {err.message}" for err in gml_schema.error_log]


def validate_strategy(path: str | os.PathLike) -> ValidationReport:
    """Validate a GatingML file or a strategy version folder; collect every problem.

    Checks, in order: XML well-formed and without DOCTYPE; GatingML 2.0 XSD
    (each error with its line); FlowKit can build the gate tree; and for a
    version folder the manifest: required keys, every gate detector covered by
    a panel marker or scatter channel, numerator and denominator gate paths
    exist, the recorded sha256, and (for a released version) its CHANGELOG entry.

    Parameters
    ----------
    path
        A ``.xml`` GatingML file, a version folder, or ``name@version``.

    Returns
    -------
    ValidationReport
    """
    text = os.fspath(path)
    p = Path(text)
    if not p.exists() and "@" in text:
        name, version = text.split("@", 1)
        p = strategies_root() / name / version
    report = ValidationReport(p)
    man: dict[str, Any] | None = None
    if p.is_dir():
        try:
            man = json.loads((p / _MANIFEST).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            report.errors.append(f"{p / _MANIFEST}: cannot read the manifest: {e}")
            return report
        missing = [k for k in ("name", "version", "status", "gatingml", "gatingml_sha256", "markers", "endpoint")
                   if k not in man]
        if missing:
            report.errors.append(f"{p / _MANIFEST}: missing required keys {missing}.")
            return report
        gml = p / man["gatingml"]
    else:
        gml = p
    if not gml.is_file():
        report.errors.append(f"{gml}: no such GatingML file.")
        return report
    report.errors += _xml_problems(gml)
    if report.errors:
        return report
    gs = load_gatingml(gml)
    gates = describe_gates(gs)
    report.notes.append(f"{gml.name}: valid GatingML 2.0, {len(gates)} gates, sha256 {_sha256(gml)}")
    if man is None:
        return report
    where = p / _MANIFEST
    covered = set(man.get("scatter", ())) | {m["detector"] for m in man["markers"]}
    used = {d.detector for g in gates for d in g.dimensions}
    for det in sorted(used - covered):
        report.errors.append(f"{where}: gates use detector {det!r}, which no manifest marker or scatter "
                             f"entry covers; add it under 'markers' (with its marker) or 'scatter'.")
    paths = {g.path for g in gates}
    for label in ("numerator", "denominator"):
        gp = tuple(man["endpoint"].get(label, ()))
        if gp not in paths:
            report.errors.append(f"{where}: endpoint {label} {'/'.join(gp)!r} is not a gate path of {gml.name}; "
                                 f"gate paths: {sorted('/'.join(x) for x in paths)}")
    digest = _sha256(gml)
    if digest != man["gatingml_sha256"]:
        if man["status"] == "released":
            report.errors.append(f"{gml}: sha256 {digest} differs from the released {man['gatingml_sha256']}: "
                                 f"a released version never changes; restore it or make a new version.")
        else:
            report.notes.append(f"{gml.name}: draft, sha256 now {digest} (recorded at release)")
    if man["status"] == "released":
        report.errors += _changelog_problems(p, man["version"])
    return report


def new_version(name: str, from_version: str, *, version: str | None = None,
                root: str | os.PathLike | None = None) -> Path:
    """Copy a version into a new draft with a CHANGELOG stub to fill in.

    Parameters
    ----------
    name, from_version
        The version to start from.
    version
        The new version; default the next minor version (``1.0.0`` -> ``1.1.0``).
    root
        Strategies folder (default :func:`~cytopipe.strategy.strategies_root`).

    Returns
    -------
    Path
        The new version's folder.

    Raises
    ------
    StrategyError
        The source does not exist or the new version already exists.
    """
    base = Path(root) if root is not None else strategies_root()
    src = base / name / from_version
    if not (src / _MANIFEST).is_file():
        msg = f"Strategy {name}@{from_version} not found in {base}; 'cytopipe strategy list' shows what exists."
        raise StrategyError(msg)
    if version is None:
        parts = from_version.split(".")
        if len(parts) != 3 or not all(x.isdigit() for x in parts):
            msg = f"Cannot guess the version after {from_version!r}; pass --version X.Y.Z."
            raise StrategyError(msg)
        version = f"{parts[0]}.{int(parts[1]) + 1}.0"
    dst = base / name / version
    if dst.exists():
        msg = f"{dst} already exists; pick another version (--version)."
        raise StrategyError(msg)
    shutil.copytree(src, dst)
    man = json.loads((dst / _MANIFEST).read_text(encoding="utf-8"))
    man.update(version=version, status="draft", released="", derived_from=f"{name}@{from_version}")
    (dst / _MANIFEST).write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
    _add_changelog_stub(dst / "CHANGELOG.md", version, f"Derived from {name}@{from_version}.")
    return dst


def _add_changelog_stub(path: Path, version: str, note: str, *, author: str = "TODO",
                        reason: str = "TODO") -> None:
    old = path.read_text(encoding="utf-8") if path.is_file() else f"# {path.parent.parent.name} strategy changelog\n"
    head, _, rest = old.partition("\n## ")
    stub = (f"\n## {version} — YYYY-MM-DD\n- Author: {author}\n- Reason: {reason}\n- Changes: {note}\n")
    path.write_text(head.rstrip("\n") + "\n" + stub + ("\n## " + rest if rest else ""), encoding="utf-8")


def release_version(ref: str, *, today: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Release a draft: validate it, require its CHANGELOG entry, record date and sha256.

    Parameters
    ----------
    ref
        ``name@version`` of a draft.
    today
        Release date (default: the date of its CHANGELOG entry).
    root
        Strategies folder.

    Returns
    -------
    Path
        The manifest written.

    Raises
    ------
    StrategyError
        Already released, invalid, or the CHANGELOG entry lacks author, date or reason.
    """
    name, _, version = ref.partition("@")
    base = Path(root) if root is not None else strategies_root()
    directory = base / name / version
    if not (directory / _MANIFEST).is_file():
        msg = f"Strategy {ref!r} not found in {base}."
        raise StrategyError(msg)
    man = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
    if man.get("status") == "released":
        msg = f"{ref} is already released and never changes; make a new version with 'strategy new-version'."
        raise StrategyError(msg)
    report = validate_strategy(directory)
    problems = report.errors + _changelog_problems(directory, version)
    if problems:
        msg = f"Cannot release {ref}: " + " | ".join(problems)
        raise StrategyError(msg)
    entry = changelog_entry(directory / "CHANGELOG.md", version) or {}
    man.update(status="released", released=today or entry.get("date") or _dt.date.today().isoformat(),
               gatingml_sha256=_sha256(directory / man["gatingml"]))
    out = directory / _MANIFEST
    out.write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
    return out
