"""Any instrument's file seen in a strategy's own terms: its detectors renamed, its range scaled.

A strategy's GatingML names canonical detectors (``PE-Cy7-A`` for CD25) and
transforms set for a 262,144-channel range. Another instrument calls CD25's
detector ``PC7-A`` or ``YL4-A``, and writes values up to 2^20 or 2^24 (or
1,024). :func:`conform_sample` presents such a file to the gates as the
strategy expects it:

- each marker's detector (found by :func:`~cytopipe.strategy.panel.resolve_panel`)
  is renamed to the canonical one, in the events, ``$PnN`` and the spillover;
  a channel of the file that already bears a canonical name the strategy
  gives another marker is renamed aside (``"APC-A [file]"``);
- fluorescence and scatter are scaled to the strategy's range by a power of
  two, chosen per file from its ``$PnR`` and its own data (the larger). A
  power of two multiplies every float exactly, and logicle scales with its
  top (``logicle(k x; T) == logicle(x; T / k)``), so the gates see exactly
  what FlowKit sees on the file's own values with the transforms' tops and
  the linear coordinates divided by ``k``.

:func:`file_units_gatingml` does that division and the renaming back, so a
sample's GatingML names the file's own detectors and FlowKit alone
reproduces its counts on the file as written. A file already in the
strategy's terms (the lab's own instrument) is returned as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..fcs.read import spillover_channels

__all__ = ["ChannelMap", "ConformedSample", "channel_map", "conform_sample", "file_units_gatingml"]

#: Suffix of a file channel renamed aside because the strategy gives its name to another marker.
ASIDE = " [file]"
_PROBE_ROWS = 10_000  # events that set a range from the data: enough for a 99.9th percentile


@dataclass(frozen=True)
class ChannelMap:
    """How a file's channels map to a strategy's.

    Attributes
    ----------
    renames
        File ``$PnN`` to the name the gates use (canonical, or set aside).
    fluorescence_scale, scatter_scale
        Powers of two the file's fluorescence and scatter values are
        multiplied by to reach the strategy's range (1.0: as written).
    fluorescence_top, scatter_top
        The file's range that set them (``$PnR``, or the data's 99.9th
        percentile where values run above it).
    """

    renames: dict[str, str] = field(default_factory=dict)
    fluorescence_scale: float = 1.0
    scatter_scale: float = 1.0
    fluorescence_top: float | None = None
    scatter_top: float | None = None

    @property
    def identity(self) -> bool:
        """True when the file is gated as it is."""
        return not self.renames and self.fluorescence_scale == 1.0 and self.scatter_scale == 1.0

    def record(self) -> dict[str, Any]:
        """A JSON-able description for the run's records."""
        return {"renames": dict(self.renames), "fluorescence_scale": self.fluorescence_scale,
                "scatter_scale": self.scatter_scale, "fluorescence_top": self.fluorescence_top,
                "scatter_top": self.scatter_top}


def _strategy_top(gs) -> float:
    """The top ``T`` of the strategy's logicle transforms (262,144 in every shipped strategy)."""
    tops = [getattr(x, "param_t", None) for x in getattr(gs, "transformations", {}).values()]
    tops = [float(t) for t in tops if t]
    return max(tops) if tops else 262144.0


