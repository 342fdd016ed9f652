"""A run folder: the output folder of ``cytopipe run``, and the one reader of its record files.

A run folder holds ``run.json`` (the run's record: :class:`RunRecord`), the
tables ``treg_by_visit`` and ``populations``, the append-only, hash-chained
review log ``review.jsonl`` (one :class:`Decision` a line), each sample's
stored result under ``cache/``, the MIFlowCyt record and the folder's lock.
Every stage that reads or changes these files goes through :class:`RunFolder`
(sqlite-utils' ``Database``: the object knows its files), so a key misspelt
in ``run.json`` or a damaged line of the review log is an error at load time
that names the file, never a silent ``dict.get`` default deep in a stage.

What a decision *means* (which decisions count, the checks before one is
recorded) is the review stage's: :func:`cytopipe.review.decide`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pandas as pd

from ..exceptions import OutputError
from .tables import POPULATION_COLUMNS, TREG_COLUMNS, read_treg_table, run_folder_lock, write_json, write_table

__all__ = ["GENESIS", "REVIEW_FILE", "RUN_FILE", "Decision", "RunFolder", "RunRecord", "row_site", "site_options"]

#: The run's record, written by ``cytopipe run`` (and updated when the review station gates a sample again).
RUN_FILE = "run.json"
#: The review log: one JSON decision a line, appended only.
REVIEW_FILE = "review.jsonl"
#: ``prev_sha256`` of the first line of a review log.
GENESIS = "0" * 64

_ACTIONS = ("approve", "reject", "adjust")
# what a signature is over starts with this, so it can never be replayed as a signature of anything else
_SIGNED_TAG = b"cytopipe review decision v1\n"


def _line_sha256(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def _check_keys(cls: type, data: Any, where: str, what: str) -> None:
    """Raise OutputError unless ``data`` is a JSON object with ``cls``'s required keys and no others."""
    if not isinstance(data, dict):
        msg = f"{where}: {what} must be a JSON object, got {type(data).__name__} {data!r:.80}."
        raise OutputError(msg)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        msg = (f"{where}: unknown key(s) {unknown} in {what}; expected only {sorted(fields)}. "
               "The file was edited, or written by a newer cytopipe.")
        raise OutputError(msg)
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        msg = f"{where}: {what} lacks {missing}; found keys {sorted(data)}."
        raise OutputError(msg)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A run's ``run.json``, parsed once: what the run gated, with what, and when.

    Values are as ``cytopipe run`` wrote them (JSON types); optional keys
    absent from an older run's record are None (``recomputed``: empty).

    Attributes
    ----------
    sample_sheet, sample_sheet_sha256
        The sheet's absolute path and its sha256 at the run.
    strategy, strategy_version, strategy_sha256, strategy_manifest_sha256, strategy_status, strategy_dir
        The strategy: name, version, GatingML and manifest sha256, release
        status, and the folder it was read from.
    cytopipe_version, flowkit_version
        The driver's cytopipe; the workers' FlowKit (one, or a list).
    software
        Each set of worker versions: ``[{"versions_sha": ..., "versions": {...}}, ...]``.
    qc_thresholds
        The QC thresholds the run used (``cytopipe.gating.qc.QCThresholds`` fields).
    review_decisions
        How many lines of ``review.jsonl`` the run applied (the first N).
    scheduler, started, finished
        Where it ran; ISO 8601 UTC start and end.
    n_samples, n_ok, n_failed, n_cached
        Sample counts.
    lab_panels
        Lab panel files the run read (marker to detector), by the digest in
        the rows' ``panel_digest``; None when no row used one.
    recomputed
        File (as in the sheet) to the ISO 8601 time the review station last
        gated that sample again.
    """

    sample_sheet: str
    strategy: str
    strategy_version: str
    strategy_sha256: str
    finished: str
    sample_sheet_sha256: str | None = None
    strategy_manifest_sha256: str | None = None
    strategy_status: str | None = None
    strategy_dir: str | None = None
    cytopipe_version: str | None = None
    flowkit_version: str | None = None
    software: list[dict[str, Any]] | None = None
    qc_thresholds: dict[str, Any] | None = None
    review_decisions: int | None = None
    scheduler: str | None = None
    started: str | None = None
    n_samples: int | None = None
    n_ok: int | None = None
    n_failed: int | None = None
    n_cached: int | None = None
    recomputed: dict[str, str] = dataclasses.field(default_factory=dict)
    lab_panels: dict[str, dict[str, str]] | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str | os.PathLike = RUN_FILE) -> RunRecord:
        """Build the record from ``run.json``'s parsed object.

        Parameters
        ----------
        data
            The parsed JSON.
        where
            The file it came from, for error messages.

        Raises
        ------
        OutputError
            Not an object, an unknown key, a required key missing, or a
            required value that is not a string.
        """
        _check_keys(cls, data, str(where), "the run's record")
        for name in ("sample_sheet", "strategy", "strategy_version", "strategy_sha256", "finished"):
            if not isinstance(data[name], str):
                msg = f"{where}: {name} must be a string, got {data[name]!r}."
                raise OutputError(msg)
        if not isinstance(data.get("recomputed", {}), dict):
            msg = f"{where}: recomputed must map each file to a time, got {data['recomputed']!r}."
            raise OutputError(msg)
        return cls(**{k: v for k, v in data.items() if not (k == "recomputed" and v is None)})

    @property
    def ref(self) -> str:
        """``name@version`` of the run's strategy."""
        return f"{self.strategy}@{self.strategy_version}"

    def strategy_folder(self) -> Path:
        """The folder of the run's strategy: the one it was read from, else the registry's of its ref."""
        if self.strategy_dir:
            return Path(self.strategy_dir)
        from ..strategy.registry import strategy_dir

        return strategy_dir(self.ref, existing=False)

    def sample_path(self, file: str) -> Path:
        """The FCS file of a sheet row, as the run resolved it (relative to the sample sheet's folder)."""
        return (Path(self.sample_sheet).parent / str(file)).resolve()

    def site_options(self, row) -> dict[str, Any]:
        """The ``lab_panel`` and ``starts_at`` the run gated a table row's file with (:func:`site_options`)."""
        return site_options(self.lab_panels or {}, row)

    def last_gated(self, file: str) -> _dt.datetime:
        """When ``file`` was last gated: the end of the run, or the review station gating it again since."""
        return max(_dt.datetime.fromisoformat(t) for t in (self.finished, self.recomputed.get(str(file))) if t)


