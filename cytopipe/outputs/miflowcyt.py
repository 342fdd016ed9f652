"""A MIFlowCyt-style analysis record of a run (``RUN_DIR/miflowcyt.json``).

Everything needed to deposit or audit the analysis without the software:
instrument (``$CYT``, ``$CYTSN``) per file, reagents (marker, fluorochrome,
detector) from the strategy manifest, the compensation source, transforms with
their parameters, and per gate its definition (type, dimensions, compensation,
transform, boundaries) and the % inside on every sample, and per sample the
gates actually applied to it: its own GatingML 2.0 file in
``RUN_DIR/sample_gates/`` (placed or fitted gates and reviewer adjustments as
custom sample gates, or a copy of the strategy's GatingML), named by the
record, and those gates' definitions.

Written by :func:`write_miflowcyt`, called once at the end of
:func:`cytopipe.batch.driver.run_batch`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from lxml import etree

from .._version import __version__
from ..fcs.read import scan_headers
from ..strategy.registry import Strategy
from .tables import atomic_write, write_json

__all__ = ["SAMPLE_GATES_DIR", "gatingml_definitions", "build_miflowcyt", "instrument_fields",
           "replace_sample_gates", "sample_gates_name", "write_miflowcyt", "write_sample_gates"]

#: Folder of a run holding each sample's applied gates.
SAMPLE_GATES_DIR = "sample_gates"

_COMPENSATION = {
    "FCS": "the file's own spillover matrix ($SPILLOVER in FCS 3.1, SPILL in FCS 3.0)",
    "uncompensated": "none (uncompensated)",
}


def _local(tag: str) -> str:
    return etree.QName(tag).localname


def _num(text: str | None) -> float | None:
    return None if text is None else float(text)


def gatingml_definitions(path: str | os.PathLike | bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Transforms and gates of a GatingML 2.0 file, as plain data.

    Parameters
    ----------
    path
        The file, or its content as bytes.

    Returns
    -------
    transforms : list of dict
        ``id, type`` and the transform's parameters (e.g. ``T, W, M, A``).
    gates : list of dict
        ``id, parent_id, type, dimensions`` (each ``channel, compensation,
        transformation, min, max``) and ``vertices`` for polygons.
    """
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = (etree.fromstring(path, parser) if isinstance(path, bytes)
            else etree.parse(str(path), parser).getroot())
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


def sample_gates_name(row: int, file: str) -> str:
    """The gates file name of sheet row ``row`` (1-based): ``<row>_<file stem>_<sha8>.xml``.

    ``sha8`` is the start of the sha256 of ``file`` as written in the sheet,
    so rows whose files share a stem (``a/P01.fcs``, ``b/P01.fcs``) never
    share a name, and a name still says which file it belongs to.

    Examples
    --------
    >>> sample_gates_name(3, "b/P01.fcs")
    '0003_P01_ff7bdbd4.xml'
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(file)).stem)[:80] or "sample"
    return f"{row:04d}_{stem}_{hashlib.sha256(str(file).encode('utf-8')).hexdigest()[:8]}.xml"


def write_sample_gates(run_dir: str | os.PathLike, files: Sequence[str],
                       gatingml: Sequence[str | bytes | None]) -> list[dict[str, str] | None]:
    """Write each sample's applied gates to ``RUN_DIR/sample_gates/`` (GatingML 2.0, one file a sheet row).

    Parameters
    ----------
    run_dir
        The run's output folder.
    files
        The sheet's ``file`` column, in sheet order.
    gatingml
        Per row, the GatingML applied to the sample: its own (placed, fitted or
        adjusted gates as custom sample gates) or the strategy's; None for a
        sample that was not gated (no file).

    Returns
    -------
    list
        Per row ``{"gates_file": "sample_gates/<name>", "gates_sha256": ...}``
        (names from :func:`sample_gates_name`), or None. A file is rewritten
        (atomically) only when its content changed; files no row names any more
        (an earlier run's) are removed, so the folder holds this run's gates.
    """
    from concurrent.futures import ThreadPoolExecutor

    folder = Path(run_dir) / SAMPLE_GATES_DIR
    out: list[dict[str, str] | None] = []
    keep = set()
    todo = []
    for row, (file, text) in enumerate(zip(files, gatingml), start=1):
        if text is None:
            out.append(None)
            continue
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        name = sample_gates_name(row, file)
        target = folder / name
        keep.add(name)
        if not target.is_file() or target.read_bytes() != data:
            todo.append((target, data))
        out.append({"gates_file": f"{SAMPLE_GATES_DIR}/{name}", "gates_sha256": hashlib.sha256(data).hexdigest()})
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        # each still synced before its rename, but several at a time: the file system commits concurrent
        # syncs together (200 files: ~0.8 s one by one on this disk, ~0.1 s eight at a time)
        with ThreadPoolExecutor(min(8, len(todo)), thread_name_prefix="cytopipe-gates") as pool:
            list(pool.map(lambda item: atomic_write(item[0], lambda p, data=item[1]: Path(p).write_bytes(data)),
                          todo))
    if folder.is_dir():
        for old in folder.glob("*.xml"):
            if old.name not in keep:
                old.unlink()
    return out


def _applied_gates(entry: dict[str, Any], by_id: dict[str, str]) -> dict[str, Any]:
    """A sample's record of its applied gates (``entry`` from the driver; ``content`` is parsed, not kept)."""
    rec = {k: v for k, v in entry.items() if k != "content"}
    if entry.get("content") is not None:
        _, applied = gatingml_definitions(entry["content"])
        for g in applied:
            g["path"] = by_id.get(g["id"])
        rec["applied_gates"] = applied
    return rec


def build_miflowcyt(strategy: Strategy, table: pd.DataFrame, populations: pd.DataFrame, *,
                    paths: Sequence[str] | None = None,
                    instruments: Sequence[dict[str, Any] | None] | None = None,
                    sample_gates: Sequence[dict[str, Any] | None] | None = None) -> dict[str, Any]:
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
        "gates_note": "`gates` are the strategy's template gates with every sample's counts; the gates applied "
                      "to each sample (placed, fitted, adjusted by a reviewer) are under samples[].applied_gates, "
                      "and in its samples[].gates_file",
        "samples": [{"file": r["file"], "patient_id": r["patient_id"], "visit": r["visit"],
                     "file_sha256": None if pd.isna(r["file_sha256"]) else r["file_sha256"],
                     "qc_status": r["qc_status"], "error": r["error"] or None,
                     **(_applied_gates(g, by_id) if g else {"gates_file": None})}
                    for r, g in zip(table.to_dict("records"), sample_gates or [None] * len(table))],
    }


