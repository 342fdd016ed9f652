"""``cytopipe verify RUN_DIR``: is the run's record intact, and does every number trace back?

A run folder holds what an auditor needs to re-derive each number: the tables,
the worker's stored result of every sample (``cache/``), ``run.json`` (sample
sheet, strategy, the software of the workers, the QC thresholds, how many
review decisions were applied), the hash-chained ``review.jsonl``, each
sample's applied gates (``sample_gates/``, named in ``miflowcyt.json``) and
each table's manifest. :func:`verify_run` checks them against each other:

- ``review.jsonl``: the hash chain (no line edited, removed or inserted),
  every signature against the lab's reviewer registry (an unenrolled key, a
  forged or copied signature, a name that is not the key's), and the review
  columns of ``treg_by_visit`` against it;
- each table's CSV and Parquet against its manifest (sha256, rows, schema
  version), against the data dictionary, and against each other cell by cell;
- every ``treg_by_visit`` row against ``run.json`` (strategy, software,
  counts) and against its stored result, found again from the row's own
  file sha256, strategy, software and the review decisions the run applied
  (so an edited count, percentage, QC flag or version shows); every
  ``populations`` row against the same stored result;
- the FCS files and the sample sheet, where they are still present, against
  the sha256 the run recorded;
- the strategy: its folder's GatingML against the run's sha256 (a released
  one also against its release), and the registry's version of the same name;
- every sample's gates file against ``miflowcyt.json`` and the stored result.

Rows are numbered from 1, as data rows (the CSV header is not a row).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..batch.task import SampleResult, cache_key, conform_digest, versions_sha
from ..exceptions import CytopipeError, OutputError
from ..fcs.read import file_sha256
from ..gating.qc import QCThresholds, sample_flags
from ..outputs.runfolder import REVIEW_FILE, RUN_FILE, Decision, RunFolder, RunRecord, row_site
from ..outputs.schema import read_output, validate_table
from ..outputs.tables import SCHEMA_VERSION, manifest_path
from ..review.decisions import adjustments_digest, gate_adjustments, review_fields
from ..review.reviewers import ReviewerRegistry
from ..review.signatures import signature_report
from ..strategy.registry import load_strategy, strategy_dir

__all__ = ["verify_run"]

#: The tables of a run: name -> whether a CSV copy is written next to the Parquet one.
_RUN_TABLES = {"treg_by_visit": True, "populations": False}
# added to qc_flags from the whole table, after the worker's flags: not in the stored result
_TABLE_FLAGS = {"treg_outlier"}


def verify_run(run_dir: str | os.PathLike, *, registry: str | os.PathLike | ReviewerRegistry | None = None
               ) -> list[str]:
    """Check a run folder's record: every discrepancy found, one line each (empty when intact).

    Parameters
    ----------
    run_dir
        A folder written by ``cytopipe run``.
    registry
        The lab's reviewer registry (a path or a :class:`ReviewerRegistry`):
        every decision must be signed by an enrolled reviewer in their own
        name (:func:`cytopipe.review.signature_report`). None: unsigned
        decisions pass, and a signed one is reported as not checkable.

    Returns
    -------
    list of str
        One line per discrepancy, naming the file and, for table rows, the
        row (numbered from 1) with its patient, visit and FCS file. FCS files
        no longer present are not a discrepancy: their hashes are checked
        where the files are.

    Raises
    ------
    OutputError
        ``run_dir`` holds no ``run.json`` (not a run folder).

    Examples
    --------
    >>> verify_run("runs/week12")  # doctest: +SKIP
    []
    """
    folder = RunFolder(run_dir)
    run_dir = folder.path
    if not folder.record_path.is_file():
        msg = f"{run_dir} holds no {RUN_FILE}: give the output folder of 'cytopipe run'."
        raise OutputError(msg)
    problems: list[str] = []
    try:
        run = folder.record
    except OSError as e:  # OutputError too: not JSON, or not a run's record
        return [f"{e} Nothing else can be checked against it."]
    problems += folder.verify_chain()
    if registry is not None and not isinstance(registry, ReviewerRegistry):
        registry = ReviewerRegistry(registry)
    problems += signature_report(folder, registry).problems
    tables = {name: _check_table(run_dir, name, csv, problems) for name, csv in _RUN_TABLES.items()}
    for path in sorted(run_dir.glob("*.manifest.json")):  # any other table of the folder
        name = path.name.removesuffix(".manifest.json")
        if name not in tables:
            _check_table(run_dir, name, (run_dir / f"{name}.csv").is_file(), problems, documented=False)
    _check_strategy(run_dir, run, problems)
    treg = tables["treg_by_visit"]
    if treg is None:
        return problems
    entries = _check_rows(run_dir, run, treg, problems)
    if tables["populations"] is not None:
        _check_populations(run_dir, treg, tables["populations"], entries, problems)
    _check_files(run_dir, run, treg, problems)
    _check_sample_gates(run_dir, run, treg, entries, problems)
    return problems


# -- tables: manifest, data dictionary, CSV against Parquet ---------------------------------------


def _check_table(run_dir: Path, name: str, csv: bool, problems: list[str], *,
                 documented: bool = True) -> pd.DataFrame | None:
    """The table's Parquet copy (None when unreadable), after checking it, its CSV and its manifest."""
    parquet_path = run_dir / f"{name}.parquet"
    csv_path = run_dir / f"{name}.csv"
    man_path = manifest_path(run_dir / name)
    if not parquet_path.is_file():
        problems.append(f"{parquet_path}: missing")
        return None
    try:
        manifest = json.loads(man_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        manifest = None
        problems.append(f"{man_path}: missing: the table was written without its manifest (a crash before it was "
                        f"written, or a cytopipe before schema {SCHEMA_VERSION})")
    except (OSError, json.JSONDecodeError) as e:
        manifest = None
        problems.append(f"{man_path}: not readable JSON ({e})")
    expected = [parquet_path] + ([csv_path] if csv else [])
    if manifest is not None:
        listed = manifest.get("files", {})
        for path in expected:
            if path.name not in listed:
                problems.append(f"{man_path}: does not list {path.name}")
        for fname, rec in listed.items():
            path = run_dir / fname
            if not path.is_file():
                problems.append(f"{path}: missing, though {man_path.name} lists it")
            elif (sha := file_sha256(path)) != rec.get("sha256"):
                problems.append(f"{path}: sha256 {sha} differs from {rec.get('sha256')} in {man_path.name}: "
                                f"the file changed after it was written")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"{man_path}: schema version {manifest.get('schema_version')!r}, this cytopipe checks "
                            f"{SCHEMA_VERSION!r}")
    try:
        table = read_output(parquet_path, name)
    except Exception as e:  # a damaged file: say so, go on with the rest
        problems.append(f"{parquet_path}: cannot be read ({type(e).__name__}: {e})")
        return None
    if manifest is not None and manifest.get("rows") != len(table):
        problems.append(f"{parquet_path}: {len(table)} rows, {man_path.name} says {manifest.get('rows')}")
    if documented:
        try:
            validate_table(table, name)
        except CytopipeError as e:
            problems.append(f"{parquet_path}: {e}")
    if csv:
        if not csv_path.is_file():
            problems.append(f"{csv_path}: missing")
        else:
            _compare_copies(csv_path, parquet_path, name, table, problems)
    return table


