"""Assemble the report's HTML pages. Every text from a file or the sheet is escaped.

The gate plots come from what the run's workers stored while each file's
events were in memory (:mod:`cytopipe.review.plotstore`: plot data and PNGs
under ``DIR/cache/plots/``), so writing the report reads no FCS file. The
index's plots are kept under ``DIR/cache/report/`` by their inputs, so a
re-render after a review decision draws only what changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..exceptions import CytopipeError
from ..gating.qc import QCThresholds, binomial_ci, load_thresholds, sample_time_qc
from ..outputs.html import escape as _e
from ..outputs.html import html_page, img_tag
from ..outputs.runfolder import RunFolder, RunRecord, site_options
from .decisions import find_sample, gate_adjustments, review_fields
from .plotdata import gate_views
from .plotstore import PLOTS_FORMAT, load_plots, plot_key, replace_file

__all__ = ["write_report"]

#: Under the run's cache folder: the workers' plot data, the index's plots.
_PLOTS_DIR, _INDEX_DIR = "plots", "report"

def _slug(i: int, file: str) -> str:
    return f"s{i:03d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(file)).stem)[:60] + ".html"


def _num(value: Any, fmt: str = "{:,}") -> str:
    if value is None or pd.isna(value):
        return ""
    return fmt.format(value)


def _ci(row: pd.Series) -> tuple[float, float]:
    if pd.isna(row["cd4_count"]) or pd.isna(row["treg_count"]):
        return (math.nan, math.nan)
    return binomial_ci(int(row["treg_count"]), int(row["cd4_count"]))


def _changelog(strategy) -> str:
    path = Path(strategy.directory) / "CHANGELOG.md"
    if not path.is_file():
        return "(no CHANGELOG.md)"
    text = path.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(strategy.version)}\b.*?(?=^## |\Z)", text, flags=re.M | re.S)
    return (m.group(0) if m else text[:1500]).strip()


def _load_strategy(run: RunRecord):
    from ..strategy.registry import load_strategy

    return load_strategy(run.ref, allow_draft=True)


def write_report(run_dir: str | os.PathLike, *, strategy=None, max_events: int = 20_000,
                 thresholds: QCThresholds | None = None, client=None,
                 samples: Sequence[str] | None = None) -> Path:
    """Write ``run_dir/report/index.html`` and one page per sample.

    Parameters
    ----------
    run_dir
        The output folder of ``cytopipe run`` (``treg_by_visit.parquet``,
        ``populations.parquet``, ``run.json``; ``review.jsonl`` if any).
    strategy : cytopipe.strategy.registry.Strategy, optional
        The run's strategy; looked up from ``run.json`` when omitted.
    max_events
        Parent events drawn per gate plot (a fixed-seed subsample beyond).
    thresholds
        QC thresholds shown in the report (for the Time-channel measures).
    client : distributed.Client, optional
        Draw what is not stored yet (the index's plots; the pages of samples
        whose plots must be made by reading the file again) on this Dask
        cluster instead of one by one.
    samples
        Re-render only these samples' pages (each its ``file`` as in the
        sheet, or ``PATIENT:VISIT``) and the index, e.g. after a review
        decision; default every page.

    Returns
    -------
    pathlib.Path
        ``run_dir/report/index.html``.

    Raises
    ------
    ReviewError
        A sample of ``samples`` is not in the run.
    """
    folder = RunFolder(run_dir)
    run_dir = folder.path
    run = folder.record
    strategy = strategy or _load_strategy(run)
    thresholds = thresholds or load_thresholds()
    table = folder.treg_by_visit()
    decisions = folder.decisions()
    sheet_dir = Path(run.sample_sheet).parent
    out = run_dir / "report"
    (out / "samples").mkdir(parents=True, exist_ok=True)
    rows = [row for _, row in table.reset_index(drop=True).iterrows()]
    slugs = [_slug(i, row["file"]) for i, row in enumerate(rows)]
    if samples is None:
        todo = list(range(len(rows)))
    else:
        wanted = {str(find_sample(table, s)["file"]) for s in samples}
        todo = [i for i, row in enumerate(rows) if str(row["file"]) in wanted]
    common = dict(strategy=strategy, decisions=decisions, t=thresholds, max_events=max_events,
                  plots_dir=run_dir / "cache" / _PLOTS_DIR, lab_panels=run.lab_panels)
    # the index's plots first: with a cluster, its workers draw them while the pages are assembled here
    calls = _index_calls(table)
    drawing = _memo_start(run_dir / "cache" / _INDEX_DIR, calls, client)
    pages = {i: _sample_page(rows[i], sheet_dir / str(rows[i]["file"]), **common, stored_only=True) for i in todo}
    # pages the workers left no plots for: the file is read again, on the cluster when there is one
    redo = [i for i, page in pages.items() if page is None]
    if redo and client is not None:
        pages.update(zip(redo, client.gather(client.map(
            _sample_page, [rows[i] for i in redo], [sheet_dir / str(rows[i]["file"]) for i in redo],
            pure=False, **common))))
    else:
        pages.update({i: _sample_page(rows[i], sheet_dir / str(rows[i]["file"]), **common) for i in redo})
    # never a partial page, but not synced to disk one by one (~4 ms a file here): `cytopipe report` remakes them
    for i in todo:
        replace_file(out / "samples" / slugs[i], pages[i].encode("utf-8"))
    kept = set(slugs)
    for old in (out / "samples").glob("*.html"):
        if old.name not in kept:
            old.unlink()
    rows_html = [_overview_row(row, slug) for row, slug in zip(rows, slugs)]
    index = _index(table, run, strategy, rows_html, thresholds, calls, _memo_finish(drawing))
    return replace_file(out / "index.html", index.encode("utf-8"))


def _overview_row(row: pd.Series, slug: str) -> str:
    lo, hi = _ci(row)
    pct = row["treg_pct_cd4"]
    ci = "" if pd.isna(pct) else f"{pct:.2f} [{lo:.2f}, {hi:.2f}]"
    cells = [
        (row["patient_id"], f'<a href="samples/{_e(slug)}">{_e(row["patient_id"])}</a>'),
        (row["visit"], _e(row["visit"])), (row["day"], _e(row["day"])),
        (row["events_total"], _num(row["events_total"])), (row["cd4_count"], _num(row["cd4_count"])),
        (row["treg_count"], _num(row["treg_count"])), (pct, _e(ci)),
        (row["qc_status"], _e(row["qc_status"])), (row["qc_flags"], _e(row["qc_flags"]) or _e(row["error"])),
        (row["review_status"], f'<span class="{_e(row["review_status"])}">{_e(row["review_status"])}</span>'
         + (f" ({_e(row['reviewer'])})" if _e(row["reviewer"]) else "")),
        (row["file"], f'<a href="samples/{_e(slug)}">{_e(row["file"])}</a>'),
    ]
    tds = "".join(f'<td data-v="{_e(v)}">{h}</td>' for v, h in cells)
    return f'<tr class="{_e(row["qc_status"])}">{tds}</tr>'


def _index_calls(table: pd.DataFrame) -> list[tuple[str, tuple]]:
    """The index's plots, as ``(plots function, args)``: each patient's trend, then the batch figure."""
    gated = table[table["qc_status"] != "error"]
    calls = []
    for patient, rows in gated.groupby("patient_id", sort=False):
        cis = [_ci(r) for _, r in rows.iterrows()]
        calls.append(("patient_png", (str(patient), [str(v) for v in rows["visit"]],
                                      [(float(v), float(lo), float(hi))
                                       for v, (lo, hi) in zip(rows["treg_pct_cd4"], cis)])))
    if len(gated):
        labels = [f"{p}:{v}" for p, v in zip(gated["patient_id"], gated["visit"])]
        series = {"Treg % CD4": [float(v) for v in gated["treg_pct_cd4"]],
                  "CD4 count": [float(v) for v in gated["cd4_count"]],
                  "events": [float(v) for v in gated["events_total"]]}
        calls.append(("batch_png", (labels, series)))
    return calls


def _index(table: pd.DataFrame, run: RunRecord, strategy, rows_html: list[str], t: QCThresholds,
           calls: list[tuple[str, tuple]], drawn: list[Any]) -> str:
    head = ["patient", "visit", "day", "events", "CD4 count", "Treg count", "Treg % CD4 [95 % CI]",
            "QC", "flags / error", "review", "file"]
    parts = [f"<h1>cytopipe review report</h1><p>Run of {_e(run.finished)}: "
             f"{_e(run.n_samples)} samples, {_e(run.n_failed)} failed. Sample sheet "
             f"<code>{_e(run.sample_sheet)}</code>. Click a column to sort, a patient to see the gates.</p>",
             '<h2>Samples</h2><table class="sortable" id="overview"><thead><tr>'
             + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(rows_html) + "</tbody></table>"]
    gated = table[table["qc_status"] != "error"]
    parts.append("<h2>Treg % CD4 per patient</h2><div class=\"plots\">")
    for (name, args), png in zip(calls, drawn):
        if name == "patient_png":
            parts.append(img_tag(png, f"Treg % CD4 across visits, patient {args[0]}", "trend"))
    parts.append("</div>")
    if len(gated):
        png, outliers = drawn[-1]
        parts.append("<h2>Across the batch</h2>" + img_tag(png, "Treg % CD4, CD4 count and events across samples",
                                                        "batch"))
        listed = "; ".join(f"{k}: {', '.join(v)}" for k, v in outliers.items() if v) or "none"
        parts.append(f"<p>Outliers (&gt; 3.5 robust SD from the batch median): {_e(listed)}</p>")
    parts.append(f"<h2>Strategy</h2><p><b>{_e(strategy.name)}</b> version {_e(strategy.version)} "
                 f"({_e(strategy.status)}), GatingML sha256 <code>{_e(strategy.sha256)}</code></p>"
                 f"<pre>{_e(_changelog(strategy))}</pre>")
    parts.append("<h2>QC thresholds</h2><pre>" + _e("\n".join(f"{k} = {v}" for k, v in vars(t).items()))
                 + "</pre>")
    return html_page("cytopipe review report", "\n".join(parts))


@dataclasses.dataclass
class _Drawing:
    """The index's plots as :func:`_memo_start` left them: those kept, and those being drawn."""

    cache: Path
    calls: list[tuple[str, tuple]]
    keys: list[str]
    found: dict[int, Any]
    missing: list[int]
    futures: list[Any] | None = None
    client: Any = None


