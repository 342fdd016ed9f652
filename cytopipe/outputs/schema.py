"""The data dictionary of every output table, and the check of a table against it.

One Python structure (:data:`TABLES`) is the source of truth. From it come the
pandas dtypes used to write each table, ``docs/outputs.md`` (for people) and
``docs/outputs.schema.json`` (for programs: a Frictionless-style descriptor,
one resource per table, fields with type, description and constraints).
``python -m cytopipe.outputs.schema docs/`` regenerates both files; a test checks
they are up to date and that every table a run or an endpoint analysis writes
validates with :func:`validate_table`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ..exceptions import OutputSchemaError
from .schema_tables import SCHEMA_VERSION, TABLES

__all__ = ["TABLES", "dtypes_for", "read_output", "validate_table", "write_docs", "render_markdown",
           "render_json"]

# pandas dtype -> Frictionless type
_FRICTIONLESS = {"string": "string", "Int64": "integer", "float64": "number", "boolean": "boolean"}


def _spec(name: str) -> dict[str, Any]:
    if name not in TABLES:
        msg = f"Unknown output table {name!r}; the data dictionary has {sorted(TABLES)}."
        raise OutputSchemaError(msg)
    return TABLES[name]


def _field(spec: dict[str, Any], column: str) -> dict[str, Any] | None:
    for f in [*spec["columns"], *spec.get("optional_columns", [])]:
        if f["name"] == column:
            return f
    for f in spec.get("column_patterns", []):
        if re.fullmatch(f["regex"], column):
            return f
    return None


def dtypes_for(name: str, columns: list[str]) -> dict[str, str]:
    """The pandas dtype of each of ``columns`` in table ``name`` (extra columns: ``string``).

    The documented leading columns come first, in their documented order.
    """
    spec = _spec(name)
    out = {f["name"]: f["dtype"] for f in spec["columns"]}
    for c in columns:
        if c not in out:
            f = _field(spec, c)
            out[c] = f["dtype"] if f else "string"
    return out


def _kind_ok(series: pd.Series, dtype: str) -> bool:
    s = series.dropna()
    if s.empty:
        return True
    if dtype == "string":
        return pd.api.types.is_string_dtype(series) or pd.api.types.is_object_dtype(series) and all(
            isinstance(v, str) for v in s)
    if dtype == "Int64":
        if pd.api.types.is_integer_dtype(series):
            return True
        return pd.api.types.is_float_dtype(series) and bool((s == s.round()).all())
    if dtype == "float64":
        return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if dtype == "boolean":
        return pd.api.types.is_bool_dtype(series)
    return False


def validate_table(df: pd.DataFrame, name: str) -> None:
    """Check a table against its entry in the data dictionary.

    Checks: the documented columns are present and lead in their documented
    order; each known column has the documented type; non-nullable columns
    have no missing value; values are among the allowed ones (for ``;``-lists,
    each item) and match the documented pattern; extra columns are allowed
    only where the table allows them.

    Parameters
    ----------
    df
        The table, e.g. as read back by :func:`read_output`.
    name
        Its name in :data:`TABLES` (e.g. ``"treg_by_visit"``).

    Raises
    ------
    OutputSchemaError
        Listing every problem found.
    """
    spec = _spec(name)
    problems: list[str] = []
    expected = [f["name"] for f in spec["columns"]]
    cols = list(df.columns)
    missing = [c for c in expected if c not in cols]
    if missing:
        problems.append(f"missing column(s) {missing}")
    elif cols[: len(expected)] != expected:
        problems.append(f"the first columns are {cols[:len(expected)]}, expected {expected}")
    for col in cols:
        f = _field(spec, col)
        if f is None:
            if not spec.get("extra_columns_allowed", False):
                problems.append(f"undocumented column {col!r}")
            continue
        series = df[col]
        if not _kind_ok(series, f["dtype"]):
            problems.append(f"column {col!r} should be {f['dtype']}, found {series.dtype} "
                            f"(e.g. {series.dropna().head(3).tolist()!r})")
            continue
        if not f.get("nullable", True) and series.isna().any():
            rows = series.index[series.isna()].tolist()[:5]
            problems.append(f"column {col!r} has missing values (rows {rows})")
        values = series.dropna()
        if "allowed" in f and len(values):
            items = values.astype(str)
            if f.get("list_separator"):
                items = pd.Series([i for v in items for i in v.split(f["list_separator"]) if i])
            if f.get("item_detail_separator"):  # "flow_rate:3.2%" is the flag flow_rate with a detail
                items = items.str.split(f["item_detail_separator"]).str[0]
            bad = sorted(set(items) - set(f["allowed"]))
            if bad:
                problems.append(f"column {col!r} has values {bad!r} outside {f['allowed']!r}")
        if "pattern" in f and len(values):
            bad = [v for v in values.astype(str) if not re.fullmatch(f["pattern"], v)]
            if bad:
                problems.append(f"column {col!r} has values {bad[:3]!r} not matching {f['pattern']!r}")
    if problems:
        msg = f"Table {name!r} does not match the data dictionary (docs/outputs.md): " + "; ".join(problems)
        raise OutputSchemaError(msg)


def read_output(path: str | os.PathLike, name: str) -> pd.DataFrame:
    """Read a written table (``.csv`` or ``.parquet``) with the dictionary's dtypes.

    CSV text is parsed column by column with the documented type, so a value
    that does not parse (``"abc"`` in an integer column) raises.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    header = pd.read_csv(path, nrows=0).columns.tolist()
    dtypes = dtypes_for(name, header)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    out = {}
    for col in raw.columns:
        dt = dtypes.get(col, "string")
        try:
            if dt == "string":
                out[col] = raw[col].astype("string")
            elif dt == "boolean":
                out[col] = raw[col].map({"True": True, "False": False}).astype("boolean")
            else:
                out[col] = pd.to_numeric(raw[col]).astype(dt)
        except (ValueError, TypeError) as e:
            msg = f"{path}: column {col!r} does not parse as {dt}: {e}"
            raise OutputSchemaError(msg) from e
    return pd.DataFrame(out, columns=raw.columns)


