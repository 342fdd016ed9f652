"""One sample sheet row's work inside a Dask worker: read, hash, gate, check, store.

:func:`process_sample` is the task function :func:`cytopipe.batch.driver.run_batch`
sends to the workers (grouped by :mod:`cytopipe.batch.dispatch`). It reads the
file once, hashing it for the resume key in the same pass
(:mod:`cytopipe.fcs.lean`, or FlowKit's ``Sample`` where the lean reader
cannot give FlowKit's exact values), looks the key up in the run's
``cache/``, and otherwise gates the sample, fits any auto gates, runs Time QC
and stores the result at once. A bad file is a result with an ``error``,
never an exception.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .._version import __version__
from ..gating.adaptive import data_driven_gates
from .cluster import _check_memory
from ..exceptions import CytopipeError, one_line
from ..fcs.read import default_sample_id, file_sha256, read_fcs
from ..fcs.lean import gates_exactly, read_fcs_lean
from ..gating.api import gate_sample, treg_percent
from ..outputs.miflowcyt import instrument_fields
from ..strategy.panel import resolve_panel
from ..gating.qc import QCThresholds, sample_flags, sample_time_qc
from ..outputs.tables import atomic_write
from ..review.decisions import adjusted_gating_strategy, adjustments_digest, gate_adjustments
from ..strategy.registry import Strategy, load_strategy

__all__ = ["SampleResult", "process_sample"]


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
    started, duration_s
        When the task started (epoch seconds) and how long it took.
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
    started: float | None = None
    duration_s: float | None = None

    def cache_record(self) -> dict[str, Any]:
        """The fields stored in ``cache/``: what the file and strategy determine, not where or when it ran."""
        skip = {"path", "worker", "started", "duration_s"}
        return {k: v for k, v in asdict(self).items() if k not in skip and v is not None}

    @classmethod
    def from_cache(cls, record: dict[str, Any], path: str, worker: str) -> SampleResult:
        """A result from a stored :meth:`cache_record` (unknown keys of other versions are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(path=path, worker=worker, **{k: v for k, v in record.items() if k in known})

SAMPLE_GATES_DIR = "sample_gates"


def finish_auto_gates(result: SampleResult, cache_dir: str | None = None) -> None:
    """Add a sample's auto-gate QC flags to ``result`` and write its sample gates file.

    Run on fresh and on cached results alike, so every run leaves
    ``DIR/sample_gates/<file stem>.xml`` (DIR is the parent of ``cache_dir``);
    written atomically, and only when its content changed.
    """
    auto = result.auto_gates
    if not auto:
        return
    result.qc_flags.extend(f for f in auto.get("qc_flags", []) if f not in result.qc_flags)
    if cache_dir and auto.get("gatingml"):
        target = Path(cache_dir).parent / SAMPLE_GATES_DIR / f"{Path(result.path).stem}.xml"
        target.parent.mkdir(parents=True, exist_ok=True)
        text = auto["gatingml"]
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            atomic_write(target, lambda p: Path(p).write_text(text, encoding="utf-8"))


@lru_cache(maxsize=8)
def _strategy_in_worker(directory: str, allow_draft: bool) -> Strategy:
    # Loaded once per worker process; the sha256 check runs there too.
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


def _cache_key(file_sha: str, strategy_sha: str, adjusted: str = "") -> str:
    # adjusted: digest of the sample's reviewed gate adjustments ("" keeps older keys valid)
    extra = f":{adjusted}" if adjusted else ""
    return hashlib.sha256(f"{file_sha}:{strategy_sha}:{__version__}{extra}".encode()).hexdigest()


def process_sample(
    path: str,
    strategy_dir: str,
    *,
    allow_draft: bool = False,
    cache_dir: str | None = None,
    qc_thresholds: dict[str, Any] | None = None,
    reviews: list[dict[str, Any]] | None = None,
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
        This sample's review decisions; its gate adjustments are applied as
        FlowKit custom sample gates while file and strategy are unchanged.

    Returns
    -------
    SampleResult
        Never raises for a bad file: the error is a one-line string in ``error``.
    """
    started = time.time()
    out = SampleResult(path=path, worker=socket.gethostname() + f":{os.getpid()}")
    try:
        strategy = _strategy_in_worker(strategy_dir, allow_draft)
        lean, sha = _read_hashed(path)  # one pass over the file: its hash and, when it can, its events
        out.file_sha256 = sha
        thresholds = QCThresholds(**(qc_thresholds or {}))
        adjustments = gate_adjustments(reviews or [], None, sha, strategy.sha256)
        key = _cache_key(sha, strategy.sha256, adjustments_digest(adjustments))
        cache_file = Path(cache_dir) / f"{key}.json" if cache_dir else None
        if cache_file is not None and cache_file.is_file():
            stored = SampleResult.from_cache(json.loads(cache_file.read_text(encoding="utf-8")), path, out.worker)
            stored.cached = True
            stored.qc_flags = sample_flags(  # today's thresholds on the stored measures
                stored.events_total, stored.cd4_count, stored.treg_count,
                thresholds=thresholds, time_metrics=stored.time_qc) + stored.panel_flags
            finish_auto_gates(stored, cache_dir)  # auto-gate flags and sample_gates file
            stored.started, stored.duration_s = started, time.time() - started
            return stored
        gs = (adjusted_gating_strategy(strategy, default_sample_id(path), adjustments) if adjustments
              else strategy.gating_strategy())
        # float32 events when that is exactly what FlowKit would gate (as read_for_gating decides)
        if lean is not None and not gates_exactly(lean, gs):
            lean = None  # e.g. a gate on Time: FlowKit's reader decides (a big file's float32 copy is freed first)
        if lean is None:  # FlowKit's reader needs about twice the memory of a lean read
            _check_memory(path)
        sample = lean if lean is not None else read_fcs(path)
        out.instrument = instrument_fields(sample)  # for the MIFlowCyt record: no second header scan
        out.panel_flags = list(resolve_panel(sample.pnn_labels, sample.pns_labels, strategy, source=path).qc_flags)
        # data-driven gates placed on this sample (a reviewer's adjustment wins); the placement gates
        # its own subsample of events, then one pass gates every event with the placed gates in
        # place: cheaper than handing upstream rows around (docs/performance.md)
        auto = data_driven_gates(sample, strategy, gating_strategy=gs, skip=adjustments)
        if auto is not None:
            gs = auto.gating_strategy
        counts = gate_sample(sample, strategy, gating_strategy=gs)
        cd4, treg, pct = treg_percent(counts, strategy)
        out.events_total, out.cd4_count, out.treg_count, out.treg_pct_cd4 = int(sample.event_count), cd4, treg, pct
        out.time_qc = sample_time_qc(sample, thresholds=thresholds)
        out.qc_flags = sample_flags(int(sample.event_count), cd4, treg, thresholds=thresholds,
                                    time_metrics=out.time_qc) + out.panel_flags
        out.gates = [["/".join(c.path), c.count, c.parent_count] for c in counts.values()]
        if auto is not None:  # fit outcome, QC flag, DIR/sample_gates/<stem>.xml
            out.auto_gates = auto.record()
            finish_auto_gates(out, cache_dir)
        if cache_file is not None:
            text = json.dumps(out.cache_record())
            atomic_write(cache_file, lambda p: Path(p).write_text(text, encoding="utf-8"))
    except CytopipeError as e:
        out.error = one_line(e)
    except Exception as e:  # nothing lost: an unexpected failure is a row too
        where = traceback.extract_tb(e.__traceback__)[-1]
        out.error = one_line(
            f"{path}: unexpected {type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"
        )
    out.started, out.duration_s = started, time.time() - started
    return out
