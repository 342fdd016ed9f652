"""Sample sheet -> Dask tasks -> rows; a failing sample becomes a row, never a loss.

Each file is processed in a worker by :func:`cytopipe.batch.task.process_sample`.
Files go to Dask in tasks of one or more files (:mod:`cytopipe.batch.dispatch`:
largest first, big tasks while much is left, single files at the end), and
each file's result comes back on its own. Tasks get paths, not parsed data:
each worker reads its own file, and hashes it for the resume key in the same
read, so nothing large crosses the network. A Dask ``LocalCluster`` is started
by default; an existing cluster is used when its scheduler address is given.

Each finished sample is stored at once in ``DIR/cache/`` under a key made of
the file's sha256, the strategy's sha256, the sample's gate adjustments, the
worker's computing software and the QC thresholds that change a measure
(:func:`~cytopipe.batch.task.cache_key`), so a re-run (after a crash, a killed
worker, an upgrade, or with more files) computes only what is missing or
changed. The rows carry the versions of the worker that computed them;
``run.json`` lists each set in full.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._version import __version__
from ..exceptions import CytopipeError, OutputError, PanelError, SampleSheetError, one_line
from ..fcs.read import file_sha256, scan_header
from ..gating.placement import auto_gate_specs, placement_specs
from ..gating.pregated import pregated_paths
from ..gating.qc import flag_visit_outliers, load_thresholds
from ..outputs.miflowcyt import write_miflowcyt, write_sample_gates
from ..outputs.runfolder import Decision, RunFolder, site_options
from ..outputs.tables import POPULATION_COLUMNS, TREG_COLUMNS, write_table
from ..review.decisions import gate_adjustments, review_fields
from ..strategy.panel import read_panel_file
from ..strategy.registry import DEFAULT_STRATEGY, Strategy, load_strategy
from .cluster import _discard_client, _start_client
from .dispatch import run_each
from .samplesheet import read_sample_sheet
from .task import SampleResult, panel_digest, process_sample, versions_sha

__all__ = ["BatchResult", "applied_gates", "run_batch"]

logger = logging.getLogger("cytopipe")

ProgressCallback = Callable[[int, int, int], None]


@dataclass
class BatchResult:
    """What :func:`run_batch` produced.

    Attributes
    ----------
    out_dir
        The output folder.
    table
        ``treg_by_visit``, one row per sample sheet row.
    populations
        One row per sample and gate.
    n_ok, n_failed
        Samples gated, samples that ended in an error row.
    n_cached
        Samples taken from an earlier run's stored results.
    files
        Every file written.
    timings
        Where the run's wall time went, in seconds: ``startup_s`` (from the
        call until the first sample started), ``batch_s`` (until the last
        result arrived), ``outputs_s`` (tables, ``run.json``, MIFlowCyt),
        ``report_s``, ``teardown_s`` (closing the local cluster);
        ``started_at``, the call's epoch time; and ``phases_ms``, per phase
        of a freshly gated sample the median over the batch in ms
        (:attr:`~cytopipe.batch.task.SampleResult.phases`).
    """

    out_dir: Path
    table: pd.DataFrame
    populations: pd.DataFrame
    n_ok: int
    n_failed: int
    n_cached: int = 0
    files: list[Path] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when every sample succeeded, 1 when any failed."""
        return 0 if self.n_failed == 0 else 1


