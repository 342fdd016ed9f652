"""Failed stains: a Treg marker with no positive population among the CD4 cells.

A CD25-unstained or isotype control, or a failed FOXP3 stain, has nothing to
count, yet a method that always finds "the most CD25-high group" reports
Tregs there. So before a number is trusted, each marker on which Tregs are
*high* (CD25, FOXP3) must show positive cells among the CD4+ cells.

The test is on compensated linear values, where an unstained population is
its detector's noise: roughly symmetric about its centre (autofluorescence),
however much spillover spreads it. The main population's mode and the
spread of the values below it (a robust SD from their median distance to
the mode: the negative side, which no positive cells widen) give a band of
``band_sd`` SDs either side of the mode. A stained marker has more than
``min_share`` of the CD4 cells above the band *beyond the share below it*
(Tregs are 2-10 % of CD4 cells in blood; CD25-intermediate memory cells add
more on CD25); an unstained one has the noise's tails only, the same on
both sides. The mirror, not a Gaussian's tail, is what the upper tail is
compared with: compensation spreads each cell by its own light (photon
statistics), so an unstained detector's noise is a mixture of spreads whose
tails beyond five robust SDs held 3 % of a real-cell tube's CD4 cells on
one side (a Gaussian puts 3e-7 there). Neither number is taken from a
generated world. CD127, on which Tregs are the *low* side, is
not tested: its conventional cells are its positive population, and a
failed CD127 stain is not caught here.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["STAIN_REASON", "TREG_HIGH", "stain_flags", "stained"]

#: Markers on which Tregs are the positive side: each must show positive CD4 cells.
TREG_HIGH = ("CD25", "FOXP3")

#: Reason token of a marker without a second population.
STAIN_REASON = "no_{marker}_positive_population"
_MAX_EVENTS = 30_000


def stained(values: np.ndarray, *, band_sd: float = 5.0, min_share: float = 0.02) -> tuple[bool, float]:
    """Whether linear ``values`` hold positive cells above their main population's noise band.

    Parameters
    ----------
    values
        One marker's compensated linear values on the CD4 cells.
    band_sd
        Width of the band above the mode, in robust SDs of the values below it.
    min_share
        Share of the values above the band that makes a positive population.

    Returns
    -------
    (bool, float)
        Whether stained, and the share above the band less the share below it.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> stained(rng.normal(50, 200, 20_000))[0]
    False
    >>> spread = np.where(rng.random(20_000) < 0.15, 6.0, 1.0)  # some cells spread six times wider
    >>> stained(50 + 200 * rng.standard_normal(20_000) * spread)[0]  # wide tails both sides: noise
    False
    >>> stained(np.r_[rng.normal(0, 200, 19_000), rng.lognormal(np.log(4000), 0.3, 1_000)])[0]
    True
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 100:
        return False, 0.0
    lo, hi = np.quantile(v, [0.005, 0.995])
    if hi <= lo:
        return False, 0.0
    counts, edges = np.histogram(v, bins=256, range=(lo, hi))
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    smooth = np.convolve(counts, kernel / kernel.sum(), mode="same")
    k = int(np.argmax(smooth))
    mode = float((edges[k] + edges[k + 1]) / 2)
    below = mode - v[v < mode]
    if below.size < 50:
        return False, 0.0
    sd = max(float(np.median(below)) / 0.6745, 1e-12)
    # positive cells show as an upper tail the lower one does not mirror; noise, however heavy-tailed, is mirrored
    excess = float(np.mean(v > mode + band_sd * sd) - np.mean(v < mode - band_sd * sd))
    return excess > min_share, excess


def stain_flags(sample, gs, strategy, *, rows=None) -> list[str]:
    """``needs_review:<gate>:no_<marker>_positive_population`` for each Treg marker without a second population.

    Parameters
    ----------
    sample : flowkit.Sample, LeanSample or ConformedSample
        The sample as gated.
    gs : flowkit.GatingStrategy
        The gates it was counted with (placed and adjusted ones included).
    strategy : cytopipe.strategy.Strategy
        Its markers, denominator (the CD4 cells) and the gates below it.
    rows : numpy.ndarray, optional
        The denominator's events, when already known.

    Returns
    -------
    list of str
        Empty when every marker of the gates below the denominator is stained.
    """
    from .engine import cascade_rows
    from .placement import REVIEW_FLAG

    den = tuple(strategy.denominator)
    below = [p for p in strategy.gate_paths() if len(p) > len(den) and p[: len(den)] == den]
    if not below:
        return []
    if rows is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chain = [den[: i + 1] for i in range(1, len(den))]
            known = cascade_rows(sample, gs, chain)
        if known is None:
            return []
        rows = known[den]
        if rows is None:
            rows = np.arange(int(sample.event_count))
    rows = np.asarray(rows)
    if rows.size > _MAX_EVENTS:
        rows = rows[np.linspace(0, rows.size - 1, _MAX_EVENTS).astype(np.int64)]
    from .engine import Context

    by_detector = {m.detector: m.marker for m in strategy.markers}
    ctx = Context(sample, gs, np.take(sample.get_events(source="raw"), rows, axis=0))
    seen: set[str] = set()
    flags = []
    for path in below:
        gate = gs.get_gate(path[-1], gate_path=path[:-1], sample_id=sample.id)
        for dim in getattr(gate, "dimensions", []) or []:
            marker = by_detector.get(getattr(dim, "id", None))
            if marker not in TREG_HIGH or marker in seen:
                continue
            seen.add(marker)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values = ctx.values(dim, None)
            except Exception:  # noqa: BLE001 - a dimension the check cannot read is left to the gates' flags
                continue
            if not stained(values)[0]:
                flags.append(f"{REVIEW_FLAG}:{path[-1]}:" + STAIN_REASON.format(marker=marker))
    return flags
