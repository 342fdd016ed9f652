from __future__ import annotations

import numpy as np
import pytest

from cytopipe.gating.qc import binomial_ci, sample_flags


def test_wilson_interval_covers_at_nominal_rate():
    rng = np.random.default_rng(0)
    n, p = 400, 0.07
    k = rng.binomial(n, p, size=4000)
    inside = [lo <= 100 * p <= hi for lo, hi in (binomial_ci(int(x), n) for x in k)]
    assert 0.93 < np.mean(inside) < 0.97


def test_flags():
    assert sample_flags(50_000, 20_000, 1_400) == []
    assert sample_flags(10_000, 20_000, 1_400) == ["low_events"]
    # 7 % of 1,000 CD4: half-width ~1.6 pp
    assert sample_flags(50_000, 1_000, 70) == ["low_cd4"]
    assert "low_cd4" in sample_flags(50_000, 0, 0)


@pytest.mark.parametrize("k,n", [(50, 1000), (0, 30), (29, 30), (700, 9000)])
def test_ci_matches_scipy_wilson(k, n):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = binomial_ci(k, n)
    assert lo == pytest.approx(100 * ref.low, abs=1e-9) and hi == pytest.approx(100 * ref.high, abs=1e-9)


# --- thresholds config and Time-channel checks (issue 4) ---------------------------------------

from cytopipe.exceptions import QCConfigError  # noqa: E402
from cytopipe.gating.qc import QCThresholds, flag_visit_outliers, load_thresholds, time_qc  # noqa: E402


def test_thresholds_layers(tmp_path, monkeypatch):
    monkeypatch.delenv("CYTOPIPE_QC_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_thresholds() == QCThresholds()  # the packaged file matches the documented defaults
    user = tmp_path / "qc.toml"
    user.write_text("min_events = 30000\nmax_drift_pct = 2.5\n")
    monkeypatch.setenv("CYTOPIPE_QC_CONFIG", str(user))
    monkeypatch.setenv("CYTOPIPE_QC_MAX_DRIFT_PCT", "7")
    t = load_thresholds(outlier_fold=3)
    assert (t.min_events, t.max_drift_pct, t.outlier_fold, t.flow_rate_z) == (30000, 7.0, 3.0, 5.0)
    user.write_text("min_event = 1\n")
    with pytest.raises(QCConfigError, match="unknown QC threshold 'min_event'"):
        load_thresholds()
    monkeypatch.delenv("CYTOPIPE_QC_CONFIG")
    monkeypatch.setenv("CYTOPIPE_QC_MIN_EVENTS", "lots")
    with pytest.raises(QCConfigError, match="CYTOPIPE_QC_MIN_EVENTS"):
        load_thresholds()


def _acquisition(n=20_000, seed=0):
    from cytopipe.sim.sample import SampleSpec, simulate_events

    events, _ = simulate_events(SampleSpec(n_events=n, seed=seed))
    return events["Time"].to_numpy(float), events.drop(columns="Time").to_numpy(float)


@pytest.mark.parametrize("seed", range(4))
def test_time_qc_is_quiet_on_clean_acquisitions(seed):
    t, x = _acquisition(seed=seed)
    m = time_qc(t, x, thresholds=QCThresholds())
    assert m["flow_rate_events_pct"] == 0 and m["flow_rate_time_pct"] == 0 and m["drift_events_pct"] == 0
    assert [f for f in sample_flags(len(t), 20_000, 1_400, time_metrics=m)] == []


def test_time_qc_finds_a_clog_and_a_drift():
    t, x = _acquisition(seed=5)
    span = t.max() - t.min()
    # clog: the events of 3 % of the run trickle through over 10x the time
    a, b = t.min() + 0.4 * span, t.min() + 0.43 * span
    slow = t.copy()
    inside, after = (t >= a) & (t < b), t >= b
    slow[inside] = a + (t[inside] - a) * 10
    slow[after] = t[after] + 9 * (b - a)
    m = time_qc(slow, x)
    assert 18 < m["flow_rate_time_pct"] < 28 and 2 < m["flow_rate_events_pct"] < 5
    assert any(f.startswith("flow_rate:") for f in sample_flags(len(t), 20_000, 1_400, time_metrics=m))
    # drift: every signal 50 % dimmer in the last 30 % of the run
    dim = x.copy()
    dim[t > t.min() + 0.7 * span] *= 0.5
    m = time_qc(t, dim)
    assert 25 < m["drift_events_pct"] < 35 and m["flow_rate_events_pct"] == 0
    assert f"signal_drift:{m['drift_events_pct']:.1f}%" in sample_flags(len(t), 20_000, 1_400, time_metrics=m)


def test_visit_outliers():
    import pandas as pd

    table = pd.DataFrame({
        "patient_id": ["P1"] * 4 + ["P2"] * 3,
        "treg_pct_cd4": [5.0, 18.0, 6.0, 40.0, 5.0, 5.5, float("nan")],
        "qc_status": ["ok", "ok", "ok", "ok", "ok", "flag", "error"],
        "qc_flags": ["", "", "", "", "", "low_cd4", ""],
    })
    out = flag_visit_outliers(table)
    # 18 % is an IL-2 response (3.3x the median 6 %), 40 % is not believable
    assert list(out["qc_flags"]) == ["", "", "", "treg_outlier", "", "low_cd4", ""]
    assert out["qc_status"].iloc[3] == "flag"


def test_time_qc_on_a_million_events_uses_a_subsample_and_reports_shares_of_all_events():
    """Drift measured on an evenly spaced subsample; shares are of the whole file."""
    from cytopipe.gating.qc import QCThresholds, time_qc

    rng = np.random.default_rng(3)
    n = 1_000_000
    t = np.sort(rng.uniform(0, 500, n))
    sig = rng.lognormal(8, 0.3, size=(n, 3))
    sig[int(0.7 * n):, 1] *= 0.5  # the last 30 % of the acquisition dims on one channel
    res = time_qc(t, [sig[:, 0], sig[:, 1], sig[:, 2]], thresholds=QCThresholds())
    assert res["drift_channels"] == [1]
    assert 25 <= res["drift_events_pct"] <= 35
    assert res["flow_rate_events_pct"] == 0.0
    # a file's whole event matrix and the columns to check (Time skipped), as sample_time_qc passes it
    matrix = np.column_stack([sig[:, 0], t, sig[:, 1], sig[:, 2]])
    assert time_qc(t, matrix, thresholds=QCThresholds(), columns=[0, 2, 3]) == res


def test_time_bins_of_acquisition_ordered_times_equal_the_per_event_search():
    """The sorted-Time shortcut bins every event as the per-event search does, ties and edges included."""
    import numpy as np

    from cytopipe.gating.qc import _bins

    rng = np.random.default_rng(0)
    for trial in range(200):
        n, n_bins = int(rng.integers(2, 3000)), int(rng.integers(1, 120))
        t = (np.sort(rng.integers(0, int(rng.integers(2, 40)), n)).astype(float) if trial % 2
             else np.cumsum(rng.integers(0, 3, n)) * 0.01)  # integer ticks with ties; ticks x $TIMESTEP
        if t.max() <= t.min():
            continue
        edges = np.linspace(t.min(), t.max(), n_bins + 1)
        expected = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n_bins - 1)
        counts, b, starts = _bins(t, n_bins)
        assert b is None  # runs of events, no per-event bins built
        np.testing.assert_array_equal(counts, np.bincount(expected, minlength=n_bins))
        np.testing.assert_array_equal(np.repeat(np.arange(n_bins), np.diff(np.append(starts, n))), expected)
        shuffled = rng.permutation(t)  # not in acquisition order: the per-event search itself
        counts, b, starts = _bins(shuffled, n_bins)
        assert starts is None
        np.testing.assert_array_equal(b, np.clip(np.searchsorted(edges, shuffled, side="right") - 1, 0, n_bins - 1))
        np.testing.assert_array_equal(counts, np.bincount(b, minlength=n_bins))


