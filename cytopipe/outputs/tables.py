"""Output tables, their schema and provenance, written atomically.

Every table a run writes is documented here (and in the README); the column
lists are the stable contract with the statisticians who ingest them.

A table is written crash-consistently: its CSV and Parquet copies go to
temporary files and are renamed into place together, then the table's
manifest (``<table>.manifest.json``: both files' sha256, the row count and
:data:`SCHEMA_VERSION`) is written last. Copies that a crash, or a hand,
left disagreeing no longer match the manifest (``cytopipe verify``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from ..exceptions import OutputError

__all__ = [
    "SCHEMA_VERSION",
    "TREG_COLUMNS",
    "POPULATION_COLUMNS",
    "atomic_write",
    "atomic_write_many",
    "write_table",
    "write_json",
    "read_treg_table",
    "RUN_LOCK",
    "run_folder_lock",
    "manifest_path",
]

#: Version of the output tables' schema, in each table's manifest and in docs/outputs.md.
#: The minor number goes up when a column is added, the major when one is removed, renamed
#: or changes type. 1.0: the tables before manifests; 1.1: ``versions_sha`` in both run
#: tables and ``flowkit_version`` in ``populations`` (the worker's, issue 19).
SCHEMA_VERSION = "1.1"

#: The leading columns of ``treg_by_visit``, in order, with their pandas dtype.
#: Extra sample-sheet columns follow them, as strings.
TREG_COLUMNS: dict[str, str] = {
    "patient_id": "string",
    "visit": "string",
    "day": "Int64",
    "file": "string",
    "file_sha256": "string",
    "events_total": "Int64",
    "cd4_count": "Int64",
    "treg_count": "Int64",
    "treg_pct_cd4": "float64",
    "qc_status": "string",
    "qc_flags": "string",
    "error": "string",
    "strategy": "string",
    "strategy_version": "string",
    "strategy_sha256": "string",
    "cytopipe_version": "string",
    "flowkit_version": "string",
    "versions_sha": "string",
    "review_status": "string",
    "reviewer": "string",
    "reviewed_at": "string",
}

#: Columns of ``populations.parquet``: one row per sample and gate.
POPULATION_COLUMNS: dict[str, str] = {
    "patient_id": "string",
    "visit": "string",
    "file": "string",
    "gate_path": "string",
    "gate": "string",
    "count": "Int64",
    "parent_count": "Int64",
    "pct_parent": "float64",
    "pct_total": "float64",
    "strategy": "string",
    "strategy_version": "string",
    "flowkit_version": "string",
    "versions_sha": "string",
}


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write a file through a temporary sibling, then rename it into place.

    A crash or a failing write leaves any earlier file at ``path`` intact
    and never a truncated file under the final name.

    Parameters
    ----------
    path
        The final file.
    write
        Called with the temporary file's path; must write the whole file.

    Raises
    ------
    OutputError
        The write failed (disk full, permissions); the temporary file is
        removed and any earlier ``path`` is untouched.
    """
    return atomic_write_many([(path, write)])[0]


def atomic_write_many(items: list[tuple[str | os.PathLike, Callable[[str], Any]]]) -> list[Path]:
    """Write several files so that either all are replaced or none is.

    Every file is written to a temporary sibling first; only when all are
    complete are they renamed into place. Used for a table's CSV and Parquet
    copies, which must never disagree.
    """
    done: list[tuple[str, Path]] = []
    tmp = None
    target = Path(items[0][0])
    try:
        for path, write in items:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            write(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are read by others
            done.append((tmp, target))
            tmp = None
        for t, final in done:
            os.replace(t, final)
    except OSError as e:
        for t in [tmp] + [t for t, _ in done]:
            if t is not None:
                Path(t).unlink(missing_ok=True)
        msg = (
            f"Cannot write {target}: {e.strerror or e}. Nothing under that name was changed; free disk "
            f"space or fix permissions and re-run (finished samples are reused)."
        )
        raise OutputError(msg) from e
    except BaseException:
        for t in [tmp] + [t for t, _ in done]:
            if t is not None:
                Path(t).unlink(missing_ok=True)
        raise
    return [final for _, final in done]


def _typed(df: pd.DataFrame, schema: dict[str, str]) -> pd.DataFrame:
    out = df.copy()
    for col, dtype in schema.items():
        if col not in out.columns:
            out[col] = pd.Series(index=out.index, dtype=dtype)
        out[col] = out[col].astype(dtype)
    extra = [c for c in out.columns if c not in schema]
    for col in extra:
        out[col] = out[col].astype("string")
    return out[list(schema) + extra]


def manifest_path(base: str | os.PathLike) -> Path:
    """The manifest of the table written as ``base.parquet`` / ``base.csv``: ``base.manifest.json``."""
    base = Path(base)
    return base.with_name(base.name + ".manifest.json")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_table(df: pd.DataFrame, base: str | os.PathLike, schema: dict[str, str], *, csv: bool = True) -> list[Path]:
    """Write ``df`` as ``base.parquet`` (and ``base.csv``) with the schema's columns first, then its manifest.

    Both copies are replaced together (:func:`atomic_write_many`); the
    manifest ``base.manifest.json`` (see :func:`manifest_path`) is written
    after them: ``table``, ``schema_version``, ``rows``, ``columns`` and per
    file its ``sha256`` and ``bytes``. A crash between the two leaves an old
    manifest that names other hashes, which ``cytopipe verify`` reports.

    Returns
    -------
    list of Path
        The files written, the manifest last.
    """
    base = Path(base)
    table = _typed(df, schema)
    items = [(base.with_suffix(".parquet"), lambda p: table.to_parquet(p, index=False))]
    if csv:
        items.append((base.with_suffix(".csv"), lambda p: table.to_csv(p, index=False)))
    files = atomic_write_many(items)
    manifest = {
        "table": base.name,
        "schema_version": SCHEMA_VERSION,
        "rows": len(table),
        "columns": [str(c) for c in table.columns],
        "files": {f.name: {"sha256": _file_sha256(f), "bytes": f.stat().st_size} for f in files},
    }
    return files + [write_json(manifest, manifest_path(base))]


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def read_treg_table(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Read a run's ``treg_by_visit.parquet`` with its documented dtypes."""
    df = pd.read_parquet(Path(run_dir) / "treg_by_visit.parquet")
    return _typed(df, TREG_COLUMNS)


#: The lock file ``cytopipe run`` holds on its output folder while it writes it.
RUN_LOCK = ".cytopipe-run.lock"


@contextmanager
def run_folder_lock(run_dir: str | os.PathLike, holder: str = "cytopipe review"):
    """Hold a run folder's lock while its tables and review log are changed; refuse while another holds it.

    The same advisory ``flock`` ``cytopipe run`` holds on its output folder:
    a decision (from the command line or the review station) and a run never
    rewrite a folder's tables at the same time, so none undoes the other.

    Raises
    ------
    OutputError
        Another process holds the folder; the message names it.
    """
    path = Path(run_dir) / RUN_LOCK
    fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (closed below)
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "another process"
            msg = (f"{run_dir} is being written by another process ({other}); wait for it to finish, "
                   "then try again.")
            raise OutputError(msg) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{holder}, pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()
