"""``ratio_band`` (Singlets): a band around the FSC-A / FSC-H diagonal.

The density of log(FSC-A / FSC-H) over ``range`` has the singlets' mode (the
heaviest); the band ends at the density minimum towards the doublets, or
``edge_sd`` robust SDs above the mode where no doublet mode shows, and
``edge_sd`` robust SDs below the mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._base import PlacementParams, Review, as_float, as_int, as_range, fit_rows, param
from ._maths import density, modes, robust_sd_left

__all__ = ["RatioBandParams", "place"]


@dataclass(frozen=True, kw_only=True)
class RatioBandParams(PlacementParams):
    """The keys of a ``ratio_band`` entry (besides :class:`~._base.PlacementParams`').

    Attributes
    ----------
    range
        ``[low, high]`` of log(FSC-A / FSC-H) the density is drawn on; a band reaching either end goes to review.
    grid, min_mode_share, max_dip
        The density grid and what a significant mode is (as for ``density_valley``).
    edge_sd
        Robust SDs of the singlets' mode the band spans below it (and above it without a doublet mode).
    """

    range: tuple[float, float] = param((-0.5, 1.5), as_range)
    grid: int = param(256, as_int, lo=3)
    min_mode_share: float = param(0.02, as_float, lo=0, hi=1)
    max_dip: float = param(0.7, as_float, lo=0, hi=1)
    edge_sd: float = param(4.0, as_float, lo=0, lo_open=True)


def place(p: RatioBandParams, ctx, gs, template, parent, path, state):
    """A polygon on FSC-A x FSC-H between two lines through the origin."""
    import flowkit as fk

    rows = fit_rows(p, ctx, parent, path)
    a_dim, h_dim = template.dimensions  # FSC-A, FSC-H
    a, h = ctx.values(a_dim, rows), ctx.values(h_dim, rows)
    ok = (a > 0) & (h > 0)
    r = np.log(a[ok] / h[ok])
    lo, hi = p.range
    x, f = density(r, lo, hi, int(p.grid))
    peaks, valleys = modes(f, min_share=p.min_mode_share, max_dip=p.max_dip)
    main = max(peaks, key=lambda k: f[k])  # the singlets are most events of the parent
    sd = robust_sd_left(x, f, main)
    upper_valleys = [v for v in valleys if v > main]
    up = float(x[upper_valleys[0]]) if upper_valleys else float(x[main] + p.edge_sd * sd)
    down = float(x[main] - p.edge_sd * sd)
    if not lo < down < up < hi:
        raise Review("at_edge", f"{path[-1]}: band {down:.3f}..{up:.3f} of log(FSC-A/FSC-H) at the axis edge")
    r_lo, r_hi = float(np.exp(down)), float(np.exp(up))
    top = 262144.0 * 4
    vertices = [[0.0, 0.0], [top, top / r_hi], [top, top / r_lo], [0.0, 0.0 + 1e-9]]
    gate = fk.gates.PolygonGate(path[-1], [fk.Dimension(a_dim.id, compensation_ref=a_dim.compensation_ref),
                                           fk.Dimension(h_dim.id, compensation_ref=h_dim.compensation_ref)],
                                vertices)
    info = {"ratio_band": [round(r_lo, 4), round(r_hi, 4)], "basis": "valley" if upper_valleys else "edge",
            "n_fit": int(rows.size)}
    return gate, info
