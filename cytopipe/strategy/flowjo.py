"""FlowJo 10 interchange: a workspace's group into a draft strategy, a strategy into a workspace.

Import goes through FlowKit (:func:`flowkit.parse_wsp`): the group's samples
must share one gate tree, which is rebuilt as a FlowKit ``GatingStrategy``
with GatingML-safe ids and written with :func:`flowkit.export_gatingml`.
Everything that cannot be carried (a gate type FlowKit cannot read, a FlowJo
transform GatingML 2.0 has no equivalent for, gates that differ between the
group's samples) is listed in one error: nothing is dropped silently.

Export uses FlowKit's FlowJo writer (rectangle and polygon gates only) and
then attaches each sample's own acquisition spillover matrix and its file
path, so FlowJo opens the workspace with the samples and the compensation
the strategy uses (``compensation-ref="FCS"``).
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from lxml import etree

from ..exceptions import InterchangeError, StrategyError
from .registry import MANIFEST_FILE, check_xml_is_safe, load_gatingml, load_strategy, parse_ref, sha256_of, strategy_dir
from .release import add_changelog_stub

__all__ = ["ImportResult", "export_wsp", "import_wsp"]

_NS_T = "http://www.isac-net.org/std/Gating-ML/v2.0/transformations"
_READABLE_GATES = {"RectangleGate", "PolygonGate", "EllipsoidGate", "QuadrantGate", "BooleanGate"}
_READABLE_XFORMS = {"linear", "log", "logicle", "biex", "fasinh"}
_GML_XFORMS = {"LinearTransform", "LogicleTransform", "AsinhTransform", "HyperlogTransform", "LogTransform"}
_SCATTER = ("FSC", "SSC", "Time")


@dataclass
class ImportResult:
    """What :func:`import_wsp` wrote and what it changed on the way."""

    directory: Path
    gate_paths: list[tuple[str, ...]]
    notes: list[str] = field(default_factory=list)


def xs_id(name: str) -> str:
    """A valid GatingML (xs:ID) gate id for a FlowJo population name: ``CD3+`` -> ``CD3pos``."""
    text = name.strip().replace("+", "pos").replace("&", "and")
    text = re.sub(r"-(?=\W|$)", "neg", text)
    text = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "gate"
    return text if re.match(r"[A-Za-z_]", text) else f"g_{text}"


def _scan_workspace(wsp: Path, sample_names: set[str]) -> list[str]:
    """Gate and transform types FlowKit cannot read, found in the XML itself."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.parse(str(wsp), parser).getroot()
    problems = []
    for sample_el in root.iter("Sample"):
        node = sample_el.find("SampleNode")
        if node is None or node.get("name") not in sample_names:
            continue
        for pop in node.iter("Population"):
            gate = pop.find("Gate")
            kids = list(gate) if gate is not None else []
            kind = etree.QName(kids[0]).localname if kids else "(no gate)"
            if kind not in _READABLE_GATES:
                where = "/".join(a.get("name") for a in reversed(list(pop.iterancestors("Population"))))
                path = "/".join(filter(None, [where, pop.get("name")]))
                problems.append(f"gate {path!r} (line {pop.sourceline}) is a {kind}, which FlowKit cannot read "
                                f"(readable: {sorted(_READABLE_GATES)}); redraw it as a polygon or rectangle")
        xforms = sample_el.find("Transformations")
        for x in list(xforms) if xforms is not None else []:
            kind = etree.QName(x).localname
            if kind not in _READABLE_XFORMS:
                problems.append(f"sample {node.get('name')!r}: transform {kind!r} (line {x.sourceline}) is "
                                f"undocumented and not reproducible; use linear, logicle or arcsinh in FlowJo")
    return problems


def _gate_signature(gs, gate_id, path, sample_id):
    g = gs.get_gate(gate_id, path, sample_id=sample_id)
    dims = [(d.id, d.compensation_ref, d.transformation_ref, d.min, d.max) for d in g.dimensions]
    return (type(g).__name__, repr(dims), repr(getattr(g, "vertices", None)), repr(getattr(g, "gate_refs", None)))


