"""Check and version strategies: validate, new-version, release.

The registry (:mod:`cytopipe.strategy.registry`) loads a version and verifies its hash;
this module is what an immunologist uses around it to make a new one: a
validation that names the XSD line of every schema error and checks the
manifest, a draft copied from a released version with a CHANGELOG stub, and
the release step, which refuses a version whose CHANGELOG entry lacks an
author, a date or a reason. :mod:`cytopipe.strategy.describe` shows a
version's gates.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from ..exceptions import StrategyError
from .describe import describe_gates
from .registry import MANIFEST_FILE, check_xml_is_safe, load_gatingml, parse_ref, sha256_of, strategy_dir

__all__ = [
    "ValidationReport",
    "changelog_entry",
    "new_version",
    "release_version",
    "validate_strategy",
]

_HEADING = re.compile(r"^##\s+(?P<version>\S+)\s*(?:[—–-]+\s*(?P<date>.*?))?\s*$")
_FIELD = re.compile(r"^-\s*(?P<key>Author|Reason|Date)\s*:\s*(?P<value>.*)$", re.IGNORECASE)
_TODO = ("", "todo", "tbd", "yyyy-mm-dd", "unreleased")


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
        check_xml_is_safe(gml)
    except StrategyError as e:
        return [str(e)]
    from flowkit._resources import gml_schema

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    doc = etree.parse(str(gml), parser)
    if gml_schema.validate(doc):
        return []
    return [f"{gml}: line {err.line}: {err.message}" for err in gml_schema.error_log]


def validate_strategy(path: str | os.PathLike, *,
                      manifest_checks: Iterable[Callable[[dict[str, Any], Path], list[str]]] = ()
                      ) -> ValidationReport:
    """Validate a GatingML file or a strategy version folder; collect every problem.

    Checks, in order: XML well-formed and without DOCTYPE; GatingML 2.0 XSD
    (each error with its line); FlowKit can build the gate tree; and for a
    version folder the manifest: required keys, every gate detector covered by
    a panel marker or scatter channel, numerator and denominator gate paths
    exist, the recorded sha256, (for a released version) its CHANGELOG entry,
    and whatever ``manifest_checks`` find.

    Parameters
    ----------
    path
        A ``.xml`` GatingML file, a version folder, or ``name@version``.
    manifest_checks
        Checks of the manifest's sections a later stage reads, each called as
        ``check(manifest, manifest_path)`` and returning its problems. This
        stage comes before ``gating/`` and cannot import it: the command line
        passes :func:`cytopipe.gating.placement_problems` (the ``placement``
        and ``auto_gates`` entries: unknown keys, values out of range).

    Returns
    -------
    ValidationReport
    """
    text = os.fspath(path)
    p = strategy_dir(text, existing=False)
    report = ValidationReport(p)
    man: dict[str, Any] | None = None
    if p.is_dir():
        try:
            man = json.loads((p / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            report.errors.append(f"{p / MANIFEST_FILE}: cannot read the manifest: {e}")
            return report
        missing = [k for k in ("name", "version", "status", "gatingml", "gatingml_sha256", "markers", "endpoint")
                   if k not in man]
        if missing:
            report.errors.append(f"{p / MANIFEST_FILE}: missing required keys {missing}.")
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
    report.notes.append(f"{gml.name}: valid GatingML 2.0, {len(gates)} gates, sha256 {sha256_of(gml)}")
    if man is None:
        return report
    where = p / MANIFEST_FILE
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
    digest = sha256_of(gml)
    if digest != man["gatingml_sha256"]:
        if man["status"] == "released":
            report.errors.append(f"{gml}: sha256 {digest} differs from the released {man['gatingml_sha256']}: "
                                 f"a released version never changes; restore it or make a new version.")
        else:
            report.notes.append(f"{gml.name}: draft, sha256 now {digest} (recorded at release)")
    if man["status"] == "released":
        report.errors += _changelog_problems(p, man["version"])
    for check in manifest_checks:
        report.errors += check(man, where)
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
        Strategies folder (default :func:`~cytopipe.strategy.registry.strategies_root`).

    Returns
    -------
    Path
        The new version's folder.

    Raises
    ------
    StrategyError
        The source does not exist or the new version already exists.
    """
    src = strategy_dir(f"{name}@{from_version}", root=root)
    if version is None:
        parts = from_version.split(".")
        if len(parts) != 3 or not all(x.isdigit() for x in parts):
            msg = f"Cannot guess the version after {from_version!r}; pass --version X.Y.Z."
            raise StrategyError(msg)
        version = f"{parts[0]}.{int(parts[1]) + 1}.0"
    dst = strategy_dir(f"{name}@{version}", root=root, existing=False)
    if dst.exists():
        msg = f"{dst} already exists; pick another version (--version)."
        raise StrategyError(msg)
    shutil.copytree(src, dst)
    man = json.loads((dst / MANIFEST_FILE).read_text(encoding="utf-8"))
    man.update(version=version, status="draft", released="", derived_from=f"{name}@{from_version}")
    (dst / MANIFEST_FILE).write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
    add_changelog_stub(dst / "CHANGELOG.md", version, f"Derived from {name}@{from_version}.")
    return dst


def add_changelog_stub(path: Path, version: str, note: str, *, author: str = "TODO",
                        reason: str = "TODO") -> None:
    """Put a new version's CHANGELOG entry, to be filled in, above the previous ones (creating the file)."""
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
    _, version = parse_ref(ref)
    directory = strategy_dir(ref, root=root)
    man = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
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
               gatingml_sha256=sha256_of(directory / man["gatingml"]))
    out = directory / MANIFEST_FILE
    out.write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
    return out
