"""Sign-off: approve, reject or adjust a sample's gates, with who, when and why.

Every decision is one JSON line appended to ``DIR/review.jsonl``; nothing is
ever rewritten or deleted there, so the file is the audit trail. A decision
is bound to the sample's file sha256 and the strategy's sha256 as they were
when it was made: a re-run keeps an approval (and applies a gate adjustment)
only while both are unchanged. Gate adjustments are FlowKit *custom sample
gates*: the template gate is replaced for that one sample.

Every decision, from the command line or the review station, goes through
:func:`decide`: the checks, the run folder's lock, the append and the
rewrite of the review columns. The folder's files are read and written
through :class:`cytopipe.outputs.RunFolder`; a line is a
:class:`cytopipe.outputs.Decision`.

``review_status`` of a sample is the latest of its valid decisions:
``approved``, ``rejected``, ``adjusted`` (a gate was changed and the result
awaits approval) or ``pending`` (no valid decision).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from ..exceptions import ReviewError

# kept importable from here (and cytopipe.review) for callers written before it moved to gating
from ..gating.gated import adjusted_gating_strategy, gate_from_spec
from ..outputs.runfolder import REVIEW_FILE, Decision, RunFolder, RunRecord
from .reviewers import REGISTRY_ENV, Signer, name_key, normalise_name, registry_path

__all__ = [
    "REVIEW_FILE",
    "Decided",
    "GateChange",
    "StaleError",
    "decide",
    "sample_version",
    "adjusted_gating_strategy",
    "adjustments_digest",
    "build_gate_spec",
    "find_sample",
    "gate_adjustments",
    "read_decisions",
    "record_decision",
    "review_fields",
    "update_review_columns",
    "verify_review_chain",
]

_ACTIONS = ("approve", "reject", "adjust")
_STATUS = {"approve": "approved", "reject": "rejected", "adjust": "adjusted"}


def read_decisions(run_dir: str | os.PathLike) -> list[Decision]:
    """Return every decision of ``run_dir/review.jsonl``, oldest first (empty if none).

    The same as ``RunFolder(run_dir).decisions()``.

    Raises
    ------
    OutputError
        A line is not valid JSON, or not a decision (the file was edited by hand).
    """
    return RunFolder(run_dir).decisions()


def _field(d: Decision | Mapping[str, Any], name: str) -> Any:
    # a Decision, or a dict as a caller may build one (only the keys used here need be there)
    return d.get(name) if isinstance(d, Mapping) else getattr(d, name)


def _valid(decisions: Sequence[Decision | Mapping[str, Any]], file: str | None, file_sha: str | None,
           strategy_sha: str | None) -> list[Decision | Mapping[str, Any]]:
    # file None: the decisions are already those of one sample (as batch workers get them)
    return [
        d for d in decisions
        if (file is None or _field(d, "file") == file) and file_sha and _field(d, "file_sha256") == file_sha
        and _field(d, "strategy_sha256") == strategy_sha
    ]


def review_fields(
    decisions: Sequence[Decision | Mapping[str, Any]], file: str, file_sha: str | None, *, strategy_sha: str | None
) -> dict[str, Any]:
    """``review_status, reviewer, reviewed_at`` of one sample from the decisions.

    Only decisions made on the same file content and strategy count.
    """
    valid = _valid(decisions, file, file_sha, strategy_sha)
    if not valid:
        return {"review_status": "pending", "reviewer": "", "reviewed_at": ""}
    last = valid[-1]
    return {"review_status": _STATUS[_field(last, "action")], "reviewer": _field(last, "reviewer"),
            "reviewed_at": _field(last, "time")}


def gate_adjustments(
    decisions: Sequence[Decision | Mapping[str, Any]], file: str | None, file_sha: str | None, *,
    strategy_sha: str | None
) -> dict[str, dict[str, Any]]:
    """The sample's current gate adjustments: gate path (``root/...``) to gate spec.

    A later adjustment of the same gate replaces an earlier one. ``file`` None
    takes ``decisions`` as those of the sample already.
    """
    out: dict[str, dict[str, Any]] = {}
    for d in _valid(decisions, file, file_sha, strategy_sha):
        if _field(d, "action") == "adjust":
            out[_field(d, "gate_path")] = _field(d, "gate")
    return out


def adjustments_digest(adjustments: dict[str, dict[str, Any]]) -> str:
    """A short stable hash of a sample's adjustments ('' when there are none)."""
    if not adjustments:
        return ""
    return hashlib.sha256(json.dumps(adjustments, sort_keys=True).encode()).hexdigest()[:16]


