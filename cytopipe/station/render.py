"""What the station draws, in numbers: plot axes with readable ticks, density images as PNG.

The browser draws axes, gates and handles as SVG in the gate's own units
(logicle units for a transformed dimension, linear units for scatter); the
server sends the axis ranges, the ticks (positions in those units, labels in
compensated linear units) and each population's density as a PNG made here
with numpy and zlib (:func:`cytopipe.review.png.png_bytes`, the report's
encoder): no plotting library sits on the path of a drag.
Every plot of one gate, in every sample, has the same axes, so a batch
compares at a glance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..review.outliers import OUTLIER_Z, robust_outliers
from ..review.png import png_bytes, viridis

__all__ = ["BINS", "CONTOUR_LEVELS", "OUTLIER_RULE", "axis_spec", "axis_label", "batch_outliers", "contour_levels",
           "contour_png", "density_png", "histogram", "linear_ticks"]

#: Bins per axis of a density image (the image is scaled to the plot in the browser).
BINS = 160
#: Bins of a batch-view thumbnail: the report's stored plot data (128 a side) summed two by two.
THUMB_BINS = 64
_SCATTER_RANGE = (0.0, 262144.0)
_LOGICLE_RANGE = (-0.25, 1.0)
_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
#: What the batch view's red frame means, as the page says it.
OUTLIER_RULE = (f"more than {OUTLIER_Z:g} robust SDs from the median of the batch's samples of the same visit "
                f"(Treg % of CD4 on the strategy's Treg gate, % of parent on the others), or out of line with "
                f"the patient's own visits (treg_outlier)")


def axis_label(detector: str, markers: dict[str, str]) -> str:
    """``CD25 (PE-Cy7-A)`` for a marker's detector; the detector alone for scatter.

    Examples
    --------
    >>> axis_label("PE-Cy7-A", {"PE-Cy7-A": "CD25"})
    'CD25 (PE-Cy7-A)'
    >>> axis_label("FSC-A", {"PE-Cy7-A": "CD25"})
    'FSC-A'
    """
    marker = markers.get(detector)
    return f"{marker} ({detector})" if marker else detector


def _decade_label(value: float) -> str:
    if value == 0:
        return "0"
    exp = int(round(np.log10(abs(value))))
    return ("-" if value < 0 else "") + "10" + str(exp).translate(_SUPERSCRIPT)


def linear_ticks(lo: float, hi: float, *, count: int = 5) -> list[dict[str, Any]]:
    """About ``count`` ticks at round values (1, 2 or 5 times a power of ten) between ``lo`` and ``hi``.

    Examples
    --------
    >>> [t["label"] for t in linear_ticks(0, 1000)]
    ['0', '200', '400', '600', '800', '1k']
    """
    if not hi > lo:
        return []
    raw = (hi - lo) / count
    base = 10.0 ** np.floor(np.log10(raw))
    step = base * min((m for m in (1, 2, 5, 10) if base * m >= raw), default=10)
    ticks = []
    for v in np.arange(np.ceil(lo / step) * step, hi + step * 1e-9, step):
        v = float(round(v, 10))
        label = f"{v / 1000:g}k" if abs(v) >= 1000 else f"{v:g}"
        ticks.append({"v": v, "label": label, "major": True})
    return ticks


def axis_spec(detector: str, transform, markers: dict[str, str], *,
              span: tuple[float, float] | None = None) -> dict[str, Any]:
    """The axis of one channel (a gate dimension or any other): label, range in plot units, ticks.

    Parameters
    ----------
    detector
        The dimension's ``$PnN``.
    transform : flowkit transform or None
        The dimension's transform (None: linear units).
    markers
        Detector to marker name, from the strategy's panel.
    span
        The range of a linear channel that is not scatter (Time: the sample's
        first to last event), instead of the scatter range.

    Returns
    -------
    dict
        ``label``, ``range`` ``[lo, hi]``, ``log`` (True when transformed) and
        ``ticks``: ``[{"v": position, "label": text, "major": bool}]``;
        logicle axes get labelled decades (-10³, 0, 10³ ... 10⁵) and unlabelled
        minor ticks at 2-9 times each decade.
    """
    label = axis_label(detector, markers)
    if transform is None and span is not None:
        lo, hi = float(span[0]), float(span[1])
        if not hi > lo:  # one event, or a Time channel that never advanced: still a plot
            lo, hi = lo - 0.5, lo + 0.5
        return {"label": label, "range": [lo, hi], "log": False, "ticks": linear_ticks(lo, hi)}
    if transform is None:
        lo, hi = _SCATTER_RANGE
        ticks = [{"v": float(v), "label": f"{v / 1000:.0f}k" if v else "0", "major": True}
                 for v in np.arange(0, 250_001, 50_000)]
        return {"label": label, "range": [lo, hi], "log": False, "ticks": ticks}
    lo, hi = _LOGICLE_RANGE
    majors = [-1e3, 0.0, 1e3, 1e4, 1e5]
    minors = [-k * 100.0 for k in range(2, 10)] + [k * 10.0**d for d in (2, 3, 4, 5) for k in range(2, 10)
                                                 if k * 10.0**d < 262144] + [100.0]
    values = np.array(majors + minors, dtype=float)
    pos = np.asarray(transform.apply(values.reshape(-1, 1))).ravel()
    ticks = []
    for i, (v, p) in enumerate(zip(values, pos)):
        if lo <= p <= hi:
            major = i < len(majors)
            ticks.append({"v": float(p), "label": _decade_label(v) if major else "", "major": major})
    return {"label": label, "range": [lo, hi], "log": True, "ticks": ticks}


def histogram(values: np.ndarray, ranges: list[list[float]], bins: int = BINS, *,
              window: list[list[float]] | None = None) -> np.ndarray:
    """Counts of ``values`` (n x 1 or n x 2) on the plot ranges; events off the plot pile up at its edge.

    ``window`` (one ``[lo, hi]`` per axis, within the ranges) bins a zoomed
    part of the plot only: events outside it are left out, while the piles at
    the plot's own edges stay where the window includes them.
    """
    clipped = [np.clip(values[:, j], r[0], r[1]) for j, r in enumerate(ranges)]
    win = [tuple(w) for w in (window or ranges)]
    if len(ranges) == 1:
        return np.histogram(clipped[0], bins=bins, range=win[0])[0]
    return np.histogram2d(clipped[0], clipped[1], bins=bins, range=(win[0], win[1]))[0]


def _smooth(hist: np.ndarray) -> np.ndarray:
    """A 2-D histogram smoothed by a 5-bin binomial kernel along each axis (a contour of raw counts is ragged)."""
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    out = np.apply_along_axis(np.convolve, 0, np.asarray(hist, dtype=float), kernel, mode="same")
    return np.apply_along_axis(np.convolve, 1, out, kernel, mode="same")


#: Share of the events outside each contour, outermost first (probability contours, as FlowJo draws them).
CONTOUR_LEVELS = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9)


def contour_levels(hist: np.ndarray) -> np.ndarray:
    """Each bin's contour level: how many of :data:`CONTOUR_LEVELS`' contours enclose it (0: outside all).

    Levels are probability contours of the smoothed histogram: the bins inside
    contour ``k`` (level > k) hold ``1 - CONTOUR_LEVELS[k]`` of the events, so a
    dense and a sparse sample get the same number of rings.
    """
    smooth = _smooth(hist)
    total = smooth.sum()
    level = np.zeros(smooth.shape, dtype=np.int64)
    if total <= 0:
        return level
    desc = np.sort(smooth.ravel())[::-1]
    inside = np.cumsum(desc) / total
    for share_out in CONTOUR_LEVELS:
        k = min(int(np.searchsorted(inside, 1.0 - share_out)), desc.size - 1)
        level += (smooth >= desc[k]) & (smooth > 0)
    return level


def contour_png(hist: np.ndarray, *, tint: tuple[int, int, int] | None = None) -> bytes:
    """A 2-D histogram (x bins x y bins) as probability contour lines, a PNG with y up, the rest transparent.

    A bin is drawn when a neighbour lies on a lower level (:func:`contour_levels`):
    each contour is the inner edge of its ring. Dark grey, or ``tint``.
    """
    level = contour_levels(hist).T[::-1]  # rows top to bottom, y increasing upwards
    padded = np.pad(level, 1, mode="edge")
    lower = np.zeros(level.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        lower |= padded[dy:dy + level.shape[0], dx:dx + level.shape[1]] < level
    rgba = np.zeros(level.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = np.array(tint if tint is not None else (40, 40, 40), dtype=np.uint8)
    rgba[..., 3] = np.where(lower & (level > 0), 255, 0)
    return png_bytes(rgba)


def density_png(hist: np.ndarray, *, tint: tuple[int, int, int] | None = None) -> bytes:
    """A 2-D histogram (x bins x y bins) as a PNG, y up, empty bins transparent.

    Log-scaled: a rare population stays visible next to a dense one. With
    ``tint``, one colour whose opacity follows the density (for overlaying
    several samples on one plot).
    """
    img = np.asarray(hist, dtype=float).T[::-1]  # rows top to bottom, y increasing upwards
    filled = img > 0
    level = np.zeros_like(img)
    if filled.any():
        level[filled] = np.log1p(img[filled]) / np.log1p(img.max())
    rgba = np.zeros(img.shape + (4,), dtype=np.uint8)
    if tint is None:
        rgba[..., :3] = viridis()[np.clip((level * 255).astype(int), 0, 255), :3]
        rgba[..., 3] = np.where(filled, 255, 0)
    else:
        rgba[..., :3] = np.array(tint, dtype=np.uint8)
        rgba[..., 3] = np.where(filled, (60 + 195 * level).astype(np.uint8), 0)
    return png_bytes(rgba)


def batch_outliers(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark each sample of the batch view that is out of line (``"outlier": True``), in place.

    The report's rule (:func:`cytopipe.review.outliers.robust_outliers`) on
    each sample's ``value`` when it has one (the batch view gives the Treg
    gate's samples their Treg % of CD4), else ``100 * count / parent_count``,
    judged among the samples of the same ``visit``: under treatment every
    patient's Tregs move together at a visit, so a responder is no outlier
    at day 8, and a day-60 sample is judged against the other day-60
    samples. A visit with fewer than four values is judged against the whole
    batch. A sample that carries ``treg_outlier`` (out of line with the
    patient's own visits) is framed too. A sample without a value (not
    gated) is never an outlier. The browser draws a red frame where it is
    told to: the rule lives here only.

    Parameters
    ----------
    samples
        The batch view's samples, each with ``count`` and ``parent_count`` (None when not gated), and
        optionally ``value``, ``visit`` and ``flags``.

    Returns
    -------
    list of dict
        ``samples``, each with ``outlier`` set.

    Examples
    --------
    >>> marked = batch_outliers([{"count": c, "parent_count": 100} for c in (10, 11, 9, 10, 40)]
    ...                         + [{"count": None, "parent_count": None}])
    >>> [s["outlier"] for s in marked]
    [False, False, False, False, True, False]
    """
    def value(s):
        if s.get("value") is not None:
            return float(s["value"])
        return 100 * s["count"] / s["parent_count"] if s["count"] is not None and s["parent_count"] else np.nan

    values = np.array([value(s) for s in samples], dtype=float)
    visits = [s.get("visit") for s in samples]
    out = robust_outliers(values)
    for visit in set(visits):
        members = np.array([v == visit for v in visits])
        if visit is not None and np.isfinite(values[members]).sum() >= 4:
            out[members] = robust_outliers(values[members])
    for s, o in zip(samples, out):
        s["outlier"] = bool(o) or "treg_outlier" in (s.get("flags") or [])
    return samples
