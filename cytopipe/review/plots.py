"""The report's plots, rendered with matplotlib (Agg) to PNG bytes.

Why matplotlib and not bokeh: the report must open from disk, offline, and
stay readable for years in a trial's archive. Static PNGs embedded as
``data:`` URIs need no JavaScript, no CDN and no running server; a bokeh
page needs BokehJS (a CDN, or ~1 MB inlined per page) and a browser with JS
to show anything. Reviewers need to look, not to pan and zoom.

Every gate plot of every sample uses the same axes: logicle fluorescence on
a fixed range (ticks in compensated linear units) and linear scatter on the
detector's full range, so samples compare at a glance. That also makes them
cheap: a gate's frame (axes, ticks, labels) is drawn once per process, and
each sample's plot restores those pixels and draws only its density, gate
and title on them (matplotlib's blitting), ~10x cheaper than a whole figure
(docs/performance.md, "The report").
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon, Rectangle

from .outliers import robust_outliers
from .plotdata import GatePlot, GateView, PlotDim, plot_dims, plot_of
from .png import png_bytes, viridis

__all__ = ["gate_png", "patient_png", "batch_png", "draw_frames"]

_TICK_LABELS = ("-10³", "0", "10³", "10⁴", "10⁵")
_GATE_COLOUR = "#d62728"
_HIST_COLOUR = "#4c72b0"
_FIGSIZE, _DPI = (3.4, 3.2), 80
_PNG_LEVEL = 3  # zlib level: 2.3x faster than the default 6, files ~12 % larger
_FRAMES_MAX = 32  # gate frames kept per process (~0.4 MB each)
_BATCH_MAX_WIDTH = 16.0  # inches: the batch figure of a big batch stays readable without scrolling


def _png(fig: Figure, dpi: int = 80) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _png_of(canvas: FigureCanvasAgg, title: str = "", anchor: tuple[float, float] = (0.0, 0.0),
            font=None, labels: Sequence[tuple[str, float, float]] = (), label_font=None) -> bytes:
    """The canvas as PNG, with ``title`` centred on its baseline at ``anchor`` (display pixels).

    ``labels``: ``(text, x, y)`` drawn right-aligned and centred on ``(x, y)`` (tick labels).
    """
    from PIL import Image, ImageDraw

    w, h = canvas.get_width_height()
    # opaque (white figure): RGB, ~20 % cheaper to encode and smaller than RGBA
    image = Image.frombuffer("RGBA", (w, h), canvas.buffer_rgba(), "raw", "RGBA", 0, 1).convert("RGB")
    draw = ImageDraw.Draw(image)
    if title:
        # FreeType through PIL: the same font and size as matplotlib's, ~20x cheaper to lay out
        room = 2 * min(anchor[0], w - anchor[0]) - 4
        if font.getlength(title) > room:  # a long title (a custom gate's) shrinks to fit, never cut off
            font = font.font_variant(size=font.size * room / font.getlength(title))
        draw.text((anchor[0], h - anchor[1]), title, fill="black", font=font, anchor="ms")
    for text, x, y in labels:
        draw.text((x, h - y), text, fill="black", font=label_font, anchor="rm")
    return png_bytes(np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(h, w, 3), level=_PNG_LEVEL)


def _title_font(size_pt: float):
    from matplotlib.font_manager import FontProperties, findfont
    from PIL import ImageFont

    return ImageFont.truetype(findfont(FontProperties(size=size_pt)), size=size_pt * _DPI / 72)


def _title_anchor(title) -> tuple[tuple[float, float], object]:
    """Where an axes title's baseline centre goes (display pixels), and its font; hides the title.

    Each plot's title is drawn there by :func:`_png_of`. Axes without
    decorations on top keep their title where it was created, so no draw
    is needed to place it.
    """
    anchor = tuple(float(v) for v in title.get_transform().transform(title.get_position()))
    font = _title_font(title.get_fontsize())
    title.set_visible(False)
    return anchor, font


def _axis(ax, which: str, dim: PlotDim) -> tuple[float, float]:
    label = dim.id + ("" if dim.ticks is None else " (logicle)")
    lo, hi = dim.range
    if dim.ticks is None:
        ticks = np.linspace(0, 250_000, 6)
        labels = [f"{t / 1000:.0f}k" for t in ticks]
    else:
        ticks, labels = np.asarray(dim.ticks), list(_TICK_LABELS)
    getattr(ax, f"set_{which}lim")(lo, hi)
    getattr(ax, f"set_{which}ticks")(ticks, labels)
    getattr(ax, f"set_{which}label")(label)
    return lo, hi


def _edge(value, lo: float, hi: float, pick: str) -> float:
    if value is None:
        return lo - (hi - lo) if pick == "min" else hi + (hi - lo)
    return float(value)


class _Frame:
    """One gate's axes drawn once; :meth:`draw` puts one sample's plot on them."""

    def __init__(self, dims: tuple[PlotDim, ...]):
        fig = Figure(figsize=_FIGSIZE, dpi=_DPI)
        self.canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        self.title = ax.set_title("Xg", fontsize=8)
        self.lims = [_axis(ax, "x", dims[0])]
        if len(dims) == 1:
            # a 1-D plot's y range is its sample's: its ticks and labels are drawn with each sample
            ax.set_ylabel("events")
            ax.yaxis.set_label_coords(-0.17, 0.5)
            ax.set_yticks([])
        else:
            self.lims.append(_axis(ax, "y", dims[1]))
        ax.tick_params(labelsize=7)
        # fixed margins: tight_layout measures every tick label and was half the plot's cost
        fig.subplots_adjust(left=0.2, right=0.96, bottom=0.16, top=0.9)
        self.anchor, self.font = _title_anchor(self.title)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(fig.bbox)
        self.fig, self.ax = fig, ax
        # the artists each sample redraws, kept out of the background
        xform = ax.get_xaxis_transform()
        self.fill = ax.add_patch(Polygon(np.zeros((3, 2)), closed=True, facecolor=_HIST_COLOUR, alpha=0.7,
                                         edgecolor=_HIST_COLOUR, lw=0.5, animated=True))
        self.span = ax.add_patch(Rectangle((0, 0), 1, 1, transform=xform, color=_GATE_COLOUR, alpha=0.12,
                                           lw=0, animated=True))
        self.vlines = [ax.add_line(Line2D([0, 0], [0, 1], transform=xform, color=_GATE_COLOUR, lw=1.5,
                                          animated=True)) for _ in range(2)]
        self.dots = ax.add_line(Line2D([], [], ls="", marker="o", ms=1.8, mew=0, color="#3b528b", animated=True))
        self.outline = ax.add_patch(Polygon(np.zeros((3, 2)), closed=True, fill=False, edgecolor=_GATE_COLOUR,
                                            lw=1.5, animated=True))
        from matplotlib import rcParams
        from matplotlib.markers import TICKLEFT
        from matplotlib.ticker import AutoLocator

        self.yticks = ax.add_line(Line2D([], [], transform=ax.get_yaxis_transform(), ls="", marker=TICKLEFT,
                                         ms=rcParams["ytick.major.size"], mew=rcParams["ytick.major.width"],
                                         color="black", animated=True, clip_on=False))
        self.locator = AutoLocator()
        self.locator.set_axis(ax.yaxis)
        pad = (rcParams["ytick.major.size"] + rcParams["ytick.major.pad"]) * _DPI / 72
        self.label_x = ax.bbox.x0 - pad
        self.label_font = _title_font(7)
        x0, y0, x1, y1 = ax.bbox.extents
        height = self.canvas.get_width_height()[1]
        self.cols = np.arange(int(round(x0)), int(round(x1)))
        self.rows = np.arange(int(round(height - y1)), int(round(height - y0)))  # buffer rows, top first
        xbin = np.clip(((self.cols + 0.5 - x0) / (x1 - x0) * _bins()).astype(int), 0, _bins() - 1)
        ybin = np.clip(((height - self.rows - 0.5 - y0) / (y1 - y0) * _bins()).astype(int), 0, _bins() - 1)
        self.pixel_bins = xbin[None, :] * _bins() + ybin[:, None]  # (rows, cols): each pixel's bin, x across, y up

    def draw(self, plot: GatePlot) -> bytes:
        canvas, ax = self.canvas, self.ax
        canvas.restore_region(self.background)
        dims = plot.dims
        labels: list[tuple[str, float, float]] = []
        if len(dims) == 1:
            (lo, hi), = self.lims
            labels = self._y_axis(float(max(plot.hist.max(), 1)))
            edges = np.linspace(lo, hi, plot.hist.size + 1)
            h = plot.hist.astype(float)
            xy = np.column_stack([np.repeat(edges, 2)[1:-1], np.repeat(h, 2)])
            self.fill.set_xy(np.vstack([[edges[0], 0.0], xy, [edges[-1], 0.0]]))
            ax.draw_artist(self.fill)
            g_lo, g_hi = _edge(dims[0].min, lo, hi, "min"), _edge(dims[0].max, lo, hi, "max")
            a, b = max(g_lo, lo), min(g_hi, hi)
            if b > a:
                self.span.set_bounds(a, 0, b - a, 1)
                ax.draw_artist(self.span)
            for line, v in zip(self.vlines, (dims[0].min, dims[0].max)):
                if v is not None:
                    line.set_xdata([v, v])
                    ax.draw_artist(line)
        else:
            (xlo, xhi), (ylo, yhi) = self.lims
            if plot.points is not None:  # few events: each one a dot, easier to see than single bins
                pts = plot.points
                self.dots.set_data(np.clip(pts[:, 0], xlo, xhi), np.clip(pts[:, 1], ylo, yhi))
                ax.draw_artist(self.dots)
            else:
                self._density(plot.hist)
            if plot.vertices is not None:
                corners = np.asarray(plot.vertices, dtype=float)
            else:
                x0, x1 = _edge(dims[0].min, xlo, xhi, "min"), _edge(dims[0].max, xlo, xhi, "max")
                y0, y1 = _edge(dims[1].min, ylo, yhi, "min"), _edge(dims[1].max, ylo, yhi, "max")
                corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
            self.outline.set_xy(corners)
            ax.draw_artist(self.outline)
        for spine in ax.spines.values():  # over the density's edge pixels, as in a whole draw
            ax.draw_artist(spine)
        pct = 100.0 * plot.count / plot.parent_count if plot.parent_count else float("nan")
        custom = " (sample gate)" if plot.custom else ""
        title = f"{plot.path[-1]}{custom}: {plot.count:,} ({pct:.1f} % of parent)"
        return _png_of(canvas, title, self.anchor, self.font, labels, self.label_font)

    def _y_axis(self, peak: float) -> list[tuple[str, float, float]]:
        """A 1-D plot's y range as matplotlib would autoscale it (5 % margins), its ticks drawn; the labels."""
        ax = self.ax
        ax.set_ylim(-0.05 * peak, 1.05 * peak)
        lo, hi = ax.get_ylim()
        ticks = [float(t) for t in self.locator.tick_values(lo, hi) if lo <= t <= hi]
        self.yticks.set_data([0.0] * len(ticks), ticks)
        ax.draw_artist(self.yticks)
        to_px = ax.transData.transform
        return [(f"{t:g}", self.label_x, float(to_px((0.0, t))[1])) for t in ticks]

    def _density(self, hist: np.ndarray) -> None:
        """The 2-D histogram as an image on a log colour scale (viridis), empty bins left blank.

        Put into the frame's pixels directly, as imshow(interpolation="nearest") would draw it.
        """
        peak = float(hist.max())
        if peak <= 0:
            return
        counts = hist.ravel()  # each bin's colour once, then each pixel's from its bin's: 2.6x fewer logs
        level = np.log(np.maximum(counts, 1)) / np.log(peak) if peak > 1 else np.zeros(counts.shape)
        colour = np.minimum((level * 256).astype(int), 255)
        pixels = np.asarray(self.canvas.buffer_rgba())
        block = pixels[self.rows[0]:self.rows[-1] + 1, self.cols[0]:self.cols[-1] + 1]
        filled = (counts > 0)[self.pixel_bins]  # empty bins left blank
        block[filled] = viridis()[colour[self.pixel_bins[filled]]]