def _memo_start(cache: Path, calls: list[tuple[str, tuple]], client=None) -> _Drawing:
    """Start ``plots.<name>(*args)`` for each ``(name, args)``, kept under ``cache`` by name and args.

    Each is a PNG, or a PNG and a JSON-able extra; drawn once, then read back.
    What is not kept yet is sent to ``client``'s workers when there is a
    client (they have matplotlib loaded already); :func:`_memo_finish` gets
    them (or draws them here without a client).
    """
    import base64

    keys = [hashlib.sha256(json.dumps([name, PLOTS_FORMAT, list(a)], default=str).encode()).hexdigest()
            for name, a in calls]
    found: dict[int, Any] = {}
    for i, key in enumerate(keys):
        try:
            kept = json.loads((cache / f"{key}.json").read_text(encoding="utf-8"))
            png = base64.b64decode(kept["png"])
            found[i] = (png, kept["extra"]) if "extra" in kept else png
        except (OSError, ValueError, KeyError, TypeError):
            pass
    drawing = _Drawing(cache, calls, keys, found, [i for i in range(len(calls)) if i not in found], client=client)
    if client is not None and drawing.missing:
        # last first: the batch figure, the longest by far, is not left to start after the rest
        futures = client.map(_draw, [calls[i] for i in reversed(drawing.missing)], pure=False)
        drawing.futures = futures[::-1]
    return drawing


