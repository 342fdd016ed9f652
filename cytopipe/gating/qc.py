"""Per-sample QC flags.

Flags never change a number; they tell the reviewer where to look. A sample
with flags gets ``qc_status`` ``"flag"``; a sample that could not be gated
gets ``"error"``. The flags, in ``qc_flags`` (``;``-separated):

- ``low_events``: too few events in the file;
- ``low_cd4``: too few CD4+ cells for a precise Treg % (95 % CI half-width);
- ``flow_rate:<p>%``: the flow rate along the Time channel drops or bursts
  (clogs, bubbles) in bins holding ``p`` % of the events (flowAI, PeacoQC);
- ``signal_drift:<p>%``: channel signals drift along the Time channel in
  bins holding ``p`` % of the events;
- ``treg_outlier``: Treg % CD4 out of line with the patient's other visits.

Thresholds come from the packaged ``qc_defaults.toml`` (documented there),
then a user file, then ``CYTOPIPE_QC_*`` environment variables, then explicit
arguments: see :func:`load_thresholds`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import QCConfigError

__all__ = [
    "QCThresholds",
    "binomial_ci",
    "flag_visit_outliers",
    "load_thresholds",
    "sample_flags",
    "sample_time_qc",
    "time_qc",
]

_Z95 = 1.959963984540054
_DEFAULTS_FILE = Path(__file__).with_name("qc_defaults.toml")
_ENV_PREFIX = "CYTOPIPE_QC_"


@dataclass(frozen=True)
class QCThresholds:
    """Thresholds of the per-sample flags; ``qc_defaults.toml`` documents each.

    Attributes
    ----------
    min_events
        Flag ``low_events`` below this many events in the file (the lab's
        tubes under 20,000 events are clogs or short acquisitions).
    max_ci_halfwidth_pp
        Flag ``low_cd4`` when the 95 % Wilson interval of Treg % CD4 is wider
        than this many percentage points on either side.
    time_bin_events, time_min_bins, time_max_bins, flow_rate_z, flow_rate_min_change, max_flow_anomaly_pct
        Flow-rate check along the Time channel.
    drift_bins, drift_sd, drift_z, max_drift_pct
        Signal-drift check along the Time channel.
    outlier_fold, outlier_min_pp, outlier_min_visits
        Treg % CD4 out of line with the patient's other visits.
    """

    min_events: int = 20_000
    max_ci_halfwidth_pp: float = 1.0
    time_bin_events: int = 200
    time_min_bins: int = 10
    time_max_bins: int = 200
    flow_rate_z: float = 5.0
    flow_rate_min_change: float = 0.2
    max_flow_anomaly_pct: float = 5.0
    drift_bins: int = 10
    drift_sd: float = 0.2
    drift_z: float = 6.0
    max_drift_pct: float = 5.0
    outlier_fold: float = 4.0
    outlier_min_pp: float = 5.0
    outlier_min_visits: int = 2


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        msg = f"{path}: cannot read the QC thresholds file: {e}. Fix it or unset CYTOPIPE_QC_CONFIG."
        raise QCConfigError(msg) from e


def _coerce(values: dict[str, Any], source: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(QCThresholds)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            msg = f"{source}: unknown QC threshold {key!r}. Known thresholds: {sorted(fields)}"
            raise QCConfigError(msg)
        kind = int if fields[key].type in ("int", int) else float
        try:
            number = kind(value)
        except (TypeError, ValueError) as e:
            msg = f"{source}: QC threshold {key!r} must be a number ({kind.__name__}), got {value!r}."
            raise QCConfigError(msg) from e
        if number < 0 or (isinstance(number, float) and not math.isfinite(number)):
            msg = f"{source}: QC threshold {key!r} must be a finite number >= 0, got {value!r}."
            raise QCConfigError(msg)
        out[key] = number
    return out


def load_thresholds(path: str | os.PathLike | None = None, **overrides: float) -> QCThresholds:
    """Load the QC thresholds: packaged defaults, user file, environment, arguments.

    Parameters
    ----------
    path
        A TOML file of thresholds (any subset of the keys of
        ``qc_defaults.toml``). Defaults to ``$CYTOPIPE_QC_CONFIG``, else
        ``~/.config/cytopipe/qc.toml`` when it exists.
    **overrides
        Thresholds given explicitly; they win over everything else.

    Returns
    -------
    QCThresholds

    Raises
    ------
    QCConfigError
        A file cannot be read, or names an unknown threshold or a bad value.

    Examples
    --------
    >>> load_thresholds(min_events=50_000).min_events
    50000
    """
    values = _coerce(_read_toml(_DEFAULTS_FILE), str(_DEFAULTS_FILE))
    user = path or os.environ.get(_ENV_PREFIX + "CONFIG")
    if user is None and (Path.home() / ".config" / "cytopipe" / "qc.toml").is_file():
        user = Path.home() / ".config" / "cytopipe" / "qc.toml"
    if user is not None:
        values.update(_coerce(_read_toml(Path(user)), str(user)))
    for field in dataclasses.fields(QCThresholds):
        env = os.environ.get(_ENV_PREFIX + field.name.upper())
        if env is not None:
            values.update(_coerce({field.name: env}, f"environment variable {_ENV_PREFIX}{field.name.upper()}"))
    values.update(_coerce(overrides, "load_thresholds()"))
    return QCThresholds(**values)


def binomial_ci(k: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of ``k / n``, in percent.

    Examples
    --------
    >>> lo, hi = binomial_ci(50, 1000)
    >>> round(lo, 2), round(hi, 2)
    (3.81, 6.53)
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    z2 = _Z95 * _Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (100 * (centre - half), 100 * (centre + half))


def _bins(t: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``n_bins`` equal bins of ``t`` from min to max (the max in the last): ``(counts, bin, starts)``.

    In acquisition order (``t`` non-decreasing) each bin is a run of events:
    ``starts`` are the runs' first indices and ``bin`` is not built (None);
    otherwise ``bin`` is each value's bin and ``starts`` is None.
    """
    edges = np.linspace(float(t.min()), float(t.max()), n_bins + 1)
    if t.size > 1 and bool((t[1:] >= t[:-1]).all()):  # acquisition order: no per-event search
        starts = np.searchsorted(t, edges[:-1], side="left")
        return np.diff(np.append(starts, t.size)), None, starts
    b = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n_bins - 1)
    return np.bincount(b, minlength=n_bins), b, None


