"""The versioned gating strategy registry: find, load, verify and list strategies.

A strategy version is a folder ``gating_strategies/<name>/<version>/`` holding a
GatingML 2.0 file, a ``manifest.json`` and a ``CHANGELOG.md``. The manifest
names the panel (markers, detectors, accepted ``$PnS`` spellings), the gate
paths whose counts make Treg % of CD4, and the sha256 of the GatingML file.
A *released* version never changes: loading refuses a released version whose
GatingML no longer matches its recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from lxml import etree

from ..exceptions import StrategyChecksumError, StrategyError

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
]

DEFAULT_STRATEGY = "treg_adaptive@1.5.0"
#: The file naming a strategy version's GatingML, markers and endpoint, in each version's folder.
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Marker:
    """One marker of the panel and the detector that must carry it.

    Attributes
    ----------
    marker
        Canonical marker name, e.g. ``"CD25"``.
    detector
        The ``$PnN`` of the detector, e.g. ``"PE-Cy7-A"``.
    fluorochromes
        Spellings of the fluorochrome, which operators sometimes append to
        (or put before) the marker in ``$PnS``.
    aliases
        Accepted spellings of the marker in ``$PnS`` (case and separators are
        ignored when comparing).
    """

    marker: str
    detector: str
    fluorochromes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Strategy:
    """A loaded, verified strategy version.

    Attributes
    ----------
    name, version
        Identify the version; ``ref`` is ``"name@version"``.
    status
        ``"released"`` or ``"draft"``.
    directory
        The version's folder.
    gatingml_path
        The GatingML 2.0 file.
    sha256
        sha256 of the GatingML file as loaded (equal to the released one).
    markers
        The panel's fluorescence markers.
    scatter
        Required scatter detectors (``$PnN``) that carry no marker.
    numerator, denominator
        Full gate paths (starting at ``"root"``) of Treg % of CD4.
    manifest
        The manifest as read.
    """

    name: str
    version: str
    status: str
    directory: Path
    gatingml_path: Path
    sha256: str
    markers: tuple[Marker, ...]
    scatter: tuple[str, ...]
    numerator: tuple[str, ...]
    denominator: tuple[str, ...]
    manifest: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @property
    def ref(self) -> str:
        """``"name@version"``."""
        return f"{self.name}@{self.version}"

    @property
    def manifest_sha256(self) -> str:
        """sha256 of the manifest as canonical JSON, its ``status`` left out.

        The manifest changes numbers too (the panel, the numerator and
        denominator, every placement parameter), so a stored result is keyed
        on it as well as on the GatingML; releasing a version (``status``)
        changes none.
        """
        body = {k: v for k, v in self.manifest.items() if k != "status"}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()

    @property
    def is_draft(self) -> bool:
        """True when this version is not released."""
        return self.status != "released"

    @property
    def required_detectors(self) -> tuple[str, ...]:
        """Every ``$PnN`` the strategy needs."""
        return self.scatter + tuple(m.detector for m in self.markers)

    def gating_strategy(self):
        """Return a fresh :class:`flowkit.GatingStrategy` parsed from the GatingML.

        A new object each call, because FlowKit strategies cache events and
        collect custom sample gates. The GatingML is parsed once per process
        (per file and sha256); each call unpickles an independent copy of
        that parse, which costs a small fraction of parsing it again.
        """
        return pickle.loads(_parsed_gatingml(str(self.gatingml_path), self.sha256))

    def gate_paths(self) -> list[tuple[str, ...]]:
        """Full paths (``("root", ..., gate)``) of every gate, parents first."""
        # A released version's GatingML passed FlowKit's schema check and parse when it was
        # released and still has that sha256: its tree is read from the XML itself, in FlowKit's
        # order, without importing FlowKit (~2 s, on the driver's path to its first sample)
        fast = None if self.is_draft else _gate_paths_from_xml(str(self.gatingml_path), self.sha256)
        return list(fast if fast is not None else _gate_paths(str(self.gatingml_path), self.sha256))


def strategies_root() -> Path:
    """Return the folder that holds the strategies.

    ``CYTOPIPE_STRATEGIES`` overrides the default, the ``gating_strategies``
    folder shipped inside the package (``gating_strategies/`` of the checkout
    links to it).
    """
    env = os.environ.get("CYTOPIPE_STRATEGIES")
    if env:
        return Path(env)
    # package data, so an installed cytopipe has its strategies; the checkout's
    # top-level gating_strategies/ is a link to this folder
    return Path(__file__).resolve().parent.parent / "gating_strategies"


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a (small) file: a GatingML file's, as its manifest records it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_xml_is_safe(path: Path) -> None:
    """Refuse XML with a DOCTYPE: entities could read local files or the network.

    Raises :class:`~cytopipe.exceptions.StrategyError` for such a file or one that is not well-formed.
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        tree = etree.parse(str(path), parser)
    except etree.XMLSyntaxError as e:
        msg = f"{path}: not well-formed XML: {e}. Fix the file or restore it from version control."
        raise StrategyError(msg) from e
    if tree.docinfo.doctype:
        msg = (
            f"{path}: GatingML files must not contain a DOCTYPE "
            f"(found {tree.docinfo.doctype!r}); entities are refused for safety."
        )
        raise StrategyError(msg)