def find_sample(table: pd.DataFrame, sample: str) -> pd.Series:
    """The ``treg_by_visit`` row of SAMPLE: its ``file`` as in the sheet, or ``PATIENT:VISIT``.

    Raises
    ------
    ReviewError
        No row, or more than one, matches.
    """
    hits = table[table["file"].astype(str) == sample]
    if hits.empty and ":" in sample:
        patient, visit = sample.rsplit(":", 1)
        hits = table[(table["patient_id"].astype(str) == patient) & (table["visit"].astype(str) == visit)]
    if len(hits) != 1:
        examples = [str(f) for f in table["file"].head(3)]
        msg = (f"Sample {sample!r} matches {len(hits)} rows of treg_by_visit; give the file as written "
               f"in the sample sheet (e.g. {examples}) or PATIENT:VISIT.")
        raise ReviewError(msg)
    return hits.iloc[0]


def _to_gate_units(gs, dim, value: float) -> float:
    if dim.transformation_ref is None:
        return float(value)
    import numpy as np

    return float(gs.get_transform(dim.transformation_ref).apply(np.array([[float(value)]]))[0, 0])


def build_gate_spec(
    strategy,
    gate_path: str,
    *,
    bounds: dict[str, tuple[float | None, float | None]] | None = None,
    vertices: list[tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Build the JSON spec of an adjusted gate from values in compensated linear units.

    Parameters
    ----------
    strategy : cytopipe.strategy.registry.Strategy
        The strategy whose gate is adjusted.
    gate_path
        ``root/.../Gate``.
    bounds
        Rectangle gates: detector to ``(min, max)``, None keeps that side open.
        Detectors not given keep the template's bounds.
    vertices
        Polygon gates: the new vertices.
    """
    parts = tuple(gate_path.strip("/").split("/"))
    if parts[0] != "root":
        parts = ("root", *parts)
    known = {"/".join(p): p for p in strategy.gate_paths()}
    if "/".join(parts) not in known:
        msg = f"Gate path {gate_path!r} is not a gate of {strategy.ref}. Gates: {sorted(known)}"
        raise ReviewError(msg)
    gs = strategy.gating_strategy()
    gate = gs.get_gate(parts[-1], parts[:-1])
    kind = type(gate).__name__
    dims = []
    for d in gate.dimensions:
        dims.append({"id": d.id, "compensation_ref": d.compensation_ref, "transformation_ref": d.transformation_ref,
                     "min": d.min, "max": d.max})
    spec: dict[str, Any] = {"type": kind, "dimensions": dims}
    if kind == "RectangleGate":
        if not bounds or vertices:
            msg = f"{gate_path} is a rectangle gate: give its new bounds (--bound DETECTOR=MIN:MAX), not vertices."
            raise ReviewError(msg)
        by_id = {d["id"]: (d, dim) for d, dim in zip(dims, gate.dimensions)}
        for det, (lo, hi) in bounds.items():
            if det not in by_id:
                msg = f"{gate_path} has no dimension {det!r}; its dimensions are {sorted(by_id)}."
                raise ReviewError(msg)
            d, dim = by_id[det]
            d["min"] = None if lo is None else _to_gate_units(gs, dim, lo)
            d["max"] = None if hi is None else _to_gate_units(gs, dim, hi)
            d["linear"] = [lo, hi]
    elif kind == "PolygonGate":
        if not vertices or len(vertices) < 3 or bounds:
            msg = f"{gate_path} is a polygon gate: give at least 3 vertices (--vertex X,Y), not bounds."
            raise ReviewError(msg)
        spec["vertices"] = [[_to_gate_units(gs, dim, v) for dim, v in zip(gate.dimensions, vx)] for vx in vertices]
        spec["linear_vertices"] = [list(v) for v in vertices]
    else:
        msg = f"{gate_path} is a {kind}; only rectangle and polygon gates can be adjusted."
        raise ReviewError(msg)
    gate_from_spec(parts[-1], spec)  # FlowKit checks the geometry now, not at the next run
    return spec


#: A moved gate for :func:`decide`: ``{"bounds": {detector: (min, max)}}`` (a rectangle; None keeps a
#: side open) or ``{"vertices": [(x, y), ...]}`` (a polygon), in compensated linear units.
GateChange = Mapping[str, Any]


class StaleError(ReviewError):
    """The sample changed since the reviewer's view of it loaded."""


@dataclasses.dataclass(frozen=True)
class Decided:
    """What :func:`decide` recorded.

    Attributes
    ----------
    records
        The decisions appended to ``review.jsonl``, in order (one per moved gate, then the approval or rejection).
    recomputed
        True when the sample was gated again with its adjustments before the approval.
    """

    records: tuple[Decision, ...]
    recomputed: bool


def _text(value: Any) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def sample_version(row: pd.Series, decisions: Sequence[Decision], record: RunRecord) -> str:
    """A short hash of everything a decision on one sample rests on.

    Its ``treg_by_visit`` row's numbers, flags and review columns, its last
    decision and how many it has, and when it was last gated. A reviewer's
    view quotes it; :func:`decide` refuses a decision whose view is older.

    Parameters
    ----------
    row
        The sample's ``treg_by_visit`` row.
    decisions
        The run's decisions (:meth:`RunFolder.decisions`).
    record
        The run's record (:attr:`RunFolder.record`).
    """
    file = str(row["file"])
    mine = [d for d in decisions if d.file == file]
    payload = [file, _text(row["file_sha256"]), _text(row["strategy_sha256"]), _int(row["cd4_count"]),
               _int(row["treg_count"]), _text(row["qc_flags"]), _text(row["review_status"]),
               _text(row["reviewer"]), json.dumps(mine[-1].to_dict(), sort_keys=True) if mine else "", len(mine),
               record.finished, record.recomputed.get(file)]
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()[:16]


def _decision(row: pd.Series, action: str, reviewer: str, reason: str, now: _dt.datetime | None,
              **gate: Any) -> Decision:
    """A decision on the sample of ``row``, timed now, not chained or signed yet."""
    now = now or _dt.datetime.now(_dt.UTC)
    meaning = _MEANINGS[action] if action != "adjust" else _MEANINGS[action].format(gate=gate["gate_path"])
    return Decision(
        time=now.isoformat(timespec="milliseconds"), action=action, reviewer=reviewer, reason=reason or "",
        file=str(row["file"]), patient_id=str(row["patient_id"]), visit=str(row["visit"]),
        file_sha256=None if pd.isna(row["file_sha256"]) else str(row["file_sha256"]),
        strategy=str(row["strategy"]), strategy_version=str(row["strategy_version"]),
        strategy_sha256=str(row["strategy_sha256"]), **gate,
        meaning=meaning,  # what the signature means (21 CFR 11.50)
        os_user=_os_user())


def decide(
    run_dir: str | os.PathLike,
    sample: str,
    action: str,
    *,
    reviewer: str,
    reason: str = "",
    gates: Mapping[str, GateChange] | None = None,
    version: str | None = None,
    recompute: Callable[[str], Any] | None = None,
    holder: str = "cytopipe review",
    now: _dt.datetime | None = None,
    signer: Signer | None = None,
) -> Decided:
    """Check and record one reviewer's decision on one sample, then rewrite the run's review columns.

    The one path of every decision, from the command line (``cytopipe
    review``) and the review station alike. Under the run folder's lock (never
    while a run or another decision writes it): the sample is found; a
    ``version`` quoted by the reviewer's view must still be the sample's
    (:func:`sample_version`); every moved gate is checked before anything is
    recorded; an approval is refused for a sample that could not be gated, or
    whose adjusted gates its numbers do not use yet (unless ``recompute``
    gates it again first). Then each moved gate is appended to
    ``review.jsonl`` as an ``adjust`` decision, the sample is gated again
    when ``recompute`` is given, the approval or rejection is appended, and
    ``treg_by_visit``'s review columns are rewritten.

    Parameters
    ----------
    run_dir
        The output folder of ``cytopipe run``.
    sample
        The sample's ``file`` as in the sample sheet, or ``PATIENT:VISIT``.
    action : {"approve", "reject", "adjust"}
        What the reviewer decided; ``adjust`` records the moved ``gates`` only.
    reviewer
        Who decided: their name as printed (:func:`cytopipe.review.normalise_name`;
        invisible and control characters are refused). With ``signer``, the
        name they are enrolled under, in any case.
    reason
        Why; required to reject, and whenever a gate moved.
    gates
        Gate path (``root/.../Gate``) to its new geometry (:data:`GateChange`,
        compensated linear units); for ``adjust``, and ``approve`` of moved
        gates. Ignored for ``reject``.
    version
        The sample's version as the reviewer's view loaded it; None: no check
        (the command line decides on the folder as it is).
    recompute
        Called with the sample's file, under the lock, to gate it again with
        its adjustments (the review station's
        :func:`cytopipe.station.recompute.recompute_sample`). Without it an
        adjustment takes effect at the next ``cytopipe run``.
    holder
        Who holds the folder's lock, as a run that finds it locked is told.
    now
        The decisions' time (UTC); defaults to the clock at each.
    signer
        The reviewer's unlocked key (:meth:`cytopipe.review.ReviewerRegistry.unlock`):
        every line appended is signed with it. None: the lines are unsigned,
        allowed only while no registry is configured (``$CYTOPIPE_REVIEWERS``
        unset); ``cytopipe verify`` counts them as unsigned.

    Returns
    -------
    Decided
        The decisions appended and whether the sample was gated again.

    Raises
    ------
    ReviewError
        Unknown action or sample, no reviewer or an invisible character in
        the name, a ``signer`` of another name, no signer while a registry is
        configured, no reason, an invalid gate or geometry, a gate moved on a
        sample that could not be gated, or an approval refused (see above).
    StaleError
        ``version`` is not the sample's current version: nothing is recorded.
    OutputError
        Another process holds the run folder; or a file cannot be written.

    Examples
    --------
    >>> decide("out", "P01:D60", "approve", reviewer="A. Smith")  # doctest: +SKIP
    Decided(records=(Decision(time='2025-...', action='approve', ...),), recomputed=False)
    """
    from ..strategy.registry import load_strategy

    run = RunFolder(run_dir)
    if action not in _ACTIONS:
        msg = f"Unknown review action {action!r}; expected one of {list(_ACTIONS)}."
        raise ReviewError(msg)
    if not (reviewer or "").strip():
        msg = "A review decision needs the reviewer's name (--reviewer NAME; in the station, enter your name)."
        raise ReviewError(msg)
    reviewer = normalise_name(reviewer)
    if signer is not None:
        if name_key(reviewer) != name_key(signer.name):
            msg = (f"The decision is in the name of {reviewer!r}, but the key unlocked is {signer.name!r}'s: "
                   "each reviewer signs their own decisions.")
            raise ReviewError(msg)
        reviewer = signer.name  # the printed name as enrolled
    elif registry_path() is not None:
        msg = (f"A reviewer registry is configured (${REGISTRY_ENV}={registry_path()}): every decision must be "
               "signed. Give the reviewer's password (cytopipe review asks for it).")
        raise ReviewError(msg)
    sign = signer.sign_decision if signer is not None else None
    gates = dict(gates or {}) if action != "reject" else {}
    if action == "adjust" and not gates:
        msg = ("An adjustment needs the moved gate: --adjust-gate GATE_PATH (e.g. "
               "root/Lymphocytes/Singlets/Live/CD3pos/CD4pos/Treg) with --bound or --vertex, or drag a gate's "
               "edge, corner or vertex in the station.")
        raise ReviewError(msg)
    if (action == "reject" or gates) and not (reason or "").strip():
        what = "reject a sample" if action == "reject" else "move a gate"
        msg = f"To {what}, give the reason (--reason TEXT; in the station, the reason box)."
        raise ReviewError(msg)
    if not (run.path / "treg_by_visit.parquet").is_file():
        msg = f"{run.path} holds no treg_by_visit.parquet: review the output folder of 'cytopipe run'."
        raise ReviewError(msg)
    with run.lock(holder):  # its log lines and the tables it rewrites land together
        row = find_sample(run.treg_by_visit(), sample)
        decisions = run.decisions()
        record = run.record
        if version is not None and version != sample_version(row, decisions, record):
            msg = (f"{row['patient_id']} {row['visit']} ({row['file']}) changed since your view loaded (another "
                   f"decision, or a re-run); nothing was recorded. Reload it, check it again, then decide.")
            raise StaleError(msg)
        file = str(row["file"])
        sha = None if pd.isna(row["file_sha256"]) else str(row["file_sha256"])
        moved: list[tuple[str, dict[str, Any]]] = []
        if gates:  # every gate checked before anything is recorded
            if row["qc_status"] == "error":
                msg = f"{file} could not be gated ({row['error']}): it has no gates to adjust."
                raise ReviewError(msg)
            strategy = load_strategy(record.strategy_folder(), allow_draft=True)
            for path, geometry in gates.items():
                spec = build_gate_spec(strategy, path, bounds=geometry.get("bounds"),
                                       vertices=geometry.get("vertices"))
                full = path.strip("/")
                moved.append((full if full.startswith("root/") else f"root/{full}", spec))
        unapplied = False
        if action == "approve":
            if row["qc_status"] == "error":
                msg = f"{file} could not be gated ({row['error']}); it can be rejected, not approved."
                raise ReviewError(msg)
            pending = [d for d in _valid(decisions, file, sha, str(row["strategy_sha256"]))
                       if _field(d, "action") == "adjust"]
            unapplied = bool(pending) and (_dt.datetime.fromisoformat(_field(pending[-1], "time"))
                                           >= record.last_gated(file))
            if recompute is None and (unapplied or moved):
                last = moved[-1][0] if moved else _field(pending[-1], "gate_path")
                msg = (f"{file}: its {last} gate was adjusted after the last run; "
                       f"re-run 'cytopipe run' so the numbers use it, then approve.")
                raise ReviewError(msg)
        records = [run.append_decision(_decision(row, "adjust", reviewer, reason, now, gate_path=path, gate=spec),
                                       sign) for path, spec in moved]
        recomputed = recompute is not None and bool(moved or unapplied)
        if recompute is not None and recomputed:
            recompute(file)  # the adjusted numbers now, before they are approved
        if action in ("approve", "reject"):
            records.append(run.append_decision(_decision(row, action, reviewer, reason, now), sign))
        update_review_columns(run.path)
    return Decided(tuple(records), recomputed)


def record_decision(
    run_dir: str | os.PathLike,
    sample: str,
    *,
    action: str,
    reviewer: str,
    reason: str = "",
    gate_path: str | None = None,
    bounds: dict[str, tuple[float | None, float | None]] | None = None,
    vertices: list[tuple[float, float]] | None = None,
    now: _dt.datetime | None = None,
    signer: Signer | None = None,
) -> dict[str, Any]:
    """Record one decision on one sample of a run, as ``cytopipe review`` does (:func:`decide`).

    Parameters
    ----------
    run_dir
        The output folder of ``cytopipe run``.
    sample
        The sample's ``file`` as in the sample sheet, or ``PATIENT:VISIT``.
    action : {"approve", "reject", "adjust"}
        What the reviewer decided.
    reviewer
        Who decided (required, non-empty).
    reason
        Why; required to reject or adjust.
    gate_path, bounds, vertices
        For ``adjust``: the gate (``root/.../Gate``) and its new geometry, in
        compensated linear units (see :func:`build_gate_spec`).
    now
        The decision time (UTC); defaults to the clock.
    signer
        The reviewer's unlocked key, to sign the line (see :func:`decide`).

    Returns
    -------
    dict
        The line appended to ``review.jsonl``, parsed (:meth:`Decision.to_dict`).

    Raises
    ------
    ReviewError
        As :func:`decide`: unknown sample; missing reviewer or reason;
        approving a sample that failed, or whose adjusted gate has not been
        applied by a re-run yet.
    OutputError
        Another process holds the run folder.
    """
    gates = {gate_path: {"bounds": bounds, "vertices": vertices}} if action == "adjust" and gate_path else None
    decided = decide(run_dir, sample, action, reviewer=reviewer, reason=reason, gates=gates, now=now, signer=signer)
    return decided.records[-1].to_dict()


_MEANINGS = {"approve": "reviewed and approved", "reject": "reviewed and rejected",
             "adjust": "adjusted gate {gate}; the sample awaits approval"}


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid {os.getuid()}"


def verify_review_chain(run_dir: str | os.PathLike) -> list[str]:
    """Check that no line of ``run_dir/review.jsonl`` was edited, removed or inserted since it was written.

    The same as ``RunFolder(run_dir).verify_chain()`` (see
    :meth:`cytopipe.outputs.RunFolder.verify_chain`).

    Returns
    -------
    list of str
        One message per broken link or unreadable line, naming the file and the line; empty when intact.
    """
    return RunFolder(run_dir).verify_chain()


def update_review_columns(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Recompute ``review_status, reviewer, reviewed_at`` of a run's table and rewrite it.

    Returns
    -------
    pandas.DataFrame
        The updated ``treg_by_visit``.
    """
    folder = RunFolder(run_dir)
    table = folder.treg_by_visit()
    decisions = folder.decisions()
    for idx, row in table.iterrows():
        sha = None if pd.isna(row["file_sha256"]) else row["file_sha256"]
        fields = review_fields(decisions, str(row["file"]), sha, strategy_sha=str(row["strategy_sha256"]))
        for key, value in fields.items():
            table.at[idx, key] = value
    folder.write_treg_by_visit(table)
    return table
