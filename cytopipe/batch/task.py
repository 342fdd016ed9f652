"""One sample sheet row's work inside a Dask worker: read, hash, gate, check, store.

:func:`process_sample` is the task function :func:`cytopipe.batch.driver.run_batch`
sends to the workers (grouped by :mod:`cytopipe.batch.dispatch`). It reads the
file once, hashing it for the resume key in the same pass
(:mod:`cytopipe.fcs.lean`, or FlowKit's ``Sample`` where the lean reader
cannot give FlowKit's exact values), looks the key up in the run's
``cache/`` (:func:`cache_key`: file, strategy, gate adjustments, the
worker's computing software and the QC thresholds that change a measure),
and otherwise gates the sample, fits any auto gates, runs Time QC
and stores the result at once. A bad file is a result with an ``error``,
never an exception.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .._version import __version__
from ..exceptions import CytopipeError, one_line
from ..fcs.lean import gates_exactly, read_fcs_lean
from ..fcs.read import file_sha256, read_fcs
from ..gating.api import treg_percent
from ..gating.gated import GatedSample, gate_file
from ..gating.qc import QCThresholds, sample_flags, sample_time_qc
from ..outputs.miflowcyt import instrument_fields
from ..outputs.runfolder import Decision
from ..outputs.tables import atomic_write
from ..review.decisions import adjustments_digest, gate_adjustments
from ..review.plotdata import gate_plots
from ..review.plotstore import plot_key, store_sample_plots
from ..strategy.registry import Strategy, load_strategy
from .cluster import _check_memory

__all__ = ["SampleResult", "cache_key", "process_sample", "versions_sha", "worker_versions"]

#: The distributions a worker reports in :func:`worker_versions` (their ``importlib.metadata`` names).
SOFTWARE = ("cytopipe", "flowkit", "flowio", "flowutils", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow",
            "dask", "distributed", "fcsparser", "lxml")
# The ones that can change a stored number: reading (flowio), compensation, transforms and gates
# (flowkit, flowutils, numpy), the placed gates' fits (scikit-learn, scipy). A change of any of them
# makes every cached result stale.
# "cytopipe-source" is the digest of cytopipe's own code (:func:`_source_digest`): its version string
# is not bumped by every change, and a result cached by older code must not be reused by newer.
_KEY_SOFTWARE = ("cytopipe", "cytopipe-source", "flowkit", "flowio", "flowutils", "numpy", "scipy", "scikit-learn")
# QC thresholds that only turn stored measures into flags: re-applied to a cached result on every
# read, so changing them reuses the cache. Every other threshold (the Time-channel binning and
# tests, and any added later) changes a stored measure and is part of the key.
_FLAG_ONLY_THRESHOLDS = frozenset({"min_events", "max_ci_halfwidth_pp", "max_flow_anomaly_pct", "max_drift_pct",
                                   "outlier_fold", "outlier_min_pp", "outlier_min_visits"})


@lru_cache(maxsize=1)
def _source_digest() -> str:
    """The digest of the running cytopipe's code (:func:`_tree_digest` of its package folder).

    The code that computes a number, whatever ``__version__`` says: a working
    copy between releases, or a patched install, computes under its own.
    """
    return _tree_digest(Path(__file__).resolve().parents[1])


def _tree_digest(root: Path) -> str:
    """16 hex digits of sha256 over the ``.py`` and ``.toml`` files under ``root`` (relative path and bytes)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    from importlib import metadata

    out = []
    for name in SOFTWARE:
        if name == "cytopipe":  # the source's own version, also in an editable install, and its code's digest
            out += [(name, __version__), ("cytopipe-source", _source_digest())]
            continue
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    out += [("python", platform.python_version()), ("platform", platform.platform())]
    return tuple(out)


def worker_versions() -> dict[str, str]:
    """The versions this process computes with: :data:`SOFTWARE`, cytopipe's code digest, Python and the platform.

    Called inside the worker that gates a sample (the driver's may differ);
    read once per process.

    Returns
    -------
    dict
        Distribution name (``flowkit``, ``scikit-learn``, ...) to version, plus
        ``cytopipe-source`` (16 hex digits of sha256 over cytopipe's code: its
        version is not bumped by every change), ``python`` and ``platform``
        (:func:`platform.platform`).
    """
    return dict(_versions())


