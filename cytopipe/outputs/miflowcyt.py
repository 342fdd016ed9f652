"""A MIFlowCyt-style analysis record of a run (``RUN_DIR/miflowcyt.json``).

Everything needed to deposit or audit the analysis without the software:
instrument (``$CYT``, ``$CYTSN``) per file, reagents (marker, fluorochrome,
detector) from the strategy manifest, the compensation source, transforms with
their parameters, and per gate its definition (type, dimensions, compensation,
transform, boundaries) and the % inside on every sample.

Written by :func:`write_miflowcyt`, called once at the end of
:func:`cytopipe.batch.driver.run_batch`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from lxml import etree

from .._version import __version__
from ..fcs.read import scan_headers
from .tables import write_json
from ..strategy.registry import Strategy

__all__ = ["gatingml_definitions", "build_miflowcyt", "instrument_fields", "write_miflowcyt"]

_COMPENSATION = {
    "FCS": "the file's own spillover matrix ($SPILLOVER in FCS 3.1, SPILL in FCS 3.0)",
    "uncompensated": "none (uncompensated)",
}


def _local(tag: str) -> str:
    return etree.QName(tag).localname


def _num(text: str | None) -> float | None:
    return None if text is None else float(text)


def gatingml_definitions(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Transforms and gates of a GatingML 2.0 file, as plain data.

    Returns
    -------
    transforms : list of dict
        ``id, type`` and the transform's parameters (e.g. ``T, W, M, A``).
    gates : list of dict
        ``id, parent_id, type, dimensions`` (each ``channel, compensation,
        transformation, min, max``) and ``vertices`` for polygons.
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.parse(str(path), parser).getroot()
    transforms, gates = [], []
    for el in root:
        if not isinstance(el.tag, str):
            continue
        name = _local(el.tag)
        attrs = {_local(k): v for k, v in el.attrib.items()}
        if name == "transformation":
            kind = next(iter(el), None)
            params = {_local(k): float(v) for k, v in kind.attrib.items()} if kind is not None else {}
            transforms.append({"id": attrs.get("id"), "type": _local(kind.tag) if kind is not None else None,
                               **params})
        elif name.endswith("Gate"):
            dims, vertices = [], []
            for child in el:
                if not isinstance(child.tag, str):
                    continue
                cname = _local(child.tag)
                if cname == "dimension":
                    a = {_local(k): v for k, v in child.attrib.items()}
                    chan = next((_local(c.tag) == "fcs-dimension" and
                                 {_local(k): v for k, v in c.attrib.items()}.get("name")
                                 for c in child if isinstance(c.tag, str)), None)
                    dims.append({"channel": chan or None, "compensation": a.get("compensation-ref"),
                                 "transformation": a.get("transformation-ref"), "min": _num(a.get("min")),
                                 "max": _num(a.get("max"))})
                elif cname == "vertex":
                    vertices.append([_num({_local(k): v for k, v in c.attrib.items()}.get("value"))
                                     for c in child if isinstance(c.tag, str)])
            gate = {"id": attrs.get("id"), "parent_id": attrs.get("parent_id"), "type": name,
                    "dimensions": dims}
            if vertices:
                gate["vertices"] = vertices
            gates.append(gate)
    return transforms, gates


def instrument_fields(sample) -> dict[str, Any]:
    """A read sample's instrument fields, as the MIFlowCyt record lists them per file.

    Parameters
    ----------
    sample : flowkit.Sample or cytopipe.fcs.lean.LeanSample
        The file as read for gating (its TEXT keywords are in ``metadata``).

    Returns
    -------
    dict
        ``cytometer`` ($CYT), ``serial`` ($CYTSN), ``date`` ($DATE), ``fcs_version``,
        ``spillover_keyword`` (``"$SPILLOVER"``, ``"SPILL"`` or None), ``header_error``
        (None: the file was read). :func:`cytopipe.batch.task.process_sample` returns
        them, so the record needs no second scan of the files it gated.
    """
    meta = sample.metadata  # TEXT keywords, lower case without "$", as FlowIO gives them
    return _fields(meta.get("cyt"), meta.get("cytsn"), meta.get("date"), sample.version,
                   meta.get("spillover"), meta.get("spill"), None)


def _scanned_fields(paths: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`instrument_fields` from a header scan, for files no worker read."""
    heads = scan_headers(paths, keywords=("$CYT", "$CYTSN", "$DATE", "$SPILLOVER", "SPILL"))
    return [_fields(h["$CYT"], h["$CYTSN"], h["$DATE"], h["fcs_version"], h["$SPILLOVER"], h["SPILL"],
                    h["error"] or None) for h in heads.to_dict("records")]


