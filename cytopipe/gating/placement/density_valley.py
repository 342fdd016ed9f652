"""``density_valley`` (Live, CD3pos, CD4pos): a threshold at the density minimum between a negative and a positive mode.

On each dimension the 1-D density (binned Gaussian kernel, :func:`._maths.density`)
of the parent's events on arcsinh(x / c), ``c`` the sample's own negative
spread, and its modes; the threshold is the density minimum between the
negative and the positive mode. ``keep`` says which side the gate keeps; a
dimension listed in ``optional_second_mode`` (dead cells may be few) takes
the negative mode's upper edge, ``edge_sd`` robust SDs above it, when it
shows one mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._base import PlacementParams, _Bad, as_float, as_int, as_strs, fit_rows, param
from ._maths import Axis, gate_units, threshold

__all__ = ["DensityValleyParams", "place"]


def _as_keep(v) -> tuple[tuple[str, str], ...]:
    if not isinstance(v, dict) or not v or not all(isinstance(k, str) and s in ("above", "below")
                                                   for k, s in v.items()):
        raise _Bad('an object {detector: "above" | "below"} with at least one detector')
    return tuple(v.items())


@dataclass(frozen=True, kw_only=True)
class DensityValleyParams(PlacementParams):
    """The keys of a ``density_valley`` entry (besides :class:`~._base.PlacementParams`').

    Attributes
    ----------
    keep
        ``{detector: "above" | "below"}``: the side of each threshold the gate
        keeps; the gate's other dimensions keep the template's bounds.
    optional_second_mode
        Detectors (among ``keep``) that may show one mode only.
    grid
        Points of the density grid.
    min_mode_share, max_dip
        A mode is significant when it holds ``min_mode_share`` of the events
        and the minimum towards its neighbour is below ``max_dip`` of the lower peak.
    edge_sd
        Robust SDs above the negative mode, for an optional second mode that does not show.
    edge_margin
        A threshold within this share of the axis from its edge goes to review.
    """

    keep: tuple[tuple[str, str], ...] = param(kind=_as_keep)
    optional_second_mode: tuple[str, ...] = param((), as_strs)
    grid: int = param(256, as_int, lo=3)
    min_mode_share: float = param(0.02, as_float, lo=0, hi=1)
    max_dip: float = param(0.7, as_float, lo=0, hi=1)
    edge_sd: float = param(4.0, as_float, lo=0, lo_open=True)
    edge_margin: float = param(0.02, as_float, lo=0, hi=0.5, hi_open=True)

    def check(self) -> list[tuple[str, str]]:
        stray = [d for d in self.optional_second_mode if d not in dict(self.keep)]
        if stray:
            return [("optional_second_mode", f"names {stray}, which 'keep' does not (it has {list(dict(self.keep))}); "
                                             "list only detectors of 'keep'.")]
        return []


def place(p: DensityValleyParams, ctx, gs, template, parent, path, state):
    """A rectangle with the template's dimensions, each ``keep`` dimension bounded at its threshold."""
    import flowkit as fk

    rows = fit_rows(p, ctx, parent, path)
    keep = dict(p.keep)  # {dimension: "above" | "below"}
    optional = set(p.optional_second_mode)
    dims, info = [], {"bounds": {}, "bounds_linear": {}, "basis": {}, "modes": {}, "n_fit": int(rows.size)}
    for d in template.dimensions:
        side = keep.get(d.id)
        lo, hi = d.min, d.max
        if side is not None:
            axis = Axis(ctx.values(d, rows))
            t, basis, peaks = threshold(axis.u, p, side, d.id in optional, f"{path[-1]} on {d.id}")
            linear = axis.linear(t)
            t = gate_units(gs, d, linear)
            lo, hi = (t, None) if side == "above" else (None, t)
            info["bounds"][d.id], info["basis"][d.id] = round(t, 5), basis
            info["modes"][d.id] = [round(axis.linear(u), 1) for u in peaks]
            info["bounds_linear"][d.id] = round(linear, 2)
        dims.append(fk.Dimension(d.id, compensation_ref=d.compensation_ref,
                                 transformation_ref=d.transformation_ref, range_min=lo, range_max=hi))
    return fk.gates.RectangleGate(path[-1], dims), info
