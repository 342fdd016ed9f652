"""Sign-off: approve, reject or adjust a sample's gates, with who, when and why.

Every decision is one JSON line appended to ``DIR/review.jsonl``; nothing is
ever rewritten or deleted there, so the file is the audit trail. A decision
is bound to the sample's file sha256 and the strategy's sha256 as they were
when it was made: a re-run keeps an approval (and applies a gate adjustment)
only while both are unchanged. Gate adjustments are FlowKit *custom sample
gates*: the template gate is replaced for that one sample.

``review_status`` of a sample is the latest of its valid decisions:
``approved``, ``rejected``, ``adjusted`` (a gate was changed and the result
awaits approval) or ``pending`` (no valid decision).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..exceptions import ReviewError

__all__ = [
    "REVIEW_FILE",
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

REVIEW_FILE = "review.jsonl"
_ACTIONS = ("approve", "reject", "adjust")
_STATUS = {"approve": "approved", "reject": "rejected", "adjust": "adjusted"}


def read_decisions(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Return every decision of ``run_dir/review.jsonl``, oldest first (empty if none).

    Raises
    ------
    ReviewError
        A line is not valid JSON (the file was edited by hand).
    """
    path = Path(run_dir) / REVIEW_FILE
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            msg = f"{path}: line {n} is not valid JSON ({e}); the review log is append-only, restore it."
            raise ReviewError(msg) from e
    return out


def _valid(decisions: list[dict[str, Any]], file: str | None, file_sha: str | None, strategy_sha: str | None):
    # file None: the decisions are already those of one sample (as batch workers get them)
    return [
        d for d in decisions
        if (file is None or d.get("file") == file) and file_sha and d.get("file_sha256") == file_sha
        and d.get("strategy_sha256") == strategy_sha
    ]


def review_fields(
    decisions: list[dict[str, Any]], file: str, file_sha: str | None, strategy_sha: str | None
) -> dict[str, Any]:
    """``review_status, reviewer, reviewed_at`` of one sample from the decisions.

    Only decisions made on the same file content and strategy count.
    """
    valid = _valid(decisions, file, file_sha, strategy_sha)
    if not valid:
        return {"review_status": "pending", "reviewer": "", "reviewed_at": ""}
    last = valid[-1]
    return {"review_status": _STATUS[last["action"]], "reviewer": last["reviewer"], "reviewed_at": last["time"]}


def gate_adjustments(
    decisions: list[dict[str, Any]], file: str | None, file_sha: str | None, strategy_sha: str | None
) -> dict[str, dict[str, Any]]:
    """The sample's current gate adjustments: gate path (``root/...``) to gate spec.

    A later adjustment of the same gate replaces an earlier one. ``file`` None
    takes ``decisions`` as those of the sample already.
    """
    out: dict[str, dict[str, Any]] = {}
    for d in _valid(decisions, file, file_sha, strategy_sha):
        if d["action"] == "adjust":
            out[d["gate_path"]] = d["gate"]
    return out


def adjustments_digest(adjustments: dict[str, dict[str, Any]]) -> str:
    """A short stable hash of a sample's adjustments ('' when there are none)."""
    if not adjustments:
        return ""
    return hashlib.sha256(json.dumps(adjustments, sort_keys=True).encode()).hexdigest()[:16]


def _gate_from_spec(name: str, spec: dict[str, Any]):
    import flowkit as fk

    dims = [
        fk.Dimension(d["id"], compensation_ref=d["compensation_ref"], transformation_ref=d["transformation_ref"],
                     range_min=d.get("min"), range_max=d.get("max"))
        for d in spec["dimensions"]
    ]
    if spec["type"] == "RectangleGate":
        return fk.gates.RectangleGate(name, dims)
    return fk.gates.PolygonGate(name, dims, [list(v) for v in spec["vertices"]])