def _fields(cytometer, serial, date, version, spillover, spill, error) -> dict[str, Any]:
    return {"cytometer": cytometer, "serial": serial, "date": date, "fcs_version": version,
            "spillover_keyword": "$SPILLOVER" if spillover else ("SPILL" if spill else None),
            "header_error": error}


def build_miflowcyt(strategy: Strategy, table: pd.DataFrame, populations: pd.DataFrame, *,
                    paths: Sequence[str] | None = None,
                    instruments: Sequence[dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """The analysis record of a run as a dict (see :func:`write_miflowcyt`)."""
    transforms, gates = gatingml_definitions(strategy.gatingml_path)
    by_id = {p[-1]: "/".join(p) for p in strategy.gate_paths()}
    instruments_out = []
    if paths is not None:
        known = list(instruments) if instruments is not None else [None] * len(paths)
        missing = [i for i, k in enumerate(known) if k is None]
        if missing:  # files no worker read (they failed before or while reading)
            for i, fields in zip(missing, _scanned_fields([paths[i] for i in missing])):
                known[i] = fields
        for row, fields in zip(table.to_dict("records"), known):
            instruments_out.append({"file": row["file"], "patient_id": row["patient_id"], "visit": row["visit"],
                                    **fields})
    by_gate: dict[str, list[dict[str, Any]]] = {}
    for r in populations.to_dict("records"):
        by_gate.setdefault(r["gate"], []).append(r)
    comp_refs = sorted({d["compensation"] for g in gates for d in g["dimensions"] if d["compensation"]})
    for g in gates:
        g["path"] = by_id.get(g["id"])
        g["per_sample"] = [
            {"file": r["file"], "patient_id": r["patient_id"], "visit": r["visit"], "count": int(r["count"]),
             "parent_count": int(r["parent_count"]), "pct_parent": float(r["pct_parent"]),
             "pct_total": float(r["pct_total"])} for r in by_gate.get(g["id"], [])]
    return {
        "standard": "MIFlowCyt 1.0 (ISAC), analysis section; cytopipe record",
        "cytopipe_version": __version__,
        "instrument": instruments_out,
        "reagents": [{"marker": m.marker, "fluorochrome": m.fluorochromes[0] if m.fluorochromes else None,
                      "detector": m.detector, "accepted_pns": list(m.aliases)} for m in strategy.markers],
        "scatter_detectors": list(strategy.scatter),
        "compensation": [{"ref": c, "source": _COMPENSATION.get(c, f"compensation matrix {c!r} of the GatingML")}
                         for c in comp_refs],
        "transforms": transforms,
        "strategy": {"name": strategy.name, "version": strategy.version, "status": strategy.status,
                     "gatingml": strategy.gatingml_path.name, "gatingml_sha256": strategy.sha256,
                     "numerator": "/".join(strategy.numerator), "denominator": "/".join(strategy.denominator)},
        "gates": gates,
        "samples": [{"file": r["file"], "patient_id": r["patient_id"], "visit": r["visit"],
                     "file_sha256": None if pd.isna(r["file_sha256"]) else r["file_sha256"],
                     "qc_status": r["qc_status"], "error": r["error"] or None} for r in table.to_dict("records")],
    }


def write_miflowcyt(run_dir: str | os.PathLike, strategy: Strategy, table: pd.DataFrame,
                    populations: pd.DataFrame, *, paths: Sequence[str] | None = None,
                    instruments: Sequence[dict[str, Any] | None] | None = None) -> Path:
    """Write ``RUN_DIR/miflowcyt.json``, the MIFlowCyt-style record of a run.

    Parameters
    ----------
    run_dir
        The run's output folder.
    strategy
        The strategy the run used.
    table, populations
        The run's ``treg_by_visit`` and ``populations`` tables.
    paths
        The FCS files, in ``table`` order, whose headers give the instrument
        (``$CYT``, ``$CYTSN``, ``$DATE``); omitted -> no instrument section.
    instruments
        Per path, its :func:`instrument_fields` when a worker already read
        the file, else None; only the files without them are scanned.

    Returns
    -------
    Path
        The file written (atomically).
    """
    record = build_miflowcyt(strategy, table, populations, paths=paths, instruments=instruments)
    return write_json(record, Path(run_dir) / "miflowcyt.json")