def row_site(row) -> tuple[str, str]:
    """A table or sheet row's ``(panel_digest, starts_at)``, "" where it has none (a missing or empty cell)."""
    def text(key: str) -> str:
        value = row.get(key) if hasattr(row, "get") else None
        return "" if value is None or (not isinstance(value, str) and value != value) else str(value)

    return text("panel_digest"), text("starts_at")


def site_options(lab_panels: Mapping[str, dict[str, str]], row) -> dict[str, Any]:
    """The ``lab_panel`` and ``starts_at`` one row is gated with, as keywords.

    The keywords of :func:`cytopipe.batch.task.process_sample` and
    :func:`cytopipe.gating.gate_file`, so a worker, the report's re-read and
    the review station gate a row's file alike.

    Parameters
    ----------
    lab_panels
        The run's lab panels by digest (``run.json`` ``lab_panels``, :attr:`RunRecord.lab_panels`).
    row
        A row of the sheet or of ``treg_by_visit`` (its ``panel_digest`` and
        ``starts_at``, where the run used them). Only what the row uses is
        returned, so a row without either is gated exactly as before they existed.
    """
    digest, start = row_site(row)
    out: dict[str, Any] = {}
    if digest:
        out["lab_panel"] = lab_panels.get(digest)
    if start:
        out["starts_at"] = start
    return out


