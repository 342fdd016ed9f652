"""Whole trials of synthetic FCS files with known truth, for demos and for endpoint tests.

:func:`generate_trial` writes the small demo trial behind ``sample_fcs/``:
patients followed over visits, half of them with an IL-2-like rise and fall
of Treg % of CD4. :func:`simulate_trial` simulates the paper's trial: 4 arms
x 6 patients, Treg % of CD4 at day 1 and day 60. Both write one file per
patient-visit with :func:`cytopipe.sim.sample.write_fcs`, alternating FCS 3.1/3.0
and byte order, a sample sheet and a ``truth.csv``.

In :func:`simulate_trial`, each arm's change from day 1 to day 60 is drawn so that its realised mean and
SD equal the abstract's (placebo 0.5 (0.4); 0.33 MIU 2.8 (1.2); 1 MIU 3.9
(1.8); 3 MIU 4.8 (1.9) percentage points); the FCS files are then written by
:func:`cytopipe.sim.sample.write_fcs`, whose event sampling adds the measurement's
own noise. The sample sheet is blinded (patient, visit, day: never the arm);
the arm is only in ``randomisation.csv`` and ``truth.csv``.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .sample import SampleSpec, _fcs_date, write_fcs

__all__ = ["TRIAL_ARMS", "generate_trial", "simulate_trial"]

#: Arm, dose (MIU/day), mean and SD of the change in Treg % CD4 (percentage points), from the abstract.
TRIAL_ARMS: tuple[tuple[str, float, float, float], ...] = (
    ("placebo", 0.0, 0.5, 0.4),
    ("0.33 MIU", 0.33, 2.8, 1.2),
    ("1 MIU", 1.0, 3.9, 1.8),
    ("3 MIU", 3.0, 4.8, 1.9),
)
_KIND_KEYS = ("n_acquired", "instrument", "panel", "shape", "unstained", "pregated", "detectors")
_FORMATS = (("3.1", "little"), ("3.0", "big"), ("3.1", "big"), ("3.0", "little"))


def _write_visit(folder: pathlib.Path, k: int, patient: str, visit: str, day: int,
                 **spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the ``k``-th file of a trial, ``<patient>_<visit>.fcs``: its sample sheet row and truth row.

    The files rotate through FCS 3.1/3.0 and both byte orders; ``spec`` holds
    the other :class:`~cytopipe.sim.sample.SampleSpec` fields.
    """
    version, byteorder = _FORMATS[k % len(_FORMATS)]
    name = f"{patient}_{visit}.fcs"
    truth = write_fcs(folder / name, SampleSpec(fcs_version=version, byteorder=byteorder, **spec))
    # A trial is one BD lab's whole FOXP3-panel files: truth.csv keeps the columns it always had.
    truth = {k: v for k, v in truth.items() if k not in _KIND_KEYS}
    return {"file": name, "patient_id": patient, "visit": visit, "day": int(day)}, truth


def _changes(rng: np.random.Generator, n: int, mean: float, sd: float, exact: bool) -> np.ndarray:
    z = rng.standard_normal(n)
    if exact and n > 1:
        z = (z - z.mean()) / z.std(ddof=1)
    return mean + sd * z