def _label(name: str, row: pd.Series) -> str:
    """What a row is about: ``FILE, GATE_PATH`` in populations, ``PATIENT:VISIT, FILE`` elsewhere."""
    if name == "populations":
        return f"{row.get('file')}, {row.get('gate_path')}"
    parts = [f"{row['patient_id']}:{row['visit']}"] if "patient_id" in row and "visit" in row else []
    return ", ".join(parts + ([str(row["file"])] if "file" in row else []))


def _where(path: Path, i: int, name: str, row: pd.Series) -> str:
    label = _label(name, row)
    return f"{path}: row {i + 1}" + (f" ({label})" if label else "")


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA:
        return True
    if isinstance(v, str):
        return v == ""  # CSV cannot tell an empty string from a missing value
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _same(a: Any, b: Any) -> bool:
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if isinstance(a, bool | str) or isinstance(b, bool | str):
        return str(a) == str(b)
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _compare_copies(csv_path: Path, parquet_path: Path, name: str, parquet: pd.DataFrame,
                    problems: list[str]) -> None:
    try:
        csv = read_output(csv_path, name)
    except Exception as e:
        problems.append(f"{csv_path}: cannot be read ({type(e).__name__}: {e})")
        return
    if list(csv.columns) != list(parquet.columns):
        problems.append(f"{csv_path}: columns {list(csv.columns)} differ from {parquet_path.name}'s "
                        f"{list(parquet.columns)}")
        return
    if len(csv) != len(parquet):
        problems.append(f"{csv_path}: {len(csv)} rows, {parquet_path.name} has {len(parquet)}")
    for i in range(min(len(csv), len(parquet))):
        a, b = csv.iloc[i], parquet.iloc[i]
        bad = [c for c in csv.columns if not _same(a[c], b[c])]
        for c in bad:
            problems.append(f"{_where(csv_path, i, name, b)}: {c} is {_show(a[c])} here, {_show(b[c])} in "
                            f"{parquet_path.name}")


