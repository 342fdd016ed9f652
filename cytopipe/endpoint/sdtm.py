"""CDISC SDTM CP (Cell Phenotype Findings) rows from per-visit results.

Two tests per patient-visit sample: ``TREGCD4`` (Tregs as % of CD4+ T cells)
and ``CD4T`` (CD4+ T cell events counted). ``CPGATE`` names the strategy
(``name@version``) and ``CPGATDEF`` the gate path(s), both taken from the
strategy manifest, so a number can be traced to the exact gates that made it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..exceptions import EndpointError, StrategyError
from ..outputs.schema import dtypes_for
from ..strategy.registry import load_strategy

__all__ = ["marker_string", "build_sdtm_cp"]

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
                "CPSTRESC": text, "CPSTRESN": float(value) if has else np.nan, "CPSTRESU": unit if has else "",
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
    for c in ("CPORRESU", "CPSTRESU", "CPSTAT", "CPREASND", "CPBLFL", "CPDTC", "CPORRES", "CPSTRESC"):
        df[c] = df[c].replace("", pd.NA)
    return df.astype(dtypes_for("sdtm_cp", cols))