def run_batch(
    sample_sheet: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    strategy: str | os.PathLike = DEFAULT_STRATEGY,
    scheduler: str | None = None,
    n_workers: int | None = None,
    client=None,
    allow_draft: bool = False,
    allow_outside: bool = False,
    progress: ProgressCallback | None = None,
    log_file: str | os.PathLike | None = None,
    memory_limit: str | int | None = "auto",
    report: bool = True,
    include_keywords: Sequence[str] = (),
    panel: str | os.PathLike | None = None,
    starts_at: str | None = None,
    dashboard: bool = False,
) -> BatchResult:
    """Gate every file of a sample sheet and write the run's outputs.

    Parameters
    ----------
    sample_sheet
        CSV with ``file, patient_id, visit`` and optional ``day`` (see
        :func:`~cytopipe.batch.samplesheet.read_sample_sheet`).
    out_dir
        Output folder; created if needed. Results of earlier runs into the
        same folder are reused where file and strategy are unchanged.
    strategy
        ``"name@version"`` or a strategy folder.
    scheduler
        Address of an existing Dask scheduler (``tcp://host:8786``). When
        omitted, a ``LocalCluster`` is started for the run.
    n_workers
        Workers of the local cluster (default: one per core, at most one per
        sample).
    client : distributed.Client, optional
        An existing client to use (takes precedence over ``scheduler``).
    allow_draft, allow_outside
        Accept a draft strategy; accept sheet paths outside its folder.
    progress
        Called as ``progress(done, failed, total)`` after each sample.
    log_file
        Append one JSON line per sample (start, end, duration, worker, outcome).
    memory_limit
        Memory limit of each local worker (``"4GB"``, bytes, or ``"auto"``:
        the machine's memory shared among the workers). A file that would
        need more is refused with an error naming the limit.
    report
        Write the HTML review report ``out_dir/report/index.html``.
    include_keywords
        FCS TEXT keywords (e.g. ``["$CYT", "$SRC"]``) to add to
        ``treg_by_visit`` as columns ``fcs_<KEY>``. Off by default: free-text
        keywords (``$FIL``, ``$SRC``, ``$COM``, operator names) may hold
        patient names, so outputs carry patient and visit from the sample
        sheet only unless asked.
    panel
        A lab panel file (CSV ``marker,detector``) for every file: each
        marker's detector, for files whose ``$PnS`` are empty or unreliable.
        A ``panel`` column of the sheet (a path relative to the sheet's
        folder) names one per row and wins.
    starts_at
        The gate whose events every file holds (pre-gated exports, e.g.
        ``"CD4pos"``); a ``starts_at`` column of the sheet wins per row.
    dashboard
        Serve Dask's dashboard from the local cluster (its address is
        logged). Off by default: it costs the start-up ~0.7 s (Bokeh).

    Returns
    -------
    BatchResult

    Raises
    ------
    SampleSheetError, StrategyError, PanelError
        Before any gating starts.
    """
    t_called = time.time()
    started = _dt.datetime.now(_dt.UTC)
    sheet_path = Path(sample_sheet)
    sheet = read_sample_sheet(sheet_path, allow_outside=allow_outside)
    # the cluster comes up (in a thread; its workers were forked with their imports done) while
    # the strategy is checked and the folder prepared: docs/performance.md, "Start-up"
    starting = (_start_client(scheduler, n_workers, len(sheet), memory_limit, dashboard=dashboard)
                if client is None else None)
    lock = None
    try:
        strat = load_strategy(strategy, allow_draft=allow_draft)
        placement_specs(strat), auto_gate_specs(strat)  # a misspelt placement key stops the run here, not each task
        sheet, lab_panels = _site_columns(sheet, sheet_path, strat, panel, starts_at)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lock = _lock_folder(out)  # held until the run's outputs are written
        cache_dir = out / "cache"
        cache_dir.mkdir(exist_ok=True)
        qc = load_thresholds()  # read here, not in workers, whose environment may differ
        decisions = RunFolder(out).decisions()
        own_client = own_cluster = None
        if starting is not None:
            own_client, own_cluster = starting.result()
            client = own_client
    except BaseException:
        _discard_client(starting)
        if lock is not None:
            lock.close()
        raise
    if (dashboard or own_cluster is None) and getattr(client, "dashboard_link", None):  # ours has none unless asked
        logger.info("Dask dashboard: %s", client.dashboard_link)
    try:
        by_file: dict[str, list[Decision]] = {}
        for d in decisions:
            by_file.setdefault(d.file, []).append(d)
        common = dict(allow_draft=allow_draft, cache_dir=str(cache_dir.resolve()),
                      qc_thresholds=dataclasses.asdict(qc), plots=report)  # the report's plots from the workers
        tasks = [dict(common, reviews=by_file.get(f, [])) for f in sheet["file"]]
        if "panel_digest" in sheet.columns or "starts_at" in sheet.columns:
            for task, rec in zip(tasks, sheet.to_dict("records")):
                task.update(site_options(lab_panels, rec))
        results = _gather(client, sheet, str(strat.directory.resolve()), tasks, progress, log_file)
        t_batch = time.time()
        phases_ms = _median_phases(results)
        first = min((r.started for r in results.values() if r.started is not None), default=t_batch)
        table, pops = _tables(sheet, results, strat, decisions)
        table = flag_visit_outliers(table, thresholds=qc)
        if include_keywords:
            table = _with_keywords(table, sheet, include_keywords)
        files = write_table(table, out / "treg_by_visit", TREG_COLUMNS)
        files += write_table(pops, out / "populations", POPULATION_COLUMNS, csv=False)
        n_failed = int((table["qc_status"] == "error").sum())
        n_cached = sum(r.cached for r in results.values())
        run = {
            "sample_sheet": str(sheet_path.resolve()),
            "sample_sheet_sha256": file_sha256(sheet_path),
            "strategy": strat.name,
            "strategy_version": strat.version,
            "strategy_sha256": strat.sha256,
            "strategy_manifest_sha256": strat.manifest_sha256,
            "strategy_status": strat.status,
            "strategy_dir": str(strat.directory.resolve()),  # a run from any strategy folder stays reviewable
            "cytopipe_version": __version__,  # the driver's; each worker's is under software
            "flowkit_version": _one_version(results, "flowkit"),
            "software": _software(results),
            "qc_thresholds": dataclasses.asdict(qc),
            "review_decisions": len(decisions),  # the first N decisions of review.jsonl applied
            "scheduler": scheduler or ("given client" if own_client is None else "LocalCluster"),
            "started": started.isoformat(),
            "finished": _dt.datetime.now(_dt.UTC).isoformat(),
            "n_samples": len(table),
            "n_ok": len(table) - n_failed,
            "n_failed": n_failed,
            "n_cached": n_cached,
        }
        if lab_panels:  # each lab panel used, by the digest in the rows' panel_digest
            run["lab_panels"] = lab_panels
        files.append(RunFolder(out).write_record(run))
        gates = _sample_gates(out, sheet, results, strat, table, by_file)
        files.append(write_miflowcyt(out, strat, table, populations=pops, paths=list(sheet["path"]),
                                     instruments=[results[i].instrument if i in results else None
                                                  for i in range(len(sheet))],
                                     sample_gates=gates))
        t_outputs = time.time()
        if report:
            from ..review.report import write_report  # imported here: matplotlib only where a report is made

            files.append(write_report(out, strategy=strat, client=client))
        t_report = time.time()
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
        lock.close()
    timings = {"started_at": t_called, "startup_s": first - t_called, "batch_s": t_batch - first,
               "outputs_s": t_outputs - t_batch, "report_s": t_report - t_outputs,
               "teardown_s": time.time() - t_report, "phases_ms": phases_ms}
    return BatchResult(out, table, pops, len(table) - n_failed, n_failed, n_cached, files, timings)