def adjusted_gating_strategy(strategy, sample_id: str, adjustments: dict[str, dict[str, Any]]):
    """A fresh FlowKit ``GatingStrategy`` with the adjustments as custom gates of ``sample_id``.

    Parameters
    ----------
    strategy : cytopipe.strategy.registry.Strategy
        The loaded strategy.
    sample_id
        The FlowKit sample id the custom gates apply to (``Sample.id``).
    adjustments
        From :func:`gate_adjustments`.
    """
    gs = strategy.gating_strategy()
    for path, spec in adjustments.items():
        parts = tuple(path.split("/"))
        gs.add_gate(_gate_from_spec(parts[-1], spec), parts[:-1], sample_id=sample_id)
    return gs


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
    _gate_from_spec(parts[-1], spec)  # FlowKit checks the geometry now, not at the next run
    return spec


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
) -> dict[str, Any]:
    """Append one decision on one sample of a run to ``run_dir/review.jsonl``.

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

    Returns
    -------
    dict
        The record appended.

    Raises
    ------
    ReviewError
        Unknown sample; missing reviewer or reason; approving a sample that
        failed, or whose adjusted gate has not been applied by a re-run yet.
    """
    from ..outputs.tables import read_treg_table
    from ..strategy.registry import load_strategy

    run_dir = Path(run_dir)
    if action not in _ACTIONS:
        msg = f"Unknown review action {action!r}; expected one of {list(_ACTIONS)}."
        raise ReviewError(msg)
    if not reviewer or not reviewer.strip():
        msg = "A review decision needs the reviewer's name (--reviewer NAME)."
        raise ReviewError(msg)
    if action in ("reject", "adjust") and not (reason or "").strip():
        msg = f"To {action} a sample, give the reason (--reason TEXT)."
        raise ReviewError(msg)
    if not (run_dir / "treg_by_visit.parquet").is_file():
        msg = f"{run_dir} holds no treg_by_visit.parquet: review the output folder of 'cytopipe run'."
        raise ReviewError(msg)
    row = find_sample(read_treg_table(run_dir), sample)
    decisions = read_decisions(run_dir)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    record: dict[str, Any] = {
        "time": now.isoformat(timespec="milliseconds"),
        "action": action,
        "reviewer": reviewer.strip(),
        "reason": reason or "",
        "file": str(row["file"]),
        "patient_id": str(row["patient_id"]),
        "visit": str(row["visit"]),
        "file_sha256": None if pd.isna(row["file_sha256"]) else str(row["file_sha256"]),
        "strategy": str(row["strategy"]),
        "strategy_version": str(row["strategy_version"]),
        "strategy_sha256": str(row["strategy_sha256"]),
    }
    if action == "approve":
        if row["qc_status"] == "error":
            msg = f"{row['file']} could not be gated ({row['error']}); it can be rejected, not approved."
            raise ReviewError(msg)
        pending = [d for d in _valid(decisions, record["file"], record["file_sha256"], record["strategy_sha256"])
                   if d["action"] == "adjust"]
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        # last gated: the run, or the review station gating this one sample again (run.json "recomputed")
        gated = max(_dt.datetime.fromisoformat(t) for t in (run["finished"], run.get("recomputed", {}).get(
            record["file"])) if t)
        if pending and _dt.datetime.fromisoformat(pending[-1]["time"]) >= gated:
            msg = (f"{row['file']}: its {pending[-1]['gate_path']} gate was adjusted after the last run; "
                   f"re-run 'cytopipe run' so the numbers use it, then approve.")
            raise ReviewError(msg)
    if action == "adjust":
        if not gate_path:
            msg = "--adjust-gate needs the gate path, e.g. root/Lymphocytes/Singlets/Live/CD3pos/CD4pos/Treg."
            raise ReviewError(msg)
        strategy = load_strategy(Path(_strategy_dir(run_dir, row)), allow_draft=True)
        spec = build_gate_spec(strategy, gate_path, bounds=bounds, vertices=vertices)
        full = gate_path.strip("/")
        record["gate_path"] = full if full.startswith("root/") else f"root/{full}"
        record["gate"] = spec
    record["meaning"] = _MEANINGS[action]  # what the signature means (21 CFR 11.50)
    record["os_user"] = _os_user()
    path = run_dir / REVIEW_FILE
    import fcntl

    with open(path, "a+", encoding="utf-8") as fh:  # append-only: the audit trail
        fcntl.flock(fh, fcntl.LOCK_EX)  # two reviewers at once still chain one after the other
        fh.seek(0)
        lines = [line for line in fh.read().splitlines() if line.strip()]
        record["prev_sha256"] = _line_sha256(lines[-1]) if lines else _GENESIS
        fh.seek(0, os.SEEK_END)
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return record


_MEANINGS = {"approve": "reviewed and approved", "reject": "reviewed and rejected",
             "adjust": "gate adjusted by the reviewer; the sample awaits approval"}
#: ``prev_sha256`` of the first line of a review log
_GENESIS = "0" * 64


def _line_sha256(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid {os.getuid()}"


def verify_review_chain(run_dir: str | os.PathLike) -> list[str]:
    """Check that no line of ``run_dir/review.jsonl`` was edited or removed since it was written.

    Every line carries the sha256 of the line before it (the first: 64 zeros),
    so editing or deleting any line but the last breaks the next line's link.
    Lines written before the chain existed (no ``prev_sha256``) are accepted
    only before the first chained line.

    Returns
    -------
    list of str
        One message per broken link, naming the file and the line; empty when intact.
    """
    path = Path(run_dir) / REVIEW_FILE
    if not path.is_file():
        return []
    problems, prev, chained = [], None, False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"{path}: line {n} is not valid JSON (edited by hand?)")
            prev = line
            continue
        link = rec.get("prev_sha256")
        if link is None:
            if chained:
                problems.append(f"{path}: line {n} has no prev_sha256 after chained lines (inserted?)")
        else:
            want = _GENESIS if prev is None else _line_sha256(prev)
            if link != want:
                problems.append(f"{path}: line {n} does not follow line {n - 1}'s text: a line before it was "
                                f"edited, removed or inserted")
            chained = True
        prev = line
    return problems


def _strategy_dir(run_dir: Path, row: pd.Series) -> Path:
    from ..strategy.registry import strategy_dir

    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    if run.get("strategy_dir"):
        return Path(run["strategy_dir"])
    return strategy_dir(f"{row['strategy']}@{run['strategy_version']}", existing=False)


def update_review_columns(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Recompute ``review_status, reviewer, reviewed_at`` of a run's table and rewrite it.

    Returns
    -------
    pandas.DataFrame
        The updated ``treg_by_visit``.
    """
    from ..outputs.tables import TREG_COLUMNS, read_treg_table, write_table

    run_dir = Path(run_dir)
    table = read_treg_table(run_dir)
    decisions = read_decisions(run_dir)
    for idx, row in table.iterrows():
        sha = None if pd.isna(row["file_sha256"]) else row["file_sha256"]
        for key, value in review_fields(decisions, str(row["file"]), sha, str(row["strategy_sha256"])).items():
            table.at[idx, key] = value
    write_table(table, run_dir / "treg_by_visit", TREG_COLUMNS)
    return table
