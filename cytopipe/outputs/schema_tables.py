"""The data dictionary itself: every output table of ``run`` and ``endpoint``.

Plain data, checked by :mod:`cytopipe.outputs.schema`. Column order and dtypes of the
``run`` tables come from :mod:`cytopipe.outputs.tables`, so the two cannot drift
apart; only the descriptions live here.
"""

from __future__ import annotations

from typing import Any

from .tables import POPULATION_COLUMNS, SCHEMA_VERSION, TREG_COLUMNS

__all__ = ["TABLES", "EXCLUSION_REASONS", "PATIENT_STATUSES", "SCHEMA_VERSION"]

EXCLUSION_REASONS = ("superseded", "qc_error", "review_rejected", "not_randomised")
PATIENT_STATUSES = ("complete", "missing_baseline", "missing_visit", "missing_baseline_and_visit",
                    "not_randomised")
_SHA = "[0-9a-f]{64}"


def _cols(dtypes: dict[str, str], descr: dict[str, str], extra: dict[str, dict[str, Any]] | None = None):
    out = []
    for name, dtype in dtypes.items():
        # a column added to results.py without a description here still validates;
        # tests/test_schema.py fails until it is described
        f = {"name": name, "dtype": dtype, "description": descr.get(name, "UNDOCUMENTED")}
        f.update((extra or {}).get(name, {}))
        out.append(f)
    return out


_TREG_DESCR = {
    "patient_id": "Patient, from the sample sheet.",
    "visit": "Visit name, from the sample sheet (e.g. `D1`).",
    "day": "Study day of the visit, from the sample sheet.",
    "file": "FCS file as written in the sample sheet.",
    "file_sha256": "sha256 of the FCS file (empty if unreadable).",
    "events_total": "Events in the file.",
    "cd4_count": "Events in the strategy's denominator gate (CD4+ T cells).",
    "treg_count": "Events in the strategy's numerator gate (Tregs).",
    "treg_pct_cd4": "100 x treg_count / cd4_count; empty when qc_status is error.",
    "qc_status": "Outcome of gating and QC.",
    "qc_flags": "`;`-separated QC flags: `low_events` (< 20,000 events in a whole tube; not for a pre-gated "
                "export), `low_cd4` (95 % Wilson CI half-width of Treg % CD4 > 1 percentage point), "
                "`flow_rate:<p>%` and `signal_drift:<p>%` "
                "(Time-channel anomalies, with the share of events affected), `treg_outlier` (out of line "
                "with the patient's other visits), `auto_gate_fallback` (a data-driven gate fell back to the "
                "template), `needs_review:<gate>:<reason>` (a gate could not be placed from the data with "
                "confidence: the number waits for a reviewer), `unlabelled:<detector>` (the detector's $PnS "
                "names no marker; gated by its $PnN). Thresholds: `cytopipe/gating/qc_defaults.toml`.",
    "error": "One line naming the file and the cause; empty when gated.",
    "strategy": "Gating strategy name.",
    "strategy_version": "Strategy version; `1.1.0 (draft)` for a draft.",
    "strategy_sha256": "sha256 of the strategy's GatingML file.",
    "cytopipe_version": "cytopipe version of the worker that gated the sample (for a result reused from "
                        "`cache/`, of the worker that computed it); the driver's when no worker returned one.",
    "flowkit_version": "FlowKit version of the worker that gated the sample (as for `cytopipe_version`); "
                       "empty when no worker returned a result.",
    "versions_sha": "First 16 hex digits of the sha256 of the worker's software versions (JSON, sorted "
                    "keys: cytopipe, FlowKit, FlowIO, flowutils, numpy, scipy, scikit-learn, pandas, pyarrow, "
                    "dask, distributed, fcsparser, lxml, Python, platform); `run.json` `software` lists each "
                    "set in full. Empty when no worker returned a result.",
    "review_status": "Reviewer sign-off (`approved`, `rejected`, `adjusted`, `pending`). "
                     "`rejected` rows are excluded by `endpoint`.",
    "reviewer": "Who signed the review decision.",
    "reviewed_at": "When the review decision was signed (ISO 8601).",
}
_TREG_EXTRA = {
    "patient_id": {"nullable": False}, "visit": {"nullable": False}, "file": {"nullable": False},
    "file_sha256": {"pattern": _SHA}, "versions_sha": {"pattern": "[0-9a-f]{16}"},
    "qc_status": {"nullable": False, "allowed": ["ok", "flag", "error"]},
    "qc_flags": {"allowed": ["low_events", "low_cd4", "flow_rate", "signal_drift", "treg_outlier",
                             "auto_gate_fallback", "needs_review", "unlabelled"],
                 "list_separator": ";", "item_detail_separator": ":"},
    "strategy": {"nullable": False}, "strategy_sha256": {"pattern": _SHA},
    "review_status": {"allowed": ["approved", "rejected", "adjusted", "pending"]},
}
_POP_DESCR = {
    "patient_id": "Patient.", "visit": "Visit.", "file": "FCS file as in the sample sheet.",
    "gate_path": "Full gate path, `root/Lymphocytes/...`.", "gate": "Gate id (last element of gate_path).",
    "count": "Events in the gate.", "parent_count": "Events in the parent gate.",
    "pct_parent": "100 x count / parent_count.", "pct_total": "100 x count / events in the file.",
    "strategy": "Gating strategy name.", "strategy_version": "Strategy version.",
    "flowkit_version": "FlowKit version of the worker that gated the sample.",
    "versions_sha": "The worker's software versions, as in `treg_by_visit`.",
}