def _bins() -> int:
    from .plotdata import PLOT_BINS

    return PLOT_BINS


_FRAMES: OrderedDict[tuple, _Frame] = OrderedDict()
_LOCK = threading.Lock()


def gate_png(view: GateView | GatePlot) -> bytes:
    """One gate on one sample: the parent population's density with the gate drawn.

    Parameters
    ----------
    view
        The gate's plot data (:func:`~cytopipe.review.plotdata.gate_plots`, as
        stored by the worker), or a re-read :class:`~cytopipe.review.plotdata.GateView`.

    Returns
    -------
    bytes
        A PNG, 272 x 256 pixels.
    """
    plot = view if isinstance(view, GatePlot) else plot_of(view)
    with _LOCK:  # matplotlib is not thread-safe; the frames are shared
        return _frame(_frame_key(plot.dims), lambda: _Frame(tuple(plot.dims))).draw(plot)


def draw_frames(strategy) -> int:
    """Draw the frames of a strategy's gate plots now, before any sample needs them.

    The process local workers are forked from calls this
    (:mod:`cytopipe.batch.preload`), so each worker starts with them
    (~40 ms a frame).

    Returns
    -------
    int
        Frames drawn.
    """
    gs = strategy.gating_strategy()
    drawn = 0
    for gate_path in strategy.gate_paths():
        gate = gs.get_gate(gate_path[-1], gate_path[:-1])
        transforms = [gs.get_transform(d.transformation_ref) if d.transformation_ref else None
                      for d in gate.dimensions]
        dims = tuple(plot_dims(gate, transforms))
        with _LOCK:
            _frame(_frame_key(dims), lambda d=dims: _Frame(d))
        drawn += 1
    return drawn


