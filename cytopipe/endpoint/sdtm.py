"""CDISC SDTM CP (Cell Phenotype Findings) rows from per-visit results.

Two tests per patient-visit sample: ``TREGCD4`` (Tregs as % of CD4+ T cells)
and ``CD4T`` (CD4+ T cell events counted). ``CPGATE`` names the strategy
(``name@version``) and ``CPGATDEF`` the gate path(s), both taken from the
strategy manifest, so a number can be traced to the exact gates that made it.

For a submission the same rows go into SAS transport v5 (:func:`write_sdtm_xpt`,
dataset ``CP``), which allows only ASCII text of at most 200 characters a
value; :func:`build_sdtm_cp` keeps every text within that, so the CSV, the
Parquet file and the XPT hold the same values.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import EndpointError, StrategyError
from ..outputs.schema import dtypes_for
from ..outputs.tables import atomic_write
from ..strategy.registry import load_strategy

__all__ = ["CP_VARIABLES", "marker_string", "build_sdtm_cp", "sdtm_transport_frame", "write_sdtm_xpt"]

# SDTMIG v3.4 CP: label (SAS transport v5 allows 40 characters) and role of each variable.
CP_VARIABLES: dict[str, tuple[str, str]] = {
    "STUDYID": ("Study Identifier", "Identifier"),
    "DOMAIN": ("Domain Abbreviation", "Identifier"),
    "USUBJID": ("Unique Subject Identifier", "Identifier"),
    "CPSEQ": ("Sequence Number", "Identifier"),
    "CPREFID": ("Reference ID", "Identifier"),
    "CPTESTCD": ("Test or Examination Short Name", "Topic"),
    "CPTEST": ("Name of Measurement, Test or Examination", "Synonym Qualifier"),
    "CPMRKSTR": ("Marker String", "Variable Qualifier"),
    "CPGATE": ("Gate", "Variable Qualifier"),
    "CPGATDEF": ("Gate Definition", "Variable Qualifier"),
    "CPORRES": ("Result or Finding in Original Units", "Result Qualifier"),
    "CPORRESU": ("Original Units", "Variable Qualifier"),
    "CPSTRESC": ("Character Result/Finding in Std Format", "Result Qualifier"),
    "CPSTRESN": ("Numeric Result/Finding in Standard Units", "Result Qualifier"),
    "CPSTRESU": ("Standard Units", "Variable Qualifier"),
    "CPSTAT": ("Completion Status", "Record Qualifier"),
    "CPREASND": ("Reason Not Done", "Record Qualifier"),
    "CPSPEC": ("Specimen Material Type", "Record Qualifier"),
    "CPMETHOD": ("Method of Test or Examination", "Record Qualifier"),
    "CPBLFL": ("Baseline Flag", "Record Qualifier"),
    "VISITNUM": ("Visit Number", "Timing"),
    "VISIT": ("Visit Name", "Timing"),
    "VISITDY": ("Planned Study Day of Visit", "Timing"),
    "CPDTC": ("Date/Time of Specimen Collection", "Timing"),
    # not SDTM: a preliminary analysis (endpoint --include-unreviewed) says so in every output
    "PRELIM": ("Preliminary: Unreviewed Samples Used", "Record Qualifier"),
}
DATASET_LABEL = "Cell Phenotype Findings"
MAX_TEXT = 200  # SAS transport v5: a character variable holds at most 200 bytes
# Common non-ASCII characters in error messages and names, spelled in ASCII (v5 text is ASCII).
_ASCII = str.maketrans({"\u2192": "->", "\u2190": "<-", "\u2014": "-", "\u2013": "-", "\u2018": "'",
                        "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00b5": "u", "\u03bc": "u",
                        "\u00d7": "x", "\u2026": "...", "\u2264": "<=", "\u2265": ">="})

# Gate ids that are not marker-defined (scatter, singlets, viability) add nothing to the marker string.
_NO_MARKER = {"root", "Lymphocytes", "Singlets", "Live"}
_KNOWN = {"Treg": "CD25hiFOXP3+"}


def marker_string(path: Sequence[str], *, overrides: dict[str, str] | None = None) -> str:
    """The marker string of a gate path, e.g. ``CD3+CD4+CD25hiFOXP3+``.

    Gate ids ending in ``pos``/``neg`` give ``<marker>+``/``<marker>-``; ``Treg``
    gives ``CD25hiFOXP3+``; scatter, singlet and live gates add nothing.
    ``overrides`` (gate id -> text) take precedence.

    Examples
    --------
    >>> marker_string(("root", "Lymphocytes", "Singlets", "Live", "CD3pos", "CD4pos", "Treg"))
    'CD3+CD4+CD25hiFOXP3+'
    """
    known = {**_KNOWN, **(overrides or {})}
    parts = []
    for gate in path:
        if gate in known:
            parts.append(known[gate])
        elif gate in _NO_MARKER:
            continue
        elif gate.endswith("pos"):
            parts.append(gate[:-3] + "+")
        elif gate.endswith("neg"):
            parts.append(gate[:-3] + "-")
        else:
            parts.append(gate)
    return "".join(parts)


def _gates(ref: str, cache: dict[str, tuple]) -> tuple:
    if ref not in cache:
        try:
            s = load_strategy(ref, allow_draft=True)
        except StrategyError as e:
            msg = f"SDTM CP needs the gate paths of strategy {ref!r}, which cannot be loaded: {e}"
            raise EndpointError(msg) from e
        over = s.manifest.get("endpoint", {}).get("marker_strings")
        cache[ref] = (s.numerator, s.denominator, over)
    return cache[ref]


def build_sdtm_cp(rows: pd.DataFrame, *, study_id: str, baseline: str, visit_order: list[str],
                  rejected: pd.Series | None = None, specimen: str = "BLOOD") -> pd.DataFrame:
    """Build the SDTM CP rows of per-visit results.

    Parameters
    ----------
    rows
        Per-visit rows of the runs (superseded samples already removed).
    study_id
        ``STUDYID``; ``USUBJID`` is ``STUDYID-patient_id``.
    baseline
        The baseline visit (``CPBLFL = "Y"`` on its results).
    visit_order
        Visits in order; ``VISITNUM`` is the 1-based position.
    rejected
        Boolean, aligned with ``rows``: rejected in review (``CPSTAT = "NOT DONE"``).
    specimen
        ``CPSPEC``.

    Returns
    -------
    pandas.DataFrame
        Columns as documented for ``sdtm_cp`` (docs/outputs.md), sorted by
        USUBJID, VISITNUM, CPTESTCD, with CPSEQ numbering each subject's rows.
        CPSTRESN is the number CPSTRESC shows; text is ASCII, at most 200
        characters (a longer CPREASND is cut, ending in ``...``).

    Raises
    ------
    EndpointError
        A strategy cannot be loaded, or a value other than CPREASND is over
        200 characters (the message names the subject, visit and variable).
    """
    rej = rejected if rejected is not None else pd.Series(False, index=rows.index)
    cache: dict[str, tuple] = {}
    out = []
    for idx, r in rows.iterrows():
        ref = f"{r['strategy']}@{str(r['strategy_version']).replace(' (draft)', '')}"
        num, den, over = _gates(ref, cache)
        num_m, den_m = marker_string(num, overrides=over), marker_string(den, overrides=over)
        if r["qc_status"] == "error":
            why = str(r["error"]) or "gating failed"
        elif bool(rej.loc[idx]):
            why = "rejected in review"
        else:
            why = ""
        done = not why
        tests = [("TREGCD4", "Regulatory T Cells/CD4+ T Cells", f"{num_m}/{den_m}",
                  f"{'/'.join(num[1:])} of {'/'.join(den[1:])}", r["treg_pct_cd4"], "%", 4),
                 ("CD4T", "CD4+ T Cells", den_m, "/".join(den[1:]), r["cd4_count"], "cells", 0)]
        for code, name, mrk, gate_def, value, unit, digits in tests:
            has = done and pd.notna(value)
            text = (f"{float(value):.{digits}f}" if digits else str(int(value))) if has else ""
            out.append({
                "STUDYID": study_id, "DOMAIN": "CP", "USUBJID": f"{study_id}-{r['patient_id']}", "CPSEQ": 0,
                "CPREFID": r["file"], "CPTESTCD": code, "CPTEST": name, "CPMRKSTR": mrk, "CPGATE": ref,
                "CPGATDEF": gate_def, "CPORRES": text, "CPORRESU": unit if has else "",
                "CPSTRESC": text, "CPSTRESN": float(text) if has else np.nan, "CPSTRESU": unit if has else "",
                "CPSTAT": "" if has else "NOT DONE", "CPREASND": "" if has else (why or "no result"),
                "CPSPEC": specimen, "CPMETHOD": "FLOW CYTOMETRY",
                "CPBLFL": "Y" if has and r["visit"] == baseline else "",
                "VISITNUM": float(visit_order.index(r["visit"]) + 1), "VISIT": r["visit"],
                "VISITDY": r["day"], "CPDTC": str(r["collection_date"]) if "collection_date" in r and
                pd.notna(r["collection_date"]) else "",
            })
    cols = list(dtypes_for("sdtm_cp", []))
    df = pd.DataFrame(out, columns=cols)
    df = df.sort_values(["USUBJID", "VISITNUM", "CPTESTCD"], kind="stable").reset_index(drop=True)
    df["CPSEQ"] = df.groupby("USUBJID").cumcount() + 1
    _fit_transport_text(df)
    for c in ("CPORRESU", "CPSTRESU", "CPSTAT", "CPREASND", "CPBLFL", "CPDTC", "CPORRES", "CPSTRESC"):
        df[c] = df[c].replace("", pd.NA)
    return df.astype(dtypes_for("sdtm_cp", cols))


# What to shorten when a value is over MAX_TEXT characters.
_FIX = {"STUDYID": "the study id", "USUBJID": "the study id or patient_id", "CPREFID": "the FCS file name",
        "CPMRKSTR": "the gate ids, or endpoint.marker_strings in the strategy manifest",
        "CPGATE": "the strategy name", "CPGATDEF": "the gate ids of the strategy", "VISIT": "the visit name"}


def _ascii(text: str) -> str:
    """``text`` in ASCII: known symbols spelled out, accents dropped, anything else ``?``."""
    out = unicodedata.normalize("NFKD", text.translate(_ASCII))
    return "".join(c for c in out if not unicodedata.combining(c)).encode("ascii", "replace").decode("ascii")


def _fit_transport_text(df: pd.DataFrame) -> None:
    """Make every text value ASCII and at most MAX_TEXT characters, in place.

    A long CPREASND (an error message) is cut, ending in ``...`` (the whole
    message stays in exclusions.csv); any other value over the limit is an error.
    """
    for c in df.columns:
        if df[c].dtype != object:
            continue
        df[c] = [_ascii(v) if isinstance(v, str) else v for v in df[c]]
        if c == "CPREASND":
            df[c] = [v[:MAX_TEXT - 3] + "..." if isinstance(v, str) and len(v) > MAX_TEXT else v for v in df[c]]
            continue
        long = [i for i, v in enumerate(df[c]) if isinstance(v, str) and len(v) > MAX_TEXT]
        if long:
            i = long[0]
            msg = (f"SDTM CP {c} of {df['USUBJID'].iat[i]} visit {df['VISIT'].iat[i]} is {len(df[c].iat[i])} "
                   f"characters ({df[c].iat[i][:60]!r}...), over the {MAX_TEXT} that SAS transport v5 allows "
                   f"({len(long)} row(s) in all); shorten {_FIX.get(c, 'that value')}.")
            raise EndpointError(msg)


def sdtm_transport_frame(cp: pd.DataFrame) -> pd.DataFrame:
    """The CP rows as SAS transport holds them: text as ``str`` (``""`` when missing), numbers as float64.

    A ``preliminary`` column (a preliminary analysis) becomes ``PRELIM``, ``"Y"`` on every row.

    Raises
    ------
    EndpointError
        A column that is not a CP variable (see ``CP_VARIABLES``).
    """
    out: dict[str, object] = {}
    for c in cp.columns:
        s = cp[c]
        if c == "preliminary":
            out["PRELIM"] = ["Y" if bool(v) else "" for v in s.fillna(False).astype(bool)]
        elif c not in CP_VARIABLES:
            msg = f"Column {c!r} of the SDTM CP rows is not a CP variable; known: {sorted(CP_VARIABLES)}."
            raise EndpointError(msg)
        elif pd.api.types.is_numeric_dtype(s):
            out[c] = s.to_numpy(dtype=float, na_value=np.nan)
        else:
            out[c] = [str(v) for v in s.astype("string").fillna("")]
    return pd.DataFrame(out, index=range(len(cp)))


def write_sdtm_xpt(cp: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the CP rows as a SAS transport (XPORT) version 5 file, dataset ``CP``.

    Variable names are the CP variables (at most 8 characters), each labelled
    as in SDTMIG v3.4 (at most 40); the dataset label is ``Cell Phenotype
    Findings`` (with ``PRELIMINARY`` after it for a preliminary analysis).
    A text variable is as long as its longest value (at least 1); numbers are
    8-byte. ``pandas.read_sas(path, format="xport")`` reads it back.

    Parameters
    ----------
    cp
        From :func:`build_sdtm_cp`.
    path
        The file to write (replaced atomically).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    EndpointError
        The rows cannot be written as transport v5.
    """
    import pyreadstat  # only the endpoint's submission files need it

    frame = sdtm_transport_frame(cp)
    labels = {c: CP_VARIABLES[c][0] for c in frame.columns}
    label = DATASET_LABEL + (" PRELIMINARY" if "PRELIM" in frame.columns else "")

    def write(tmp: str) -> None:
        try:
            pyreadstat.write_xport(frame, tmp, file_label=label, column_labels=labels, table_name="CP",
                                   file_format_version=5)
        except (pyreadstat.PyreadstatError, pyreadstat.ReadstatError) as e:
            msg = f"{path}: cannot write SDTM CP as SAS transport v5: {e}"
            raise EndpointError(msg) from e

    return atomic_write(path, write)
