"""Mann-Whitney as the trial reports it, and the Jonckheere-Terpstra trend test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cytopipe.endpoint.stats import jonckheere_terpstra, mann_whitney


def test_complete_separation_6v6_gives_the_abstracts_p():
    placebo = [0.1, 0.3, 0.5, 0.6, 0.8, 1.1]
    active = [2.0, 2.5, 3.1, 3.3, 4.0, 5.2]
    r = mann_whitney(active, placebo)
    # U = 36 of 36 pairs; z = 18 / sqrt(6*6*13/12) = 2.882 -> two-sided 0.0039 (no continuity correction)
    assert r.u == 36
    assert round(r.p_asymptotic, 4) == 0.0039
    assert r.p_asymptotic == pytest.approx(2 * stats.norm.sf(18 / math.sqrt(39)), rel=1e-12)
    assert r.p_exact == pytest.approx(2 / math.comb(12, 6))  # 2/924 = 0.0022
    assert round(r.p_exact, 4) == 0.0022
    assert "without continuity correction" in r.method and "exact" in r.method


def test_continuity_correction_would_not_give_0_0039():
    # the abstract's number identifies the method: with the correction p is 0.0051
    with_cc = stats.mannwhitneyu([2, 3, 4, 5, 6, 7], [0, 0.1, 0.2, 0.3, 0.4, 0.5], method="asymptotic",
                                 use_continuity=True).pvalue
    assert round(with_cc, 4) == 0.0051


def test_exact_p_with_ties_enumerates_permutations():
    x, y = [1, 2, 2, 3], [2, 0, 1, 1]
    r = mann_whitney(x, y)
    assert r.p_asymptotic == pytest.approx(stats.mannwhitneyu(
        x, y, method="asymptotic", use_continuity=False).pvalue)
    # brute force on the raw values, two-sided by distance of U from its mean
    pooled = np.array(x + y, dtype=float)
    import itertools
    us = []
    for idx in itertools.combinations(range(8), 4):
        a = pooled[list(idx)]
        b = np.delete(pooled, list(idx))
        us.append((a[:, None] > b).sum() + 0.5 * (a[:, None] == b).sum())
    us = np.array(us)
    u_obs = (np.array(x)[:, None] > np.array(y)).sum() + 0.5 * (np.array(x)[:, None] == np.array(y)).sum()
    # 1>0; each 2 > 0,1,1 (6); 3 > all 4; ties 2=2 (x2) and 1=1 (x2) count 1/2 each -> 13
    assert r.u == u_obs == 13.0
    assert r.p_exact == pytest.approx(np.mean(np.abs(us - 8) >= abs(u_obs - 8) - 1e-9))
    assert "ties present" in r.method


def test_empty_arm_is_not_computed():
    r = mann_whitney([], [1.0, 2.0])
    assert math.isnan(r.p_asymptotic) and r.method.startswith("not computed")


def test_jonckheere_hand_computed_perfect_order():
    # groups (1,2) < (3,4) < (5,6): all 12 between-group pairs ordered -> J = 12;
    # E[J] = (36 - 12)/4 = 6; Var = (36*15 - 3*(4*7))/72 = 456/72; one labelling of 6!/(2!2!2!) = 90
    r = jonckheere_terpstra([[1, 2], [3, 4], [5, 6]])
    assert r.statistic == 12 and r.mean == 6
    assert r.variance == pytest.approx(456 / 72)
    assert r.z == pytest.approx(6 / math.sqrt(456 / 72))
    assert r.p_asymptotic_increasing == pytest.approx(stats.norm.sf(6 / math.sqrt(456 / 72)))
    assert r.exact and r.n_permutations == 90
    assert r.p_permutation_increasing == pytest.approx(1 / 90)


def test_jonckheere_hand_computed_with_ties():
    # (1,2) v (2,3): pairs 1<2, 1<3, 2=2 (1/2), 2<3 -> J = 3.5; E = 2;
    # tie-corrected Var = (4*3*13 - 2*2*1*9 - 2*1*9)/72 + 0 + (2+2)*2/(8*4*3) = 102/72 + 1/12 = 1.5,
    # equal to the tie-corrected variance of Mann-Whitney U, n1 n2/12 (N+1 - sum(t^3-t)/(N(N-1))) = 1.5
    r = jonckheere_terpstra([[1, 2], [2, 3]])
    assert r.statistic == 3.5 and r.mean == 2 and r.variance == pytest.approx(1.5)
    assert r.p_permutation_increasing == pytest.approx(2 / 6)


def test_two_group_jonckheere_is_one_sided_mann_whitney():
    rng = np.random.default_rng(3)
    a, b = np.round(rng.normal(0, 1, 7), 1), np.round(rng.normal(0.8, 1, 5), 1)
    r = jonckheere_terpstra([a, b])
    mw = stats.mannwhitneyu(b, a, alternative="greater", method="asymptotic", use_continuity=False)
    assert r.statistic == pytest.approx(mw.statistic)
    assert r.p_asymptotic_increasing == pytest.approx(mw.pvalue)


def test_jonckheere_monte_carlo_for_the_trial_size_is_seeded_and_close():
    rng = np.random.default_rng(5)
    groups = [rng.normal(m, 1.5, 6) for m in (0.5, 2.8, 3.9, 4.8)]
    r1 = jonckheere_terpstra(groups, n_permutations=5000, seed=1)
    r2 = jonckheere_terpstra(groups, n_permutations=5000, seed=1)
    assert not r1.exact and r1.n_permutations == 5000
    assert r1.p_permutation_increasing == r2.p_permutation_increasing
    # a decreasing order gives the mirror z
    rev = jonckheere_terpstra(groups[::-1], n_permutations=500)
    assert rev.z == pytest.approx(-r1.z)
    assert "Monte Carlo" in r1.method and "seed=1" in r1.method