def simulate_trial(
    out_dir: str | pathlib.Path,
    *,
    n_per_arm: int = 6,
    arms: Sequence[tuple[str, float, float, float]] = TRIAL_ARMS,
    visits: Sequence[tuple[str, int]] = (("D1", 1), ("D60", 60)),
    n_events: int = 30_000,
    seed: int = 2026,
    drift: float = 0.4,
    hard: bool = False,
    exact_moments: bool = True,
) -> pathlib.Path:
    """Write the simulated trial: FCS files, a blinded sample sheet, the randomisation and the truth.

    Parameters
    ----------
    out_dir
        Folder to write into (created).
    n_per_arm
        Patients per arm.
    arms
        ``(arm, dose, mean change, SD of change)`` per arm; the first is the control.
    visits
        ``(visit, day)``; the first is the baseline, the last the endpoint.
        Intermediate visits interpolate linearly in day (illustrative only).
    n_events
        Events per file.
    seed
        Seed of the whole trial (randomisation, true values, every file).
    drift, hard
        Passed to each :class:`~cytopipe.sim.sample.SampleSpec`.
    exact_moments
        Standardise each arm's drawn changes so their mean and SD (n - 1) equal
        the arm's exactly.

    Returns
    -------
    pathlib.Path
        ``out_dir/samples.csv`` (file, patient_id, visit, day). Also written:
        ``randomisation.csv`` (patient_id, arm, dose) and ``truth.csv`` (per
        file: arm, dose, target and realised Treg % CD4, and the truth row of
        :func:`~cytopipe.sim.sample.write_fcs`).

    Examples
    --------
    >>> simulate_trial("trial", n_events=20_000)  # doctest: +SKIP
    PosixPath('trial/samples.csv')
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    visits = list(visits)
    if len(visits) < 2:
        msg = f"visits needs a baseline and an endpoint visit, got {visits!r}."
        raise ValueError(msg)
    n = n_per_arm * len(arms)
    alloc_seq, value_seq, file_seq = np.random.SeedSequence(seed).spawn(3)
    alloc = np.random.default_rng(alloc_seq).permutation(np.repeat(np.arange(len(arms)), n_per_arm))
    vrng = np.random.default_rng(value_seq)
    baseline = vrng.uniform(4.0, 9.0, size=n)
    change = np.empty(n)
    for a, (_, _, mean, sd) in enumerate(arms):
        change[alloc == a] = _changes(vrng, n_per_arm, mean, sd, exact_moments)
    d0, d1 = visits[0][1], visits[-1][1]
    file_seeds = file_seq.spawn(n * len(visits))
    sheet, truth, rand = [], [], []
    for p in range(n):
        patient = f"P{p + 1:02d}"
        arm, dose, _, _ = arms[alloc[p]]
        rand.append({"patient_id": patient, "arm": arm, "dose": dose})
        for v, (visit, day) in enumerate(visits):
            k = p * len(visits) + v
            frac = (day - d0) / (d1 - d0) if d1 != d0 else 1.0
            target = max(0.5, baseline[p] + change[p] * frac)
            row, t = _write_visit(out, k, patient, visit, day, n_events=n_events,
                                  treg_pct_cd4=round(float(target), 4),
                                  seed=int(file_seeds[k].generate_state(1)[0]), drift=drift, hard=hard,
                                  keywords={"$SRC": f"{patient} {visit}"})
            sheet.append(row)
            truth.append({**row, "arm": arm, "dose": dose, "change_target": float(change[p]), **t})
    sheet_path = out / "samples.csv"
    pd.DataFrame(sheet).to_csv(sheet_path, index=False)
    pd.DataFrame(rand).to_csv(out / "randomisation.csv", index=False)
    pd.DataFrame(truth).to_csv(out / "truth.csv", index=False)
    return sheet_path


def _treg_course(rng: np.random.Generator, n_patients: int, days: Sequence[int]) -> np.ndarray:
    """Treg % of CD4 per (patient, visit): flat for half the patients, an IL-2-like rise else."""
    baseline = rng.uniform(4.0, 9.0, size=n_patients)
    responders = rng.permutation(n_patients) < (n_patients + 1) // 2
    peak = rng.uniform(15.0, 20.0, size=n_patients)
    wobble = rng.uniform(0.9, 1.1, size=(n_patients, len(days)))
    day = np.asarray(days, dtype=float)
    # Peaks about day 8-10 after the first dose and decays back over weeks.
    rise = np.minimum(day / 8.0, 1.0) * np.exp(-np.maximum(day - 10, 0) / 30)
    shape = np.where(day <= 1, 0.0, rise)
    pct = np.where(responders[:, None],
                   baseline[:, None] + (peak - baseline)[:, None] * shape[None, :],
                   baseline[:, None] * wobble)
    pct[:, day <= 1] = baseline[:, None]
    return pct


def generate_trial(
    out_dir: str | pathlib.Path,
    *,
    n_patients: int = 4,
    visits: Sequence[tuple[str, int]] = (("D1", 1), ("D8", 8), ("D60", 60)),
    n_events: int = 15000,
    seed: int = 2026,
    drift: float = 0.4,
    hard: bool = False,
) -> pathlib.Path:
    """Write a small synthetic trial: one FCS file per patient-visit, a sample sheet and truth.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Directory to write into (created if missing).
    n_patients : int
        Patients ``P01``, ``P02``, ...
    visits : sequence of (str, int)
        Visit name and study day; the first is the baseline.
    n_events : int
        Events per file.
    seed : int
        Trial seed; every file gets its own seed spawned from it.
    drift, hard : float, bool
        Passed to each :class:`SampleSpec`.

    Returns
    -------
    pathlib.Path
        ``out_dir/samples.csv`` (columns file, patient_id, visit, day; file relative to
        out_dir). ``out_dir/truth.csv`` holds the same columns plus each file's truth row.
        Files alternate FCS 3.1/3.0 and little/big byte order.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    visits = list(visits)
    trial_seq, files_seq = np.random.SeedSequence(seed).spawn(2)
    pct = _treg_course(np.random.default_rng(trial_seq), n_patients, [d for _, d in visits])
    file_seeds = files_seq.spawn(n_patients * len(visits))
    sheet, truth = [], []
    for p in range(n_patients):
        patient = f"P{p + 1:02d}"
        for v, (visit, day) in enumerate(visits):
            k = p * len(visits) + v
            row, t = _write_visit(out_dir, k, patient, visit, day, n_events=n_events,
                                  treg_pct_cd4=round(float(pct[p, v]), 3),
                                  seed=int(file_seeds[k].generate_state(1)[0]), drift=drift, hard=hard,
                                  keywords={"$DATE": _fcs_date(day - 1), "$SRC": f"{patient} {visit}"})
            sheet.append(row)
            truth.append({**row, **t})
    sheet_path = out_dir / "samples.csv"
    pd.DataFrame(sheet).to_csv(sheet_path, index=False)
    pd.DataFrame(truth).to_csv(out_dir / "truth.csv", index=False)
    return sheet_path
