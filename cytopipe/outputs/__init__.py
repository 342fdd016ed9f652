"""Stage 4: the run folder (its record, tables and review log: ``RunFolder``), the run's tables
(atomic writes, their schema), the MIFlowCyt record, and the self-contained HTML page the
report and the endpoint page are built on.
"""

from __future__ import annotations

from .html import escape, html_page, img_tag
from .miflowcyt import (
    SAMPLE_GATES_DIR,
    build_miflowcyt,
    gatingml_definitions,
    instrument_fields,
    replace_sample_gates,
    sample_gates_name,
    write_miflowcyt,
    write_sample_gates,
)
from .runfolder import GENESIS, REVIEW_FILE, RUN_FILE, Decision, RunFolder, RunRecord, row_site, site_options
from .schema import TABLES, dtypes_for, read_output, render_json, render_markdown, validate_table, write_docs
from .schema_tables import EXCLUSION_REASONS, PATIENT_STATUSES
from .tables import (
    POPULATION_COLUMNS,
    RUN_LOCK,
    SCHEMA_VERSION,
    TREG_COLUMNS,
    atomic_write,
    atomic_write_many,
    manifest_path,
    read_treg_table,
    run_folder_lock,
    write_json,
    write_table,
)

__all__ = [
    "EXCLUSION_REASONS",
    "PATIENT_STATUSES",
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
    "GENESIS",
    "REVIEW_FILE",
    "RUN_FILE",
    "Decision",
    "RunFolder",
    "RunRecord",
    "row_site",
    "site_options",
    "TABLES",
    "dtypes_for",
    "read_output",
    "validate_table",
    "write_docs",
    "render_markdown",
    "render_json",
    "gatingml_definitions",
    "build_miflowcyt",
    "instrument_fields",
    "replace_sample_gates",
    "write_miflowcyt",
    "SAMPLE_GATES_DIR",
    "sample_gates_name",
    "write_sample_gates",
    "escape",
    "html_page",
    "img_tag",
]