def import_wsp(
    workspace: str | os.PathLike,
    group: str,
    ref: str,
    *,
    numerator: str | None = None,
    denominator: str | None = None,
    author: str = "TODO",
    root: str | os.PathLike | None = None,
) -> ImportResult:
    """Turn a FlowJo 10 workspace group's gates, transforms and compensation into a draft version.

    Parameters
    ----------
    workspace
        The ``.wsp`` file.
    group
        The FlowJo sample group whose gate tree becomes the strategy.
    ref
        ``name@version`` of the new draft, e.g. ``"treg@1.1.0"``.
    numerator, denominator
        Endpoint gate paths as FlowJo shows them (``"Lymphocytes/.../Treg"``);
        default: those of the newest existing version of ``name``.
    author
        Written to the CHANGELOG stub.
    root
        Strategies folder (default :func:`~cytopipe.strategy.registry.strategies_root`).

    Returns
    -------
    ImportResult
        The draft's folder, its gate paths and notes on ids renamed for GatingML.

    Raises
    ------
    InterchangeError
        Listing everything that cannot be carried, or a missing group or endpoint.
    """
    import flowkit as fk

    wsp = Path(workspace)
    try:
        name, version = parse_ref(ref)
    except StrategyError as e:
        msg = f"--as must be name@version, got {ref!r}"
        raise InterchangeError(msg) from e
    dst = strategy_dir(ref, root=root, existing=False)
    base = dst.parent.parent
    if dst.exists():
        msg = f"{dst} already exists; pick another version."
        raise InterchangeError(msg)
    check_xml_is_safe(wsp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed_groups = fk.parse_wsp(str(wsp))["groups"]
    except Exception as e:
        problems = _scan_workspace(wsp, _all_sample_names(wsp))
        detail = "; ".join(problems) if problems else f"{type(e).__name__}: {e}"
        msg = f"{wsp}: FlowKit cannot read this workspace: {detail}"
        raise InterchangeError(msg) from e
    if group not in parsed_groups or not parsed_groups[group]["samples"]:
        usable = sorted(g for g, v in parsed_groups.items() if v["samples"])
        msg = f"{wsp}: group {group!r} has no samples or does not exist; groups with samples: {usable}"
        raise InterchangeError(msg)
    samples = list(parsed_groups[group]["samples"])
    problems = _scan_workspace(wsp, set(samples))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wsp_dict = fk.parse_wsp(str(wsp))
    first = samples[0]
    src_gs = wsp_dict["samples"][first]["gating_strategy"]
    ids = [(g, tuple(p)) for g, p in src_gs.get_gate_ids()]
    for other in samples[1:]:
        o_gs = wsp_dict["samples"][other]["gating_strategy"]
        o_ids = [(g, tuple(p)) for g, p in o_gs.get_gate_ids()]
        if set(o_ids) != set(ids):
            problems.append(f"sample {other!r} has a different gate tree from {first!r} "
                            f"({sorted(set(o_ids) ^ set(ids))}); one strategy cannot carry both")
            continue
        for g, p in ids:
            if _gate_signature(src_gs, g, p, first) != _gate_signature(o_gs, g, p, other):
                problems.append(f"gate {'/'.join(p[1:] + (g,))!r} differs between samples {first!r} and "
                                f"{other!r} (sample-specific gates cannot be carried)")
    notes: list[str] = []
    gs, gate_map = _rebuild(src_gs, first, wsp_dict["samples"][first], problems, notes)
    if problems:
        msg = f"{wsp} group {group!r}: cannot carry {len(problems)} item(s): " + " | ".join(problems)
        raise InterchangeError(msg)
    buf = io.BytesIO()
    fk.export_gatingml(gs, buf)
    dst.mkdir(parents=True)
    gml = dst / f"{name}.xml"
    gml.write_bytes(buf.getvalue())
    try:
        load_gatingml(gml)  # the draft must read back
    except StrategyError as e:
        shutil.rmtree(dst)
        msg = f"{wsp} group {group!r}: the GatingML written from it does not read back: {e}"
        raise InterchangeError(msg) from e
    man = _manifest(name, version, base, wsp_dict["samples"][first]["keywords"], gs, gate_map,
                    numerator, denominator, dst)
    man["gatingml_sha256"] = sha256_of(gml)
    man["imported_from"] = {"workspace": wsp.name, "group": group, "samples": samples}
    (dst / MANIFEST_FILE).write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
    add_changelog_stub(dst / "CHANGELOG.md", version,
                        f"Imported from FlowJo workspace {wsp.name}, group {group!r}.", author=author)
    paths = [tuple(p) + (g,) for g, p in gs.get_gate_ids()]
    return ImportResult(dst, paths, notes)


def _all_sample_names(wsp: Path) -> set[str]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return {n.get("name") for n in etree.parse(str(wsp), parser).getroot().iter("SampleNode")}


def _rebuild(src_gs, sample_id, sample_data, problems, notes):
    """A template GatingStrategy with xs:ID-safe ids, carried comp and GatingML transforms."""
    import flowkit as fk

    gs = fk.GatingStrategy()
    comp = sample_data["compensation"]
    comp_map = {}
    if comp is not None:
        if comp["matrix_name"] == "Acquisition-defined":
            comp_map[comp["matrix_name"]] = "FCS"
            notes.append("FlowJo 'Acquisition-defined' compensation carried as compensation-ref 'FCS' "
                         "(each file's own spillover)")
        else:
            comp_map[comp["matrix_name"]] = xs_id(comp["matrix_name"])
            gs.add_comp_matrix(comp_map[comp["matrix_name"]], comp["matrix"])
    used_xforms = set()
    gate_map: dict[tuple[str, ...], tuple[str, ...]] = {("root",): ("root",)}
    taken: set[str] = set()
    for gate_id, parent in src_gs.get_gate_ids():
        parent = tuple(parent)
        gate = copy.deepcopy(src_gs.get_gate(gate_id, parent, sample_id=sample_id))
        new_id = xs_id(gate_id)
        while new_id in taken:
            new_id += "_"
        taken.add(new_id)
        if new_id != gate_id:
            notes.append(f"gate {gate_id!r} renamed {new_id!r} (GatingML ids must be xs:ID)")
        if type(gate).__name__ == "PolygonGate" and "ellipse" in gate_id.lower():
            notes.append(f"gate {gate_id!r}: FlowJo ellipse carried as FlowKit's polygon approximation")
        gate.gate_name = new_id
        for d in getattr(gate, "dimensions", []):
            if d.compensation_ref in comp_map:
                d.compensation_ref = comp_map[d.compensation_ref]
            elif d.compensation_ref is None and hasattr(d, "transformation_ref"):
                d.compensation_ref = "uncompensated"  # required by the GatingML schema
            if d.transformation_ref is not None:
                used_xforms.add(d.transformation_ref)
                d.transformation_ref = xs_id(d.transformation_ref)
        for r in getattr(gate, "gate_refs", None) or []:
            old_path = tuple(r["path"]) + (r["ref"],)
            if old_path in gate_map:
                new_path = gate_map[old_path]
                r["ref"], r["path"] = new_path[-1], new_path[:-1]
        new_parent = gate_map[parent]
        gate_map[parent + (gate_id,)] = new_parent + (new_id,)
        gs.add_gate(gate, new_parent)
    for xid in sorted(used_xforms):
        t = src_gs.get_transform(xid)
        if type(t).__name__ not in _GML_XFORMS:
            problems.append(f"transform of {xid!r} is FlowJo {type(t).__name__}, which GatingML 2.0 cannot "
                            f"express; use logicle or arcsinh for this channel in FlowJo")
            continue
        gs.add_transform(xs_id(xid), t)
    return gs, gate_map


def _manifest(name, version, base, keywords, gs, gate_map, numerator, denominator, dst):
    previous = sorted((p for p in (base / name).glob(f"*/{MANIFEST_FILE}") if p.parent != dst),
                      key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")])
    prev = json.loads(previous[-1].read_text(encoding="utf-8")) if previous else None
    paths = {tuple(p) + (g,) for g, p in gs.get_gate_ids()}

    def endpoint(label, given):
        if given is not None:
            flowjo = ("root", *[s for s in given.split("/") if s and s != "root"])
            path = gate_map.get(flowjo, flowjo)
        elif prev is not None:
            path = tuple(prev["endpoint"][label])
        else:
            msg = f"no earlier version of {name!r} to take the endpoint from: pass --{label} GATE/PATH"
            raise InterchangeError(msg)
        if path not in paths:
            msg = (f"endpoint {label} {'/'.join(path)!r} is not a gate of the imported tree; "
                   f"gates: {sorted('/'.join(p) for p in paths)}")
            raise InterchangeError(msg)
        return list(path)

    try:
        ep = {"numerator": endpoint("numerator", numerator), "denominator": endpoint("denominator", denominator)}
    except InterchangeError:
        shutil.rmtree(dst)
        raise
    if prev is not None:
        markers, scatter = prev["markers"], prev.get("scatter", [])
    else:
        pnn = {v: k[:-1] for k, v in keywords.items() if re.fullmatch(r"\$P\d+N", k)}
        dets = sorted({d.id for g, p in gs.get_gate_ids() for d in _dims(gs, g, p)})
        scatter = [d for d in dets if d.startswith(_SCATTER)]
        markers = [{"marker": keywords.get(pnn.get(d, "") + "S") or d, "detector": d,
                    "aliases": [keywords.get(pnn.get(d, "") + "S") or d]} for d in dets if d not in scatter]
    return {"name": name, "version": version, "status": "draft", "released": "",
            "description": "Imported from FlowJo; see CHANGELOG.md.", "gatingml": f"{name}.xml",
            "gatingml_sha256": "", "scatter": scatter, "markers": markers, "endpoint": ep}


def _dims(gs, gate_id, path):
    from flowkit.exceptions import QuadrantReferenceError

    try:
        return gs.get_gate(gate_id, tuple(path)).dimensions
    except QuadrantReferenceError:
        return []


def export_wsp(
    ref: str,
    files: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    group: str = "cytopipe",
    allow_draft: bool = False,
) -> Path:
    """Write a FlowJo 10 workspace with a strategy's gates and FCS files attached as its samples.

    Parameters
    ----------
    ref
        ``name@version`` or a strategy folder.
    files
        The FCS files to attach (the ``cytopipe strategy export-wsp`` command
        takes them from a sample sheet).
    out
        The ``.wsp`` file to write.
    group
        FlowJo group holding the samples.
    allow_draft
        Accept a draft strategy.

    Returns
    -------
    Path

    Raises
    ------
    InterchangeError
        The strategy has gates FlowKit cannot write to a workspace (listed by path).
    """
    import flowkit as fk
    from flowkit._utils import wsp_utils

    from ..fcs.read import read_fcs

    strategy = load_strategy(ref, allow_draft=allow_draft)
    gs = strategy.gating_strategy()
    bad = []
    for gate_id, parent in gs.get_gate_ids():
        try:
            kind = type(gs.get_gate(gate_id, tuple(parent))).__name__
        except Exception:
            kind = "Quadrant"
        if kind not in ("RectangleGate", "PolygonGate"):
            bad.append(f"{'/'.join(tuple(parent) + (gate_id,))} ({kind})")
    if bad:
        msg = (f"{strategy.ref}: FlowKit {fk.__version__} writes only rectangle and polygon gates to a FlowJo "
               f"workspace; cannot write: {', '.join(bad)}")
        raise InterchangeError(msg)
    samples = [read_fcs(p) for p in files]
    uses_fcs = any(d.compensation_ref == "FCS" for g, p in gs.get_gate_ids() for d in _dims(gs, g, p))
    matrices = {}
    if uses_fcs:
        for s in samples:
            spill = s.metadata.get("spillover") or s.metadata.get("spill")
            if spill is None:
                msg = f"{s.id}: no $SPILLOVER/SPILL keyword, but {strategy.ref} compensates with the file's own."
                raise InterchangeError(msg)
            matrices[s.id] = fk.Matrix(spill, [s.pnn_labels[i] for i in s.fluoro_indices])
        gs.add_comp_matrix("Acquisition-defined", matrices[samples[0].id])
        for g, p in gs.get_gate_ids():
            for d in _dims(gs, g, p):
                if d.compensation_ref == "FCS":
                    d.compensation_ref = "Acquisition-defined"
    buf = io.BytesIO()
    try:
        wsp_utils.export_flowjo_wsp(gs, group, samples, buf)
    except (ValueError, NotImplementedError) as e:
        msg = f"{strategy.ref}: FlowKit cannot write this strategy as a FlowJo workspace: {e}"
        raise InterchangeError(msg) from e
    root = etree.fromstring(buf.getvalue(), etree.XMLParser(resolve_entities=False, no_network=True))
    out = Path(out)
    by_id = {s.id: (s, Path(p)) for s, p in zip(samples, files)}
    ns_map = {"gating": root.nsmap["gating"], "data-type": root.nsmap["data-type"], "transforms": _NS_T}
    for sample_el in root.iter("Sample"):
        ds = sample_el.find("DataSet")
        sample, path = by_id[ds.get("uri")]
        rel = os.path.relpath(path.resolve(), out.resolve().parent)
        ds.set("uri", quote(Path(rel).as_posix()))
        if sample.id in matrices:
            # FlowJo (and FlowKit's reader) take the matrix from each sample: its own acquisition matrix
            wsp_utils._add_matrix_to_wsp(sample_el, "Comp-", "Acquisition-defined", matrices[sample.id], ns_map)
            sample_el.insert(1, sample_el[-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    etree.ElementTree(root).write(str(out), encoding="utf-8", xml_declaration=True, pretty_print=True)
    return out


def gate_counts_from_wsp(
    workspace: str | os.PathLike, sample_id: str, *, fcs_file: str | os.PathLike | None = None
) -> dict[tuple[str, ...], int]:
    """Counts per gate path of one sample, as FlowKit reads the workspace (for round-trip checks).

    The FCS file is found through the workspace's ``DataSet`` URI unless ``fcs_file`` is given.
    """
    import flowkit as fk

    check_xml_is_safe(Path(workspace))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fcs_file is not None:
            wsp = fk.Workspace(str(workspace), fcs_samples=[str(fcs_file)])
        else:
            wsp = fk.Workspace(str(workspace), find_fcs_files_from_wsp=True)
        if sample_id not in wsp.get_sample_ids():
            msg = f"{workspace}: sample {sample_id!r} is not loaded (its FCS file was not found)."
            raise InterchangeError(msg)
        wsp.analyze_samples(sample_id=sample_id, use_mp=False)
        report = wsp.get_gating_results(sample_id).report
    return {tuple(p) + (g,): int(c) for p, g, c in zip(report["gate_path"], report["gate_name"], report["count"])}