def _site_columns(sheet: pd.DataFrame, sheet_path: Path, strat, panel, starts_at):
    """The sheet with ``panel_digest`` and ``starts_at`` columns where a lab panel or start is used.

    Every panel file is read and every start checked before gating starts;
    all problems are listed at once. Returns the sheet and the panels by digest.
    """
    problems: list[str] = []
    base = sheet_path.resolve().parent
    per_row = list(sheet["panel"]) if "panel" in sheet.columns else [""] * len(sheet)
    lines = list(sheet["line"]) if "line" in sheet.columns else list(range(2, len(sheet) + 2))
    read: dict[str, dict[str, str]] = {}
    digests: list[str] = []
    panels: dict[str, dict[str, str]] = {}
    for line, name in zip(lines, per_row):
        target = str((base / name).resolve()) if name else (str(Path(panel).resolve()) if panel else "")
        if not target:
            digests.append("")
            continue
        if target not in read:
            try:
                read[target] = read_panel_file(target)
            except PanelError as e:
                problems.append(f"line {line}: {e}" if name else str(e))
                read[target] = {}
        digest = panel_digest(read[target])
        digests.append(digest)
        if digest:
            panels[digest] = read[target]
    starts = list(sheet["starts_at"]) if "starts_at" in sheet.columns else [""] * len(sheet)
    starts = [(s or starts_at or "") for s in starts]
    for line, start in zip(lines, starts):
        try:
            pregated_paths(strat, start)
        except CytopipeError as e:
            problems.append(f"line {line}: {e}")
    if problems:
        msg = f"{sheet_path}: {len(problems)} problem(s): " + "; ".join(dict.fromkeys(problems))
        raise SampleSheetError(msg)
    sheet = sheet.copy()
    if any(digests):
        sheet["panel_digest"] = digests
    if any(starts):
        sheet["starts_at"] = starts
    return sheet, panels


