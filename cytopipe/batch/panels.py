"""``cytopipe panel``: each file's marker-to-detector resolution, before anything is gated.

A lab checks, from the headers alone, that every file of a sheet will be
read as it means: which detector carries each marker, how it was found
(a panel file, ``$PnS`` or ``$PnN``) and what is missing, per file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..exceptions import CytopipeError, one_line
from ..fcs.header import channels, scan_header
from ..fcs.read import spillover_names
from ..gating.pregated import needed_markers, pregated_paths
from ..strategy.panel import read_panel_file, resolve_panel
from ..strategy.registry import DEFAULT_STRATEGY, load_strategy
from .samplesheet import read_sample_sheet

__all__ = ["PANEL_COLUMNS", "check_panels"]

#: Columns of :func:`check_panels`' table.
PANEL_COLUMNS = ("file", "marker", "detector", "found_by", "flags", "error")


def _spilled(head: dict[str, str], pnn: list[str]) -> list[str]:
    """The channels a header's spillover names, as the reader takes them (channel numbers as $PnN)."""
    key = next((k for k in ("$SPILLOVER", "SPILL", "$COMP") if str(head.get(k, "")).strip()), None)
    return spillover_names(head[key], pnn) if key else []


def check_panels(sample_sheet: str | os.PathLike, *, strategy: str = DEFAULT_STRATEGY,
                 panel: str | os.PathLike | None = None, starts_at: str | None = None,
                 allow_draft: bool = False, allow_outside: bool = False) -> pd.DataFrame:
    """Resolve every file's markers to its detectors from the headers, as a run would.

    Parameters
    ----------
    sample_sheet
        The sample sheet (its ``panel`` and ``starts_at`` columns are honoured).
    strategy
        ``name@version`` or a strategy folder.
    panel
        A lab panel file for rows without their own.
    starts_at
        The gate pre-gated files start at, for rows without their own.
    allow_draft, allow_outside
        As for :func:`~cytopipe.batch.run_batch`.

    Returns
    -------
    pandas.DataFrame
        One row per file and marker (:data:`PANEL_COLUMNS`); a file that
        cannot be resolved has one row whose ``error`` says why.
    """
    sheet_path = Path(sample_sheet)
    sheet = read_sample_sheet(sheet_path, allow_outside=allow_outside)
    strat = load_strategy(strategy, allow_draft=allow_draft)
    gs = strat.gating_strategy()
    base = sheet_path.resolve().parent
    rows = []
    for rec in sheet.to_dict("records"):
        name = rec.get("panel") or ""
        target = base / name if name else (Path(panel) if panel else None)
        start = rec.get("starts_at") or starts_at or ""
        try:
            lab = read_panel_file(target) if target is not None else None
            pregated = pregated_paths(strat, start)
            head = scan_header(rec["path"])
            chans = channels(head)
            res = resolve_panel([c.pnn for c in chans], [c.pns for c in chans], strat, source=rec["file"],
                                lab_panel=lab, needed=needed_markers(strat, gs, pregated),
                                compensated=_spilled(head, [c.pnn for c in chans]))
        except CytopipeError as e:
            rows.append({"file": rec["file"], "marker": "", "detector": "", "found_by": "", "flags": "",
                         "error": one_line(e)})
            continue
        for m in strat.markers:
            d = res.detectors.get(m.marker, "")
            flags = [f for f in res.qc_flags if d and f.endswith(":" + d)]
            rows.append({"file": rec["file"], "marker": m.marker, "detector": d,
                         "found_by": res.how.get(m.marker, "not needed (pre-gated)" if start else "missing"),
                         "flags": ";".join(flags), "error": ""})
    return pd.DataFrame(rows, columns=list(PANEL_COLUMNS))