def _memo_finish(drawing: _Drawing) -> list[Any]:
    """What a :func:`_memo_start` started, in its order: the drawn ones gathered (or drawn here) and kept."""
    import base64

    if drawing.futures is not None:
        done = drawing.client.gather(drawing.futures)
    else:
        done = [_draw(drawing.calls[i]) for i in drawing.missing]
    for i, value in zip(drawing.missing, done):
        drawing.found[i] = value
        png, extra = value if isinstance(value, tuple) else (value, None)
        kept = {"png": base64.b64encode(png).decode("ascii"), **({} if extra is None else {"extra": extra})}
        replace_file(drawing.cache / f"{drawing.keys[i]}.json", json.dumps(kept).encode())
    return [drawing.found[i] for i in range(len(drawing.calls))]


def _draw(call: tuple[str, tuple]):
    from . import plots  # matplotlib: loaded only where something is drawn

    name, args = call
    return getattr(plots, name)(*args)


def _gate_png(plot):
    from .plots import gate_png

    return gate_png(plot)


def _sample_page(row: pd.Series, path: Path, strategy, decisions, t: QCThresholds, max_events: int,
                 plots_dir: Path | None = None, stored_only: bool = False,
                 lab_panels: dict[str, dict[str, str]] | None = None) -> str | None:
    title = f"{row['patient_id']} {row['visit']}"
    lo, hi = _ci(row)
    info = [("patient", row["patient_id"]), ("visit", row["visit"]), ("day", row["day"]),
            ("file", row["file"]), ("file sha256", row["file_sha256"]),
            ("events", _num(row["events_total"])), ("CD4 count", _num(row["cd4_count"])),
            ("Treg count", _num(row["treg_count"])),
            ("Treg % CD4 [95 % CI]", "" if pd.isna(row["treg_pct_cd4"])
             else f"{row['treg_pct_cd4']:.2f} [{lo:.2f}, {hi:.2f}]"),
            ("QC status", row["qc_status"]), ("QC flags", row["qc_flags"]), ("error", row["error"]),
            ("review", f"{row['review_status']} {row['reviewer'] or ''} {row['reviewed_at'] or ''}")]
    extra = [c for c in row.index if c not in _KNOWN]
    info += [(c, row[c]) for c in extra]
    parts = ['<p><a href="../index.html">&larr; all samples</a></p>', f"<h1>{_e(title)}</h1>",
             "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in info) + "</table>"]
    sha = None if pd.isna(row["file_sha256"]) else str(row["file_sha256"])
    if row["qc_status"] == "error":
        parts.append(f'<p class="error">Not gated: {_e(row["error"])}</p>')
    else:
        adjustments = gate_adjustments(decisions, str(row["file"]), sha, strategy_sha=str(row["strategy_sha256"]))
        # A reviewer's adjustment recorded since the run changes the key: that sample's file is read
        # again (below), since the gates it changed, and those under them, were not what the worker drew.
        stored = None
        if plots_dir is not None and sha:
            stored = load_plots(plots_dir / f"{plot_key(sha, str(row['strategy_sha256']), adjustments)}.npz",
                                pngs_only=True)
        usable = (stored is not None and stored.max_events == max_events
                  and stored.thresholds == dataclasses.asdict(t)
                  and [p.path for p in stored.plots] == strategy.gate_paths())
        if not usable and stored_only:
            return None
        try:
            if usable:
                tq = stored.time_qc
                pngs = stored.pngs if len(stored.pngs) == len(stored.plots) else [_gate_png(p) for p in stored.plots]
                named = [(p.path, png) for p, png in zip(stored.plots, pngs)]
            else:
                # gated as the run gated it: the row's lab panel and pre-gated start, another instrument conformed
                views, sample = gate_views(str(path), strategy, adjustments, max_events=max_events,
                                           **site_options(lab_panels or {}, row))
                tq = sample_time_qc(sample, thresholds=t)
                named = [(v.path, _gate_png(v)) for v in views]
        except (CytopipeError, OSError) as e:
            parts.append(f'<p class="error">Cannot re-read the file for plots: {_e(e)}</p>')
        else:
            if tq:
                parts.append(f"<p>Time channel: flow-rate anomalies in {tq['flow_rate_events_pct']:.1f} % of "
                             f"events ({tq['flow_rate_time_pct']:.1f} % of acquisition time); signal drift in "
                             f"{tq['drift_events_pct']:.1f} % of events.</p>")
            parts.append('<h2>Gates</h2><div class="plots">')
            parts += [img_tag(png, "gate " + "/".join(gate_path), "gate") for gate_path, png in named]
            parts.append("</div>")
    mine = [d for d in decisions if d.file == str(row["file"])]
    if mine:
        strategy_sha = str(row["strategy_sha256"])
        valid = {id(d) for d in mine
                 if review_fields([d], str(row["file"]), sha, strategy_sha=strategy_sha)["review_status"] != "pending"}
        trs = "".join(
            f'<tr class="{"" if id(d) in valid else "void"}"><td>{_e(d.time)}</td><td>{_e(d.reviewer)}'
            f'</td><td>{_e(d.action)}</td><td>{_e(d.gate_path or "")}</td><td>{_e(d.reason)}'
            f'</td></tr>' for d in mine)
        parts.append("<h2>Review history</h2><table><tr><th>time</th><th>reviewer</th><th>action</th>"
                     f"<th>gate</th><th>reason</th></tr>{trs}</table><p>Struck-through decisions were made on "
                     "another version of the file or strategy and no longer count.</p>")
    return html_page(title, "\n".join(parts))


_KNOWN = {"patient_id", "visit", "day", "file", "file_sha256", "events_total", "cd4_count", "treg_count",
          "treg_pct_cd4", "qc_status", "qc_flags", "error", "strategy", "strategy_version", "strategy_sha256",
          "cytopipe_version", "flowkit_version", "review_status", "reviewer", "reviewed_at"}