def _lock_folder(out: Path):
    """Hold ``out/.cytopipe-run.lock`` for this run; refuse, naming the holder, when another run has it.

    An advisory ``flock``: the operating system lets go of it when the process
    ends, however it ends, so a killed run never leaves the folder locked.
    """
    import fcntl
    import socket

    path = out / ".cytopipe-run.lock"
    fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (closed when the run ends)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        msg = (f"{out} is in use by another cytopipe run ({holder}); wait for it to finish, or write to "
               f"another --out folder.")
        raise OutputError(msg) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
             f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}")
    fh.flush()
    return fh


def _with_keywords(table: pd.DataFrame, sheet: pd.DataFrame, keywords: Sequence[str]) -> pd.DataFrame:
    """Add ``fcs_<KEY>`` columns read from each file's TEXT segment ("" when unreadable)."""
    table = table.copy()
    heads = []
    for path in sheet["path"]:
        try:
            heads.append(scan_header(path))
        except CytopipeError:
            heads.append({})
    for key in keywords:
        k = key.strip().upper()
        if not k:
            continue
        table[f"fcs_{k.lstrip('$')}"] = [h.get(k, "") for h in heads]
    return table


def _median_phases(results: dict[int, SampleResult]) -> dict[str, float]:
    """Per phase of a freshly gated sample (:attr:`SampleResult.phases`), the median over the batch, in ms."""
    fresh = [r.phases for r in results.values() if r.phases]
    return {k: round(1000 * float(np.median([p.get(k, 0.0) for p in fresh])), 1) for k in (fresh[0] if fresh else {})}


def _gather(client, sheet: pd.DataFrame, strategy_dir: str, tasks: list[dict[str, Any]],
            progress: ProgressCallback | None, log_file) -> dict[int, SampleResult]:
    """Gate every file on the cluster (see :mod:`.dispatch`); results as they finish, failures included."""
    results: dict[int, SampleResult] = {}
    paths = list(sheet["path"])
    rows = sheet.to_dict("records")
    calls = [((path, strategy_dir), tasks[i]) for i, path in enumerate(paths)]
    log = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115
    try:
        failed = 0
        for i, res in run_each(client, process_sample, calls, paths=paths):
            if isinstance(res, BaseException):  # e.g. the file killed its worker each time
                res = SampleResult(paths[i], error=one_line(f"{paths[i]}: task failed: {type(res).__name__}: {res}"))
            results[i] = res
            if res.error:
                failed += 1
            if log is not None:
                log.write(json.dumps(_log_record(rows[i], res)) + "\n")
                log.flush()
            if progress is not None:
                progress(len(results), failed, len(paths))
    finally:
        if log is not None:
            log.close()
    return results


def _log_record(row: dict[str, Any], res: SampleResult) -> dict[str, Any]:
    start, dur = res.started, res.duration_s
    return {
        "file": row["file"],
        "patient_id": row["patient_id"],
        "visit": row["visit"],
        "start": start,
        "end": start + dur if start is not None and dur is not None else None,
        "duration_s": dur,
        "worker": res.worker or None,
        "outcome": "error" if res.error else ("cached" if res.cached else "ok"),
        "error": res.error,
    }


def _software(results: dict[int, SampleResult]) -> list[dict[str, Any]]:
    """Each distinct set of worker versions behind the run's numbers, with its digest and sample count."""
    sets: dict[str, dict[str, Any]] = {}
    for res in results.values():
        sha = versions_sha(res.versions)
        if sha is not None:
            entry = sets.setdefault(sha, {"versions_sha": sha, "n_samples": 0, "versions": res.versions})
            entry["n_samples"] += 1
    return list(sets.values())


def _one_version(results: dict[int, SampleResult], name: str) -> str | None:
    found = sorted({r.versions[name] for r in results.values() if r.versions and name in r.versions})
    return found[0] if len(found) == 1 else (", ".join(found) or None)


