"""The endpoint analysis: runs + randomisation list -> change from baseline, arm statistics, SDTM CP.

The lab is blinded: its runs never see the arm. The randomisation list
(``patient_id, arm`` and optionally ``dose``) is joined only here.

Several run folders can be combined (visits are gated in different weeks).
The same patient-visit in two runs is an error unless one is *superseded*:

* a ``superseded`` column in that run's sample sheet (carried through to
  ``treg_by_visit``) with a true value (``yes``, ``true``, ``1``, ``y``) marks
  that one sample as replaced; or
* ``supersede=[RUN_DIR]`` (``--supersede RUN_DIR``) marks every sample of that
  run that also appears in another, non-superseded run as replaced (its other
  samples stay in use).

Samples that failed (``qc_status == "error"``), were rejected in review
(``review_status == "rejected"``, when that column exists) or were superseded
are listed in ``OUT/exclusions.csv`` with the reason, never dropped silently.

No doubtful number reaches the endpoint unreviewed. A sample is *flagged for
review* when a ``;``-token of its ``qc_flags`` is ``needs_review`` or
``auto_gate_fallback``, alone or with a detail after a colon
(``needs_review:Treg:one_mode``). Every sample whose number the endpoint writes
anywhere (not superseded, not failed, not rejected: every visit of every
patient, randomised or not, goes into ``change_by_patient``, the by-visit
figure and ``sdtm_cp``) must then have ``review_status == "approved"``, else
:func:`run_endpoint` refuses, naming them. With ``include_unreviewed=True`` it
goes on and marks every output preliminary.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._version import __version__
from ..exceptions import EndpointError
from ..fcs.read import file_sha256
from ..outputs.schema import dtypes_for
from ..outputs.tables import read_treg_table, write_json, write_table
from .stats import jonckheere_terpstra, mann_whitney

__all__ = ["EndpointResult", "load_runs", "read_randomisation", "change_from_baseline", "arm_summary",
           "trend_test", "run_endpoint"]

_TRUE = {"yes", "y", "true", "1"}
_FALSE = {"", "no", "n", "false", "0"}
# qc_flags tokens that hold a number back until a reviewer approves it
_REVIEW_FLAGS = ("needs_review", "auto_gate_fallback")


@dataclass
class EndpointResult:
    """What :func:`run_endpoint` produced.

    Attributes
    ----------
    out_dir
        The output folder.
    by_patient, arm_summary, trend, exclusions, sdtm
        The tables written (``change_by_patient``, ``arm_summary``, ``trend_test``,
        ``exclusions``, ``sdtm_cp``; ``sdtm`` is None when no study id was given and the SDTM file skipped).
    files
        Every file written (tables, ``sdtm_cp.xpt`` and ``define.xml`` with a study id, figures,
        ``endpoint.json``).
    preliminary
        True when samples flagged for review and not approved were used
        (``include_unreviewed=True``); every table then has ``preliminary``.
    unreviewed
        Those samples: ``run_dir, patient_id, visit, file, flags, review_status``.
    """

    out_dir: Path
    by_patient: pd.DataFrame
    arm_summary: pd.DataFrame
    trend: pd.DataFrame
    exclusions: pd.DataFrame
    sdtm: pd.DataFrame | None
    files: list[Path] = field(default_factory=list)
    preliminary: bool = False
    unreviewed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_UNREVIEWED_COLUMNS))


def _truthy(value: Any, where: str) -> bool:
    text = "" if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)) else str(value)
    text = text.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    msg = f"{where}: superseded is {value!r}; use yes/no (or true/false, 1/0, empty)."
    raise EndpointError(msg)


def load_runs(run_dirs: list[str | os.PathLike], *, supersede: Sequence[str | os.PathLike] = ()
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Combine the per-visit tables of several runs; resolve superseded samples.

    Parameters
    ----------
    run_dirs
        Run folders written by ``cytopipe run``.
    supersede
        Run folders whose samples are replaced wherever another given run has
        the same patient-visit.

    Returns
    -------
    rows : pandas.DataFrame
        Every sample of every run with ``run_dir`` and a boolean ``superseded``.
    exclusions : pandas.DataFrame
        The superseded samples (reason ``superseded``).

    Raises
    ------
    EndpointError
        A folder is not a run, a ``--supersede`` folder is not among the runs,
        or a patient-visit is in two runs and neither is superseded.
    """
    if not run_dirs:
        msg = "No run folder given; pass at least one RUN_DIR written by 'cytopipe run'."
        raise EndpointError(msg)
    frames = []
    resolved = [Path(d).resolve() for d in run_dirs]
    if len(set(resolved)) != len(resolved):
        msg = f"The same run folder is given twice: {[str(d) for d in run_dirs]}."
        raise EndpointError(msg)
    for d in resolved:
        if not (d / "treg_by_visit.parquet").is_file():
            msg = f"{d} is not a cytopipe run folder (no treg_by_visit.parquet); run 'cytopipe run' into it first."
            raise EndpointError(msg)
        t = read_treg_table(d)
        t["run_dir"] = str(d)
        marks = t["superseded"] if "superseded" in t.columns else pd.Series([""] * len(t))
        t["superseded"] = [_truthy(v, f"{d}/treg_by_visit.parquet row {i + 1}") for i, v in enumerate(marks)]
        frames.append(t)
    rows = pd.concat(frames, ignore_index=True)
    for s in supersede:
        sd = str(Path(s).resolve())
        if sd not in {str(d) for d in resolved}:
            msg = f"--supersede {s}: not one of the run folders given ({[str(d) for d in resolved]})."
            raise EndpointError(msg)
        keep = rows[(rows["run_dir"] != sd) & ~rows["superseded"]]
        keys = set(zip(keep["patient_id"], keep["visit"]))
        dup = pd.Series([k in keys for k in zip(rows["patient_id"], rows["visit"])], index=rows.index)
        hit = (rows["run_dir"] == sd) & dup
        rows.loc[hit, "superseded"] = True
    live = rows[~rows["superseded"]]
    dup = live[live.duplicated(["patient_id", "visit"], keep=False)]
    if len(dup):
        clashes = [f"patient {p!r} visit {v!r} in "
                   + " and ".join(f"{r} ({f})" for r, f in zip(g["run_dir"], g["file"]))
                   for (p, v), g in dup.groupby(["patient_id", "visit"], sort=True)]
        msg = (f"{len(clashes)} patient-visit(s) are in more than one run: " + "; ".join(clashes)
               + ". Mark the replaced one superseded: a 'superseded' column (yes) in its run's sample "
               "sheet, or --supersede RUN_DIR for the older run.")
        raise EndpointError(msg)
    excl = []
    for _, r in rows[rows["superseded"]].iterrows():
        other = live[(live["patient_id"] == r["patient_id"]) & (live["visit"] == r["visit"])]
        detail = (f"replaced by {other['run_dir'].iloc[0]} ({other['file'].iloc[0]})" if len(other)
                  else "marked superseded; no replacement in the runs given")
        excl.append(_excl(r, "superseded", detail))
    return rows, pd.DataFrame(excl, columns=_EXCL_COLUMNS)


