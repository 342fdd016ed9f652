from __future__ import annotations

import numpy as np
import pytest

from cytopipe.qc import binomial_ci, sample_flags


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