def _show(v: Any) -> str:
    return "empty" if _missing(v) else repr(v.item() if hasattr(v, "item") else v)


# -- treg_by_visit rows: run.json, the stored result, the review log ------------------------------


def _decisions(run_dir: Path) -> list[Decision | None]:
    """Every non-blank line of review.jsonl parsed (None where not a decision: the chain check names it)."""
    out: list[Decision | None] = []
    for line in RunFolder(run_dir).review_lines():
        try:
            out.append(Decision.from_dict(json.loads(line)))
        except (json.JSONDecodeError, OutputError):
            out.append(None)
    return out


def _check_rows(run_dir: Path, run: RunRecord, treg: pd.DataFrame,
                problems: list[str]) -> dict[int, SampleResult]:
    """Each gated row's stored result, by row index, after checking the row against it and run.json."""
    path = run_dir / "treg_by_visit.parquet"
    run_json = run_dir / "run.json"
    software = {s.get("versions_sha"): s.get("versions") for s in run.software or []}
    for sha, versions in software.items():
        if versions_sha(versions) != sha:
            problems.append(f"{run_json}: software set {sha} does not hash to its versions_sha (edited?)")
    every = [d for d in _decisions(run_dir) if d is not None]
    applied = [d for d in _decisions(run_dir)[: int(run.review_decisions or 0)] if d is not None]
    if len(_decisions(run_dir)) < int(run.review_decisions or 0):
        # the hash chain cannot see lines cut from its end; the run's count of the lines it applied can
        problems.append(f"{run_dir / 'review.jsonl'}: {len(_decisions(run_dir))} lines, but {run_json} says the run "
                        f"applied {run.review_decisions}: lines were removed from its end")
    try:
        if run.qc_thresholds is None:
            raise KeyError("qc_thresholds")
        thresholds = QCThresholds(**run.qc_thresholds)
        raw_thresholds = dict(run.qc_thresholds)
    except (KeyError, TypeError) as e:
        problems.append(f"{run_json}: no usable qc_thresholds ({e}); the stored results cannot be found")
        return {}
    n_failed = int((treg["qc_status"] == "error").sum())
    for key, value in (("n_samples", len(treg)), ("n_failed", n_failed)):
        if getattr(run, key) != value:
            problems.append(f"{run_json}: {key} is {getattr(run, key)!r}, {path.name} has {value}")
    strategy_sha = run.strategy_sha256
    entries: dict[int, SampleResult] = {}
    for i, row in treg.iterrows():
        where = _where(path, int(i), "treg_by_visit", row)
        for col, want in (("strategy", run.strategy), ("strategy_sha256", strategy_sha)):
            if not _same(row[col], want):
                problems.append(f"{where}: {col} is {_show(row[col])}, run.json says {want!r}")
        if str(row["strategy_version"]).split(" ")[0] != str(run.strategy_version):
            problems.append(f"{where}: strategy_version is {_show(row['strategy_version'])}, run.json says "
                            f"{run.strategy_version!r}")
        sha = None if _missing(row["file_sha256"]) else str(row["file_sha256"])
        review = review_fields(every, str(row["file"]), sha, strategy_sha=strategy_sha)
        for col, value in review.items():
            if not _same(row[col], value):
                problems.append(f"{where}: {col} is {_show(row[col])}, {REVIEW_FILE} gives {value!r}")
        if row["qc_status"] == "error":
            if _missing(row["error"]):
                problems.append(f"{where}: qc_status is error with no error text")
            continue
        if not _missing(row["error"]):
            problems.append(f"{where}: qc_status is {row['qc_status']!r} but the error column is set")
        if sha is None:
            problems.append(f"{where}: gated, yet no file_sha256")
            continue
        versions = software.get(None if _missing(row["versions_sha"]) else str(row["versions_sha"]))
        if versions is None:
            problems.append(f"{where}: versions_sha {_show(row['versions_sha'])} is not among run.json's software")
            continue
        for col, pkg in (("flowkit_version", "flowkit"), ("cytopipe_version", "cytopipe")):
            if not _same(row[col], versions.get(pkg)):
                problems.append(f"{where}: {col} is {_show(row[col])}, its software set says {versions.get(pkg)!r}")
        cache_file = _stored_result(run_dir, run, row, sha, versions, raw_thresholds, applied, every)
        try:
            stored = SampleResult.from_cache(RunFolder(run_dir).stored_result(cache_file.stem), str(row["file"]), "")
        except FileNotFoundError:
            problems.append(f"{where}: no stored result {cache_file.relative_to(run_dir)} for its file sha256, "
                            f"strategy, software and review decisions (the cache was removed, or one of them "
                            f"was edited)")
            continue
        except (OSError, json.JSONDecodeError, TypeError) as e:
            problems.append(f"{where}: stored result {cache_file.relative_to(run_dir)} is unreadable ({e})")
            continue
        entries[int(i)] = stored
        for col in ("file_sha256", "events_total", "cd4_count", "treg_count", "treg_pct_cd4"):
            if not _same(row[col], getattr(stored, col)):
                problems.append(f"{where}: {col} is {_show(row[col])}, its stored result "
                                f"{cache_file.relative_to(run_dir)} has {getattr(stored, col)!r}")
        if versions_sha(stored.versions) != row["versions_sha"]:
            problems.append(f"{where}: versions_sha is {_show(row['versions_sha'])}, its stored result was computed "
                            f"with {versions_sha(stored.versions)}")
        if stored.events_total is None or stored.cd4_count is None or stored.treg_count is None:
            problems.append(f"{where}: its stored result {cache_file.relative_to(run_dir)} has no counts, though the "
                            f"row is gated")
            continue
        flags = sample_flags(stored.events_total, stored.cd4_count, stored.treg_count, thresholds=thresholds,
                             time_metrics=stored.time_qc, pregated=bool(row_site(row)[1])) + list(stored.panel_flags)
        flags += (stored.auto_gates or {}).get("qc_flags", [])
        have = {f for f in str("" if _missing(row["qc_flags"]) else row["qc_flags"]).split(";") if f}
        if have - _TABLE_FLAGS != set(flags):
            problems.append(f"{where}: qc_flags are {sorted(have)}, the stored result with run.json's thresholds "
                            f"gives {sorted(set(flags))}")
        if row["qc_status"] != ("flag" if have else "ok"):
            problems.append(f"{where}: qc_status is {row['qc_status']!r} with qc_flags {sorted(have)}")
    return entries