_EXCL_COLUMNS = ["patient_id", "visit", "run_dir", "file", "reason", "detail"]
_UNREVIEWED_COLUMNS: list[str] = ["run_dir", "patient_id", "visit", "file", "flags", "review_status"]


def _excl(r: pd.Series, reason: str, detail: str) -> dict[str, Any]:
    return {"patient_id": r["patient_id"], "visit": r["visit"], "run_dir": r["run_dir"], "file": r["file"],
            "reason": reason, "detail": detail}


def read_randomisation(path: str | os.PathLike) -> pd.DataFrame:
    """Read the randomisation list: ``patient_id, arm`` and an optional numeric ``dose``.

    Without ``dose``, it is read from the arm name: the first number in it
    (``"0.33 MIU"`` -> 0.33), 0 for an arm named placebo.

    Raises
    ------
    EndpointError
        Missing columns, a patient listed twice, or a dose that cannot be found.
    """
    p = Path(path)
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as e:
        msg = f"{p}: cannot read the randomisation list: {e}"
        raise EndpointError(msg) from e
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("patient_id", "arm") if c not in df.columns]
    if missing:
        msg = f"{p}: missing column(s) {missing}; the randomisation list needs patient_id, arm (dose optional)."
        raise EndpointError(msg)
    df["patient_id"], df["arm"] = df["patient_id"].str.strip(), df["arm"].str.strip()
    problems = [f"line {i + 2}: empty {c}" for c in ("patient_id", "arm") for i in np.flatnonzero(df[c] == "")]
    dups = sorted(df.loc[df["patient_id"].duplicated(), "patient_id"])
    if dups:
        problems.append(f"patients listed twice: {dups}")
    if "dose" in df.columns:
        dose = pd.to_numeric(df["dose"], errors="coerce")
    else:
        def parse(arm: str) -> float:
            if re.search("placebo", arm, re.I):
                return 0.0
            m = re.search(r"\d+(\.\d+)?", arm)
            return float(m.group()) if m else float("nan")

        dose = df["arm"].map(parse)
    bad = sorted(set(df.loc[dose.isna(), "arm"]))
    if bad:
        problems.append(f"no dose for arm(s) {bad}: add a numeric 'dose' column")
    if problems:
        msg = f"{p}: " + "; ".join(problems) + "."
        raise EndpointError(msg)
    return pd.DataFrame({"patient_id": df["patient_id"], "arm": df["arm"], "dose": dose.astype(float)})