def test_drift_from_runs_of_events_equals_the_per_event_bins():
    """Sorted Time sums each bin's run; swapping two events of one bin takes the per-event path: same result."""
    import numpy as np

    rng = np.random.default_rng(3)
    n = 60_000
    t = np.sort(rng.uniform(0, 600, n))
    sig = rng.normal(1000, 100, (n, 3))
    sig[n // 2 :, 1] *= 1.0 + np.linspace(0, 0.6, n - n // 2)  # a drifting channel
    sig[:800, 2] = np.nan_to_num(sig[:800, 2]) + 4000  # a burst at the start
    th = QCThresholds()
    sorted_res = time_qc(t, sig, thresholds=th)
    t2, sig2 = t.copy(), sig.copy()
    i = n // 3  # two neighbours, surely in the same drift and flow-rate bins
    t2[[i, i + 1]], sig2[[i, i + 1]] = t2[[i + 1, i]], sig2[[i + 1, i]]
    assert not (t2[1:] >= t2[:-1]).all()
    assert time_qc(t2, sig2, thresholds=th) == sorted_res
    assert sorted_res["drift_channels"] == [1, 2] and sorted_res["drift_events_pct"] > 0


def _outliers_by_definition(table, t):
    """The rule spelled out row by row: each gated visit against the median of its patient's others."""
    flagged = []
    ok = table[table["qc_status"] != "error"]
    for i, row in ok.iterrows():
        others = ok[(ok["patient_id"] == row["patient_id"]) & (ok.index != i)]["treg_pct_cd4"].dropna()
        value = row["treg_pct_cd4"]
        if len(others) < t.outlier_min_visits or not np.isfinite(value):
            continue
        ref = float(np.median(others))
        fold = max(value, 1e-9) / max(ref, 1e-9)
        if max(fold, 1 / fold) > t.outlier_fold and abs(value - ref) > t.outlier_min_pp:
            flagged.append(i)
    return flagged


@pytest.mark.parametrize("seed", range(5))
def test_visit_outliers_follow_the_rule_on_random_tables(seed):
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = 300
    pct = rng.lognormal(np.log(6), 0.6, n)
    pct[rng.random(n) < 0.05] = np.nan
    table = pd.DataFrame({
        "patient_id": rng.choice([f"P{i}" for i in range(60)], n),
        "treg_pct_cd4": pct,
        "qc_status": rng.choice(["ok", "ok", "ok", "flag", "error"], n),
        "qc_flags": rng.choice(["", "", "low_cd4"], n),
    })
    t = QCThresholds()
    out = flag_visit_outliers(table, thresholds=t)
    expected = _outliers_by_definition(table, t)
    assert 0 < len(expected) < n  # the rule does fire on these tables, and not everywhere
    got = [i for i in out.index if "treg_outlier" in out.at[i, "qc_flags"]]
    assert got == expected
    assert (out.loc[expected, "qc_status"] == "flag").all()
    rest = out.drop(index=expected)
    assert rest["qc_flags"].equals(table.drop(index=expected)["qc_flags"])
    assert rest["qc_status"].equals(table.drop(index=expected)["qc_status"])


def test_a_pregated_export_is_not_judged_by_a_whole_tubes_event_count():
    assert "low_events" in sample_flags(8_000, 8_000, 800)
    assert sample_flags(8_000, 8_000, 800, pregated=True) == []
    assert sample_flags(300, 300, 30, pregated=True) == ["low_cd4"]  # too few CD4 cells still flagged
