"""The review station's view of one run folder: the queue, opened samples, recounts and decisions.

Everything is read again from the run folder when asked (``treg_by_visit``,
``review.jsonl``, ``run.json``), so a decision made with ``cytopipe review``
or a re-run shows up in the station; each sample carries a *version* (a hash
of its row, its decisions and the run's record) that a decision must quote,
so a decision made on a view that has changed since it loaded is refused.
The folder's files are read through :class:`cytopipe.outputs.RunFolder`, and
decisions go through :func:`cytopipe.review.decide`, the function the command
line uses.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import CytopipeError, ReviewError
from ..outputs.runfolder import Decision, RunFolder, RunRecord, row_site
from ..review.decisions import StaleError, sample_version
from .pages import ReportWriter
from .recompute import recompute_sample
from .render import density_png
from .sample import OpenSample

__all__ = ["StaleError", "Station", "review_group"]

_KEPT_OPEN = 3  # samples whose events stay in memory (a 1M-event sample: ~50 MB of float32)
_TINTS = [(228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0), (166, 86, 40)]


def review_group(row: dict[str, Any]) -> int:
    """Place in the review order: 0 needs_review, 1 other flags or errors, 2 pending, 3 decided.

    Examples
    --------
    >>> review_group({"review_status": "pending", "qc_flags": "low_cd4;needs_review:Treg:x", "qc_status": "flag"})
    0
    >>> review_group({"review_status": "approved", "qc_flags": "needs_review:Treg:x", "qc_status": "flag"})
    3
    """
    if row.get("review_status") in ("approved", "rejected"):
        return 3
    flags = [f for f in str(row.get("qc_flags") or "").split(";") if f]
    if any(f == "needs_review" or f.startswith("needs_review:") for f in flags):
        return 0
    if flags or row.get("qc_status") in ("flag", "error"):
        return 1
    return 2


def _text(value: Any) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


class Station:
    """One run folder under review.

    Parameters
    ----------
    run_dir
        The output folder of ``cytopipe run``.

    Raises
    ------
    ReviewError
        The folder holds no run.
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        for name in ("treg_by_visit.parquet", "run.json"):
            if not (self.run_dir / name).is_file():
                msg = (f"{self.run_dir} holds no {name}: give the output folder of 'cytopipe run' "
                       f"(e.g. demo_out after 'make demo').")
                raise ReviewError(msg)
        self._strategy_key: tuple[str, str] | None = None
        self._strategy_obj = None
        self.decide_lock = threading.Lock()  # one decision at a time: the version check and the write together
        self._open: OrderedDict[str, tuple[tuple, OpenSample]] = OrderedDict()
        self._open_lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._thumbs: dict[tuple, dict[str, Any]] = {}
        self._table_cache: tuple[tuple | None, pd.DataFrame] | None = None
        self._table_lock = threading.Lock()
        self._load_slots = threading.Semaphore(2)  # files read at once (memory: each holds its events)
        self.report = ReportWriter(self.run_dir)

    # -- the run's files ----------------------------------------------------------------------------

    def run(self) -> RunRecord:
        """``run.json`` as it is now."""
        return self.folder.record

    @property
    def strategy(self):
        """The run's strategy (loaded again when a re-run used another)."""
        from ..strategy.registry import load_strategy

        run = self.run()
        folder = str(run.strategy_folder())
        key = (folder, run.strategy_sha256)
        if key != self._strategy_key:
            self._strategy_obj, self._strategy_key = load_strategy(Path(folder), allow_draft=True), key
        return self._strategy_obj

    def table(self) -> pd.DataFrame:
        """``treg_by_visit`` as it is now (read again only when the file changed: tables are replaced whole).

        Callers read it and never change it: it is the one copy every request of that file state shares.
        """
        path = self.run_dir / "treg_by_visit.parquet"
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        with self._table_lock:
            if stamp is None or self._table_cache is None or self._table_cache[0] != stamp:
                self._table_cache = (stamp, self.folder.treg_by_visit().reset_index(drop=True))
            return self._table_cache[1]

    def _decisions(self) -> list[Decision]:
        return self.folder.decisions()

    def _row(self, table: pd.DataFrame, i: int) -> pd.Series:
        if not 0 <= i < len(table):
            msg = f"No sample number {i} in {self.run_dir / 'treg_by_visit.parquet'} ({len(table)} samples); reload."
            raise ReviewError(msg)
        return table.iloc[i]

    def version(self, row: pd.Series, decisions: list[Decision], run: RunRecord) -> str:
        """A short hash of everything a decision on this sample rests on (:func:`cytopipe.review.sample_version`)."""
        return sample_version(row, decisions, run)

    def queue_row(self, i: int, row: pd.Series, decisions, *, run) -> dict[str, Any]:
        """What the queue shows of one sample, with its version."""
        from ..gating.qc import binomial_ci

        cd4, treg = _int(row["cd4_count"]), _int(row["treg_count"])
        pct = None if pd.isna(row["treg_pct_cd4"]) else float(row["treg_pct_cd4"])
        ci = list(binomial_ci(treg, cd4)) if cd4 and treg is not None else None
        out = {"i": i, "file": _text(row["file"]), "patient": _text(row["patient_id"]), "visit": _text(row["visit"]),
               "day": _text(row["day"]), "events": _int(row["events_total"]), "cd4_count": cd4, "treg_count": treg,
               "treg_pct": pct, "ci": ci, "flags": [f for f in _text(row["qc_flags"]).split(";") if f],
               "qc_status": _text(row["qc_status"]), "error": _text(row["error"]),
               "review_status": _text(row["review_status"]) or "pending", "reviewer": _text(row["reviewer"]),
               "version": self.version(row, decisions, run)}
        out["group"] = review_group({"review_status": out["review_status"], "qc_flags": row["qc_flags"],
                                     "qc_status": out["qc_status"]})
        return out

    def queue(self) -> dict[str, Any]:
        """Every sample in review order (needs_review, other flags, pending, decided), and how many are left."""
        table, decisions, run = self.table(), self._decisions(), self.run()
        rows = [self.queue_row(i, r, decisions, run=run) for i, (_, r) in enumerate(table.iterrows())]
        rows.sort(key=lambda r: (r["group"], r["i"]))
        strategy = self.strategy
        return {"rows": rows, "left": sum(r["group"] < 3 for r in rows), "total": len(rows),
                "run": {"dir": str(self.run_dir), "finished": run.finished, "strategy": strategy.ref,
                        "sample_sheet": run.sample_sheet},
                "gates": ["/".join(p) for p in strategy.gate_paths()],
                "numerator": "/".join(strategy.numerator), "denominator": "/".join(strategy.denominator),
                "report": self.report.status()}

    # -- opened samples -----------------------------------------------------------------------------

    def _key(self, row: pd.Series, decisions) -> tuple[tuple, dict]:
        from ..review.decisions import adjustments_digest, gate_adjustments

        sha = None if pd.isna(row["file_sha256"]) else str(row["file_sha256"])
        adjustments = gate_adjustments(decisions, str(row["file"]), sha, strategy_sha=str(row["strategy_sha256"]))
        # the row's lab panel and pre-gated start too: a re-run that changed either gates the file otherwise
        return (str(row["file"]), sha, str(row["strategy_sha256"]), adjustments_digest(adjustments),
                row_site(row)), adjustments

    def _load(self, row: pd.Series, decisions, *, keep: bool) -> OpenSample:
        key, adjustments = self._key(row, decisions)
        file = key[0]
        with self._open_lock:
            hit = self._open.get(file)
            if hit is not None and hit[0] == key:
                self._open.move_to_end(file)
                return hit[1]
            lock = self._loading.setdefault(file, threading.Lock())
        with lock:  # one load per file at a time; a second request waits for the first
            with self._open_lock:
                hit = self._open.get(file)
                if hit is not None and hit[0] == key:
                    return hit[1]
            with self._load_slots:
                run = self.run()  # gated with the run's lab panel and pre-gated start for this row, as the run did
                opened = OpenSample(str(run.sample_path(file)), self.strategy, adjustments, **run.site_options(row))
            if keep:
                with self._open_lock:
                    self._open[file] = (key, opened)
                    self._open.move_to_end(file)
                    while len(self._open) > _KEPT_OPEN:
                        self._open.popitem(last=False)
            return opened

    def open(self, i: int) -> dict[str, Any]:
        """Open sample ``i`` (its events stay in memory): its row, version and every gate as drawn."""
        table, decisions, run = self.table(), self._decisions(), self.run()
        row = self._row(table, i)
        out = {"sample": self.queue_row(i, row, decisions, run=run), "gates": [],
               "history": self._history(row, decisions)}
        strategy = self.strategy
        out.update(numerator="/".join(strategy.numerator), denominator="/".join(strategy.denominator))
        if row["qc_status"] == "error":
            return out
        try:
            opened = self._load(row, decisions, keep=True)
        except (CytopipeError, OSError) as e:
            out["load_error"] = f"Cannot re-read {run.sample_path(str(row['file']))} to draw its gates: {e}"
            return out
        counts = {c["path"]: c for c in opened.counts()}
        for p in opened.paths:
            name = "/".join(p)
            out["gates"].append({"path": name, "name": p[-1], "parent": "/".join(p[:-1]), "axes": opened.axes(p),
                                 "geometry": opened.geometry(p), "adjusted": opened.is_adjusted(p),
                                 "count": counts[name]["count"], "parent_count": counts[name]["parent_count"]})
        out["channels"] = opened.channel_axes()
        return out

    def _history(self, row: pd.Series, decisions) -> list[dict[str, Any]]:
        from ..review.decisions import review_fields

        sha = None if pd.isna(row["file_sha256"]) else str(row["file_sha256"])
        out = []
        for d in decisions:
            if d.file != str(row["file"]):
                continue
            fields = review_fields([d], str(row["file"]), sha, strategy_sha=str(row["strategy_sha256"]))
            valid = fields["review_status"] != "pending"
            out.append({"time": d.time, "reviewer": d.reviewer, "action": d.action,
                        "gate_path": d.gate_path or "", "reason": d.reason, "valid": valid})
        return out

    def _opened(self, i: int, version: str) -> tuple[pd.Series, OpenSample | None, list, dict]:
        table, decisions, run = self.table(), self._decisions(), self.run()
        row = self._row(table, i)
        current = self.version(row, decisions, run)
        if version != current:
            msg = (f"{row['patient_id']} {row['visit']} ({row['file']}) changed since your view loaded (another "
                   f"decision, or a re-run); nothing was recorded. Reload it, check it again, then decide.")
            raise StaleError(msg)
        opened = None if row["qc_status"] == "error" else self._load(row, decisions, keep=True)
        return row, opened, decisions, run

    def gate_path(self, text: str) -> tuple[str, ...]:
        """A gate path as the browser sends it, checked against the strategy's gates.

        Raises
        ------
        ReviewError
            Not a gate of the run's strategy (the message lists them).
        """
        from .sample import parse_gate_path

        path = parse_gate_path(text)
        paths = self.strategy.gate_paths()
        if path not in paths:
            msg = f"{text!r} is not a gate of {self.strategy.ref}; its gates: {['/'.join(p) for p in paths]}."
            raise ReviewError(msg)
        return path

    def population(self, i: int, path: str, cand: str | None = None, *, channels: list[str] | None = None,
                   kind: str | None = None, events: str = "parent", window: list[list[float]] | None = None,
                   overlay: int | None = None, tint: int | None = None) -> tuple[str, Any]:
        """A gate's population on a plot of sample ``i`` (see :meth:`OpenSample.population`).

        Parameters
        ----------
        i, path, cand
            The sample, the gate (``root/.../Gate``), a candidate's handle (moved gates).
        channels
            The plot's axes as ``$PnN`` names (default: the gate's own dimensions).
        kind, events, window
            As :meth:`OpenSample.population`.
        overlay
            Another sample of the run: its population of the same gate (as
            saved, never sample ``i``'s candidate) on sample ``i``'s axes, so the
            two line up (Time: sample ``i``'s span).
        tint
            A colour's index (of the batch view's), for an overlay or a highlight.

        Raises
        ------
        ReviewError
            Unknown gate, sample, channel, kind or window; an overlay sample
            not gated or without one of the channels.
        """
        gate = self.gate_path(path)
        table, decisions = self.table(), self._decisions()
        row = self._row(table, i)
        if row["qc_status"] == "error":
            msg = f"{row['file']} could not be gated ({row['error']}): it has no populations to draw."
            raise ReviewError(msg)
        opened = self._load(row, decisions, keep=True)
        axes = opened.plot_axes(gate, channels)
        colour = _TINTS[tint % len(_TINTS)] if tint is not None else None
        if overlay is None:
            return opened.population(gate, cand, axes=axes, kind=kind, events=events, window=window, tint=colour)
        other_row = self._row(table, overlay)
        if other_row["qc_status"] == "error":
            msg = (f"Cannot overlay {other_row['patient_id']} {other_row['visit']} ({other_row['file']}): it could "
                   f"not be gated ({other_row['error']}).")
            raise ReviewError(msg)
        other = self._load(other_row, decisions, keep=True)
        other.plot_axes(gate, [a["detector"] for a in axes])  # the same channels, or a message naming its own
        return other.population(gate, None, axes=axes, kind=kind, events=events, window=window, tint=colour)

    def channels(self, i: int) -> list[dict[str, Any]]:
        """Every channel of sample ``i`` as a plot axis (:meth:`OpenSample.channel_axes`)."""
        table, decisions = self.table(), self._decisions()
        return self._load(self._row(table, i), decisions, keep=True).channel_axes()

    def recount(self, i: int, version: str, gates: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Counts of every gate of sample ``i`` with the moved ``gates`` (path to geometry) in place."""
        from .sample import parse_gate_path as _path

        if not gates:
            msg = "Nothing to recount: move a gate first."
            raise ReviewError(msg)
        row, opened, _, _ = self._opened(i, version)
        if opened is None:
            msg = f"{row['file']} could not be gated ({row['error']}): it has no gates to move."
            raise ReviewError(msg)
        start = time.perf_counter()
        specs, linear = {}, {}
        for path, geometry in gates.items():
            spec, lin = opened.candidate_spec(path, geometry)
            specs["/".join(_path(path))] = spec
            linear["/".join(_path(path))] = lin
        cand, counts = opened.recount(specs)
        by_path = {c["path"]: c for c in counts}
        strategy = self.strategy
        cd4 = by_path["/".join(strategy.denominator)]["count"]
        treg = by_path["/".join(strategy.numerator)]["count"]
        out = {"cand": cand, "counts": counts, "linear": linear,
               "geometry": {p: opened.candidate_geometry(cand, _path(p)) for p in specs} if cand else {},
               "treg": {"count": treg, "cd4": cd4, "pct": 100.0 * treg / cd4 if cd4 else None},
               "server_ms": round(1000 * (time.perf_counter() - start), 1)}
        return out

    # -- decisions ----------------------------------------------------------------------------------

    def decide(self, i: int, version: str, action: str, *, reviewer: str, reason: str = "",
               gates: dict[str, dict[str, Any]] | None = None, signer: Any = None) -> dict[str, Any]:
        """Record a decision on sample ``i`` with :func:`cytopipe.review.decide`, as ``cytopipe review`` does.

        ``adjust`` (and ``approve`` with moved ``gates``) records one
        adjustment per moved gate, then gates the sample again
        (:func:`~cytopipe.station.recompute.recompute_sample`) so
        ``treg_by_visit`` carries the adjusted numbers at once; an approval
        of adjusted gates not yet applied gates the sample again first too.
        The sample's report page is re-rendered in the background.

        Parameters
        ----------
        gates
            Moved gates: path to geometry as drawn (gate units, see
            :meth:`OpenSample.candidate_spec`).
        signer
            The signed-in reviewer's key (:class:`cytopipe.review.Signer`), to sign
            every line; None: unsigned (no reviewer registry).

        Raises
        ------
        StaleError
            ``version`` is not the sample's current version.
        ReviewError
            As :func:`cytopipe.review.decide` (no reviewer, no reason, ...).
        OutputError
            A run or a command-line decision holds the folder.
        """
        from ..review.decisions import decide
        from .sample import parse_gate_path as _path

        gates = dict(gates or {}) if action != "reject" else {}
        with self.decide_lock:  # one decision at a time in this process; the folder's lock in decide()
            linear: dict[str, dict[str, Any]] = {}
            if gates and action in ("approve", "adjust") and (reviewer or "").strip() and (reason or "").strip():
                # the drawn geometry to linear units, on the view the reviewer saw (decide() checks it still is)
                row, opened, _, _ = self._opened(i, version)
                if opened is not None:
                    for path, geometry in gates.items():
                        lin = opened.candidate_spec(path, geometry)[1]
                        linear["/".join(_path(path))] = (
                            {"bounds": {k: tuple(v) for k, v in lin["bounds"].items()}} if "bounds" in lin
                            else {"vertices": [tuple(v) for v in lin["vertices"]]})
                else:
                    linear = {path: {} for path in gates}  # decide() refuses: the sample has no gates
            file = str(self._row(self.table(), i)["file"])
            strategy = self.strategy
            decided = decide(self.run_dir, file, action, reviewer=reviewer, reason=reason, gates=linear,
                             version=version, holder="cytopipe review station", signer=signer,
                             recompute=lambda f: recompute_sample(self.run_dir, f, strategy, lock=False))
            self.report.request(file)
            table, decisions, run = self.table(), self._decisions(), self.run()
            return {"records": [d.to_dict() for d in decided.records], "recomputed": decided.recomputed,
                    "sample": self.queue_row(i, self._row(table, i), decisions, run=run)}

    # -- one gate across the batch --------------------------------------------------------------------

    def batch(self, gate: str) -> dict[str, Any]:
        """Every sample's count of one gate (from ``populations``), whether it is an outlier, and the gate's axes."""
        from .render import OUTLIER_RULE, axis_spec, batch_outliers

        strategy = self.strategy
        path = self.gate_path(gate)
        gs = strategy.gating_strategy()
        template = gs.get_gate(path[-1], gate_path=path[:-1])
        markers = {m.detector: m.marker for m in strategy.markers}
        axes = [dict(axis_spec(d.id, gs.get_transform(d.transformation_ref) if d.transformation_ref else None,
                               markers), detector=d.id) for d in template.dimensions]
        pops = pd.read_parquet(self.run_dir / "populations.parquet")
        pops = pops[pops["gate_path"].astype(str) == "/".join(path)]
        counts = {str(f): (int(c), int(pc)) for f, c, pc in zip(pops["file"], pops["count"], pops["parent_count"])}
        table, decisions, run = self.table(), self._decisions(), self.run()
        samples = []
        for i, (_, row) in enumerate(table.iterrows()):
            q = self.queue_row(i, row, decisions, run=run)
            c = counts.get(q["file"])
            q.update(count=c[0] if c else None, parent_count=c[1] if c else None)
            if path == strategy.numerator:  # the Treg gate: judged on what the trial measures, Treg % of CD4
                q["value"] = q["treg_pct"]
            samples.append(q)
        return {"gate": "/".join(path), "axes": axes, "samples": batch_outliers(samples),
                "outlier_rule": OUTLIER_RULE, "patients": sorted({s["patient"] for s in samples}), "tints": _TINTS}

    def thumb(self, i: int, gate: str, tint: int | None = None) -> dict[str, Any]:
        """One sample's gate, small: its geometry, counts and parent density (for the batch view)."""
        name = "/".join(self.gate_path(gate))
        table, decisions = self.table(), self._decisions()
        row = self._row(table, i)
        if row["qc_status"] == "error":
            return {"i": i, "error": _text(row["error"])}
        key, adjustments = self._key(row, decisions)
        if key not in self._thumbs:
            stored = self._stored_thumbs(row, adjustments)
            if stored is None:  # no plot data the workers stored for this state: read and gate the file
                opened = self._load(row, decisions, keep=False)
                stored = {"hists": opened.histograms(),
                          "geometry": {"/".join(p): opened.geometry(p) for p in opened.paths},
                          "counts": {c["path"]: c for c in opened.counts()}}
            self._thumbs[key] = stored
        got = self._thumbs[key]
        hist = got["hists"][name]
        out = {"i": i, "geometry": got["geometry"][name], "count": got["counts"][name]["count"],
               "parent_count": got["counts"][name]["parent_count"]}
        if hist.ndim == 1:
            out["hist"] = [int(v) for v in hist]
        else:
            colour = _TINTS[tint % len(_TINTS)] if tint is not None else None
            out["image"] = "data:image/png;base64," + base64.b64encode(density_png(hist, tint=colour)).decode()
        return out

    def approve_unflagged(self, versions: dict[int, str], *, reviewer: str, reason: str,
                          signer: Any = None) -> dict[str, Any]:
        """Approve each sample of ``versions`` that is still pending and unflagged at that version.

        The batch approval the reviewer confirmed once, on a summary of the
        samples (their versions as shown): one decision line a sample, each
        through :meth:`decide` (so each is signed when ``signer`` is given).
        A sample that changed since the summary, or carries a flag or a
        decision now, is left out and listed with why.

        Returns
        -------
        dict
            ``approved`` (queue rows after their approval) and ``skipped`` (``{"i", "sample", "why"}``).
        """
        if not (reason or "").strip():
            msg = "A batch approval needs its reason (what was checked); nothing was recorded."
            raise ReviewError(msg)
        rows = {r["i"]: r for r in self.queue()["rows"]}
        approved, skipped = [], []
        for i, version in versions.items():
            r = rows.get(int(i))
            name = f"{r['patient']} {r['visit']}" if r else f"sample {i}"
            why = ("not in the run" if r is None else "flagged" if r["flags"] or r["error"]
                   else f"already {r['review_status']}" if r["review_status"] != "pending" else None)
            if why is None:
                try:
                    self.decide(int(i), str(version), "approve", reviewer=reviewer, reason=reason, signer=signer)
                except StaleError:
                    why = "changed since the summary"
            if why is None:
                approved.append(name)
            else:
                skipped.append({"i": int(i), "sample": name, "why": why})
        return {"approved": approved, "skipped": skipped}

    def _stored_thumbs(self, row: pd.Series, adjustments) -> dict[str, Any] | None:
        """A sample's thumbnails from the plot data its worker stored (``cache/plots/``), or None without it.

        The stored histograms are the report's (:data:`~cytopipe.review.plotdata.PLOT_BINS` bins on the same
        axes as the station's); a thumbnail sums them two by two, the bins a re-gated sample's thumbnail has.
        """
        from ..review.plotstore import load_plots, plot_key

        if pd.isna(row["file_sha256"]):
            return None
        key = plot_key(str(row["file_sha256"]), str(row["strategy_sha256"]), adjustments)
        stored = load_plots(self.run_dir / "cache" / "plots" / f"{key}.npz")
        if stored is None:
            return None
        hists, geometry, counts = {}, {}, {}
        for plot in stored.plots:
            name = "/".join(plot.path)
            h = np.asarray(plot.hist, dtype=np.int64)
            hists[name] = (h.reshape(-1, 2).sum(axis=1) if h.ndim == 1
                           else h.reshape(h.shape[0] // 2, 2, h.shape[1] // 2, 2).sum(axis=(1, 3)))
            geometry[name] = ({"type": "polygon", "vertices": [[float(x), float(y)] for x, y in plot.vertices]}
                              if plot.vertices is not None else
                              {"type": "rect", "bounds": [[d.min, d.max] for d in plot.dims]})
            counts[name] = {"path": name, "count": plot.count, "parent_count": plot.parent_count}
        return {"hists": hists, "geometry": geometry, "counts": counts}

    def close(self) -> None:
        """Finish the report pages still being written."""
        self.report.close()
