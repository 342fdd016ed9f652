"""The endpoint report: ``OUT/report.html`` of ``cytopipe endpoint``.

The endpoint's figures, arm statistics, trend test and exclusions on one
self-contained page (PNGs as ``data:`` URIs, no script, no network). It is a
report of its own rather than part of each run's review report because the
runs belong to the blinded lab: arm-level results must not appear there.

A preliminary analysis (``provenance["preliminary"]``) says PRELIMINARY in the
page title and heading and lists the samples used without review.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..outputs.html import escape as _e
from ..outputs.html import html_page, img_tag
from ..outputs.tables import atomic_write

__all__ = ["write_endpoint_report"]


def _table(df: pd.DataFrame, *, digits: int = 4) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for v in r:
            if isinstance(v, float) and not pd.isna(v):
                v = f"{v:.{digits}g}"
            cells.append(f'<td data-v="{_e(v)}">{_e(v)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def write_endpoint_report(out_dir: str | os.PathLike, *, summary: pd.DataFrame, trend: pd.DataFrame,
                          exclusions: pd.DataFrame, figures: Sequence[str | os.PathLike],
                          provenance: dict[str, Any]) -> Path:
    """Write ``out_dir/report.html`` with the endpoint's figures and tables.

    Parameters
    ----------
    out_dir
        The endpoint's output folder.
    summary, trend, exclusions
        ``arm_summary``, ``trend_test`` and ``exclusions`` as written.
    figures
        PNG files to embed (those that exist).
    provenance
        ``endpoint.json``'s content (inputs, options, versions; ``preliminary``
        and ``unreviewed_samples`` when samples were used without review).

    Returns
    -------
    pathlib.Path
    """
    out = Path(out_dir)
    preliminary = bool(provenance.get("preliminary"))
    unreviewed = pd.DataFrame(provenance.get("unreviewed_samples") or [])
    mark = "PRELIMINARY: " if preliminary else ""
    parts = [f"<h1>{mark}Endpoint: change in Treg % CD4 from {_e(provenance.get('baseline'))} to "
             f"{_e(provenance.get('visit'))}</h1>",
             f"<p>Study {_e(provenance.get('study_id'))}; strategy {_e(provenance.get('strategy'))}; "
             f"{_e(provenance.get('n_complete'))} of {_e(provenance.get('n_patients'))} patients complete; "
             f"{_e(provenance.get('n_excluded_samples'))} samples excluded (listed below).</p>",
             '<div class="plots">']
    if preliminary:
        parts.insert(1, f'<p class="flag"><strong>PRELIMINARY</strong>: {len(unreviewed)} sample(s) flagged '
                        "for review and not approved are included (listed below). Review them with "
                        "<code>cytopipe review RUN_DIR PATIENT:VISIT</code> and re-run the endpoint before "
                        "using these results.</p>")
    for fig in figures:
        p = Path(fig)
        if p.is_file():
            parts.append(img_tag(p.read_bytes(), p.stem.replace("_", " "), "endpoint"))
    parts.append("</div><h2>Per arm, against the control</h2>" + _table(summary))
    parts.append("<h2>Dose-response trend</h2>" + _table(trend))
    if preliminary:
        parts.append("<h2>Included without review (PRELIMINARY)</h2>" + _table(unreviewed))
    parts.append("<h2>Excluded samples</h2>" + (_table(exclusions) if len(exclusions) else "<p>none</p>"))
    shown = {k: v for k, v in provenance.items() if k != "unreviewed_samples"}
    parts.append("<h2>Provenance</h2><pre>" + _e("\n".join(f"{k}: {v}" for k, v in shown.items()))
                 + "</pre>")
    html = html_page(f"{mark}cytopipe endpoint report", "\n".join(parts))
    return atomic_write(out / "report.html", lambda p: Path(p).write_text(html, encoding="utf-8"))