def write_miflowcyt(run_dir: str | os.PathLike, strategy: Strategy, table: pd.DataFrame, *,
                    populations: pd.DataFrame, paths: Sequence[str] | None = None,
                    instruments: Sequence[dict[str, Any] | None] | None = None,
                    sample_gates: Sequence[dict[str, Any] | None] | None = None) -> Path:
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
    sample_gates
        Per row of ``table``, the sample's applied gates: ``gates_file``,
        ``gates_sha256`` (from :func:`write_sample_gates`), ``gates_applied``
        (what they are, in words), ``adjusted_gates``, ``placement`` (the
        placed gates' fit records) and ``content`` (the GatingML, parsed into
        ``applied_gates``); None for a sample not gated.

    Returns
    -------
    Path
        The file written (atomically).
    """
    record = build_miflowcyt(strategy, table, populations, paths=paths, instruments=instruments,
                             sample_gates=sample_gates)
    return write_json(record, Path(run_dir) / "miflowcyt.json")


def replace_sample_gates(run_dir: str | os.PathLike, row: int, gatingml: str | bytes, *,
                         info: dict[str, Any], table: pd.DataFrame, populations: pd.DataFrame) -> dict[str, str]:
    """Rewrite one sample's gates file and its entries in ``miflowcyt.json`` (a sample gated again alone).

    The review station gates one sample again after a reviewer's adjustment,
    without a re-run of the batch; the record must then name the gates that
    produced its new numbers, as a re-run's would.

    Parameters
    ----------
    run_dir
        The run's output folder (it holds ``miflowcyt.json``).
    row
        The sample's 0-based row in ``table`` (the sheet's order).
    gatingml
        The GatingML now applied to the sample.
    info
        ``gates_applied``, ``adjusted_gates`` and ``placement``, as the batch
        driver records them.
    table, populations
        The run's updated ``treg_by_visit`` and ``populations``: the sample's
        counts under ``gates[].per_sample`` are taken from them.

    Returns
    -------
    dict
        ``{"gates_file": ..., "gates_sha256": ...}`` of the file written.
    """
    run_dir = Path(run_dir)
    path = run_dir / "miflowcyt.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    rec = table.iloc[row]
    file = str(rec["file"])
    data = gatingml.encode("utf-8") if isinstance(gatingml, str) else bytes(gatingml)
    name = sample_gates_name(row + 1, file)
    folder = run_dir / SAMPLE_GATES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / name, lambda p: Path(p).write_bytes(data))
    written = {"gates_file": f"{SAMPLE_GATES_DIR}/{name}", "gates_sha256": hashlib.sha256(data).hexdigest()}
    by_id = {g["id"]: g.get("path") for g in record.get("gates", [])}
    entry = record["samples"][row]
    entry.update(file_sha256=None if pd.isna(rec["file_sha256"]) else rec["file_sha256"],
                 qc_status=rec["qc_status"], error=rec["error"] or None)
    for key in ("gates_file", "gates_sha256", "gates_applied", "adjusted_gates", "placement", "applied_gates"):
        entry.pop(key, None)
    entry.update(_applied_gates({**written, **info, "content": data}, by_id))
    mine = populations[populations["file"].astype(str) == file]
    counts = {r["gate"]: r for r in mine.to_dict("records")}
    for g in record.get("gates", []):
        per = [p for p in g.get("per_sample", []) if p.get("file") != file]
        r = counts.get(g["id"])
        if r is not None:
            at = next((i for i, p in enumerate(g.get("per_sample", [])) if p.get("file") == file), len(per))
            per.insert(at, {"file": file, "patient_id": r["patient_id"], "visit": r["visit"], "count": int(r["count"]),
                            "parent_count": int(r["parent_count"]), "pct_parent": float(r["pct_parent"]),
                            "pct_total": float(r["pct_total"])})
        g["per_sample"] = per
    write_json(record, path)
    return written
