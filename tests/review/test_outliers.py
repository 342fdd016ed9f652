"""The batch outlier rule the report and the station share."""

from __future__ import annotations

import numpy as np

from cytopipe.review.outliers import robust_outliers


def test_a_value_beyond_3_5_robust_sds_is_an_outlier_and_nan_never_is():
    # median 5, MAD 0.1 -> robust SD 0.14826: 5.5 is 3.37 SDs away, 5.6 is 4.05
    values = [5.0, 5.1, 4.9, 5.0, 5.1, 4.9, 5.5, 5.6, np.nan]
    assert robust_outliers(values).tolist() == [False] * 7 + [True, False]
    assert robust_outliers(values, z=3.0).tolist() == [False] * 6 + [True, True, False]


def test_too_few_values_or_no_spread_flag_nothing():
    assert not robust_outliers([1.0, 2.0, 100.0, np.nan]).any()  # 3 finite values
    assert not robust_outliers([5.0, 5.0, 5.0, 5.0, 9.0]).any()  # MAD 0
    assert robust_outliers([]).shape == (0,)