def _pnr(meta: dict[str, Any], index: int) -> float | None:
    try:
        value = float(str(meta.get(f"p{index + 1}r", "")).strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _top(sample, columns: list[int]) -> float | None:
    """The range of ``columns``: the largest ``$PnR``, or the data's 99.9th percentile where it is higher."""
    if not columns:
        return None
    meta = sample.metadata
    ranges = [r for r in (_pnr(meta, i) for i in columns) if r is not None]
    events = sample.get_events(source="raw")
    step = max(1, events.shape[0] // _PROBE_ROWS)
    probe = np.asarray(events[::step][:, columns], dtype=np.float64)
    data = float(np.nanmax(np.nanpercentile(probe, 99.9, axis=0))) if probe.size else 0.0
    top = max(ranges) if ranges else None
    if top is None or data > top:
        top = data if data > 0 else top
    return top


def _scale(target: float, top: float | None) -> float:
    """The power of two nearest ``target / top`` (1.0 within a factor of about 1.4)."""
    if not top or not math.isfinite(top):
        return 1.0
    return float(2.0 ** round(math.log2(target / top)))


def channel_map(sample, panel, strategy, *, gating_strategy=None) -> ChannelMap:
    """How ``sample``'s channels map to ``strategy``'s (see the module docstring).

    Parameters
    ----------
    sample : flowkit.Sample or LeanSample
        The file as read.
    panel : cytopipe.strategy.Panel
        Each marker's detector in this file.
    strategy : cytopipe.strategy.Strategy
        The strategy the file is gated with.
    gating_strategy : flowkit.GatingStrategy, optional
        Its parsed GatingML (for the transforms' top); parsed when omitted.

    Returns
    -------
    ChannelMap
    """
    gs = gating_strategy if gating_strategy is not None else strategy.gating_strategy()
    canonical = {m.marker: m.detector for m in strategy.markers}
    renames = {d: canonical[m] for m, d in panel.detectors.items() if canonical.get(m) not in (None, d)}
    taken = set(renames.values())
    for name in sample.pnn_labels:  # a file channel bearing a name the strategy gives another detector
        if name in taken and name not in renames:
            renames[name] = name + ASIDE
    target = _strategy_top(gs)
    pnn = list(sample.pnn_labels)
    fl_cols = [pnn.index(d) for d in panel.detectors.values() if d in pnn]
    sc_cols = [i for i in getattr(sample, "scatter_indices", []) if i < len(pnn)]
    fl_top, sc_top = _top(sample, fl_cols), _top(sample, sc_cols)
    return ChannelMap(renames=renames, fluorescence_scale=_scale(target, fl_top), scatter_scale=_scale(target, sc_top),
                      fluorescence_top=fl_top, scatter_top=sc_top)


def _renamed_spill(text: str, renames: dict[str, str]) -> str:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        n = int(parts[0])
    except ValueError:
        return text
    names = [renames.get(p, p) for p in parts[1 : n + 1]]
    return ",".join([parts[0], *names, *parts[n + 1 :]])


class ConformedSample:
    """A read sample with its channels renamed and scaled as a :class:`ChannelMap` says.

    Offers what the gating code uses of :class:`flowkit.Sample` and
    :class:`~cytopipe.fcs.lean.LeanSample`: ``id``, ``original_filename``,
    ``version``, ``event_count``, ``pnn_labels``, ``pns_labels``, the
    channel indices, ``metadata`` (the spillover's channel names renamed),
    ``get_events("raw")`` (scaled), ``time_values()`` and ``to_flowkit()``.
    ``base`` is the sample as read and ``channel_map`` how it was conformed.
    """

    def __init__(self, base, cmap: ChannelMap) -> None:
        self.base = base
        self.channel_map = cmap
        for name in ("id", "current_filename", "original_filename", "version", "event_count", "pns_labels",
                     "fluoro_indices", "scatter_indices", "time_index", "null_channels", "cytopipe_notes",
                     "file_sha256", "path"):
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))
        r = cmap.renames
        self.pnn_labels = [r.get(n, n) for n in base.pnn_labels]
        self.null_channels = [r.get(n, n) for n in getattr(base, "null_channels", [])]
        self.inexact_channels = tuple(r.get(n, n) for n in getattr(base, "inexact_channels", ()))
        meta = dict(base.metadata)
        for key in ("spillover", "spill"):
            if key in meta:
                meta[key] = _renamed_spill(meta[key], r)
        self.metadata = meta
        # an instrument that writes -A and -H of every detector compensates one kind only: the others are
        # not fluorescence to compensate (FlowKit's Matrix wants every fluorescence channel in the matrix)
        spill = spillover_channels(self)
        if spill:
            self.fluoro_indices = [i for i in getattr(base, "fluoro_indices", []) if self.pnn_labels[i] in spill]
        self._events: np.ndarray | None = None

    def get_events(self, source: str = "raw") -> np.ndarray:
        """The events, fluorescence and scatter multiplied by the map's powers of two."""
        if source != "raw":
            msg = f"a conformed sample holds raw events only, not {source!r}."
            raise ValueError(msg)
        if self._events is None:
            events = self.base.get_events(source="raw")
            cm = self.channel_map
            if cm.fluorescence_scale != 1.0 or cm.scatter_scale != 1.0:
                events = np.array(events, copy=True)
                fl = list(getattr(self.base, "fluoro_indices", []))  # every fluorescence channel, compensated or not
                sc = list(getattr(self.base, "scatter_indices", []))
                if fl and cm.fluorescence_scale != 1.0:
                    events[:, fl] *= events.dtype.type(cm.fluorescence_scale)
                if sc and cm.scatter_scale != 1.0:
                    events[:, sc] *= events.dtype.type(cm.scatter_scale)
            self._events = events
        return self._events

    def get_metadata(self) -> dict[str, Any]:
        """TEXT keywords (lower case, no ``$``), the spillover's channels renamed."""
        return self.metadata

    def time_values(self) -> np.ndarray | None:
        """The Time channel as the base sample gives it (never scaled)."""
        if hasattr(self.base, "time_values"):
            return self.base.time_values()
        if self.time_index is None:
            return None
        return np.asarray(self.base.get_events(source="raw")[:, self.time_index], dtype=np.float64)

    def to_flowkit(self):
        """A :class:`flowkit.Sample` of the conformed events, for FlowKit's own engine."""
        import flowkit as fk

        sample = fk.Sample(np.asarray(self.get_events(), dtype=np.float64), sample_id=self.id,
                           channel_labels=self.pnn_labels)
        for key in ("spillover", "spill"):
            if key in self.metadata:
                sample.metadata[key] = self.metadata[key]
        return sample