def time_qc(time: np.ndarray, signals: np.ndarray, *, thresholds: QCThresholds | None = None,
            columns: Sequence[int] | None = None) -> dict[str, Any] | None:
    """Check the acquisition along the Time channel: flow rate and signal drift.

    Like flowAI and PeacoQC, the acquisition is cut into time bins; bins whose
    event rate departs from the median bin (clog, bubble, burst) or whose
    signal drifts away from the rest are anomalous, and the share of events
    (and of acquisition time) they hold is reported.

    Parameters
    ----------
    time
        The Time channel, one value per event (any unit).
    signals
        ``(n_events, n_channels)`` linear values of the other channels (e.g.
        a file's whole event matrix, with ``columns``), or a sequence of
        per-channel 1-D arrays.
    thresholds
        Defaults to :func:`load_thresholds`.
    columns
        With a 2-D ``signals``: the columns to check (default: all).

    Returns
    -------
    dict or None
        ``flow_rate_events_pct, flow_rate_time_pct, drift_events_pct,
        drift_channels`` (indices of drifting channels), ``n_bins``; None when
        the Time channel is constant or the file too small to check.
    """
    t_ = thresholds or load_thresholds()
    time = np.asarray(time, dtype=float)
    n = time.size
    if n < 2 * t_.time_min_bins or not np.isfinite(time).all() or time.max() <= time.min():
        return None
    n_bins = int(np.clip(n // max(t_.time_bin_events, 1), t_.time_min_bins, t_.time_max_bins))
    counts = _bins(time, n_bins)[0]
    med = float(np.median(counts))
    sd = max(math.sqrt(med), 1.4826 * float(np.median(np.abs(counts - med))), 1.0)
    bad = (np.abs(counts - med) > t_.flow_rate_z * sd) & (np.abs(counts - med) > t_.flow_rate_min_change * med)

    # bin means from at most ~200,000 evenly spaced events: plenty for drift, ~10x cheaper at 1M
    step = max(1, n // 200_000)
    if isinstance(signals, np.ndarray) and signals.ndim == 2:
        # the sampled rows copied once, in one pass over the matrix: each column is then read from
        # this small copy, not gathered from the whole matrix, whose every cache line it would touch
        sub = signals if step == 1 else np.take(signals, np.arange(0, signals.shape[0], step), axis=0)
        series = [sub[:, j] for j in (range(sub.shape[1]) if columns is None else columns)]
    else:
        series = [np.asarray(c)[::step] for c in signals]
    nd = max(int(t_.drift_bins), 2)
    dcounts, bd, starts = _bins(time[::step], nd)
    # every channel's arcsinh values as one float64 row each (channels x sampled events): one
    # arcsinh call, and per-bin sums of runs of events
    x = np.array(series, dtype=float).reshape(len(series), int(dcounts.sum()))
    x /= 150.0
    np.arcsinh(x, out=x)
    sums = np.zeros((nd, len(series)))
    if starts is not None:  # bins are runs of events: sum each run (empty bins stay 0)
        filled_runs = dcounts > 0
        sums[filled_runs] = np.add.reduceat(x, starts[filled_runs], axis=1).T
    else:
        for j, row in enumerate(x):
            sums[:, j] = np.bincount(bd, weights=row, minlength=nd)
    scale = np.maximum(x.std(axis=1), 1e-9)
    means = sums / np.maximum(dcounts, 1)[:, None]
    filled = dcounts >= 20
    drifting = np.zeros(nd, dtype=bool)
    channels: set[int] = set()
    if filled.sum() >= 3:
        ref = np.median(means[filled], axis=0)
        dev = np.abs(means - ref) / scale
        stderr = 1.0 / np.sqrt(np.maximum(dcounts, 1))[:, None]
        hit = (dev > t_.drift_sd) & (dev > t_.drift_z * stderr) & filled[:, None]
        drifting = hit.any(axis=1)
        channels = set(np.nonzero(hit.any(axis=0))[0].tolist())
    return {
        "n_bins": n_bins,
        "flow_rate_events_pct": 100.0 * float(counts[bad].sum()) / n,
        "flow_rate_time_pct": 100.0 * float(bad.sum()) / n_bins,
        "drift_events_pct": 100.0 * float(dcounts[drifting].sum()) / int(dcounts.sum()),
        "drift_channels": sorted(channels),
    }


def sample_time_qc(sample, *, thresholds: QCThresholds | None = None) -> dict[str, Any] | None:
    """:func:`time_qc` of a read :class:`flowkit.Sample` or ``LeanSample`` (None without a ``Time`` channel)."""
    labels = list(sample.pnn_labels)
    if "Time" not in labels:
        return None
    raw = sample.get_events(source="raw")
    i = labels.index("Time")
    others = [j for j in range(len(labels)) if j != i]
    exact = getattr(sample, "time_values", None)  # LeanSample: Time as FlowKit scales it, in float64
    return time_qc(raw[:, i] if exact is None else exact(), raw, thresholds=thresholds, columns=others)


def sample_flags(
    events: int,
    cd4: int,
    treg: int,
    *,
    thresholds: QCThresholds | None = None,
    time_metrics: dict[str, Any] | None = None,
    pregated: bool = False,
) -> list[str]:
    """Return the QC flags of one gated sample (empty when all is well).

    Parameters
    ----------
    events, cd4, treg
        Events in the file, in the CD4 gate and in the Treg gate.
    thresholds
        Defaults to the packaged :class:`QCThresholds` defaults.
    time_metrics
        The result of :func:`time_qc`, when the Time channel was checked.
    pregated
        The file is an export of one population (``--starts-at``): ``min_events`` is a
        whole tube's acquisition count and does not apply (a CD4 export of a good tube holds a
        fraction of it); ``low_cd4`` still judges whether its CD4 cells are enough.
    """
    t = thresholds or QCThresholds()
    flags = []
    if events < t.min_events and not pregated:
        flags.append("low_events")
    lo, hi = binomial_ci(treg, cd4)
    if cd4 == 0 or max(hi - 100 * treg / cd4, 100 * treg / cd4 - lo) > t.max_ci_halfwidth_pp:
        flags.append("low_cd4")
    if time_metrics:
        rate = max(time_metrics["flow_rate_events_pct"], time_metrics["flow_rate_time_pct"])
        if rate > t.max_flow_anomaly_pct:
            flags.append(f"flow_rate:{time_metrics['flow_rate_events_pct']:.1f}%")
        if time_metrics["drift_events_pct"] > t.max_drift_pct:
            flags.append(f"signal_drift:{time_metrics['drift_events_pct']:.1f}%")
    return flags


def flag_visit_outliers(table, *, thresholds: QCThresholds | None = None):
    """Add ``treg_outlier`` to visits whose Treg % CD4 is out of line with the patient's others.

    Parameters
    ----------
    table : pandas.DataFrame
        ``treg_by_visit`` rows (``patient_id, treg_pct_cd4, qc_status, qc_flags``).
    thresholds
        Defaults to the packaged :class:`QCThresholds` defaults.

    Returns
    -------
    pandas.DataFrame
        A copy with ``qc_flags`` and ``qc_status`` updated.
    """
    t = thresholds or QCThresholds()
    out = table.copy()
    pct = out["treg_pct_cd4"].to_numpy(dtype=float)
    flags = list(out["qc_flags"])
    status = list(out["qc_status"])
    visits: dict[Any, list[int]] = {}  # patient -> positions of its gated visits
    for pos, (patient, state) in enumerate(zip(out["patient_id"], status)):
        if state != "error" and not pd.isna(patient):
            visits.setdefault(patient, []).append(pos)
    for positions in visits.values():
        values = pct[positions]
        for k, pos in enumerate(positions):
            others = np.delete(values, k)
            others = others[~np.isnan(others)]
            value = values[k]
            if len(others) < t.outlier_min_visits or not math.isfinite(value):
                continue
            ref = float(np.median(others))
            fold = max(value, 1e-9) / max(ref, 1e-9)
            if max(fold, 1 / fold) > t.outlier_fold and abs(value - ref) > t.outlier_min_pp:
                flags[pos] = ";".join([*[f for f in str(flags[pos] or "").split(";") if f], "treg_outlier"])
                status[pos] = "flag"
    out["qc_flags"] = pd.Series(flags, index=out.index, dtype=out["qc_flags"].dtype)
    out["qc_status"] = pd.Series(status, index=out.index, dtype=out["qc_status"].dtype)
    return out