def load_gatingml(path: str | os.PathLike):
    """Parse a bare GatingML 2.0 file (no manifest) into a FlowKit strategy, safely.

    The same path as a strategy version's GatingML: a DOCTYPE (hence any
    external entity) is refused before FlowKit sees the file, and a schema
    error is reported with its line. Compensation matrices and transforms
    defined in the file are carried.

    Parameters
    ----------
    path
        The GatingML 2.0 file.

    Returns
    -------
    flowkit.GatingStrategy

    Raises
    ------
    StrategyError
        The file is not well-formed, has a DOCTYPE, or is not valid GatingML 2.0.
    """
    return _parse_gatingml(Path(path))


@lru_cache(maxsize=32)
def _parsed_gatingml(path: str, sha256: str) -> bytes:
    # keyed by the strategy's sha256 too: a file edited since is parsed afresh
    return pickle.dumps(_parse_gatingml(Path(path)), protocol=pickle.HIGHEST_PROTOCOL)


def _parse_gatingml(path: Path):
    import flowkit as fk

    check_xml_is_safe(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fk.parse_gating_xml(str(path))
    except Exception as e:  # FlowKit's own message hides the schema error
        detail = _schema_error(path) or str(e)
        msg = f"{path}: FlowKit cannot read this GatingML 2.0 file: {detail}"
        raise StrategyError(msg) from e


def _schema_error(path: Path) -> str | None:
    """First XSD error of a GatingML file, with its line, or None when valid."""
    try:
        from flowkit._resources import gml_schema
    except ImportError:  # pragma: no cover - FlowKit internals moved
        return None
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    doc = etree.parse(str(path), parser)
    if gml_schema.validate(doc):
        return None
    err = gml_schema.error_log.last_error
    return f"line {err.line}: {err.message}"


@lru_cache(maxsize=32)
def _gate_paths(gatingml_path: str, sha256: str) -> tuple[tuple[str, ...], ...]:
    gs = _parse_gatingml(Path(gatingml_path))
    paths = []
    for gate_id, parent_path in gs.get_gate_ids():
        paths.append(tuple(parent_path) + (gate_id,))
    return tuple(sorted(paths, key=len))


_GATING_NS = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
#: The gates whose place in the tree is their ``parent_id`` alone, in the order FlowKit's
#: ``parse_gating_xml`` collects them (``xml_utils.gate_constructor_lut``).
_TREE_GATES = ("RectangleGate", "PolygonGate", "EllipsoidGate")


@lru_cache(maxsize=32)
def _gate_paths_from_xml(gatingml_path: str, sha256: str) -> tuple[tuple[str, ...], ...] | None:
    """:func:`_gate_paths` read from the GatingML's ``id``/``parent_id`` attributes, without FlowKit.

    FlowKit collects the gates type by type (rectangles, polygons, ellipsoids; each in document
    order), adds them to its tree parents first, so siblings keep that order, and lists the tree
    depth-first; :func:`_gate_paths` then sorts by depth (stable). None, for FlowKit to decide,
    when the file has gates placed otherwise (quadrants, Boolean gates) or a tree FlowKit
    would refuse (a repeated id, an unknown parent, a cycle).
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.parse(gatingml_path, parser).getroot()
    except (OSError, etree.XMLSyntaxError):
        return None
    gates = [el for el in root if isinstance(el.tag, str) and el.tag.startswith(f"{{{_GATING_NS}}}")
             and el.tag.endswith("Gate")]
    by_type = [el for kind in _TREE_GATES for el in gates if el.tag == f"{{{_GATING_NS}}}{kind}"]
    if len(by_type) != len(gates):
        return None
    children: dict[str, list[str]] = {}
    ids: set[str] = set()
    for el in by_type:
        gate_id = el.get(f"{{{_GATING_NS}}}id")
        if not gate_id or gate_id in ids or gate_id == "root":
            return None
        ids.add(gate_id)
        children.setdefault(el.get(f"{{{_GATING_NS}}}parent_id") or "root", []).append(gate_id)
    if set(children) - ids - {"root"}:
        return None
    paths: list[tuple[str, ...]] = []
    stack: list[tuple[str, ...]] = [("root",)]
    while stack:  # depth-first, siblings in FlowKit's order
        path = stack.pop()
        if path[-1] != "root":
            paths.append(path)
        stack.extend(path + (c,) for c in reversed(children.get(path[-1], [])))
    if len(paths) != len(ids):  # a gate not reached from the root: a cycle
        return None
    return tuple(sorted(paths, key=len))


def parse_ref(ref: str) -> tuple[str, str]:
    """Split ``"name@version"`` into its name and version.

    Raises
    ------
    StrategyError
        ``ref`` is not of the form ``name@version``.

    Examples
    --------
    >>> parse_ref("treg@1.0.0")
    ('treg', '1.0.0')
    """
    name, sep, version = str(ref).partition("@")
    if not (name and sep and version) or "/" in name or "/" in version:
        msg = f"A strategy is named name@version (e.g. {DEFAULT_STRATEGY!r}), got {ref!r}."
        raise StrategyError(msg)
    return name, version


def strategy_dir(
    ref: str | os.PathLike, *, root: str | os.PathLike | None = None, existing: bool = True
) -> Path:
    """The version folder ``ref`` names: ``name@version`` under the strategies folder, or a folder path.

    This is the one place a strategy reference becomes a folder.

    Parameters
    ----------
    ref
        ``"name@version"`` or the path of a version folder.
    root
        Strategies folder for ``name@version`` (default :func:`strategies_root`).
    existing
        Require the folder to hold a manifest. With ``existing=False`` a
        ``name@version`` gives the folder it would be (to create it), and a
        path that is not a version folder comes back unchanged.

    Raises
    ------
    StrategyError
        ``existing`` and no such version, naming the ones there are.
    """
    text = os.fspath(ref)
    candidate = Path(text)
    if candidate.is_dir() and (candidate / MANIFEST_FILE).is_file():
        return candidate
    if "@" not in text or candidate.exists():
        if not existing:
            return candidate
        msg = (
            f"Strategy {text!r} is neither 'name@version' nor a folder with a {MANIFEST_FILE}. "
            f"Use e.g. {DEFAULT_STRATEGY!r}; 'cytopipe strategy list' shows what exists."
        )
        raise StrategyError(msg)
    name, version = parse_ref(text)
    base = Path(root) if root is not None else strategies_root()
    directory = base / name / version
    if existing and not (directory / MANIFEST_FILE).is_file():
        available = [s["ref"] for s in list_strategies(base)]
        msg = f"Strategy {text!r} not found in {base}. Available strategies: {available}"
        raise StrategyError(msg)
    return directory


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        msg = f"{path}: cannot read the strategy manifest: {e}"
        raise StrategyError(msg) from e


def load_strategy(ref: str | os.PathLike = DEFAULT_STRATEGY, *, allow_draft: bool = False) -> Strategy:
    """Load a strategy version and verify it.

    Parameters
    ----------
    ref
        ``"name@version"`` (looked up under :func:`strategies_root`) or the
        path of a version folder.
    allow_draft
        Accept a version whose manifest status is not ``"released"``.

    Returns
    -------
    Strategy

    Raises
    ------
    StrategyChecksumError
        The version is released and its GatingML no longer matches the
        sha256 recorded at release.
    StrategyError
        The version cannot be found, its manifest is incomplete, its gate
        paths do not exist, or it is a draft and ``allow_draft`` is False.

    Examples
    --------
    >>> s = load_strategy("treg@1.0.0")
    >>> s.numerator[-1]
    'Treg'
    """
    directory = strategy_dir(ref)
    man = _read_manifest(directory)
    where = directory / MANIFEST_FILE
    for key in ("name", "version", "status", "gatingml", "gatingml_sha256", "markers", "endpoint"):
        if key not in man:
            msg = f"{where}: the manifest lacks the required key {key!r}."
            raise StrategyError(msg)
    gml = directory / man["gatingml"]
    if not gml.is_file():
        msg = f"{where}: names GatingML file {man['gatingml']!r}, which does not exist in {directory}."
        raise StrategyError(msg)
    digest = sha256_of(gml)
    status = man["status"]
    if status == "released" and digest != man["gatingml_sha256"]:
        msg = (
            f"{gml}: the file no longer matches its released checksum "
            f"(released sha256 {man['gatingml_sha256']}, file now {digest}). "
            f"A released strategy never changes: restore the file, or make a new version."
        )
        raise StrategyChecksumError(msg)
    if status != "released" and not allow_draft:
        msg = (
            f"Strategy {man['name']}@{man['version']} is a {status!r}, not released; "
            f"pass --allow-draft (allow_draft=True) to use it."
        )
        raise StrategyError(msg)
    markers = tuple(
        Marker(
            marker=m["marker"],
            detector=m["detector"],
            fluorochromes=tuple(m.get("fluorochromes", ())),
            aliases=tuple(m.get("aliases", [m["marker"]])),
        )
        for m in man["markers"]
    )
    strategy = Strategy(
        name=man["name"],
        version=man["version"],
        status=status,
        directory=directory,
        gatingml_path=gml,
        sha256=digest,
        markers=markers,
        scatter=tuple(man.get("scatter", ())),
        numerator=tuple(man["endpoint"]["numerator"]),
        denominator=tuple(man["endpoint"]["denominator"]),
        manifest=man,
    )
    paths = set(strategy.gate_paths())
    for label, path in (("numerator", strategy.numerator), ("denominator", strategy.denominator)):
        if path not in paths:
            msg = (
                f"{where}: the endpoint {label} gate path {'/'.join(path)!r} is not a gate of "
                f"{gml.name}. Gates: {sorted('/'.join(p) for p in paths)}"
            )
            raise StrategyError(msg)
    return strategy


def list_strategies(root: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """List every strategy version under ``root``.

    Returns
    -------
    list of dict
        Keys ``ref, name, version, status, released, sha256``, sorted by ref.
    """
    base = Path(root) if root is not None else strategies_root()
    out = []
    for manifest in sorted(base.glob(f"*/*/{MANIFEST_FILE}")):
        try:
            man = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        out.append(
            {
                "ref": f"{man.get('name')}@{man.get('version')}",
                "name": str(man.get("name")),
                "version": str(man.get("version")),
                "status": str(man.get("status")),
                "released": str(man.get("released", "")),
                "sha256": str(man.get("gatingml_sha256", "")),
            }
        )
    return out