# endpoint tables: present only in a preliminary analysis (`endpoint --include-unreviewed`)
_PRELIMINARY = [{"name": "preliminary", "dtype": "boolean", "nullable": False,
                 "description": "Written, true on every row, only when the analysis used samples flagged for "
                                "review (`needs_review`, `auto_gate_fallback`) and not approved "
                                "(`endpoint --include-unreviewed`; listed in `OUT/endpoint.json`). "
                                "Absent from a final analysis."}]

_VISIT_PATTERNS = [
    {"name": "treg_pct_cd4_{VISIT}", "regex": r"treg_pct_cd4_.+", "dtype": "float64",
     "description": "Treg % of CD4 at that visit (empty when no usable sample)."},
    {"name": "change_pp_{VISIT}", "regex": r"change_pp_.+", "dtype": "float64",
     "description": "Change from baseline at that visit, percentage points."},
    {"name": "change_rel_pct_{VISIT}", "regex": r"change_rel_pct_.+", "dtype": "float64",
     "description": "Change from baseline at that visit, relative %: 100 x change / baseline."},
]

TABLES: dict[str, dict[str, Any]] = {
    "treg_by_visit": {
        "written_by": "run", "files": ["RUN_DIR/treg_by_visit.csv", "RUN_DIR/treg_by_visit.parquet"],
        "description": "One row per sample-sheet row, in sheet order. Extra sample-sheet columns follow "
                       "as text (e.g. `superseded`, see `endpoint`).",
        "columns": _cols(TREG_COLUMNS, _TREG_DESCR, _TREG_EXTRA),
        "optional_columns": [c for c in [
            {"name": "review_status", "dtype": "string", "allowed": ["approved", "rejected", "adjusted", "pending"],
             "description": "Reviewer sign-off, when the review step has run; `rejected` rows are "
                            "excluded by `endpoint`."},
            {"name": "superseded", "dtype": "string",
             "allowed": ["yes", "y", "true", "1", "no", "n", "false", "0", "Yes", "YES", "True", "TRUE",
                         "No", "NO", "False", "FALSE"],
             "description": "From the sample sheet: a true value marks this sample as replaced by the "
                            "same patient-visit in another run."},
        ] if c["name"] not in TREG_COLUMNS],
        "extra_columns_allowed": True,
    },
    "populations": {
        "written_by": "run", "files": ["RUN_DIR/populations.parquet"],
        "description": "One row per gated sample and gate.",
        "columns": _cols(POPULATION_COLUMNS, _POP_DESCR, {"gate_path": {"pattern": r"root(/[^/]+)+"},
                                                          "versions_sha": {"pattern": "[0-9a-f]{16}"}}),
    },
    "change_by_patient": {
        "written_by": "endpoint", "files": ["OUT/change_by_patient.csv", "OUT/change_by_patient.parquet"],
        "description": "One row per patient (randomised or seen in a run): baseline, endpoint visit, "
                       "change, then the value and change at every visit, in visit order (by day). "
                       "A patient without a usable baseline or endpoint sample stays, with the reason.",
        "columns": [
            {"name": "patient_id", "dtype": "string", "nullable": False, "description": "Patient."},
            {"name": "arm", "dtype": "string", "description": "Arm from the randomisation list "
             "(empty when not randomised)."},
            {"name": "dose", "dtype": "float64", "description": "Dose of the arm (MIU/day; 0 for control)."},
            {"name": "status", "dtype": "string", "nullable": False, "allowed": list(PATIENT_STATUSES),
             "description": "Whether the endpoint change could be computed, or why not."},
            {"name": "reason", "dtype": "string", "description": "Why the status is not `complete`, "
             "naming the excluded samples and their reasons."},
            {"name": "baseline_visit", "dtype": "string", "nullable": False, "description": "Baseline visit."},
            {"name": "endpoint_visit", "dtype": "string", "nullable": False, "description": "Endpoint visit."},
            {"name": "baseline_value", "dtype": "float64", "description": "Treg % of CD4 at baseline."},
            {"name": "endpoint_value", "dtype": "float64", "description": "Treg % of CD4 at the endpoint visit."},
            {"name": "change_pp", "dtype": "float64",
             "description": "endpoint_value - baseline_value, percentage points (the primary endpoint)."},
            {"name": "change_rel_pct", "dtype": "float64",
             "description": "100 x change_pp / baseline_value, relative %."},
        ],
        "optional_columns": _PRELIMINARY,
        "column_patterns": _VISIT_PATTERNS,
    },
    "arm_summary": {
        "written_by": "endpoint", "files": ["OUT/arm_summary.csv", "OUT/arm_summary.parquet"],
        "description": "One row per arm, control first, then by dose: change at the endpoint visit "
                       "(percentage points) and each active arm against control by two-sided "
                       "Mann-Whitney U. Quartiles are numpy's default (linear interpolation).",
        "columns": [
            {"name": "arm", "dtype": "string", "nullable": False, "description": "Arm."},
            {"name": "n", "dtype": "Int64", "nullable": False, "description": "Patients with a change."},
            {"name": "mean_change", "dtype": "float64", "description": "Mean change."},
            {"name": "sd_change", "dtype": "float64", "description": "Standard deviation (n - 1)."},
            {"name": "median_change", "dtype": "float64", "description": "Median change."},
            {"name": "q1_change", "dtype": "float64", "description": "First quartile."},
            {"name": "q3_change", "dtype": "float64", "description": "Third quartile."},
            {"name": "p_mannwhitney_asymptotic", "dtype": "float64", "description":
             "vs control: normal approximation without continuity correction (the abstract's p)."},
            {"name": "p_mannwhitney_exact", "dtype": "float64", "description": "vs control: exact p."},
            {"name": "p_method", "dtype": "string", "nullable": False,
             "description": "The methods of both p-values, in words (`reference arm` for control)."},
            {"name": "u_statistic", "dtype": "float64", "description": "U of the arm against control."},
            {"name": "dose", "dtype": "float64", "description": "Dose (MIU/day)."},
            {"name": "comparator", "dtype": "string", "description": "The control arm."},
            {"name": "n_randomised", "dtype": "Int64", "nullable": False, "description": "Patients randomised."},
            {"name": "n_missing", "dtype": "Int64", "nullable": False,
             "description": "Randomised patients without a change (see change_by_patient)."},
            {"name": "mean_baseline", "dtype": "float64", "description": "Mean baseline Treg % CD4."},
            {"name": "mean_endpoint", "dtype": "float64", "description": "Mean endpoint Treg % CD4."},
        ],
        "optional_columns": _PRELIMINARY,
    },
    "trend_test": {
        "written_by": "endpoint", "files": ["OUT/trend_test.csv", "OUT/trend_test.parquet"],
        "description": "Dose-response trend of the change across arms ordered by dose (one row).",
        "columns": [
            {"name": "test", "dtype": "string", "nullable": False, "description": "Test name."},
            {"name": "arms_in_order", "dtype": "string", "nullable": False,
             "description": "`;`-separated arms, lowest dose first."},
            {"name": "n", "dtype": "Int64", "nullable": False, "description": "Patients."},
            {"name": "statistic", "dtype": "float64", "description": "J statistic."},
            {"name": "z", "dtype": "float64", "description": "Standardised J."},
            {"name": "p_asymptotic_increasing", "dtype": "float64", "description": "One-sided, increasing."},
            {"name": "p_asymptotic_two_sided", "dtype": "float64", "description": "Two-sided."},
            {"name": "p_permutation_increasing", "dtype": "float64", "description": "Permutation p, one-sided."},
            {"name": "n_permutations", "dtype": "Int64", "description": "Permutations used."},
            {"name": "p_method", "dtype": "string", "nullable": False, "description": "Methods, in words."},
        ],
        "optional_columns": _PRELIMINARY,
    },
    "exclusions": {
        "written_by": "endpoint", "files": ["OUT/exclusions.csv", "OUT/exclusions.parquet"],
        "description": "Every per-visit sample of the runs not used by the analysis, with the reason.",
        "columns": [
            {"name": "patient_id", "dtype": "string", "nullable": False, "description": "Patient."},
            {"name": "visit", "dtype": "string", "nullable": False, "description": "Visit."},
            {"name": "run_dir", "dtype": "string", "nullable": False, "description": "Run folder."},
            {"name": "file", "dtype": "string", "description": "FCS file."},
            {"name": "reason", "dtype": "string", "nullable": False, "allowed": list(EXCLUSION_REASONS),
             "description": "Why it was excluded."},
            {"name": "detail", "dtype": "string", "description": "The error, reviewer decision or "
             "replacing run."},
        ],
        "optional_columns": _PRELIMINARY,
    },
    "sdtm_cp": {
        "written_by": "endpoint", "files": ["OUT/sdtm_cp.csv", "OUT/sdtm_cp.parquet", "OUT/sdtm_cp.xpt"],
        "description": "CDISC SDTM CP (Cell Phenotype Findings): two results per patient-visit sample "
                       "(Treg % of CD4 and the CD4+ T cell count), superseded samples left out; a sample "
                       "without a result has CPSTAT `NOT DONE` and the reason in CPREASND. Written only with "
                       "a study id. `sdtm_cp.xpt` is the same rows as SAS transport v5 (dataset `CP`, "
                       "SDTMIG v3.4 labels; `preliminary` becomes `PRELIM` = `Y`), described by "
                       "`OUT/define.xml` (Define-XML 2.0). Text is ASCII, at most 200 characters.",
        "columns": [
            {"name": "STUDYID", "dtype": "string", "nullable": False, "description": "Study identifier."},
            {"name": "DOMAIN", "dtype": "string", "nullable": False, "allowed": ["CP"],
             "description": "Domain abbreviation."},
            {"name": "USUBJID", "dtype": "string", "nullable": False, "description": "STUDYID-patient_id."},
            {"name": "CPSEQ", "dtype": "Int64", "nullable": False, "description": "Sequence within subject."},
            {"name": "CPREFID", "dtype": "string", "description": "Specimen (FCS file) identifier."},
            {"name": "CPTESTCD", "dtype": "string", "nullable": False, "pattern": r"[A-Z][A-Z0-9_]{0,7}",
             "description": "Test short name: `TREGCD4` or `CD4T`."},
            {"name": "CPTEST", "dtype": "string", "nullable": False, "description": "Test name."},
            {"name": "CPMRKSTR", "dtype": "string", "nullable": False,
             "description": "Marker string, population/denominator, e.g. `CD3+CD4+CD25hiFOXP3+/CD3+CD4+`."},
            {"name": "CPGATE", "dtype": "string", "nullable": False,
             "description": "Strategy `name@version` that defines the gate."},
            {"name": "CPGATDEF", "dtype": "string", "nullable": False,
             "description": "Gate path (numerator over denominator for a percentage)."},
            {"name": "CPORRES", "dtype": "string", "description": "Result as collected."},
            {"name": "CPORRESU", "dtype": "string", "description": "Unit: `%` or `cells`."},
            {"name": "CPSTRESC", "dtype": "string", "description": "Standardised result, text."},
            {"name": "CPSTRESN", "dtype": "float64", "description": "Standardised result, numeric: the "
             "number CPSTRESC shows."},
            {"name": "CPSTRESU", "dtype": "string", "description": "Standardised unit."},
            {"name": "CPSTAT", "dtype": "string", "allowed": ["NOT DONE"], "description": "Completion status."},
            {"name": "CPREASND", "dtype": "string", "description": "Reason not done; a longer one is cut "
             "to 200 characters ending in `...` (exclusions.csv has it whole)."},
            {"name": "CPSPEC", "dtype": "string", "nullable": False, "description": "Specimen type."},
            {"name": "CPMETHOD", "dtype": "string", "nullable": False, "description": "Method."},
            {"name": "CPBLFL", "dtype": "string", "allowed": ["Y"], "description": "Baseline flag."},
            {"name": "VISITNUM", "dtype": "float64", "nullable": False,
             "description": "Visit number: rank of the visit by study day."},
            {"name": "VISIT", "dtype": "string", "nullable": False, "description": "Visit name."},
            {"name": "VISITDY", "dtype": "Int64", "description": "Planned study day of the visit."},
            {"name": "CPDTC", "dtype": "string", "description": "Collection date (ISO 8601) when the sample "
             "sheet has a `collection_date` column; else empty."},
        ],
        "optional_columns": _PRELIMINARY,
    },
}