@dataclasses.dataclass(frozen=True)
class Decision:
    """One line of ``review.jsonl``: a reviewer's decision on one sample, bound to its file and strategy.

    Fields are in the order they are written. ``gate_path`` and ``gate`` are
    set for ``adjust`` only; ``meaning``, ``os_user`` and ``prev_sha256`` are
    None on lines written before they existed.

    Attributes
    ----------
    time
        ISO 8601 UTC, milliseconds.
    action : {"approve", "reject", "adjust"}
    reviewer, reason
        Who decided, and why.
    file, patient_id, visit
        The sample: its file as in the sheet, patient and visit.
    file_sha256
        The file's sha256 when decided (None: it could not be read).
    strategy, strategy_version, strategy_sha256
        The run's strategy when decided (the version as in the table, e.g. ``1.0.0 (draft)``).
    gate_path
        ``root/.../Gate`` adjusted.
    gate
        The adjusted gate's spec (``cytopipe.review.build_gate_spec``).
    meaning
        What the signature means (21 CFR 11.50).
    os_user
        The operating-system user who ran the command.
    prev_sha256
        sha256 of the previous line's text (:data:`GENESIS` for the first).
    signer_key
        The signing reviewer's Ed25519 public key (raw, base64); None: unsigned.
    signature
        Ed25519 signature (base64) over :meth:`signed_content`: every other
        field, ``prev_sha256`` and ``signer_key`` included, so it holds for this
        line at this place in the log only (21 CFR 11.70).
    """

    time: str
    action: str
    reviewer: str
    reason: str
    file: str
    patient_id: str
    visit: str
    file_sha256: str | None
    strategy: str
    strategy_version: str
    strategy_sha256: str
    gate_path: str | None = None
    gate: dict[str, Any] | None = None
    meaning: str | None = None
    os_user: str | None = None
    prev_sha256: str | None = None
    signer_key: str | None = None
    signature: str | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = REVIEW_FILE) -> Decision:
        """Build a decision from one parsed line.

        Raises
        ------
        OutputError
            Not an object, an unknown or missing key, an unknown action, or an
            adjustment without its gate.
        """
        _check_keys(cls, data, where, "a decision")
        if data["action"] not in _ACTIONS:
            msg = f"{where}: action {data['action']!r} is not one of {list(_ACTIONS)}."
            raise OutputError(msg)
        if data["action"] == "adjust" and not (isinstance(data.get("gate_path"), str)
                                               and isinstance(data.get("gate"), dict)):
            msg = f"{where}: an adjustment needs its gate_path and gate, got {data.get('gate_path')!r}."
            raise OutputError(msg)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The decision as its line holds it (optional keys left out when unset)."""
        out = dataclasses.asdict(self)
        for name in ("gate_path", "gate", "meaning", "os_user", "prev_sha256", "signer_key", "signature"):
            if out[name] is None:
                del out[name]
        return out

    def signed_content(self) -> bytes:
        """The bytes a signature covers: a fixed tag, then the line's fields but ``signature`` as canonical JSON.

        Canonical: keys sorted, no spaces, UTF-8, so the same decision gives
        the same bytes whoever serialises it.
        """
        fields = {k: v for k, v in self.to_dict().items() if k != "signature"}
        body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return _SIGNED_TAG + body.encode("utf-8")

    def to_line(self) -> str:
        """The line's text (without its newline), as :meth:`RunFolder.append_decision` writes it."""
        return json.dumps(self.to_dict())