def _stored_result(run_dir: Path, run: RunRecord, row: pd.Series, sha: str, versions: dict[str, str],
                   thresholds: dict[str, Any], applied: list[Decision], every: list[Decision]) -> Path:
    """The row's stored result in ``cache/``, found by the key its numbers were computed under.

    The gate adjustments in the key are those of the decisions made until the
    review station last gated the sample again (``run.json`` ``recomputed``),
    else those the run read (``run.json`` ``review_decisions``), else all; the
    first key with a stored result is the row's. Without one, the first key
    is named.
    """
    file, strategy_sha = str(row["file"]), str(run.strategy_sha256)
    histories = []
    when = _time(run.recomputed.get(file))
    if when is not None:
        histories.append([d for d in every if (_time(d.time) or when) <= when])
    histories += [applied, every]
    candidates = []
    for decisions in histories:
        digest = adjustments_digest(gate_adjustments(decisions, file, sha, strategy_sha=strategy_sha))
        key = cache_key(sha, strategy_sha, adjusted=digest, versions=versions, thresholds=thresholds,
                        manifest_sha=str(run.strategy_manifest_sha256 or ""),
                        conform=conform_digest(*row_site(row)))
        path = RunFolder(run_dir).stored_result_path(key)
        if path.is_file():
            return path
        candidates.append(path)
    return candidates[0]