def versions_sha(versions: dict[str, str] | None) -> str | None:
    """A short stable digest of a versions dict (16 hex digits; None for None).

    The ``versions_sha`` column of the run's tables; ``run.json`` lists each
    set of versions in full under ``software`` with its digest.
    """
    if not versions:
        return None
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16]


def conform_digest(panel_digest: str = "", starts_at: str = "") -> str:
    """What a lab's panel file and a pre-gated start change in a sample's key ("" when neither is given).

    Parameters
    ----------
    panel_digest
        :func:`panel_digest` of the lab panel the file was read with ("" for none).
    starts_at
        The gate the file's events start at ("" for a whole file).
    """
    if not panel_digest and not starts_at:
        return ""
    return hashlib.sha256(json.dumps([panel_digest, starts_at]).encode()).hexdigest()[:16]


def panel_digest(lab_panel: dict[str, str] | None) -> str:
    """A digest of a lab panel's marker-to-detector rows ("" for none)."""
    if not lab_panel:
        return ""
    return hashlib.sha256(json.dumps(sorted(lab_panel.items())).encode()).hexdigest()[:16]


def cache_key(file_sha: str, strategy_sha: str, *, adjusted: str = "", versions: dict[str, str],
              thresholds: dict[str, Any], manifest_sha: str = "", conform: str = "") -> str:
    """The name of a sample's stored result in ``cache/``: a digest of everything that can change its numbers.

    Parameters
    ----------
    file_sha, strategy_sha
        sha256 of the FCS file and of the strategy's GatingML.
    manifest_sha
        :attr:`~cytopipe.strategy.registry.Strategy.manifest_sha256`: the panel, the
        numerator and denominator and the placement parameters change numbers too.
    adjusted
        :func:`~cytopipe.review.decisions.adjustments_digest` of the sample's gate adjustments.
    versions
        :func:`worker_versions`; only the packages that compute (cytopipe and its code's
        digest, FlowKit, FlowIO, flowutils, numpy, scipy, scikit-learn) count.
    thresholds
        :class:`~cytopipe.gating.qc.QCThresholds` fields; those that only turn stored
        measures into flags (``min_events``, ...) do not count.
    conform
        :func:`conform_digest` of the lab panel and pre-gated start ("" when neither: the
        key of a whole file read by its ``$PnS`` is what it was before either existed).

    Returns
    -------
    str
        64 hex digits.
    """
    parts = {
        "file": file_sha, "strategy": strategy_sha, "manifest": manifest_sha, "adjusted": adjusted,
        "software": {k: versions.get(k, "not installed") for k in _KEY_SOFTWARE},
        "qc": {k: float(v) for k, v in sorted(thresholds.items()) if k not in _FLAG_ONLY_THRESHOLDS},
    }
    if conform:
        parts["conform"] = conform
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass
class SampleResult:
    """What one worker task hands back to the driver for one file.

    Attributes
    ----------
    path
        The FCS file.
    worker
        ``host:pid`` of the worker that processed it.
    file_sha256
        sha256 of the file (None when it could not be read).
    events_total, cd4_count, treg_count
        Events in the file and in the strategy's denominator and numerator gates.
    treg_pct_cd4
        100 x treg_count / cd4_count (NaN when not gated).
    qc_flags
        The sample's QC flags.
    panel_flags
        The panel's QC flags (``unlabelled:<$PnN>``), kept so a cached result
        carries them into ``qc_flags`` too.
    error
        One line naming the file and the cause; empty when gated.
    gates
        ``[gate path, count, parent count]`` of every gate, parents first.
    cached
        Taken from an earlier run's stored result.
    time_qc
        Time-channel QC measures (:func:`~cytopipe.gating.qc.sample_time_qc`).
    instrument
        The file's instrument fields for the MIFlowCyt record.
    auto_gates
        The data-driven gates' fit record, for strategies that place gates.
    gatingml
        GatingML 2.0 of the gates applied, when a reviewer adjusted a gate of a
        strategy that places none (placed gates carry theirs in ``auto_gates``);
        see :meth:`applied_gatingml`.
    versions
        :func:`worker_versions` of the worker that computed the numbers (for a
        cached result: of the one that stored it).
    started, duration_s
        When the task started (epoch seconds) and how long it took.
    phases
        Where a freshly gated sample's time went, in seconds: ``read`` (the file read and hashed),
        ``conform``, ``place`` (the data-driven gates), ``gate`` (every gate's events), ``count``
        (counts and the stain check), ``plots`` (the report's plot data, computed and stored),
        ``time_qc`` and ``store`` (the result's cache file). Not stored; None for a cached result.
    """

    path: str
    worker: str = ""
    file_sha256: str | None = None
    events_total: int | None = None
    cd4_count: int | None = None
    treg_count: int | None = None
    treg_pct_cd4: float = float("nan")
    qc_flags: list[str] = field(default_factory=list)
    panel_flags: list[str] = field(default_factory=list)
    error: str = ""
    gates: list[list[Any]] = field(default_factory=list)
    cached: bool = False
    time_qc: dict[str, Any] | None = None
    instrument: dict[str, Any] | None = None
    auto_gates: dict[str, Any] | None = None
    gatingml: str | None = None
    versions: dict[str, str] | None = None
    started: float | None = None
    duration_s: float | None = None
    phases: dict[str, float] | None = None

    def cache_record(self) -> dict[str, Any]:
        """The fields stored in ``cache/``: what the file and strategy determine, not where or when it ran."""
        skip = {"path", "worker", "started", "duration_s", "phases"}
        return {k: v for k, v in asdict(self).items() if k not in skip and v is not None}

    @classmethod
    def from_cache(cls, record: dict[str, Any], path: str, worker: str) -> SampleResult:
        """A result from a stored :meth:`cache_record` (unknown keys of other versions are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(path=path, worker=worker, **{k: v for k, v in record.items() if k in known})

    def applied_gatingml(self) -> str | None:
        """GatingML 2.0 of this sample's own gates (placed, fitted or adjusted); None when the strategy's applied."""
        if self.auto_gates and self.auto_gates.get("gatingml"):
            return self.auto_gates["gatingml"]
        return self.gatingml


def finish_auto_gates(result: SampleResult) -> None:
    """Add a sample's auto-gate QC flags to ``result`` (fresh and cached results alike).

    The sample's gates file is written by the driver, which knows the sheet
    row (:func:`cytopipe.outputs.miflowcyt.write_sample_gates`).
    """
    auto = result.auto_gates
    if not auto:
        return
    result.qc_flags.extend(f for f in auto.get("qc_flags", []) if f not in result.qc_flags)


def _strategy_in_worker(directory: str, allow_draft: bool) -> Strategy:
    # Loaded once per worker process and folder state (the sha256 check runs there too): a long-lived
    # process (a worker of an existing cluster, the review station) sees a draft edited since it loaded it
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(directory).iterdir())
                  if p.is_file())
    return _strategy_loaded(directory, allow_draft, stamp)


@lru_cache(maxsize=8)
def _strategy_loaded(directory: str, allow_draft: bool, stamp: tuple) -> Strategy:
    return load_strategy(directory, allow_draft=allow_draft)


def _read_hashed(path: str):
    """``(LeanSample or None, file sha256)`` from one read of the file where it can.

    A file the lean reader takes is hashed as it is read (one pass instead
    of two); any other, or one too big for this worker's memory even when
    read lean, is hashed in chunks and left to :func:`~cytopipe.fcs.read.read_fcs`
    (which names what is wrong) or to the memory check after the cache lookup.
    """
    try:
        _check_memory(path, lean=True)  # never read whole a file the worker cannot hold
        lean = read_fcs_lean(path, hash_file=True)
    except CytopipeError:  # the same error is raised again where the file is gated
        lean = None
    return lean, (lean.file_sha256 if lean is not None else file_sha256(path))


#: Where a worker stores the report's plot data, under the run's cache folder.
PLOTS_DIR = "plots"

_IO_THREAD: list = []  # (pid, executor): a process forked from one that made it needs its own
_IO_LOCK = threading.Lock()


def _io_thread():
    """This process's one thread for writes that wait on the disk while the task goes on."""
    from concurrent.futures import ThreadPoolExecutor

    with _IO_LOCK:
        if not _IO_THREAD or _IO_THREAD[0][0] != os.getpid():
            _IO_THREAD[:] = [(os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="cytopipe-store"))]
        return _IO_THREAD[0][1]


