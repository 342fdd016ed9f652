"""define.xml (CDISC Define-XML 2.0) describing the SDTM CP transport file.

One ``ItemGroupDef`` (dataset ``CP``) whose ``def:leaf`` points at the XPT
next to it, an ``ItemDef`` per variable with the type and length the XPT
holds (a text variable is as long as its longest value, as
:func:`cytopipe.endpoint.sdtm.write_sdtm_xpt` writes it), a ``CodeList``
for every variable whose values are controlled, and a ``MethodDef`` for
every derived variable.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np
import pandas as pd
from lxml import etree

from .._version import __version__
from ..outputs.tables import atomic_write
from .sdtm import CP_VARIABLES, DATASET_LABEL, sdtm_transport_frame

__all__ = ["define_xml", "write_define_xml"]

ODM_NS = "http://www.cdisc.org/ns/odm/v1.3"
DEF_NS = "http://www.cdisc.org/ns/def/v2.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_NSMAP = {None: ODM_NS, "def": DEF_NS, "xlink": XLINK_NS}

# Dataset keys, in the order the rows are sorted (unique: a patient-visit is in the endpoint once).
KEYS = ("STUDYID", "USUBJID", "VISITNUM", "CPTESTCD")
# Variables whose values are controlled: codelist name, and coded value -> decode (None: no decode).
_CODELISTS: dict[str, tuple[str, dict[str, str | None]]] = {
    "DOMAIN": ("Domain Abbreviation", {"CP": "Cell Phenotype Findings"}),
    "CPTESTCD": ("Cell Phenotype Test Code", {"TREGCD4": "Regulatory T Cells/CD4+ T Cells",
                                             "CD4T": "CD4+ T Cells"}),
    "CPTEST": ("Cell Phenotype Test Name", {"Regulatory T Cells/CD4+ T Cells": None, "CD4+ T Cells": None}),
    "CPORRESU": ("Unit", {"%": "Percent", "cells": "Cells"}),
    "CPSTAT": ("Completion/Reason Not Done", {"NOT DONE": None}),
    "CPBLFL": ("No Yes Response", {"Y": "Yes"}),
    "CPMETHOD": ("Method", {"FLOW CYTOMETRY": None}),
    "PRELIM": ("No Yes Response", {"Y": "Yes"}),
}
_SHARED = {"CPSTRESU": "CPORRESU", "PRELIM": "CPBLFL"}  # same codelist as
# Origin of each variable ("Derived" ones also get a MethodDef); the rest are "Assigned".
_DERIVED = {
    "USUBJID": "STUDYID, a hyphen and the patient_id of the sample sheet.",
    "CPSEQ": "1, 2, ... over each subject's rows sorted by VISITNUM and CPTESTCD.",
    "CPMRKSTR": "Marker strings of the strategy's numerator and denominator gate paths (CD3pos -> CD3+), "
                "or the strategy manifest's endpoint.marker_strings.",
    "CPGATDEF": "The gate paths of the strategy manifest (numerator 'of' denominator for a percentage).",
    "CPORRES": "TREGCD4: event count of the Treg gate path / event count of the CD4 gate path x 100, 4 decimals; "
               "CD4T: event count of the CD4 gate path. Computed by cytopipe with the strategy in CPGATE.",
    "CPSTRESC": "CPORRES.",
    "CPSTRESN": "CPSTRESC as a number.",
    "CPBLFL": "Y on the results of the baseline visit that have a value.",
    "VISITNUM": "Rank of the visit by its median study day over the runs.",
}
_PROTOCOL = {"VISIT", "VISITDY"}
_COLLECTED = {"CPREFID", "CPDTC"}  # from the lab's sample sheet


def _text(parent: etree._Element, tag: str, text: str) -> etree._Element:
    el = etree.SubElement(parent, tag)
    tt = etree.SubElement(el, f"{{{ODM_NS}}}TranslatedText")
    tt.set(_XML_LANG, "en")
    tt.text = text
    return el


def _text_type(values: pd.Series) -> str:
    """``date`` or ``datetime`` for ISO 8601 values (empty ones aside), else ``text``."""
    v = values[values != ""]
    if len(v) and v.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all():
        return "date"
    if len(v) and v.str.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?").all():
        return "datetime"
    return "text"


def _numeric(values: np.ndarray) -> tuple[str, int, int | None]:
    """DataType, Length (longest value written out) and SignificantDigits of a numeric variable."""
    v = values[~np.isnan(values)]
    if not len(v):
        return "integer", 1, None
    if np.all(v == np.round(v)):
        return "integer", max(len(str(int(x))) for x in v), None
    texts = [np.format_float_positional(x, trim="-") for x in v]
    return "float", max(map(len, texts)), max(len(t.partition(".")[2]) for t in texts)


def define_xml(cp: pd.DataFrame, *, study_id: str, dataset_file: str = "sdtm_cp.xpt",
               created: _dt.datetime | None = None) -> bytes:
    """The define.xml of the CP rows as :func:`~cytopipe.endpoint.sdtm.write_sdtm_xpt` writes them.

    Parameters
    ----------
    cp
        From :func:`~cytopipe.endpoint.sdtm.build_sdtm_cp`.
    study_id
        ``STUDYID`` (study OID and name).
    dataset_file
        The transport file, relative to define.xml (``def:leaf``).
    created
        ``CreationDateTime`` (default: now, UTC).

    Returns
    -------
    bytes
        UTF-8 XML with its declaration.
    """
    frame = sdtm_transport_frame(cp)
    codelists = dict(_CODELISTS)
    if "CPSPEC" in frame.columns:  # the specimen is an option (--specimen): list the values used
        codelists["CPSPEC"] = ("Specimen Type", {v: None for v in sorted(set(frame["CPSPEC"]) - {""})})
    created = created or _dt.datetime.now(_dt.UTC)
    odm = etree.Element(f"{{{ODM_NS}}}ODM", nsmap=_NSMAP)
    for k, v in (("FileType", "Snapshot"), ("FileOID", f"DEF.{study_id}.SDTM.CP"), ("ODMVersion", "1.3.2"),
                 ("CreationDateTime", created.replace(microsecond=0).isoformat()), ("Originator", "cytopipe"),
                 ("SourceSystem", "cytopipe"), ("SourceSystemVersion", __version__)):
        odm.set(k, v)
    study = etree.SubElement(odm, f"{{{ODM_NS}}}Study", OID=f"STUDY.{study_id}")
    gv = etree.SubElement(study, f"{{{ODM_NS}}}GlobalVariables")
    for tag, text in (("StudyName", study_id), ("StudyDescription", f"{study_id}: Treg % of CD4 by flow cytometry"),
                      ("ProtocolName", study_id)):
        etree.SubElement(gv, f"{{{ODM_NS}}}{tag}").text = text
    mdv = etree.SubElement(study, f"{{{ODM_NS}}}MetaDataVersion", OID=f"MDV.{study_id}.SDTMIG.3.4",
                           Name=f"{study_id} SDTM CP", Description="SDTM CP written by cytopipe endpoint")
    mdv.set(f"{{{DEF_NS}}}DefineVersion", "2.0.0")
    mdv.set(f"{{{DEF_NS}}}StandardName", "SDTM-IG")
    mdv.set(f"{{{DEF_NS}}}StandardVersion", "3.4")

    label = DATASET_LABEL + (" PRELIMINARY" if "PRELIM" in frame.columns else "")
    ig = etree.SubElement(mdv, f"{{{ODM_NS}}}ItemGroupDef", OID="IG.CP", Domain="CP", Name="CP", Repeating="Yes",
                          IsReferenceData="No", SASDatasetName="CP", Purpose="Tabulation")
    ig.set(f"{{{DEF_NS}}}Structure", "One record per test per specimen per subject")
    ig.set(f"{{{DEF_NS}}}Class", "FINDINGS")
    ig.set(f"{{{DEF_NS}}}ArchiveLocationID", "LF.CP")
    _text(ig, f"{{{ODM_NS}}}Description", label)
    for n, name in enumerate(frame.columns, 1):
        ref = etree.SubElement(ig, f"{{{ODM_NS}}}ItemRef", ItemOID=f"IT.CP.{name}", OrderNumber=str(n),
                               Mandatory="Yes" if (frame[name] != "").all() and frame[name].notna().all() else "No")
        if name in KEYS:
            ref.set("KeySequence", str(KEYS.index(name) + 1))
        if name in _DERIVED:
            ref.set("MethodOID", f"MT.CP.{name}")
        ref.set("Role", CP_VARIABLES[name][1])
    leaf = etree.SubElement(ig, f"{{{DEF_NS}}}leaf", ID="LF.CP")
    leaf.set(f"{{{XLINK_NS}}}href", dataset_file)
    etree.SubElement(leaf, f"{{{DEF_NS}}}title").text = dataset_file

    for name in frame.columns:
        values = frame[name]
        it = etree.SubElement(mdv, f"{{{ODM_NS}}}ItemDef", OID=f"IT.CP.{name}", Name=name)
        if values.dtype == object:
            it.set("DataType", _text_type(values))
            it.set("Length", str(max(1, int(values.str.len().max() or 0))))
        else:
            dtype, length, digits = _numeric(values.to_numpy(float))
            it.set("DataType", dtype)
            it.set("Length", str(length))
            if digits is not None:
                it.set("SignificantDigits", str(digits))
        it.set("SASFieldName", name)
        _text(it, f"{{{ODM_NS}}}Description", CP_VARIABLES[name][0])
        cl = _SHARED.get(name, name)
        if cl in codelists:
            etree.SubElement(it, f"{{{ODM_NS}}}CodeListRef", CodeListOID=f"CL.{cl}")
        origin = ("Derived" if name in _DERIVED else "Protocol" if name in _PROTOCOL
                  else "eDT" if name in _COLLECTED else "Assigned")
        etree.SubElement(it, f"{{{DEF_NS}}}Origin", Type=origin)

    used = sorted({_SHARED.get(c, c) for c in frame.columns} & set(codelists))
    for cl in used:
        name, items = codelists[cl]
        el = etree.SubElement(mdv, f"{{{ODM_NS}}}CodeList", OID=f"CL.{cl}", Name=name, DataType="text")
        decoded = any(d is not None for d in items.values())
        for n, (code, decode) in enumerate(items.items(), 1):
            if decoded:
                item = etree.SubElement(el, f"{{{ODM_NS}}}CodeListItem", CodedValue=code, OrderNumber=str(n))
                _text(item, f"{{{ODM_NS}}}Decode", decode or code)
            else:
                etree.SubElement(el, f"{{{ODM_NS}}}EnumeratedItem", CodedValue=code, OrderNumber=str(n))
    for name in frame.columns:
        if name in _DERIVED:
            md = etree.SubElement(mdv, f"{{{ODM_NS}}}MethodDef", OID=f"MT.CP.{name}", Name=f"Derivation of {name}",
                                  Type="Computation")
            _text(md, f"{{{ODM_NS}}}Description", _DERIVED[name])
    return etree.tostring(odm, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def write_define_xml(cp: pd.DataFrame, path: str | os.PathLike, *, study_id: str,
                     dataset_file: str = "sdtm_cp.xpt") -> Path:
    """Write :func:`define_xml` of the CP rows to ``path``.

    Parameters
    ----------
    cp
        From :func:`~cytopipe.endpoint.sdtm.build_sdtm_cp`, as written to ``dataset_file``.
    path
        The file to write (replaced atomically), normally ``OUT/define.xml``.
    study_id
        ``STUDYID``.
    dataset_file
        The transport file, relative to ``path``'s folder.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    data = define_xml(cp, study_id=study_id, dataset_file=dataset_file)
    return atomic_write(path, lambda p: Path(p).write_bytes(data))
