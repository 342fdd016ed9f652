"""Per-sample QC flags.

Flags never change a number; they tell the reviewer where to look. A sample
with flags gets ``qc_status`` ``"flag"``; a sample that could not be gated
gets ``"error"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["QCThresholds", "binomial_ci", "sample_flags"]

_Z95 = 1.959963984540054


@dataclass(frozen=True)
class QCThresholds:
    """Thresholds of the per-sample flags.

    Attributes
    ----------
    min_events
        Flag ``low_events`` below this many events in the file (PANEL.md:
        tubes under 20,000 events are clogs or short acquisitions).
    max_ci_halfwidth_pp
        Flag ``low_cd4`` when the 95 % Wilson interval of Treg % CD4 is wider
        than this many percentage points on either side.
    """

    min_events: int = 20_000
    max_ci_halfwidth_pp: float = 1.0


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


def sample_flags(events: int, cd4: int, treg: int, *, thresholds: QCThresholds | None = None) -> list[str]:
    """Return the QC flags of one gated sample (empty when all is well)."""
    t = thresholds or QCThresholds()
    flags = []
    if events < t.min_events:
        flags.append("low_events")
    lo, hi = binomial_ci(treg, cd4)
    if cd4 == 0 or max(hi - 100 * treg / cd4, 100 * treg / cd4 - lo) > t.max_ci_halfwidth_pp:
        flags.append("low_cd4")
    return flags