def _visit_order(rows: pd.DataFrame) -> list[str]:
    day = rows.groupby("visit")["day"].median()
    return sorted(day.index, key=lambda v: (np.inf if pd.isna(day[v]) else day[v], v))


def change_from_baseline(rows: pd.DataFrame, randomisation: pd.DataFrame, *, baseline: str = "D1",
                         visit: str = "D60", exclusions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per patient: baseline, endpoint, change, and the value and change at every visit.

    Parameters
    ----------
    rows
        Usable per-visit rows (``patient_id, visit, day, treg_pct_cd4``).
    randomisation
        From :func:`read_randomisation`.
    baseline, visit
        Baseline and endpoint visit names.
    exclusions
        Excluded samples, quoted in ``reason`` when they explain a missing value.

    Returns
    -------
    pandas.DataFrame
        Columns as documented for ``change_by_patient`` (docs/outputs.md).
    """
    visits = _visit_order(rows) if len(rows) else []
    for v in (baseline, visit):
        if v not in visits:
            visits.append(v)
    wide = rows.pivot(index="patient_id", columns="visit", values="treg_pct_cd4") if len(rows) else pd.DataFrame()
    rand = randomisation.set_index("patient_id")
    patients = list(randomisation["patient_id"]) + sorted(set(rows["patient_id"]) - set(rand.index))
    excl = exclusions if exclusions is not None else pd.DataFrame(columns=_EXCL_COLUMNS)
    out = []
    for pid in patients:
        vals = {v: (float(wide.at[pid, v]) if pid in wide.index and v in wide.columns else np.nan) for v in visits}
        b, e = vals[baseline], vals[visit]
        lacking = [v for v, x in ((baseline, b), (visit, e)) if np.isnan(x)]
        reasons = []
        for v in lacking:
            ex = excl[(excl["patient_id"] == pid) & (excl["visit"] == v)]
            why = "; ".join(f"{r}: {d}" for r, d in zip(ex["reason"], ex["detail"])) or "no sample in the runs"
            reasons.append(f"no usable {v} sample ({why})")
        if pid not in rand.index:
            status = "not_randomised"
            reasons.insert(0, "patient not in the randomisation list")
        elif len(lacking) == 2:
            status = "missing_baseline_and_visit"
        elif lacking:
            status = "missing_baseline" if lacking[0] == baseline else "missing_visit"
        else:
            status = "complete"
        row = {"patient_id": pid, "arm": rand.at[pid, "arm"] if pid in rand.index else None,
               "dose": rand.at[pid, "dose"] if pid in rand.index else np.nan, "status": status,
               "reason": "; ".join(reasons), "baseline_visit": baseline, "endpoint_visit": visit,
               "baseline_value": b, "endpoint_value": e, "change_pp": e - b,
               "change_rel_pct": 100 * (e - b) / b if b else np.nan}
        for v in visits:
            row[f"treg_pct_cd4_{v}"] = vals[v]
            row[f"change_pp_{v}"] = vals[v] - b
            row[f"change_rel_pct_{v}"] = 100 * (vals[v] - b) / b if b else np.nan
        out.append(row)
    df = pd.DataFrame(out)
    dtypes = dtypes_for("change_by_patient", list(df.columns))
    return df.astype(dtypes)[list(dtypes)]


def _arm_order(randomisation: pd.DataFrame, control: str) -> list[str]:
    arms = randomisation.groupby("arm")["dose"].first()
    if control not in arms.index:
        msg = f"Control arm {control!r} is not in the randomisation list; arms are {sorted(arms.index)}. Use --control."
        raise EndpointError(msg)
    return [control] + sorted((a for a in arms.index if a != control), key=lambda a: (arms[a], a))


def arm_summary(by_patient: pd.DataFrame, randomisation: pd.DataFrame, *, control: str = "placebo"
                ) -> pd.DataFrame:
    """Per arm: change at the endpoint (n, mean, SD, median, quartiles) and Mann-Whitney p vs control."""
    order = _arm_order(randomisation, control)
    ok = by_patient[by_patient["status"] == "complete"]
    ctrl = ok.loc[ok["arm"] == control, "change_pp"].to_numpy(float)
    rows = []
    for arm in order:
        x = ok.loc[ok["arm"] == arm, "change_pp"].to_numpy(float)
        n_rand = int((randomisation["arm"] == arm).sum())
        q = np.percentile(x, [25, 50, 75]) if len(x) else [np.nan] * 3
        if arm == control:
            mw_u, p_a, p_e, method = np.nan, np.nan, np.nan, "reference arm"
        else:
            r = mann_whitney(x, ctrl, control_name=control)
            mw_u, p_a, p_e, method = r.u, r.p_asymptotic, r.p_exact, r.method
        sub = ok[ok["arm"] == arm]
        rows.append({"arm": arm, "n": len(x), "mean_change": x.mean() if len(x) else np.nan,
                     "sd_change": x.std(ddof=1) if len(x) > 1 else np.nan, "median_change": q[1],
                     "q1_change": q[0], "q3_change": q[2], "p_mannwhitney_asymptotic": p_a,
                     "p_mannwhitney_exact": p_e, "p_method": method, "u_statistic": mw_u,
                     "dose": float(randomisation.loc[randomisation["arm"] == arm, "dose"].iloc[0]),
                     "comparator": control, "n_randomised": n_rand, "n_missing": n_rand - len(x),
                     "mean_baseline": sub["baseline_value"].mean() if len(sub) else np.nan,
                     "mean_endpoint": sub["endpoint_value"].mean() if len(sub) else np.nan})
    return pd.DataFrame(rows).astype(dtypes_for("arm_summary", list(rows[0])))


def trend_test(by_patient: pd.DataFrame, randomisation: pd.DataFrame, *, control: str = "placebo",
               seed: int = 0) -> pd.DataFrame:
    """Jonckheere-Terpstra test of an increasing change across arms ordered by dose (one row)."""
    arms = randomisation.groupby("arm")["dose"].first().sort_values(kind="stable")
    ok = by_patient[by_patient["status"] == "complete"]
    groups = [ok.loc[ok["arm"] == a, "change_pp"].to_numpy(float) for a in arms.index]
    r = jonckheere_terpstra(groups, seed=seed)
    row = {"test": "Jonckheere-Terpstra", "arms_in_order": ";".join(arms.index), "n": sum(map(len, groups)),
           "statistic": r.statistic, "z": r.z, "p_asymptotic_increasing": r.p_asymptotic_increasing,
           "p_asymptotic_two_sided": r.p_asymptotic_two_sided,
           "p_permutation_increasing": r.p_permutation_increasing, "n_permutations": r.n_permutations,
           "p_method": r.method}
    return pd.DataFrame([row]).astype(dtypes_for("trend_test", list(row)))


def _review_flags(qc_flags: Any) -> list[str]:
    """The tokens of ``qc_flags`` that hold the sample back until it is approved."""
    if qc_flags is None or qc_flags is pd.NA or (isinstance(qc_flags, float) and np.isnan(qc_flags)):
        return []
    tokens = (t.strip() for t in str(qc_flags).split(";"))
    return [t for t in tokens if t.split(":", 1)[0] in _REVIEW_FLAGS]


def _unreviewed(used: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``used`` flagged for review whose review_status is not ``approved``."""
    flags = used["qc_flags"].map(_review_flags).map(";".join)
    status = used["review_status"].astype("string").str.strip()
    hit = (flags != "") & (status.fillna("").str.lower() != "approved")
    out = used.loc[hit, ["run_dir", "patient_id", "visit", "file"]].assign(flags=flags[hit], review_status=status[hit])
    return out[_UNREVIEWED_COLUMNS].reset_index(drop=True)


def _unreviewed_message(unreviewed: pd.DataFrame) -> str:
    items = [f"{r['run_dir']} {r['patient_id']}:{r['visit']} (file {r['file']!r}; {r['flags']}; "
             + (f"review_status {r['review_status']!r})" if pd.notna(r["review_status"]) and r["review_status"]
                else "no review decision)")
             for _, r in unreviewed.iterrows()]
    return (f"{len(items)} sample(s) the endpoint would use are flagged for review and not approved: "
            + "; ".join(items) + ". Review each with 'cytopipe review RUN_DIR PATIENT:VISIT "
            "--approve|--reject|--adjust-gate GATE_PATH ... --reviewer NAME' (an adjusted gate needs a re-run, "
            "then approval), or pass --include-unreviewed (include_unreviewed=True) for a preliminary analysis.")


def _mark_preliminary(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(preliminary=pd.array([True] * len(df), dtype="boolean"))


def _study_id(study_id: str | None) -> str | None:
    """The SDTM STUDYID, or None: only the SDTM file needs one, so without it that file is skipped."""
    sid = (study_id or os.environ.get("CYTOPIPE_STUDY_ID", "")).strip()
    return sid or None


def run_endpoint(run_dirs: list[str | os.PathLike], randomisation: str | os.PathLike,
                 out_dir: str | os.PathLike, *, baseline: str = "D1", visit: str = "D60",
                 study_id: str | None = None, control: str = "placebo",
                 supersede: Sequence[str | os.PathLike] = (), specimen: str = "BLOOD",
                 figures: bool = True, include_unreviewed: bool = False) -> EndpointResult:
    """Run the endpoint analysis and write its tables, figures and SDTM CP files.

    Parameters
    ----------
    run_dirs
        Run folders of ``cytopipe run``.
    randomisation
        CSV with ``patient_id, arm`` (and optional ``dose``).
    out_dir
        Output folder (created).
    baseline, visit
        Baseline and endpoint visit names.
    study_id
        SDTM ``STUDYID``; else ``CYTOPIPE_STUDY_ID``. With one, SDTM CP is written as
        ``sdtm_cp.csv/.parquet``, ``sdtm_cp.xpt`` (SAS transport v5) and ``define.xml``
        (Define-XML 2.0); without one, those are skipped and everything else is written.
    control
        The control arm, compared with every other arm.
    supersede
        Run folders whose duplicated patient-visits are replaced (see module doc).
    specimen
        SDTM ``CPSPEC``.
    figures
        Write the PNG figures.
    include_unreviewed
        Go on although samples it uses are flagged for review and not approved
        (see module doc); every table then has a ``preliminary`` column (true),
        ``endpoint.json`` has ``"preliminary": true`` and lists them, and the
        report and figures say PRELIMINARY. Changes nothing when there are none.

    Returns
    -------
    EndpointResult

    Raises
    ------
    EndpointError
        Bad runs, randomisation list, options, duplicated patient-visits, or
        samples flagged for review and not approved (without ``include_unreviewed``).
    """
    from .plots import plot_change_at_endpoint, plot_treg_by_visit
    from .sdtm import build_sdtm_cp

    started = _dt.datetime.now(_dt.UTC)
    sid = _study_id(study_id)
    rand = read_randomisation(randomisation)
    order = _arm_order(rand, control)
    rows, excl = load_runs(run_dirs, supersede=supersede)
    live = rows[~rows["superseded"]]
    for v in (baseline, visit):
        if v not in set(live["visit"]):
            msg = f"Visit {v!r} is in none of the runs; visits found: {_visit_order(live)}. Check --baseline/--visit."
            raise EndpointError(msg)
    err = live["qc_status"] == "error"
    rejected = (live["review_status"].fillna("").str.lower() == "rejected") if "review_status" in live else err & False
    extra = [_excl(r, "qc_error", str(r["error"])) for _, r in live[err].iterrows()]
    extra += [_excl(r, "review_rejected", "rejected in review" + "".join(
              f" {w} {r[c]}" for w, c in (("by", "reviewer"), ("at", "reviewed_at")) if c in r and pd.notna(r[c])
              and str(r[c])))
              for _, r in live[rejected & ~err].iterrows()]
    usable = live[~err & ~rejected]
    unrand = usable[~usable["patient_id"].isin(rand["patient_id"])]
    extra += [_excl(r, "not_randomised", "patient not in the randomisation list") for _, r in unrand.iterrows()]
    excl = pd.concat([excl, pd.DataFrame(extra, columns=_EXCL_COLUMNS)], ignore_index=True)
    strategies = sorted(set(usable["strategy"] + "@" + usable["strategy_version"] + " " + usable["strategy_sha256"]))
    if len(strategies) > 1:
        msg = f"The runs were gated with different strategies {strategies}; re-run them with one strategy."
        raise EndpointError(msg)
    unreviewed = _unreviewed(usable)
    if len(unreviewed) and not include_unreviewed:
        msg = _unreviewed_message(unreviewed)
        raise EndpointError(msg)
    preliminary = bool(len(unreviewed))

    by_patient = change_from_baseline(usable, rand, baseline=baseline, visit=visit, exclusions=excl)
    summary = arm_summary(by_patient, rand, control=control)
    trend = trend_test(by_patient, rand, control=control)
    sdtm = None if sid is None else build_sdtm_cp(live, study_id=sid, baseline=baseline,
                                                  visit_order=_visit_order(live), rejected=rejected, specimen=specimen)
    if preliminary:
        by_patient, summary, trend, excl = map(_mark_preliminary, (by_patient, summary, trend, excl))
        sdtm = None if sdtm is None else _mark_preliminary(sdtm)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for name, df in (("change_by_patient", by_patient), ("arm_summary", summary), ("trend_test", trend),
                     ("exclusions", excl), ("sdtm_cp", sdtm)):
        if df is not None:
            files += write_table(df, out / name, dtypes_for(name, list(df.columns)))
    # the submission copy: SAS transport v5 and the define.xml describing it (sdtm is None without a study id)
    if sdtm is not None and sid is not None:
        from .define import write_define_xml
        from .sdtm import write_sdtm_xpt

        xpt = write_sdtm_xpt(sdtm, out / "sdtm_cp.xpt")
        files += [xpt, write_define_xml(sdtm, out / "define.xml", study_id=sid, dataset_file=xpt.name)]
    if figures:
        long = usable[usable["patient_id"].isin(rand["patient_id"])].merge(rand, on="patient_id")
        files.append(plot_treg_by_visit(long, out / "treg_by_visit_per_arm.png", arm_order=order,
                                        visit_order=_visit_order(usable), preliminary=preliminary))
        files.append(plot_change_at_endpoint(by_patient, out / "change_at_endpoint.png", arm_order=order,
                                             baseline=baseline, visit=visit, preliminary=preliminary))
    prov = {"run_dirs": [str(Path(d).resolve()) for d in run_dirs],
            "supersede": [str(Path(d).resolve()) for d in supersede],
            "randomisation": str(Path(randomisation).resolve()),
            "randomisation_sha256": file_sha256(randomisation), "study_id": sid, "sdtm_written": sdtm is not None,
            "baseline": baseline,
            "visit": visit, "control": control, "strategy": strategies[0] if strategies else None,
            "cytopipe_version": __version__, "started": started.isoformat(),
            "finished": _dt.datetime.now(_dt.UTC).isoformat(), "n_patients": len(by_patient),
            "n_complete": int((by_patient["status"] == "complete").sum()), "n_excluded_samples": len(excl),
            "include_unreviewed": include_unreviewed, "preliminary": preliminary,
            "unreviewed_samples": [{k: (None if pd.isna(v) else str(v)) for k, v in r.items()}
                                   for r in unreviewed.to_dict("records")]}
    files.append(write_json(prov, out / "endpoint.json"))
    if figures:
        from .page import write_endpoint_report

        files.append(write_endpoint_report(out, summary=summary, trend=trend, exclusions=excl,
                                           figures=[f for f in files if f.suffix == ".png"], provenance=prov))
    return EndpointResult(out, by_patient, summary, trend, excl, sdtm, files, preliminary=preliminary,
                          unreviewed=unreviewed)
