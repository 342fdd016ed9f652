"""One sample gated again after a reviewer's adjustment, and the run's tables updated for it alone.

A re-run of the batch gates an adjusted sample with
:func:`cytopipe.batch.task.process_sample` (its decisions passed as
``reviews``); here the same call runs for that one sample, its result is
stored in the run's ``cache/`` under the key the next re-run looks up (so
that re-run reuses it), and its rows of ``treg_by_visit`` (CSV and Parquet,
together) and ``populations`` are replaced atomically. Flags that compare a
sample with the patient's other visits (``treg_outlier``) are recomputed over
the table, as the driver does. ``run.json`` records when each sample was last
gated this way (``recomputed``), so an approval of the adjusted numbers is
accepted without a full re-run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from ..exceptions import ReviewError
from ..outputs import RUN_LOCK, RunFolder, RunRecord, run_folder_lock

__all__ = ["RUN_LOCK", "recompute_sample", "run_folder_lock", "sample_path"]

_OUTLIER_FLAG = "treg_outlier"

def sample_path(run: RunRecord, file: str) -> Path:
    """The FCS file of a sheet row, as the run resolved it (:meth:`RunRecord.sample_path`)."""
    return run.sample_path(file)


def recompute_sample(run_dir: str | os.PathLike, file: str, strategy, *, lock: bool = True) -> dict[str, Any]:
    """Gate one sample of a run again with its recorded decisions and rewrite its rows.

    Parameters
    ----------
    run_dir
        The output folder of ``cytopipe run``.
    file
        The sample's ``file`` as in the sample sheet.
    strategy : cytopipe.strategy.registry.Strategy
        The run's strategy.
    lock
        Take the run folder's lock (False: the caller already holds it).

    Returns
    -------
    dict
        The sample's new ``treg_by_visit`` row.

    Raises
    ------
    ReviewError
        The sample is not in the run.
    OutputError
        A ``cytopipe run`` is writing the folder, or a table cannot be written.
    """
    from ..batch.driver import applied_gates
    from ..batch.task import process_sample, versions_sha
    from ..gating.qc import QCThresholds, flag_visit_outliers, load_thresholds
    from ..outputs import replace_sample_gates
    from ..review.decisions import review_fields

    folder = RunFolder(run_dir)
    run = folder.record
    # the run's thresholds, not this process's configuration: a re-run of that run would use them
    thresholds = QCThresholds(**run.qc_thresholds) if run.qc_thresholds else load_thresholds()
    with folder.lock("cytopipe review station") if lock else nullcontext():
        table = folder.treg_by_visit()
        hits = [i for i, f in enumerate(table["file"].astype(str)) if f == str(file)]
        if len(hits) != 1:
            msg = f"{file!r} is not a sample of {folder.path / 'treg_by_visit.parquet'} (or is there twice)."
            raise ReviewError(msg)
        pos = hits[0]
        decisions = folder.decisions()
        mine = [d for d in decisions if d.file == str(file)]
        site = run.site_options(table.iloc[pos])  # the run's lab panel and start
        res = process_sample(str(run.sample_path(file)), str(Path(strategy.directory).resolve()), allow_draft=True,
                             cache_dir=str((folder.path / "cache").resolve()),
                             qc_thresholds=dataclasses.asdict(thresholds), reviews=mine, **site)
        old_sha = table.at[table.index[pos], "file_sha256"]
        if res.error or (not pd.isna(old_sha) and res.file_sha256 != old_sha):
            # the file is gone or changed since the run: nothing is written, the run's numbers stand
            why = res.error or f"its sha256 is now {res.file_sha256}, the run gated {old_sha}"
            raise ReviewError(f"{file}: cannot be gated again ({why}); re-run the batch to take the file as it is now.")
        status = "error" if res.error else ("flag" if res.qc_flags else "ok")
        idx = table.index[pos]
        for col, value in {
            "file_sha256": res.file_sha256, "events_total": res.events_total, "cd4_count": res.cd4_count,
            "treg_count": res.treg_count, "treg_pct_cd4": float("nan") if res.error else res.treg_pct_cd4,
            "qc_status": status, "qc_flags": ";".join(res.qc_flags), "error": res.error,
            # the versions of the process that gated it again, as a re-run's row would carry
            "cytopipe_version": (res.versions or {}).get("cytopipe"),
            "flowkit_version": (res.versions or {}).get("flowkit"), "versions_sha": versions_sha(res.versions),
        }.items():
            if col not in table.columns:
                continue
            table.at[idx, col] = pd.NA if value is None else value
        table = flag_visit_outliers(_without_outlier_flags(table), thresholds=thresholds)
        for i, row in table.iterrows():
            sha = None if pd.isna(row["file_sha256"]) else str(row["file_sha256"])
            fields = review_fields(decisions, str(row["file"]), sha, strategy_sha=str(row["strategy_sha256"]))
            for key, value in fields.items():
                table.at[i, key] = value
        pops = _replace_populations(folder.populations(), table.loc[idx], res)
        folder.write_treg_by_visit(table)
        folder.write_populations(pops)
        if not res.error:  # the record names the gates that gave the new numbers, as a re-run's does
            text, info = applied_gates(res, strategy, mine)
            replace_sample_gates(folder.path, pos, text, info=info, table=table, populations=pops)
        folder.mark_recomputed(str(file), _dt.datetime.now(_dt.UTC))
    return table.loc[idx].to_dict()


def _without_outlier_flags(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the driver has it before visits are compared: no ``treg_outlier``, status to match."""
    out = table.copy()
    flags, status = [], []
    for f, s in zip(out["qc_flags"], out["qc_status"]):
        kept = [x for x in str("" if pd.isna(f) else f).split(";") if x and x != _OUTLIER_FLAG]
        flags.append(";".join(kept))
        status.append("error" if s == "error" else ("flag" if kept else "ok"))
    out["qc_flags"] = pd.Series(flags, index=out.index, dtype=out["qc_flags"].dtype)
    out["qc_status"] = pd.Series(status, index=out.index, dtype=out["qc_status"].dtype)
    return out


def _replace_populations(pops: pd.DataFrame, row: pd.Series, res) -> pd.DataFrame:
    """``populations`` with this sample's rows replaced, in place of the old ones (columns kept as they are)."""
    mine = pops["file"].astype(str) == str(row["file"])
    old = {str(r["gate_path"]): r for r in pops[mine].to_dict("records")}
    total = res.events_total or 0
    template = {c: row[c] for c in ("patient_id", "visit", "file", "strategy", "strategy_version", "flowkit_version",
                                    "versions_sha") if c in row}
    new = []
    for gate_path, count, parent in res.gates if not res.error else []:
        rec = dict(old.get(gate_path, template))
        rec.update(template, gate_path=gate_path, gate=gate_path.rsplit("/", 1)[-1], count=count,
                   parent_count=parent, pct_parent=100.0 * count / parent if parent else float("nan"),
                   pct_total=100.0 * count / total if total else float("nan"))
        new.append(rec)
    at = int(mine.to_numpy().argmax()) if mine.any() else len(pops)
    others = pops[~mine].to_dict("records")  # one frame from records: no concat of frames with empty columns
    return pd.DataFrame(others[:at] + new + others[at:], columns=pops.columns)