def _time(text: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _check_populations(run_dir: Path, treg: pd.DataFrame, pops: pd.DataFrame, entries: dict[int, SampleResult],
                       problems: list[str]) -> None:
    path = run_dir / "populations.parquet"
    by_file = {str(treg.at[i, "file"]): i for i in treg.index}
    seen: set[tuple[str, str]] = set()
    for j, p in pops.iterrows():
        where = _where(path, int(j), "populations", p)
        i = by_file.get(str(p["file"]))
        if i is None or treg.at[i, "qc_status"] == "error":
            problems.append(f"{where}: no gated sample of that file in treg_by_visit")
            continue
        row = treg.loc[i]
        for col in ("patient_id", "visit", "strategy", "strategy_version"):
            if not _same(p[col], row[col]):
                problems.append(f"{where}: {col} is {_show(p[col])}, treg_by_visit row {i + 1} has {_show(row[col])}")
        if not _missing(p["count"]) and not _missing(p["parent_count"]):
            pct_parent = 100.0 * p["count"] / p["parent_count"] if p["parent_count"] else float("nan")
            if not _same(p["pct_parent"], pct_parent):
                problems.append(f"{where}: pct_parent is {_show(p['pct_parent'])}, 100 x count / parent_count "
                                f"is {pct_parent!r}")
        stored = entries.get(i)
        if stored is None:  # no stored result: already reported with the treg_by_visit row
            continue
        versions = stored.versions or {}
        for col, value in (("flowkit_version", versions.get("flowkit")), ("versions_sha", versions_sha(versions))):
            if not _same(p[col], value):
                problems.append(f"{where}: {col} is {_show(p[col])}, the stored result was computed with {value!r}")
        gates = {g[0]: g for g in stored.gates}
        g = gates.get(str(p["gate_path"]))
        seen.add((str(p["file"]), str(p["gate_path"])))
        if g is None:
            problems.append(f"{where}: gate not in the sample's stored result")
            continue
        for col, value in (("count", g[1]), ("parent_count", g[2])):
            if not _same(p[col], value):
                problems.append(f"{where}: {col} is {_show(p[col])}, the stored result has {value!r}")
        total = stored.events_total or 0
        pct_total = 100.0 * g[1] / total if total else float("nan")
        if not _same(p["pct_total"], pct_total):
            problems.append(f"{where}: pct_total is {_show(p['pct_total'])}, the stored result gives {pct_total!r}")
    for i, stored in entries.items():
        for g in stored.gates:
            if (str(treg.at[i, "file"]), g[0]) not in seen:
                problems.append(f"{path}: no row for gate {g[0]} of {treg.at[i, 'file']} (treg_by_visit row {i + 1}); "
                                f"its stored result has one")


# -- files outside the tables: FCS files, the sheet, the strategy, the sample gates ----------------


def _check_files(run_dir: Path, run: RunRecord, treg: pd.DataFrame, problems: list[str]) -> None:
    sheet = Path(run.sample_sheet or "")
    if sheet.is_file() and file_sha256(sheet) != run.sample_sheet_sha256:
        problems.append(f"{sheet}: sha256 {file_sha256(sheet)} differs from {run.sample_sheet_sha256} in "
                        f"{run_dir / 'run.json'}: the sample sheet changed since the run")
    base = sheet.resolve().parent
    path = run_dir / "treg_by_visit.parquet"
    for i, row in treg.iterrows():
        if _missing(row["file_sha256"]):
            continue
        fcs = (base / str(row["file"])).resolve()
        if not fcs.is_file():  # moved or archived elsewhere: nothing to compare
            continue
        sha = file_sha256(fcs)
        if sha != row["file_sha256"]:
            problems.append(f"{fcs}: sha256 {sha} differs from {_where(path, int(i), 'treg_by_visit', row)} "
                            f"file_sha256 {row['file_sha256']}: the FCS file changed since the run")


def _check_strategy(run_dir: Path, run: RunRecord, problems: list[str]) -> None:
    run_json = run_dir / "run.json"
    ref = f"{run.strategy}@{run.strategy_version}"
    where = run.strategy_dir or ref
    try:
        used = load_strategy(where, allow_draft=True)  # a released version is checked against its release too
    except CytopipeError as e:
        problems.append(f"{run_json}: the run's strategy {where}: {e}")
        used = None
    if used is not None and used.sha256 != run.strategy_sha256:
        problems.append(f"{used.gatingml_path}: sha256 {used.sha256} differs from strategy_sha256 "
                        f"{run.strategy_sha256} in {run_json}: the strategy changed since the run")
    if used is not None and used.manifest_sha256 != run.strategy_manifest_sha256:
        problems.append(f"{used.directory / 'manifest.json'}: sha256 {used.manifest_sha256} differs from "
                        f"strategy_manifest_sha256 {run.strategy_manifest_sha256} in {run_json}: "
                        "the strategy's manifest changed since the run")
    try:
        registered = strategy_dir(ref)
    except CytopipeError:  # a folder outside the registry, or a version never registered
        return
    if used is not None and registered.resolve() == used.directory.resolve():
        return
    try:
        reg = load_strategy(registered, allow_draft=True)
    except CytopipeError as e:
        problems.append(f"{registered}: the registry's {ref}: {e}")
        return
    if reg.sha256 != run.strategy_sha256:
        problems.append(f"{reg.gatingml_path}: the registry's {ref} has sha256 {reg.sha256}, the run used "
                        f"{run.strategy_sha256} ({run_json})")


def _check_sample_gates(run_dir: Path, run: RunRecord, treg: pd.DataFrame, entries: dict[int, SampleResult],
                        problems: list[str]) -> None:
    mif_path = run_dir / "miflowcyt.json"
    try:
        samples = RunFolder(run_dir).miflowcyt()["samples"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        problems.append(f"{mif_path}: missing or unreadable ({type(e).__name__}: {e})")
        return
    if len(samples) != len(treg):
        problems.append(f"{mif_path}: {len(samples)} samples, treg_by_visit has {len(treg)} rows")
    for i, (s, (_, row)) in enumerate(zip(samples, treg.iterrows())):
        where = f"{mif_path}: sample {i + 1} ({row['patient_id']}:{row['visit']}, {row['file']})"
        if s.get("file") != row["file"]:
            problems.append(f"{where}: names file {s.get('file')!r}, treg_by_visit row {i + 1} has {row['file']!r}")
            continue
        name = s.get("gates_file")
        if row["qc_status"] == "error":
            continue
        if not name:
            problems.append(f"{where}: names no gates file, yet the sample was gated")
            continue
        gates = run_dir / name
        if not gates.is_file():
            problems.append(f"{gates}: missing (named by {where})")
            continue
        data = gates.read_bytes()
        sha = file_sha256(gates)
        if sha != s.get("gates_sha256"):
            problems.append(f"{gates}: sha256 {sha} differs from {s.get('gates_sha256')} in {where}")
        stored = entries.get(i)
        if stored is None:
            continue
        own = stored.applied_gatingml()
        if own is not None and data != own.encode("utf-8"):
            problems.append(f"{gates}: differs from the gates in the sample's stored result (treg_by_visit row "
                            f"{i + 1})")
        elif own is None and sha != run.strategy_sha256:
            problems.append(f"{gates}: should be the strategy's GatingML (sha256 {run.strategy_sha256}), "
                            f"is {sha} (treg_by_visit row {i + 1})")