class RunFolder:
    """The output folder of one ``cytopipe run``: its record, tables, review log, stored results and lock.

    Nothing is read when the object is made; each method reads the file as
    it is now (a re-run, the command line and the review station all change
    the folder).

    Parameters
    ----------
    path
        The folder (``--out`` of ``cytopipe run``).

    Examples
    --------
    >>> run = RunFolder("runs/week12")  # doctest: +SKIP
    >>> run.record.ref, len(run.decisions())  # doctest: +SKIP
    ('treg_adaptive@1.5.0', 3)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- the record -------------------------------------------------------------------------------

    @property
    def record_path(self) -> Path:
        """``run.json``."""
        return self.path / RUN_FILE

    def _record_json(self) -> dict[str, Any]:
        path = self.record_path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            msg = f"{self.path} holds no {RUN_FILE}: give the output folder of 'cytopipe run'."
            raise OutputError(msg) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            msg = f"{path}: not readable JSON ({e}); the run's record is damaged: re-run into a new folder."
            raise OutputError(msg) from e

    @property
    def record(self) -> RunRecord:
        """``run.json`` as it is now, parsed (read again on every access).

        Raises
        ------
        OutputError
            No ``run.json``, not JSON, or keys that are not a run's record; the
            message names the file.
        """
        return RunRecord.from_dict(self._record_json(), self.record_path)

    def write_record(self, run: Mapping[str, Any]) -> Path:
        """Write ``run.json`` (indented JSON, atomically), after checking it is a run's record.

        Raises
        ------
        OutputError
            A key unknown to :class:`RunRecord`, or a required one missing.
        """
        RunRecord.from_dict(dict(run), self.record_path)
        return write_json(dict(run), self.record_path)

    def mark_recomputed(self, file: str, when: _dt.datetime) -> Path:
        """Record in ``run.json`` that the review station gated ``file`` again at ``when`` (UTC)."""
        run = self._record_json()
        run.setdefault("recomputed", {})[str(file)] = when.isoformat()
        return write_json(run, self.record_path)

    # -- the tables -------------------------------------------------------------------------------

    def treg_by_visit(self) -> pd.DataFrame:
        """``treg_by_visit.parquet`` with its documented dtypes."""
        return read_treg_table(self.path)

    def populations(self) -> pd.DataFrame:
        """``populations.parquet`` as written."""
        return pd.read_parquet(self.path / "populations.parquet")

    def write_treg_by_visit(self, table: pd.DataFrame) -> list[Path]:
        """Rewrite ``treg_by_visit`` (CSV and Parquet together, then its manifest)."""
        return write_table(table, self.path / "treg_by_visit", TREG_COLUMNS)

    def write_populations(self, table: pd.DataFrame) -> list[Path]:
        """Rewrite ``populations`` (Parquet, then its manifest)."""
        return write_table(table, self.path / "populations", POPULATION_COLUMNS, csv=False)

    # -- the review log ---------------------------------------------------------------------------

    @property
    def review_path(self) -> Path:
        """``review.jsonl``."""
        return self.path / REVIEW_FILE

    def review_lines(self) -> list[str]:
        """Every non-blank line of ``review.jsonl`` as written, oldest first (empty if none)."""
        path = self.review_path
        if not path.is_file():
            return []
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def numbered_lines(self) -> list[tuple[int, str]]:
        """Every non-blank line of ``review.jsonl`` with its line number (from 1), oldest first."""
        path = self.review_path
        if not path.is_file():
            return []
        return [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                if line.strip()]

    def decisions(self) -> list[Decision]:
        """Every decision of ``review.jsonl``, oldest first (empty if none).

        Raises
        ------
        OutputError
            A line is not JSON, or not a decision (the file was edited by
            hand); the message names the file and the line.
        """
        path = self.review_path
        if not path.is_file():
            return []
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                msg = f"{path}: line {n} is not valid JSON ({e}); the review log is append-only, restore it."
                raise OutputError(msg) from e
            out.append(Decision.from_dict(data, f"{path}: line {n}"))
        return out

    def append_decision(self, decision: Decision, sign: Callable[[Decision], Decision] | None = None) -> Decision:
        """Append one decision to ``review.jsonl``, chained to the line before it, signed when ``sign`` is given.

        The log is locked while the last line is read and the new one
        written, so two reviewers at once still chain one after the other.

        Parameters
        ----------
        decision
            The decision; its ``prev_sha256`` is set here.
        sign
            Called with the chained decision, under the log's lock, to return
            it signed (``cytopipe.review.Signer.sign_decision``): the signature
            covers the link to the line before.

        Returns
        -------
        Decision
            The decision as written, its ``prev_sha256`` set.
        """
        import fcntl

        with open(self.review_path, "a+", encoding="utf-8") as fh:  # append-only: the audit trail
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            lines = [line for line in fh.read().splitlines() if line.strip()]
            written = dataclasses.replace(decision, prev_sha256=_line_sha256(lines[-1]) if lines else GENESIS)
            if sign is not None:
                written = sign(written)
            fh.seek(0, os.SEEK_END)
            fh.write(written.to_line() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return written

    def verify_chain(self) -> list[str]:
        """Check that no line of ``review.jsonl`` was edited, removed or inserted since it was written.

        Every line carries the sha256 of the line before it (the first:
        :data:`GENESIS`), so editing or deleting any line but the last breaks
        the next line's link. Lines written before the chain existed (no
        ``prev_sha256``) are accepted only before the first chained line.

        Returns
        -------
        list of str
            One message per broken link or unreadable line, naming the file and
            the line; empty when intact.
        """
        path = self.review_path
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
            try:
                Decision.from_dict(rec, f"{path}: line {n}")
            except OutputError as e:
                problems.append(str(e))
            link = rec.get("prev_sha256") if isinstance(rec, dict) else None
            if link is None:
                if chained:
                    problems.append(f"{path}: line {n} has no prev_sha256 after chained lines (inserted?)")
            else:
                want = GENESIS if prev is None else _line_sha256(prev)
                if link != want:
                    problems.append(f"{path}: line {n} does not follow line {n - 1}'s text: a line before it was "
                                    f"edited, removed or inserted")
                chained = True
            prev = line
        return problems

    # -- stored results, the MIFlowCyt record, the lock -------------------------------------------

    def stored_result_path(self, key: str) -> Path:
        """The worker's stored result under cache key ``key`` (``cytopipe.batch.task.cache_key``)."""
        return self.path / "cache" / f"{key}.json"

    def stored_result(self, key: str) -> dict[str, Any]:
        """The stored result under ``key``, parsed (``cytopipe.batch.task.SampleResult.from_cache`` takes it).

        Raises
        ------
        FileNotFoundError
            No result is stored under ``key``.
        json.JSONDecodeError
            The stored file is damaged.
        """
        return json.loads(self.stored_result_path(key).read_text(encoding="utf-8"))

    def miflowcyt(self) -> dict[str, Any]:
        """``miflowcyt.json``, parsed: its ``samples`` name each sample's gates file (``sample_gates/``)."""
        return json.loads((self.path / "miflowcyt.json").read_text(encoding="utf-8"))

    def lock(self, holder: str = "cytopipe review") -> AbstractContextManager[None]:
        """The folder's lock (:func:`cytopipe.outputs.run_folder_lock`), held while its files change.

        Raises
        ------
        OutputError
            Another process holds the folder; the message names it.
        """
        return run_folder_lock(self.path, holder)