def _frame_key(dims: Sequence[PlotDim]) -> tuple:
    return tuple((d.id, d.ticks) for d in dims)  # the frame: its axes, not the gate's bounds


def patient_png(patient: str, visits: Sequence[str], values: Sequence[Sequence[float]]) -> bytes:
    """Treg % CD4 of one patient across visits, with 95 % CIs.

    ``values`` holds one ``(Treg %, CI low, CI high)`` a visit. Patients with the same visits and y
    range share one frame (see :func:`gate_png`).
    """
    pct, lo, hi = (list(col) for col in zip(*values)) if len(values) else ([], [], [])
    p = np.asarray(pct, dtype=float)
    top = max(25.0, float(np.nanmax(np.asarray(hi, dtype=float), initial=0)) + 2)
    key = ("patient", tuple(str(v) for v in visits), top)
    with _LOCK:
        frame = _frame(key, lambda: _TrendFrame(list(visits), top))
        return frame.draw(patient, p, np.asarray(lo, dtype=float), np.asarray(hi, dtype=float))


class _TrendFrame:
    """A patient trend's axes drawn once; :meth:`draw` puts one patient's values on them."""

    def __init__(self, visits: list[str], top: float):
        fig = Figure(figsize=(3.6, 2.6), dpi=_DPI)
        self.canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        self.x = np.arange(len(visits))
        ax.set_xticks(self.x, visits)
        margin = 0.5 if len(visits) == 1 else 0.05 * (len(visits) - 1)  # matplotlib's own 5 % margins
        ax.set_xlim(-margin, len(visits) - 1 + margin)
        ax.set_ylabel("Treg % CD4")
        ax.set_ylim(0, top)
        title = ax.set_title("patient Xg", fontsize=9)
        ax.tick_params(labelsize=7)
        fig.subplots_adjust(left=0.15, right=0.97, bottom=0.1, top=0.9)  # fixed: tight_layout doubled the cost
        self.anchor, self.font = _title_anchor(title)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(fig.bbox)
        self.ax = ax

    def draw(self, patient: str, p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bytes:
        self.canvas.restore_region(self.background)
        err = np.vstack([p - lo, hi - p])
        bars = self.ax.errorbar(self.x, p, yerr=np.nan_to_num(err), fmt="o-", color="#4c72b0", capsize=3)
        artists = [bars.lines[0], *bars.lines[1], *bars.lines[2]]
        for artist in artists:
            artist.set_animated(True)
            self.ax.draw_artist(artist)
        bars.remove()
        return _png_of(self.canvas, f"patient {patient}", self.anchor, self.font)


def _frame(key: tuple, make):
    frame = _FRAMES.get(key)
    if frame is None:
        frame = _FRAMES[key] = make()
        while len(_FRAMES) > _FRAMES_MAX:
            _FRAMES.popitem(last=False)
    else:
        _FRAMES.move_to_end(key)
    return frame


def batch_png(labels: Sequence[str], series: dict[str, Sequence[float]]) -> tuple[bytes, dict[str, list[str]]]:
    """Treg % CD4, CD4 count and event count across the batch's samples.

    Returns
    -------
    png, outliers
        The figure, and per series the labels of samples more than 3.5
        robust SDs from the batch median (drawn in red; :func:`~cytopipe.review.outliers.robust_outliers`).
    """
    width = min(_BATCH_MAX_WIDTH, max(6.0, 0.35 * len(labels) + 2))
    fig = Figure(figsize=(width, 2.2 * len(series)))
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(labels))
    found: dict[str, list[str]] = {}
    for ax, (name, vals) in zip(axes, series.items()):
        v = np.asarray(vals, dtype=float)
        bad = robust_outliers(v)
        ax.scatter(x[~bad], v[~bad], s=14, color="#4c72b0")
        ax.scatter(x[bad], v[bad], s=30, color=_GATE_COLOUR, marker="D")
        if np.isfinite(v).any():
            ax.axhline(float(np.nanmedian(v)), color="grey", lw=0.8, ls="--")
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        found[name] = [labels[i] for i in np.flatnonzero(bad)]
    # at most one label per ~9 pixels (6 pt text, rotated); the outliers are listed under the figure too
    step = max(1, -(-len(labels) * 9 // int(0.85 * width * 80)))
    shown = x[::step]
    axes[-1].set_xticks(shown, [labels[i] for i in shown], rotation=90, fontsize=6)
    axes[-1].set_xlim(-0.5, len(labels) - 0.5)
    # fixed margins, the bottom one fitted to the longest label: tight_layout measured every label
    longest = max((len(labels[i]) for i in shown), default=1)
    height = 2.2 * len(series)
    fig.subplots_adjust(left=0.9 / width, right=1 - 0.2 / width, top=1 - 0.15 / height,
                        bottom=(0.25 + longest * 6 * 0.62 / 72) / height, hspace=0.12)
    return _png(fig), found