def applied_gates(res: SampleResult, strat: Strategy, decisions: Sequence[Decision], *,
                  template: bytes | None = None) -> tuple[str | bytes, dict[str, Any]]:
    """The GatingML a gated sample was counted with, and what it holds, for its gates file and record.

    Parameters
    ----------
    res
        The sample's result (gated, not an error).
    strat
        The run's strategy.
    decisions
        The sample's review decisions (their adjustments of this file and strategy count).
    template
        ``strat``'s GatingML bytes, when the caller has read them already.

    Returns
    -------
    tuple
        The GatingML (the sample's own: placed, fitted or adjusted gates; else the strategy's) and
        ``{"gates_applied": <in words>, "adjusted_gates": [...], "placement": [...]}``.
    """
    own = res.applied_gatingml()
    adjusted = sorted(gate_adjustments(list(decisions), None, res.file_sha256, strategy_sha=strat.sha256))
    placed = list((res.auto_gates or {}).get("gates", []))
    kinds = (["placed from the sample's data"] if placed else []) + (
        ["adjusted by a reviewer: " + ", ".join(adjusted)] if adjusted else [])
    text = own if own is not None else (template if template is not None else strat.gatingml_path.read_bytes())
    return text, {"gates_applied": "; ".join(kinds) or f"the template gates of {strat.ref}",
                  "adjusted_gates": adjusted, "placement": placed}


def _sample_gates(out: Path, sheet: pd.DataFrame, results: dict[int, SampleResult], strat: Strategy,
                  table: pd.DataFrame, by_file: dict[str, list[Decision]]) -> list[dict[str, Any] | None]:
    """Write every gated sample's applied gates to ``out/sample_gates/``; their entries for the MIFlowCyt record."""
    template = strat.gatingml_path.read_bytes()
    texts: list[str | bytes | None] = []
    info: list[dict[str, Any] | None] = []
    for i, (file, status) in enumerate(zip(sheet["file"], table["qc_status"])):
        res = results.get(i)
        if res is None or status == "error":
            texts.append(None)
            info.append(None)
            continue
        text, extra = applied_gates(res, strat, by_file.get(file, []), template=template)
        texts.append(text)
        info.append(extra)
    written = write_sample_gates(out, list(sheet["file"]), texts)
    return [None if w is None else {**w, **(extra or {}), "content": t.encode("utf-8") if isinstance(t, str) else t}
            for w, extra, t in zip(written, info, texts)]


def _tables(sheet: pd.DataFrame, results: dict[int, SampleResult], strat: Strategy, decisions=()):
    rows, pops = [], []
    extra = [c for c in sheet.columns if c not in TREG_COLUMNS and c not in ("path", "line")]
    for i, rec in enumerate(sheet.to_dict("records")):
        res = results.get(i) or SampleResult(rec["path"], error=f"{rec['path']}: no result (the batch was interrupted)")
        flags = res.qc_flags
        status = "error" if res.error else ("flag" if flags else "ok")
        versions = res.versions or {}  # the worker's (a cached result: the one that computed it)
        software = {"flowkit_version": versions.get("flowkit"), "versions_sha": versions_sha(res.versions)}
        row = {
            "patient_id": rec["patient_id"],
            "visit": rec["visit"],
            "day": rec["day"],
            "file": rec["file"],
            "file_sha256": res.file_sha256,
            "events_total": res.events_total,
            "cd4_count": res.cd4_count,
            "treg_count": res.treg_count,
            "treg_pct_cd4": float("nan") if status == "error" else res.treg_pct_cd4,
            "qc_status": status,
            "qc_flags": ";".join(flags),
            "error": res.error,
            "strategy": strat.name,
            "strategy_version": strat.version + (" (draft)" if strat.is_draft else ""),
            "strategy_sha256": strat.sha256,
            "cytopipe_version": versions.get("cytopipe", __version__),
            **software,
            **review_fields(list(decisions), rec["file"], res.file_sha256, strategy_sha=strat.sha256),
        }
        row.update({c: rec[c] for c in extra})
        rows.append(row)
        for gate_path, count, parent in res.gates if status != "error" else []:
            total = res.events_total or 0
            pops.append(
                {
                    "patient_id": rec["patient_id"],
                    "visit": rec["visit"],
                    "file": rec["file"],
                    "gate_path": gate_path,
                    "gate": gate_path.rsplit("/", 1)[-1],
                    "count": count,
                    "parent_count": parent,
                    "pct_parent": 100.0 * count / parent if parent else float("nan"),
                    "pct_total": 100.0 * count / total if total else float("nan"),
                    "strategy": strat.name,
                    "strategy_version": strat.version + (" (draft)" if strat.is_draft else ""),
                    **software,
                }
            )
    table = pd.DataFrame(rows, columns=list(TREG_COLUMNS) + extra)
    populations = pd.DataFrame(pops, columns=list(POPULATION_COLUMNS))
    return table, populations