def conform_sample(sample, panel, strategy, *, gating_strategy=None):
    """``sample`` in ``strategy``'s terms, or ``sample`` itself when it already is.

    Parameters
    ----------
    sample : flowkit.Sample or LeanSample
        The file as read.
    panel : cytopipe.strategy.Panel
        Each marker's detector in this file.
    strategy : cytopipe.strategy.Strategy
    gating_strategy : flowkit.GatingStrategy, optional

    Returns
    -------
    flowkit.Sample, LeanSample or ConformedSample
        ``sample`` when its :class:`ChannelMap` is the identity.
    """
    cmap = channel_map(sample, panel, strategy, gating_strategy=gating_strategy)
    return sample if cmap.identity else ConformedSample(sample, cmap)


_NS = {
    "gating": "http://www.isac-net.org/std/Gating-ML/v2.0/gating",
    "transforms": "http://www.isac-net.org/std/Gating-ML/v2.0/transformations",
    "data-type": "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes",
}


def _q(prefix: str, name: str) -> str:
    return f"{{{_NS[prefix]}}}{name}"


def file_units_gatingml(text: str, sample) -> str:
    """A sample's GatingML, written in the conformed terms, back in the file's own.

    Dimension names go back to the file's ``$PnN``; logicle tops and the
    coordinates of untransformed (linear) dimensions are divided by the
    scale of their channel kind. Ratio dimensions are left as they are
    (both terms scale alike).

    Parameters
    ----------
    text
        GatingML 2.0 exported for the conformed sample.
    sample
        The sample it was gated on: a :class:`ConformedSample` is written
        back; any other sample's GatingML is returned unchanged.

    Returns
    -------
    str
        GatingML 2.0 on which FlowKit gates the file as written with the same counts.
    """
    if not isinstance(sample, ConformedSample):
        return text
    from lxml import etree

    cm = sample.channel_map
    back = {v: k for k, v in cm.renames.items()}
    fl = {sample.pnn_labels[i] for i in getattr(sample, "fluoro_indices", [])}
    sc = {sample.pnn_labels[i] for i in getattr(sample, "scatter_indices", [])}

    def scale_of(name: str) -> float:
        return cm.fluorescence_scale if name in fl else cm.scatter_scale if name in sc else 1.0

    root = etree.fromstring(text.encode("utf-8"), etree.XMLParser(resolve_entities=False, no_network=True))
    # logicle (and other) tops: by the channels whose dimensions use the transform
    xform_scale: dict[str, float] = {}
    for gate in root:
        for dim in gate.iter(_q("gating", "dimension")):
            ref = dim.get(_q("gating", "transformation-ref"))
            fcs = dim.find(_q("data-type", "fcs-dimension"))
            if ref and fcs is not None:
                xform_scale.setdefault(ref, scale_of(fcs.get(_q("data-type", "name"))))
    for xform in root.iter(_q("transforms", "transformation")):
        k = xform_scale.get(xform.get(_q("transforms", "id")), 1.0)
        for child in xform:
            if k != 1.0 and child.get(_q("transforms", "T")) is not None:
                child.set(_q("transforms", "T"), repr(float(child.get(_q("transforms", "T"))) / k))
    for gate in root:
        dims = gate.findall(_q("gating", "dimension"))
        linear_k = []
        for dim in dims:
            fcs = dim.find(_q("data-type", "fcs-dimension"))
            name = fcs.get(_q("data-type", "name")) if fcs is not None else None
            k = 1.0 if dim.get(_q("gating", "transformation-ref")) or name is None else scale_of(name)
            linear_k.append(k)
            if k != 1.0:
                for attr in ("min", "max"):
                    value = dim.get(_q("gating", attr))
                    # an open bound (a pre-gated gate's -1.8e308) stays as it is: divided it would overflow
                    if value is not None and math.isfinite(float(value) / k):
                        dim.set(_q("gating", attr), repr(float(value) / k))
        for vertex in gate.iter(_q("gating", "vertex")):
            for i, coord in enumerate(vertex.findall(_q("gating", "coordinate"))):
                k = linear_k[i] if i < len(linear_k) else 1.0
                if k != 1.0:
                    coord.set(_q("data-type", "value"), repr(float(coord.get(_q("data-type", "value"))) / k))
    for fcs in root.iter(_q("data-type", "fcs-dimension")):
        name = fcs.get(_q("data-type", "name"))
        if name in back:
            fcs.set(_q("data-type", "name"), back[name])
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode("utf-8")
