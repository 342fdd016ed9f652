"""The batch outlier rule: a value more than 3.5 robust SDs from the batch median.

One rule, computed in Python only: the report's batch figure draws these
samples in red (:func:`cytopipe.review.plots.batch_png`) and the station's
batch view frames them in red (its API sends the flags; the browser draws
what it is told).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["OUTLIER_Z", "robust_outliers"]

#: Robust SDs (1.4826 x the median absolute deviation) from the batch median beyond which a value is an outlier.
OUTLIER_Z = 3.5
# fewer finite values than this: no median to speak of, nothing is flagged
_MIN_VALUES = 4


def robust_outliers(values: Sequence[float] | np.ndarray, *, z: float = OUTLIER_Z) -> np.ndarray:
    """Which values lie more than ``z`` robust SDs from the median of the finite ones.

    Parameters
    ----------
    values
        One value a sample; NaN (or infinite) for a sample without one, never flagged.
    z
        The threshold in robust SDs, 1.4826 x the median absolute deviation
        (the SD of normally distributed values).

    Returns
    -------
    numpy.ndarray
        Booleans, one a value. All False with fewer than 4 finite values, or
        when more than half of them are equal (a MAD of 0).

    Examples
    --------
    >>> robust_outliers([5.0, 5.2, 4.9, 5.1, 5.0, 12.0, float("nan")]).tolist()
    [False, False, False, False, False, True, False]
    """
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    out = np.zeros(v.shape, dtype=bool)
    if ok.sum() < _MIN_VALUES:
        return out
    med = np.median(v[ok])
    mad = 1.4826 * np.median(np.abs(v[ok] - med))
    if mad == 0:
        return out
    out[ok] = np.abs(v[ok] - med) / mad > z
    return out