def _plots_failed(out: SampleResult, e: Exception) -> None:
    logging.getLogger("cytopipe").warning("%s: plots not stored (%s: %s); the report will read the file again",
                                          out.path, type(e).__name__, e)


def _plot_data(gated: GatedSample, out: SampleResult):
    """The report's plot data of this sample, while the gates' events are in memory (None if that failed)."""
    try:
        return gate_plots(gated.sample, gated.gating_strategy, gated.strategy, rows=gated.all_rows())
    except Exception as e:  # noqa: BLE001 - a failure here costs the report a re-read, never the sample
        _plots_failed(out, e)
        return None


def _store_plots(cache_dir: Path, plots, strategy, adjustments, out: SampleResult, thresholds: QCThresholds) -> None:
    target = cache_dir / PLOTS_DIR / f"{plot_key(out.file_sha256, strategy.sha256, adjustments)}.npz"
    try:
        store_sample_plots(target, plots, time_qc=out.time_qc, thresholds=asdict(thresholds))
    except Exception as e:  # noqa: BLE001
        _plots_failed(out, e)


def process_sample(
    path: str,
    strategy_dir: str,
    *,
    allow_draft: bool = False,
    cache_dir: str | None = None,
    qc_thresholds: dict[str, Any] | None = None,
    reviews: list[Decision] | list[dict[str, Any]] | None = None,
    plots: bool = False,
    lab_panel: dict[str, str] | None = None,
    starts_at: str | None = None,
) -> SampleResult:
    """Gate one FCS file; runs inside a Dask worker.

    Parameters
    ----------
    path
        The FCS file.
    strategy_dir
        The strategy version's folder (verified again in the worker).
    allow_draft
        Passed to :func:`~cytopipe.strategy.registry.load_strategy`.
    cache_dir
        Where finished results are stored and looked up.
    qc_thresholds
        :class:`~cytopipe.gating.qc.QCThresholds` fields (defaults when omitted).
    reviews
        This sample's review decisions (:class:`~cytopipe.outputs.Decision`, or
        the dicts of their ``review.jsonl`` lines); its gate adjustments are applied as
        FlowKit custom sample gates while file and strategy are unchanged.
    plots
        Also compute and render the review report's plots of a freshly gated
        sample, while its events are in memory, into ``cache_dir/plots/``
        (:func:`~cytopipe.review.plotstore.store_sample_plots`).
    lab_panel
        The lab's panel (:func:`~cytopipe.strategy.panel.read_panel_file`):
        marker to this file's detector; it wins over ``$PnS``.
    starts_at
        The gate whose events the file holds (a pre-gated export, e.g.
        ``"CD4pos"``): the gates down to it are not applied.

    Returns
    -------
    SampleResult
        Never raises for a bad file: the error is a one-line string in ``error``.
    """
    started = time.time()
    out = SampleResult(path=path, worker=socket.gethostname() + f":{os.getpid()}", versions=worker_versions())
    try:
        strategy = _strategy_in_worker(strategy_dir, allow_draft)
        t0 = time.perf_counter()
        lean, sha = _read_hashed(path)  # one pass over the file: its hash and, when it can, its events
        t_read = time.perf_counter() - t0
        out.file_sha256 = sha
        thresholds = QCThresholds(**(qc_thresholds or {}))
        adjustments = gate_adjustments(reviews or [], None, sha, strategy_sha=strategy.sha256)
        key = cache_key(sha, strategy.sha256, adjusted=adjustments_digest(adjustments), versions=out.versions,
                        thresholds=asdict(thresholds), manifest_sha=strategy.manifest_sha256,
                        conform=conform_digest(panel_digest(lab_panel), starts_at or ""))
        cache_file = Path(cache_dir) / f"{key}.json" if cache_dir else None
        if cache_file is not None and cache_file.is_file():
            stored = SampleResult.from_cache(json.loads(cache_file.read_text(encoding="utf-8")), path, out.worker)
            stored.cached = True
            stored.qc_flags = sample_flags(  # today's thresholds on the stored measures
                stored.events_total, stored.cd4_count, stored.treg_count,
                thresholds=thresholds, time_metrics=stored.time_qc, pregated=bool(starts_at)) + stored.panel_flags
            finish_auto_gates(stored)  # auto-gate flags
            stored.started, stored.duration_s = started, time.time() - started
            return stored
        box = [lean]  # the lean read's one reference: a file read again by FlowKit's reader frees it first
        del lean

        def read(file: str, gs):
            sample, box[0] = box[0], None
            # float32 events when that is exactly what FlowKit would gate (as read_for_gating decides)
            if sample is not None and not gates_exactly(sample, gs):
                sample = None  # e.g. a gate on Time: FlowKit's reader decides (the float32 copy freed first)
            if sample is None:  # FlowKit's reader needs about twice the memory of a lean read
                _check_memory(file)
                sample = read_fcs(file)
            out.instrument = instrument_fields(sample)  # for the MIFlowCyt record: no second header scan
            return sample

        # read, conformed to the strategy (another instrument, a lab panel, a pre-gated start), placed, and
        # every gate's events found once: counted here, read by the stain check and (with plots) the report's plots
        gated = gate_file(path, strategy, adjustments=adjustments, lab_panel=lab_panel, starts_at=starts_at,
                          read=read)
        sample = gated.sample
        phases = {"read": t_read + gated.timings["read"], "conform": gated.timings["conform"],
                  "place": gated.timings["place"], "gate": gated.timings["rows"]}
        t0 = time.perf_counter()
        out.panel_flags = list(gated.panel_flags)  # kept with the result
        counts = gated.counts()
        # a failed or missing stain (an unstained or isotype control) never yields a number
        out.panel_flags += gated.stain_flags()
        phases["count"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        plot_data = _plot_data(gated, out) if gated.has_rows and plots and cache_dir else None
        phases["plots"] = time.perf_counter() - t0
        gated.free_rows()  # before Time QC's own temporaries: the same peak memory as without plots
        cd4, treg, pct = treg_percent(counts, strategy)
        out.events_total, out.cd4_count, out.treg_count, out.treg_pct_cd4 = int(sample.event_count), cd4, treg, pct
        t0 = time.perf_counter()
        out.time_qc = sample_time_qc(sample, thresholds=thresholds)
        phases["time_qc"] = time.perf_counter() - t0
        out.qc_flags = sample_flags(int(sample.event_count), cd4, treg, thresholds=thresholds,
                                    time_metrics=out.time_qc, pregated=bool(starts_at)) + out.panel_flags
        out.gates = [["/".join(c.path), c.count, c.parent_count] for c in counts.values()]
        if gated.placement is not None:  # fit outcome, QC flag, the placed gates' GatingML (in the file's own terms)
            out.auto_gates = gated.placement_record()
            finish_auto_gates(out)
        elif adjustments or gated.pregated or gated.conformed:
            # the record names the gates applied (a reviewer's, pre-gated ones), with the file's own detectors
            out.gatingml = gated.gatingml()
        stored = None
        t0 = time.perf_counter()  # the result's cache file: written while the plots are stored, waited for after
        if cache_file is not None:
            text = json.dumps(out.cache_record())
            # synced to disk (~4 ms, up to 10x that on a busy disk) while the plots are drawn; stored before
            # the result is returned, as without plots
            stored = _io_thread().submit(atomic_write, cache_file,
                                         lambda p: Path(p).write_text(text, encoding="utf-8"))
        phases["store"] = time.perf_counter() - t0
        if plot_data is not None:
            t0 = time.perf_counter()
            _store_plots(Path(cache_dir), plot_data, strategy, adjustments, out, thresholds)
            phases["plots"] += time.perf_counter() - t0
        if stored is not None:
            t0 = time.perf_counter()
            stored.result()  # its OutputError, if any, is this sample's error
            phases["store"] += time.perf_counter() - t0
        out.phases = phases
    except CytopipeError as e:
        out.error = one_line(e)
    except Exception as e:  # nothing lost: an unexpected failure is a row too
        where = traceback.extract_tb(e.__traceback__)[-1]
        out.error = one_line(
            f"{path}: unexpected {type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"
        )
    out.started, out.duration_s = started, time.time() - started
    return out
