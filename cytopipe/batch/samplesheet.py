"""Read and check a sample sheet before any gating starts.

A sample sheet is a CSV file with the columns ``file`` (relative to the
sheet's folder), ``patient_id`` and ``visit``, an optional ``day``, and any
other columns, which are carried through to the outputs. Sheets are typed by
hand, so every problem is collected and reported at once, with line numbers.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..exceptions import SampleSheetError

__all__ = ["REQUIRED_COLUMNS", "read_sample_sheet"]

REQUIRED_COLUMNS = ("file", "patient_id", "visit")


def read_sample_sheet(path: str | os.PathLike, *, allow_outside: bool = False) -> pd.DataFrame:
    """Read a sample sheet and check every row.

    Parameters
    ----------
    path
        The CSV sample sheet. A UTF-8 byte order mark and Windows line ends
        are accepted; empty lines are skipped.
    allow_outside
        Accept ``file`` paths that leave the sheet's folder (``..`` or
        absolute paths).

    Returns
    -------
    pandas.DataFrame
        One row per sample, all columns as strings, plus ``path`` (the
        resolved absolute file path) and ``line`` (the sheet's line number).
        ``day`` is an integer column (``<NA>`` where absent).

    Raises
    ------
    SampleSheetError
        Listing every problem: missing columns, empty fields, files that do
        not exist, duplicate (patient_id, visit), non-integer days, paths
        outside the sheet's folder.
    """
    sheet = Path(path)
    try:
        text = sheet.read_bytes().decode("utf-8-sig")
    except FileNotFoundError as e:
        msg = f"{sheet}: sample sheet not found."
        raise SampleSheetError(msg) from e
    except UnicodeDecodeError as e:
        msg = f"{sheet}: the sample sheet is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 CSV."
        raise SampleSheetError(msg) from e
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = [(i + 1, r) for i, r in enumerate(reader)]
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]
    if not rows:
        msg = f"{sheet}: the sample sheet is empty; expected a header with {list(REQUIRED_COLUMNS)}."
        raise SampleSheetError(msg)
    header_line, header = rows[0]
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        msg = f"{sheet}: line {header_line}: missing column(s) {missing}; the header has {header}."
        raise SampleSheetError(msg)
    dupes = sorted({h for h in header if header.count(h) > 1})
    problems: list[str] = []
    if dupes:
        problems.append(f"line {header_line}: duplicate column(s) {dupes}")
    base = sheet.resolve().parent
    records = []
    seen: dict[tuple[str, str], int] = {}
    for line, raw in rows[1:]:
        if len(raw) != len(header):
            problems.append(f"line {line}: {len(raw)} fields, the header has {len(header)}")
            continue
        rec: dict[str, Any] = {h: v.strip() for h, v in zip(header, raw)}
        for col in REQUIRED_COLUMNS:
            if not rec[col]:
                problems.append(f"line {line}: empty {col!r}")
        if rec.get("day"):
            try:
                int(rec["day"])
            except ValueError:
                problems.append(f"line {line}: day {rec['day']!r} is not a whole number")
        if rec["file"]:
            target = (base / rec["file"]).resolve()
            if not allow_outside and not target.is_relative_to(base):
                problems.append(
                    f"line {line}: file {rec['file']!r} is outside the sheet's folder {base} "
                    "(use --allow-outside to accept it)"
                )
            elif not target.is_file():
                problems.append(f"line {line}: file {rec['file']!r} not found (looked for {target})")
            rec["path"] = str(target)
        key = (rec["patient_id"], rec["visit"])
        if all(key):
            if key in seen:
                problems.append(
                    f"line {line}: patient {key[0]!r} visit {key[1]!r} already on line {seen[key]}"
                )
            else:
                seen[key] = line
        rec["line"] = line
        records.append(rec)
    if not records and not problems:
        problems.append("no sample rows below the header")
    if problems:
        msg = f"{sheet}: {len(problems)} problem(s): " + "; ".join(problems)
        raise SampleSheetError(msg)
    df = pd.DataFrame.from_records(records)
    if "day" not in df.columns:
        df["day"] = pd.NA
    df["day"] = pd.to_numeric(df["day"].replace("", pd.NA)).astype("Int64")
    return df