def render_json() -> dict[str, Any]:
    """The machine-readable schema (Frictionless-style descriptor) as a dict."""
    resources = []
    for name, spec in TABLES.items():
        def field(f: dict[str, Any], required: bool) -> dict[str, Any]:
            out = {"name": f["name"], "type": _FRICTIONLESS[f["dtype"]], "pandas_dtype": f["dtype"],
                   "description": f["description"]}
            cons: dict[str, Any] = {}
            if required and not f.get("nullable", True):
                cons["required"] = True
            if "allowed" in f:
                cons["enum"] = list(f["allowed"])
            if "pattern" in f:
                cons["pattern"] = f["pattern"]
            if cons:
                out["constraints"] = cons
            if f.get("list_separator"):
                out["list_separator"] = f["list_separator"]
            if "regex" in f:
                out["name_regex"] = f["regex"]
            return out

        resources.append({
            "name": name,
            "path": spec["files"],
            "written_by": spec["written_by"],
            "description": spec["description"],
            "schema": {
                "fields": [field(f, True) for f in spec["columns"]],
                "optional_fields": [field(f, False) for f in spec.get("optional_columns", [])],
                "field_patterns": [field(f, False) for f in spec.get("column_patterns", [])],
                "extra_fields_allowed": bool(spec.get("extra_columns_allowed", False)),
                "leading_fields_in_order": True,
            },
        })
    return {"name": "cytopipe-outputs", "profile": "data-package", "version": SCHEMA_VERSION,
            "resources": resources}


def render_markdown() -> str:
    """``docs/outputs.md``: the data dictionary for people."""
    lines = ["# Output tables: the data dictionary", "",
             "Generated from `cytopipe/schema_tables.py` by `python -m cytopipe.outputs.schema docs/`;",
             "the machine-readable form is `docs/outputs.schema.json`. Every table written by",
             "`cytopipe run` and `cytopipe endpoint` is checked against it in the tests",
             "(`cytopipe.outputs.schema.validate_table`). The documented columns come first, in this order.",
             "Types: `string` text, `Int64` integer (empty when missing), `float64` number.", "",
             f"Schema version **{SCHEMA_VERSION}**, recorded in every table's manifest "
             "(`<table>.manifest.json`, written after the table: both copies' sha256, the row count; "
             "`cytopipe verify` checks it). The minor number goes up when a column is added, the major "
             "when one is removed, renamed or changes type.", ""]
    for name, spec in TABLES.items():
        lines += [f"## `{name}`", "", f"Written by `cytopipe {spec['written_by']}`: "
                  + ", ".join(f"`{p}`" for p in spec["files"]) + ".", "", spec["description"], "",
                  "| column | type | missing allowed | meaning |", "|---|---|---|---|"]
        groups = [("", spec["columns"]), (" (optional)", spec.get("optional_columns", [])),
                  (" (one per visit)", spec.get("column_patterns", []))]
        for tag, fields in groups:
            for f in fields:
                extra = ""
                if "allowed" in f:
                    extra += " Values: " + ", ".join(f"`{a}`" for a in f["allowed"]) + "."
                if "pattern" in f:
                    extra += f" Pattern: `{f['pattern']}`."
                null = "yes" if f.get("nullable", True) else "no"
                lines.append(f"| `{f['name']}`{tag} | {f['dtype']} | {null} | {f['description']}{extra} |")
        extra_txt = ("Any other column (e.g. from the sample sheet) follows, as text."
                     if spec.get("extra_columns_allowed") else "No other column is written.")
        lines += ["", extra_txt, ""]
    return "\n".join(lines)


def write_docs(directory: str | os.PathLike) -> list[Path]:
    """Write ``outputs.md`` and ``outputs.schema.json`` into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    md, js = d / "outputs.md", d / "outputs.schema.json"
    md.write_text(render_markdown(), encoding="utf-8")
    js.write_text(json.dumps(render_json(), indent=2) + "\n", encoding="utf-8")
    return [md, js]


if __name__ == "__main__":  # pragma: no cover
    for p in write_docs(sys.argv[1] if len(sys.argv) > 1 else "docs"):
        print(f"wrote {p}")
