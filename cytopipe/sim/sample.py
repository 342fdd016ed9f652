"""Synthetic FCS files with known truth, shaped like the trial lab's Treg panel.

Every event belongs to one labelled population (:data:`POPULATIONS`), so the
true Treg % of CD4 of a file is known exactly. Files follow the trial lab's panel:
float32 list mode, FCS 3.0 or 3.1, either byte order, a spillover matrix under
``SPILL`` (3.0) or ``$SPILLOVER`` (3.1), shuffled channel order and drifting
``$PnS`` spellings. Everything is drawn from ``numpy.random.default_rng``
seeded by the :class:`SampleSpec`, so the same spec gives byte-identical files.

Examples
--------
>>> from cytopipe.sim.sample import SampleSpec, write_fcs
>>> truth = write_fcs("tube.fcs", SampleSpec(n_events=5000, seed=1))  # doctest: +SKIP
>>> truth["treg_pct_cd4"]  # doctest: +SKIP
7.1...
"""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .instrument import FAMILIES, Instrument
from .shapes import RealShape, skew_t
from .world import PANELS, SHAPES, World

__all__ = [
    "CHANNELS",
    "FLUORESCENCE",
    "MARKERS",
    "PANEL_MARKERS",
    "PNS_SPELLINGS",
    "POPULATIONS",
    "SampleSpec",
    "simulate_events",
    "spillover_matrix",
    "write_fcs",
]

#: Fluorescence detectors ($PnN), in the nominal order used for the spillover matrix.
FLUORESCENCE: tuple[str, ...] = (
    "FITC-A", "PE-A", "PE-Cy7-A", "APC-A", "APC-H7-A", "V450-A", "V500-A", "PerCP-Cy5-5-A",
)
#: All 12 channels ($PnN) in nominal order.
CHANNELS: tuple[str, ...] = ("FSC-A", "FSC-H", "SSC-A", *FLUORESCENCE, "Time")
#: Canonical marker of each fluorescence detector.
MARKERS: dict[str, str] = {
    "FITC-A": "CD45RA", "PE-A": "CD127", "PE-Cy7-A": "CD25", "APC-A": "FOXP3",
    "APC-H7-A": "CD8", "V450-A": "CD4", "V500-A": "CD3", "PerCP-Cy5-5-A": "viability",
}
#: Per panel, the marker of each nominal fluorescence detector. The surface panel (HIPC's
#: standardised Treg panel) carries CD45RO, CCR4 and HLA-DR where the FOXP3 panel has CD45RA,
#: FOXP3 and CD8, with the same fluorochromes.
PANEL_MARKERS: dict[str, dict[str, str]] = {
    "foxp3": MARKERS,
    "surface": {**MARKERS, "FITC-A": "CD45RO", "APC-A": "CCR4", "APC-H7-A": "HLA-DR"},
}
#: Base $PnS spellings per detector; files add case changes and a fluorochrome suffix.
PNS_SPELLINGS: dict[str, list[str]] = {
    "FITC-A": ["CD45RA"],
    "PE-A": ["CD127", "IL7Ra", "IL-7Ra"],
    "PE-Cy7-A": ["CD25"],
    "APC-A": ["FOXP3", "FoxP3", "Foxp3"],
    "APC-H7-A": ["CD8"],
    "V450-A": ["CD4"],
    "V500-A": ["CD3"],
    "PerCP-Cy5-5-A": ["7-AAD", "7AAD", "L/D", "Viability", "LiveDead"],
}
_SURFACE_SPELLINGS = {**PNS_SPELLINGS, "FITC-A": ["CD45RO"], "APC-A": ["CCR4", "CD194"],
                      "APC-H7-A": ["HLA-DR", "HLADR"]}
_FLUOROCHROMES = {
    "FITC-A": "FITC", "PE-A": "PE", "PE-Cy7-A": "PE-Cy7", "APC-A": "Alexa Fluor 647",
    "APC-H7-A": "APC-H7", "V450-A": "V450", "V500-A": "V500", "PerCP-Cy5-5-A": "7-AAD",
}
#: Population labels; every event carries exactly one.
POPULATIONS: tuple[str, ...] = (
    "debris", "doublet", "dead", "myeloid", "cd3neg_lymph", "cd8", "treg", "cd4_activated",
    "cd4_conv",
)
_CD4_POPULATIONS = ("treg", "cd4_activated", "cd4_conv")

# Spillover of source detector (row) into detector (column); observed = true @ S.
# flowutils.compensate.compensate solves S.T x = obs.T, i.e. comp = obs @ inv(S).
_SPILL_ENTRIES = {
    ("FITC-A", "PE-A"): 0.22, ("FITC-A", "PerCP-Cy5-5-A"): 0.02,
    ("PE-A", "FITC-A"): 0.01, ("PE-A", "PE-Cy7-A"): 0.03, ("PE-A", "PerCP-Cy5-5-A"): 0.08,
    ("PE-Cy7-A", "PE-A"): 0.01, ("PE-Cy7-A", "APC-H7-A"): 0.02,
    ("APC-A", "APC-H7-A"): 0.12, ("APC-H7-A", "APC-A"): 0.01, ("APC-H7-A", "PE-Cy7-A"): 0.04,
    ("V450-A", "V500-A"): 0.18, ("V500-A", "V450-A"): 0.02,
    ("PerCP-Cy5-5-A", "PE-Cy7-A"): 0.15, ("PerCP-Cy5-5-A", "PE-A"): 0.02,
}

_PNR = 262144
_SATURATION = 262143.0
_TIMESTEP = 0.01
_EVENT_RATE = 2000.0  # events per second of acquisition
_NEG_SD = 200.0
_DETECTOR_NOISE_SD = 80.0
_DELIM = "/"
# Top-level shares of all events; lymphocytes split further below.
_SHARES = {"debris": 0.10, "doublet": 0.05, "dead": 0.05, "myeloid": 0.15}
_LYMPH_SHARES = {"cd3neg_lymph": 0.30, "cd8": 0.25, "cd4": 0.45}
_ACTIVATED_OF_CD4 = 0.05
_ACTIVATED_OF_CD4_HARD = 0.12  # more CD25+ FOXP3-dim cells when staining is hard

# Channel specs. P: positive, log-normal (median, sigma_log); G: normal (mean, sd);
# M: mixture, positive with probability p else negative. Unlisted fluorescence is negative.
_LYMPH = {"FSC-A": ("G", 70000, 7000), "SSC-A": ("G", 20000, 4000), "ratio": (1.08, 0.04)}
_TCELL = {"V500-A": ("P", 5000, 0.25)}
_CD4T = {**_LYMPH, **_TCELL, "V450-A": ("P", 6000, 0.25)}
_CONV_MARKERS = {"PE-Cy7-A": ("P", 150, 0.6), "PE-A": ("P", 3000, 0.25),
                 "FITC-A": ("M", 0.5, 3000, 0.25)}
_TREG_MARKERS = {"PE-Cy7-A": ("P", 8000, 0.25), "APC-A": ("P", 4000, 0.25),
                 "PE-A": ("P", 300, 0.35), "FITC-A": ("M", 0.2, 3000, 0.25)}
_DOUBLET_SCATTER = {"FSC-A": ("G", 130000, 12000), "SSC-A": ("G", 32000, 6000),
                    "ratio": (1.75, 0.12)}
_DEAD_SCATTER = {"FSC-A": ("G", 60000, 8000), "SSC-A": ("G", 22000, 5000), "ratio": (1.08, 0.04),
                 "PerCP-Cy5-5-A": ("P", 8000, 0.3)}
# (component, population label, share of that population, channel specs)
_COMPONENTS = (
    ("debris", "debris", 1.0, {"FSC-A": ("G", 8000, 4000), "SSC-A": ("P", 4000, 0.45),
                               "ratio": (1.1, 0.08)}),
    ("doublet_t", "doublet", 0.75, {**_TCELL, "V450-A": ("P", 6000, 0.25), **_CONV_MARKERS,
                                    **_DOUBLET_SCATTER}),
    ("doublet_treg", "doublet", 0.25, {**_TCELL, "V450-A": ("P", 6000, 0.25), **_TREG_MARKERS,
                                       **_DOUBLET_SCATTER}),
    ("dead_t", "dead", 0.5, {**_TCELL, "V450-A": ("P", 6000, 0.25), **_CONV_MARKERS,
                             **_DEAD_SCATTER}),
    ("dead_other", "dead", 0.5, dict(_DEAD_SCATTER)),
    ("myeloid", "myeloid", 1.0, {"FSC-A": ("G", 130000, 15000), "SSC-A": ("G", 90000, 18000),
                                 "ratio": (1.08, 0.04), "V450-A": ("P", 800, 0.3)}),
    ("cd3neg_lymph", "cd3neg_lymph", 1.0, {**_LYMPH, "FITC-A": ("M", 0.6, 3000, 0.25)}),
    ("cd8", "cd8", 1.0, {**_LYMPH, **_TCELL, "APC-H7-A": ("P", 6000, 0.25),
                         "PE-A": ("M", 0.6, 2500, 0.3), "FITC-A": ("M", 0.5, 3000, 0.25)}),
    ("treg", "treg", 1.0, {**_CD4T, **_TREG_MARKERS}),
    ("cd4_activated", "cd4_activated", 1.0, {
        **_CD4T, "PE-Cy7-A": ("P", 1200, 0.3), "APC-A": ("P", 250, 0.35),
        "PE-A": ("P", 1500, 0.25), "FITC-A": ("M", 0.2, 3000, 0.25)}),
    ("cd4_conv", "cd4_conv", 1.0, {**_CD4T, **_CONV_MARKERS}),
)
# The surface panel: CD45RO (FITC-A), CCR4 (APC-A) and HLA-DR (APC-H7-A) per component, from
# blood: most Tregs are CD45RO+ memory cells and CCR4+; CD4 conventional cells are about half
# memory and a quarter CCR4+; HLA-DR marks activated T cells, a third of Tregs, B cells and
# monocytes. Everything else is the FOXP3 panel's.
_SURFACE_CONV = {"FITC-A": ("M", 0.5, 3000, 0.3), "APC-A": ("M", 0.25, 1500, 0.4),
                 "APC-H7-A": ("M", 0.05, 2000, 0.4)}
_SURFACE_TREG = {"FITC-A": ("M", 0.8, 3000, 0.3), "APC-A": ("M", 0.85, 2500, 0.35),
                 "APC-H7-A": ("M", 0.3, 2000, 0.4)}
_SURFACE_MARKERS = {
    "doublet_t": _SURFACE_CONV, "doublet_treg": _SURFACE_TREG, "dead_t": _SURFACE_CONV,
    "myeloid": {"APC-H7-A": ("P", 5000, 0.4)},
    "cd3neg_lymph": {"FITC-A": ("M", 0.1, 3000, 0.3), "APC-H7-A": ("M", 0.5, 4000, 0.35)},
    "cd8": {"FITC-A": ("M", 0.4, 3000, 0.3), "APC-A": ("M", 0.05, 1500, 0.4),
            "APC-H7-A": ("M", 0.1, 2000, 0.4)},
    "treg": _SURFACE_TREG,
    "cd4_activated": {"FITC-A": ("M", 0.9, 3000, 0.3), "APC-A": ("M", 0.5, 2000, 0.4),
                      "APC-H7-A": ("M", 0.4, 2000, 0.4)},
    "cd4_conv": _SURFACE_CONV,
}
_SURFACE_COMPONENTS = tuple(
    (name, label, share, {**{k: v for k, v in specs.items() if k not in ("FITC-A", "APC-A", "APC-H7-A")},
                          **_SURFACE_MARKERS.get(name, {})})
    for name, label, share, specs in _COMPONENTS)
_COMPONENTS_OF = {"foxp3": _COMPONENTS, "surface": _SURFACE_COMPONENTS}
# Markers the Treg % of CD4 is gated through: with one of them unstained there is nothing to count.
_TREG_PATH_MARKERS = {"CD3", "CD4", "CD25", "CD127", "FOXP3"}
#: What a pre-gated export holds, by the generator's labels.
_PREGATES = {"CD4pos": _CD4_POPULATIONS}


@dataclass(frozen=True)
class SampleSpec:
    """Everything that defines one generated FCS file.

    Parameters
    ----------
    n_events : int
        Number of events (``$TOT``).
    treg_pct_cd4 : float
        Expected Tregs as % of CD4+ T cells; the realised value comes from the labels.
    seed : int
        Seed of every random draw; the same spec gives byte-identical files.
    fcs_version : {"3.0", "3.1"}
        FCS version; the spillover keyword is ``SPILL`` for 3.0, ``$SPILLOVER`` for 3.1.
    byteorder : {"little", "big"}
        ``$BYTEORD`` 1,2,3,4 or 4,3,2,1.
    drift : float
        Instrument drift: channel gains U(1 - 0.75 drift, 1 + 0.75 drift) and a
        per-population centre jitter U(1 - 0.25 drift, 1 + 0.25 drift). 0 gives nominal positions.
    hard : bool
        Add staining variation: FOXP3 axis scaled by U(0.5, 1.5), CD25 a wider continuum.
    shuffle_channels : bool
        Shuffle the DATA column order.
    pns_overrides : Mapping[str, str] or None
        ``$PnN -> $PnS`` to write instead of the drawn spelling ("" omits ``$PnS``).
    drop_detectors : tuple of str
        Detectors ($PnN) left out of the file.
    keywords : Mapping[str, str] or None
        Extra TEXT keywords, written last (may replace ``$DATE``, ``$CYT``, ...).
    world : World or None
        The lab's geometry (:class:`~cytopipe.sim.world.World`): population
        positions, widths and shares and ``$PnS`` conventions. None gives this
        project's own defaults.
    instrument : {"bd", "cytoflex", "attune", "ique", "aurora"} or None
        Cytometer family (:mod:`~cytopipe.sim.instrument`): detector names, ``$PnR`` and value
        scale, spillover keyword. None: the world's, else ``"bd"``.
    panel : {"foxp3", "surface"} or None
        Treg panel (:data:`PANEL_MARKERS`). ``"surface"``: HIPC's, no FOXP3 and no CD8; its
        Tregs are the same CD25-high CD127-low population. None: the world's, else ``"foxp3"``.
    shape : {"cluster", "real"} or None
        Population shapes (:mod:`~cytopipe.sim.shapes`): log-normal clusters, or real cells
        (skewed, heavy-tailed clouds, a CD25 continuum, photon-noise spread of compensated
        negatives). None: the world's, else ``"cluster"``.
    unstained : tuple of str
        Markers (e.g. ``("CD25",)`` or ``("FOXP3",)``) whose detector carries no stain: every
        cell at the negative distribution (an unstained or isotype control, a failed stain).
        The truth then has nothing to count (``treg_pct_cd4`` None).
    pregated : {"CD4pos"} or None
        A pre-gated export: the file holds only the live singlet CD3+ CD4+ lymphocytes (by the
        generator's labels) of ``n_events`` acquired, with every ``$PnS`` empty.
    """

    n_events: int = 20000
    treg_pct_cd4: float = 7.0
    seed: int = 0
    fcs_version: str = "3.1"
    byteorder: str = "little"
    drift: float = 0.4
    hard: bool = False
    shuffle_channels: bool = True
    pns_overrides: Mapping[str, str] | None = None
    drop_detectors: tuple[str, ...] = ()
    keywords: Mapping[str, str] | None = None
    world: World | None = None
    instrument: str | None = None
    panel: str | None = None
    shape: str | None = None
    unstained: tuple[str, ...] = ()
    pregated: str | None = None

    def __post_init__(self) -> None:
        problems = [f"{name} must be one of {list(allowed)} or None, got {value!r}"
                    for name, value, allowed in (("instrument", self.instrument, FAMILIES),
                                                 ("panel", self.panel, PANELS), ("shape", self.shape, SHAPES),
                                                 ("pregated", self.pregated, tuple(_PREGATES)))
                    if value is not None and value not in allowed]
        markers = PANEL_MARKERS.get(_kind_name(self, "panel"), MARKERS)
        if isinstance(self.unstained, str) or any(m not in markers.values() for m in self.unstained):
            problems.append(f"unstained must be a tuple of markers of the {_kind_name(self, 'panel')!r} panel "
                            f"({sorted(markers.values())}), got {self.unstained!r}")
        if int(self.n_events) < 1:
            problems.append(f"n_events must be >= 1, got {self.n_events!r}")
        top = 100 * (1 - _activated_share(self))
        if not 0 <= self.treg_pct_cd4 <= top:
            problems.append(f"treg_pct_cd4 must be in [0, {top:g}], got {self.treg_pct_cd4!r}")
        if self.fcs_version not in ("3.0", "3.1"):
            problems.append(f"fcs_version must be '3.0' or '3.1', got {self.fcs_version!r}")
        if self.byteorder not in ("little", "big"):
            problems.append(f"byteorder must be 'little' or 'big', got {self.byteorder!r}")
        if not 0 <= self.drift <= 1:
            problems.append(f"drift must be in [0, 1], got {self.drift!r}")
        unknown = [d for d in (*self.drop_detectors, *(self.pns_overrides or {}))
                   if d not in CHANNELS and d not in _instrument(self).names.values()
                   and d not in {p for p, _, _ in _instrument(self).parameters}]
        if unknown:
            problems.append(f"unknown detectors {unknown!r}; expected some of {list(CHANNELS)}")
        if problems:
            msg = "Invalid SampleSpec: " + "; ".join(problems) + "."
            raise ValueError(msg)


def spillover_matrix(detectors: Sequence[str] = FLUORESCENCE) -> pd.DataFrame:
    """Return the spillover matrix the generator applies.

    Parameters
    ----------
    detectors : sequence of str
        Fluorescence detectors ($PnN) to include, in this order.

    Returns
    -------
    pandas.DataFrame
        Rows are source detectors, columns the detectors they spill into, so
        ``observed = true @ S`` and ``compensated = observed @ inv(S)``.
    """
    detectors = list(detectors)
    s = np.eye(len(detectors))
    pos = {d: i for i, d in enumerate(detectors)}
    for (src, dst), value in _SPILL_ENTRIES.items():
        if src in pos and dst in pos:
            s[pos[src], pos[dst]] = value
    return pd.DataFrame(s, index=detectors, columns=detectors)


def _kind_name(spec: SampleSpec, axis: str) -> str:
    """The spec's ``instrument``, ``panel`` or ``shape``: its own, else its world's, else the default."""
    value = getattr(spec, axis)
    if value is None and spec.world is not None:
        value = getattr(spec.world, axis)
    return value or {"instrument": "bd", "panel": "foxp3", "shape": "cluster"}[axis]


def _kind_seed(spec: SampleSpec) -> np.random.SeedSequence:
    # A world's conventions are the lab's, shared by its tubes; without a world, the file's own.
    # Either way a seed sequence apart from the draws of today's files, which do not shift.
    if spec.world is not None:
        return spec.world.instrument_seed()
    return np.random.SeedSequence(spec.seed).spawn(6)[5]


def _instrument(spec: SampleSpec) -> Instrument:
    return Instrument.draw(_kind_name(spec, "instrument"), _kind_seed(spec).spawn(2)[0], fluorescence=FLUORESCENCE,
                           spill_pairs=tuple(_SPILL_ENTRIES), heights_only=spec.pregated is not None)


def _real_shape(spec: SampleSpec) -> RealShape | None:
    if _kind_name(spec, "shape") != "real":
        return None
    return RealShape.draw(_kind_seed(spec).spawn(2)[1], CHANNELS[:-1])


def _instrument_spillover(inst: Instrument, detectors: Sequence[str] = FLUORESCENCE) -> pd.DataFrame:
    """The generator's spillover matrix with this instrument's factors (nominal detector names)."""
    s = spillover_matrix(detectors)
    for (src, dst), factor in inst.spill_factor.items():
        if src in s.index and dst in s.columns:
            s.loc[src, dst] *= factor
    return s


def _extra_rngs(seed: int) -> list[np.random.Generator]:
    # The draws the new options add (real-cell shapes, photon noise), from a fifth child of the
    # file's seed: _rngs' four streams stay as they were.
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)[4].spawn(2)]


def _rngs(seed: int) -> list[np.random.Generator]:
    # Separate streams for events, drift, staining and file layout, so that e.g.
    # drift=0 vs 0.4 or shuffle on/off changes nothing else.
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _activated_share(spec: SampleSpec) -> float:
    if spec.world is not None:
        return spec.world.activated * (1.5 if spec.hard else 1.0)
    return _ACTIVATED_OF_CD4_HARD if spec.hard else _ACTIVATED_OF_CD4


def _component_probs(treg_pct: float, activated: float, shares: Mapping[str, float] = _SHARES,
                     components=_COMPONENTS) -> np.ndarray:
    lymph = 1.0 - sum(shares.values())
    cd4 = lymph * _LYMPH_SHARES["cd4"]
    t = treg_pct / 100.0
    label_p = {**shares, "cd3neg_lymph": lymph * _LYMPH_SHARES["cd3neg_lymph"],
               "cd8": lymph * _LYMPH_SHARES["cd8"], "treg": cd4 * t,
               "cd4_activated": cd4 * activated, "cd4_conv": cd4 * (1.0 - t - activated)}
    p = np.array([label_p[label] * share for _, label, share, _ in components])
    return np.clip(p, 0.0, None) / p.sum()


def _parameter_tables(spec: SampleSpec, drift_rng, stain_rng):
    """Per (component, channel) mixture parameters after drift and staining variation."""
    panel = _kind_name(spec, "panel")
    components = _COMPONENTS_OF[panel]
    n_comp, chans = len(components), CHANNELS[:-1]  # Time is handled apart
    p_pos = np.zeros((n_comp, len(chans)))
    centre = np.ones((n_comp, len(chans)))
    sigma = np.zeros((n_comp, len(chans)))
    mean = np.zeros((n_comp, len(chans)))
    sd = np.full((n_comp, len(chans)), _NEG_SD)
    ratio = np.zeros((n_comp, 2))
    for c, (_, _, _, specs) in enumerate(components):
        ratio[c] = specs["ratio"] if "ratio" in specs else _LYMPH["ratio"]
        for j, ch in enumerate(chans):
            kind, *v = specs.get(ch, ("G", 0.0, _NEG_SD))
            if kind == "P":
                p_pos[c, j], centre[c, j], sigma[c, j] = 1.0, v[0], v[1]
            elif kind == "M":
                p_pos[c, j], centre[c, j], sigma[c, j] = v
            else:
                mean[c, j], sd[c, j] = v

    if spec.world is not None:
        _apply_world(spec.world, centre, sigma, mean, sd, ratio, chans, panel)
    d = spec.drift
    gain = drift_rng.uniform(1 - 0.75 * d, 1 + 0.75 * d, size=len(chans))
    gain[chans.index("FSC-H")] = gain[chans.index("FSC-A")]  # one detector, two parameters
    labels = [label for _, label, _, _ in components]
    size = (len(POPULATIONS), len(chans))
    label_jitter = drift_rng.uniform(1 - 0.25 * d, 1 + 0.25 * d, size=size)
    jitter = label_jitter[[POPULATIONS.index(lb) for lb in labels]]
    centre, mean = centre * jitter, mean * jitter

    foxp3_scale = stain_rng.uniform(0.5, 1.5)
    if spec.hard:
        # Staining variation between staining runs: CD25 a continuum, activated cells CD25+ FOXP3-dim,
        # and the whole FOXP3 axis brighter or dimmer.
        # On the surface panel APC-A is CCR4, a surface stain: only CD25 varies.
        j_cd25, j_foxp3 = chans.index("PE-Cy7-A"), chans.index("APC-A")
        foxp3 = panel == "foxp3"
        for c, (name, _, _, _) in enumerate(components):
            if name in ("cd4_conv", "doublet_t", "dead_t"):
                centre[c, j_cd25] *= 2.0
                sigma[c, j_cd25] = 1.0
            elif name == "cd4_activated":
                centre[c, j_cd25] *= 1.8
                sigma[c, j_cd25] = 0.5
                if foxp3:
                    centre[c, j_foxp3] *= 3.0
                    sigma[c, j_foxp3] = 0.4
            elif name in ("treg", "doublet_treg"):
                sigma[c, j_cd25] = 0.4
                if foxp3:
                    sigma[c, j_foxp3] = 0.4
        if foxp3:
            centre[:, j_foxp3] *= foxp3_scale
            mean[:, j_foxp3] *= foxp3_scale
            sd[:, j_foxp3] *= foxp3_scale
    neg_sd = spec.world.neg_sd if spec.world is not None else _NEG_SD
    markers = PANEL_MARKERS[panel]
    for marker in spec.unstained:  # no stain: every cell at the negative (autofluorescence) distribution
        j = chans.index(next(d for d in FLUORESCENCE if markers[d] == marker))
        p_pos[:, j], mean[:, j], sd[:, j] = 0.0, 0.0, neg_sd
    return p_pos, centre, sigma, mean, sd, ratio, gain


def _apply_world(world: World, centre, sigma, mean, sd, ratio, chans, panel: str = "foxp3") -> None:
    """Move the default tables to the world's geometry, in place (before the sample's drift)."""
    names = [name for name, _, _, _ in _COMPONENTS_OF[panel]]
    for j, ch in enumerate(chans):
        centre[:, j] *= world.gain[ch]
        mean[:, j] *= world.gain[ch]
        if ch in FLUORESCENCE:
            sigma[:, j] *= world.width[ch]
            sd[:, j] = np.where(sd[:, j] == _NEG_SD, world.neg_sd, sd[:, j])
        else:
            sd[:, j] *= world.gain[ch]
    j25, jfox = chans.index("PE-Cy7-A"), chans.index("APC-A")
    treg25, tregfox = centre[names.index("treg"), j25], centre[names.index("treg"), jfox]
    act25 = treg25 * world.cd25_activated
    for c, name in enumerate(names):
        if name == "cd4_activated":
            centre[c, j25] = act25
            if panel == "foxp3":  # FOXP3-dim; on the surface panel APC-A is CCR4
                centre[c, jfox] = tregfox * world.foxp3_dim
        elif name in ("cd4_conv", "doublet_t", "dead_t"):
            centre[c, j25] = act25 * world.cd25_conv
        ratio[c, 0] = world.doublet_ratio if name.startswith("doublet") else (
            world.singlet_ratio if ratio[c, 0] == _LYMPH["ratio"][0] else ratio[c, 0])


def _simulate(spec: SampleSpec):
    """Return (true signal by component block, detector noise, event shuffle, label codes)."""
    ev_rng, drift_rng, stain_rng, _ = _rngs(spec.seed)
    n = int(spec.n_events)
    shares = spec.world.shares if spec.world is not None else _SHARES
    components = _COMPONENTS_OF[_kind_name(spec, "panel")]
    counts = ev_rng.multinomial(n, _component_probs(spec.treg_pct_cd4, _activated_share(spec), shares,
                                                    components))
    p_pos, centre, sigma, mean, sd, ratio, gain = _parameter_tables(spec, drift_rng, stain_rng)
    real = _real_shape(spec)
    shape_rng = _extra_rngs(spec.seed)[0] if real is not None else None

    # Channel-major, one contiguous block of events per component (no per-event
    # parameter gathers), then a single shuffle of the events: fast at 1e6 events.
    n_ch = len(CHANNELS) - 1
    i_fsca, i_fsch = CHANNELS.index("FSC-A"), CHANNELS.index("FSC-H")
    true = ev_rng.standard_normal((len(CHANNELS), n))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for c in range(len(components)):
        lo, hi = bounds[c], bounds[c + 1]
        for j in range(n_ch):
            if j == i_fsch:  # derived from FSC-A below
                continue
            z = true[j, lo:hi]
            if real is not None:
                _real_values(z, c, j, components, p_pos, centre, sigma, mean, sd, real, ev_rng, shape_rng)
            elif p_pos[c, j] >= 1:
                z[:] = centre[c, j] * np.exp(sigma[c, j] * z)
            elif p_pos[c, j] <= 0:
                z[:] = mean[c, j] + sd[c, j] * z
            else:
                pos = ev_rng.random(hi - lo) < p_pos[c, j]
                z[:] = np.where(pos, centre[c, j] * np.exp(sigma[c, j] * z), sd[c, j] * z)
        if c == 0:  # debris
            np.maximum(true[i_fsca, lo:hi], 200.0, out=true[i_fsca, lo:hi])
        fsc_ratio = ratio[c, 0] + ratio[c, 1] * true[i_fsch, lo:hi]
        true[i_fsch, lo:hi] = true[i_fsca, lo:hi] / fsc_ratio
    true[:n_ch] *= gain[:, None]
    t_max = n / _EVENT_RATE / _TIMESTEP
    true[-1] = np.sort(ev_rng.uniform(0.0, t_max, size=n))  # assigned after the shuffle
    order = ev_rng.permutation(n)
    noise = ev_rng.standard_normal((len(FLUORESCENCE), n))
    label_of = np.array([POPULATIONS.index(label) for _, label, _, _ in components])
    return true, noise, order, np.repeat(label_of, counts)[order]


_CD25_TRAIL = {"cd4_conv": "treg", "doublet_t": "treg", "dead_t": "treg",
               "cd4_activated": "treg"}


def _real_values(z, c, j, components, p_pos, centre, sigma, mean, sd, real: RealShape, ev_rng, shape_rng) -> None:
    """Fill one (component, channel) block with real-cell values, in place (see :mod:`.shapes`)."""
    ch, name = CHANNELS[j], components[c][0]
    if p_pos[c, j] <= 0:
        if ch in ("FSC-A", "SSC-A"):  # scatter clouds lean and have tails too
            z[:] = mean[c, j] + sd[c, j] * skew_t(z, shape_rng, alpha=real.alpha[ch], df=real.df)
        else:  # a negative: electronic noise, Gaussian
            z[:] = mean[c, j] + sd[c, j] * z
        return
    pos = ev_rng.random(len(z)) < p_pos[c, j] if p_pos[c, j] < 1 else None
    log_shift = 0.0
    if ch == "PE-Cy7-A" and name in _CD25_TRAIL:  # CD25 a continuum: trail up towards the next level
        names = [nm for nm, _, _, _ in components]
        target = centre[names.index(_CD25_TRAIL[name]), j]
        log_shift = shape_rng.beta(1.0, real.trail_b, size=len(z)) * max(0.0, np.log(target / centre[c, j]))
    alpha, spread = real.alpha[ch], sigma[c, j]
    if ch == "PE-Cy7-A" and name in ("treg", "doublet_treg"):
        # sigma[c, j] carries the world's width factor on the default 0.25 (0.4 when hard)
        alpha, spread = real.treg_alpha, sigma[c, j] / 0.25 * real.treg_sigma if sigma[c, j] < 0.4 else (
            sigma[c, j] / 0.4 * real.treg_sigma)
    positive = centre[c, j] * np.exp(log_shift + spread * skew_t(z, shape_rng, alpha=alpha, df=real.df))
    z[:] = positive if pos is None else np.where(pos, positive, sd[c, j] * z)


def simulate_events(
    spec: SampleSpec, *, compensated: bool = False
) -> tuple[pd.DataFrame, np.ndarray]:
    """Simulate the events of one file.

    Parameters
    ----------
    spec : SampleSpec
        What to simulate.
    compensated : bool
        If False (default), return the values as written to the file: spillover
        and detector noise added, saturated at 262143. If True, return the true
        signal (compensated linear units, drift applied, before spillover and noise),
        which is what compensating the file recovers up to detector noise.

    Returns
    -------
    events : pandas.DataFrame
        One float32 column per $PnN kept by the spec, in nominal (:data:`CHANNELS`) order.
    labels : numpy.ndarray
        Population name (one of :data:`POPULATIONS`) of each event.
    """
    values, noise, order, codes = _simulate(spec)
    inst, real = _instrument(spec), _real_shape(spec)
    fsc_ratio = values[CHANNELS.index("FSC-A")] / values[CHANNELS.index("FSC-H")]
    if not compensated:  # spillover and noise are per event, so the block order does not matter
        fl = [CHANNELS.index(f) for f in FLUORESCENCE]
        s = _instrument_spillover(inst).to_numpy()
        light = s.T @ values[fl]
        values[fl] = light + _DETECTOR_NOISE_SD * noise
        if real is not None:  # photon statistics: the spread grows with the square root of the light
            units = np.array([inst.photon_units[d] for d in FLUORESCENCE])[:, None]
            shot = _extra_rngs(spec.seed)[1].standard_normal(light.shape)
            values[fl] += np.sqrt(units * np.maximum(light, 0.0)) * shot
        np.minimum(values, _SATURATION, out=values)
        if inst.unmixed:  # the instrument writes unmixed values, with the spread unmixing leaves
            values[fl] = np.linalg.solve(s.T, values[fl])
    if inst.family == "bd":
        columns = [ch for ch in CHANNELS if ch not in spec.drop_detectors]
        block = values[[CHANNELS.index(ch) for ch in columns]]
    else:  # the family's parameters, heights from the event's pulse shape, scaled to its range
        params = [(name, nominal, kind) for name, nominal, kind in inst.parameters
                  if name not in spec.drop_detectors and nominal not in spec.drop_detectors]
        block = np.empty((len(params) + 1, values.shape[1]))
        for k, (_, nominal, kind) in enumerate(params):
            v = values[CHANNELS.index(nominal)]
            block[k] = v / fsc_ratio if kind == "H" and nominal != "FSC-H" else v
        block[:-1] *= inst.scale
        block[-1] = values[-1]
        columns = [name for name, _, _ in params] + ["Time"]
        if "Time" in spec.drop_detectors:
            block, columns = block[:-1], columns[:-1]
    time = values[-1].astype(np.float32)
    table = np.take(block.T.astype(np.float32), order, axis=0)
    if "Time" not in spec.drop_detectors:
        table[:, -1] = time
    labels = np.asarray(POPULATIONS)[codes]
    if spec.pregated is not None:  # an export of one population: its events, in acquisition order
        keep = np.isin(labels, _PREGATES[spec.pregated])
        table, labels = table[keep], labels[keep]
    events = pd.DataFrame(table, columns=columns, copy=False)
    return events, labels


def _spell(detector: str, rng: np.random.Generator, panel: str = "foxp3") -> str:
    spellings = _SURFACE_SPELLINGS if panel == "surface" else PNS_SPELLINGS
    base = str(rng.choice(spellings[detector]))
    case = rng.random()
    if case < 0.15:
        base = base.upper()
    elif case < 0.25:
        base = base.lower()
    if detector != "PerCP-Cy5-5-A" and rng.random() < 0.3:
        base += str(rng.choice([" ", "-"])) + _FLUOROCHROMES[detector]
    return base


def _escape(value: str, key: str) -> str:
    if value == "" or value.startswith(_DELIM) or value.endswith(_DELIM):
        # Such values cannot be delimited unambiguously in TEXT.
        msg = (f"TEXT keyword {key!r} has value {value!r}; values must be non-empty and "
               f"must not start or end with {_DELIM!r}.")
        raise ValueError(msg)
    return value.replace(_DELIM, _DELIM * 2)


def _fcs_bytes(text: dict[str, str], data: bytes, version: str) -> bytes:
    """Assemble HEADER + TEXT + DATA.

    A small writer of our own: flowio.create_fcs writes only FCS 3.1 little-endian,
    and the panel's files are FCS 3.0 or 3.1 in either byte order.
    """
    text_start, width = 58, 0
    while True:  # the offsets are inside TEXT, so iterate until their width is stable
        body = dict(text)
        begin = text_start + width
        body["$BEGINDATA"], body["$ENDDATA"] = str(begin), str(begin + len(data) - 1)
        raw = (_DELIM + "".join(f"{_escape(k, k)}{_DELIM}{_escape(v, k)}{_DELIM}"
                                for k, v in body.items())).encode("ascii")
        if len(raw) == width:
            break
        width = len(raw)
    data_start, data_end = text_start + width, text_start + width + len(data) - 1
    if data_end > 99_999_999:  # FCS 3.x: offsets that do not fit go in TEXT only
        data_start = data_end = 0
    offsets = [text_start, text_start + width - 1, data_start, data_end, 0, 0]
    header = f"FCS{version}    ".encode("ascii") + b"".join(f"{o:>8d}".encode() for o in offsets)
    return header + raw + data


def _fcs_date(days_after: int) -> str:
    # dd-mmm-yyyy from a fixed origin, never the clock or the locale (%b is locale-dependent),
    # so identical specs give identical bytes.
    day = datetime.date(2026, 1, 5) + datetime.timedelta(days=int(days_after))
    months = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    return f"{day.day:02d}-{months[day.month - 1]}-{day.year}"


def write_fcs(path: str | pathlib.Path, spec: SampleSpec) -> dict:
    """Write one synthetic FCS file and return its truth.

    Parameters
    ----------
    path : str or pathlib.Path
        File to write (overwritten).
    spec : SampleSpec
        What to write.

    Returns
    -------
    dict
        Truth row: ``n_events``, ``n_cd4`` (true CD4+ T cells: treg + cd4_activated +
        cd4_conv), ``n_treg``, ``treg_pct_cd4`` (from the labels), the spec's target
        ``treg_pct_cd4_target``, ``fcs_version``, ``byteorder``, ``seed``, ``drift``,
        ``hard`` and ``n_<population>`` for every population.

    Examples
    --------
    >>> spec = SampleSpec(n_events=2000, fcs_version="3.0", byteorder="big")
    >>> row = write_fcs("tube.fcs", spec)  # doctest: +SKIP
    """
    path = pathlib.Path(path)
    events, labels = simulate_events(spec)
    inst, panel = _instrument(spec), _kind_name(spec, "panel")
    layout_rng = _rngs(spec.seed)[3]
    columns = list(events.columns)
    order = list(layout_rng.permutation(len(columns))) if spec.shuffle_channels else None
    if order is not None:
        columns = [columns[i] for i in order]
    bd = inst.family == "bd"
    nominal_of = {ch: ch for ch in CHANNELS} if bd else {name: nom for name, nom, _ in inst.parameters}
    compensated = FLUORESCENCE if bd else tuple(inst.detector(d) for d in FLUORESCENCE)
    fluor = [d for d in compensated if d in columns]
    spill_order = [fluor[i] for i in layout_rng.permutation(len(fluor))]
    if spec.world is None:
        pns = {d: _spell(d, layout_rng, panel) for d in FLUORESCENCE}
    else:  # the lab's own conventions, varying between its tubes
        k = int(layout_rng.integers(1 << 16))
        pns = {d: spec.world.label(d, k, panel) for d in FLUORESCENCE}
    if spec.pregated is not None:  # exports often carry no $PnS at all
        pns = {}
    # $PnS per file parameter: both parameters of a detector carry its marker.
    pns = {name: pns[nominal_of[name]] for name in columns if nominal_of.get(name) in pns}
    for key, value in (spec.pns_overrides or {}).items():
        pns.update({name: value for name in columns if key in (name, nominal_of.get(name))})

    dtype = "<f4" if spec.byteorder == "little" else ">f4"
    data = events[columns].to_numpy(dtype=np.float32).astype(dtype).tobytes()
    text = {"$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0", "$ENDSTEXT": "0",
            "$BEGINDATA": "0", "$ENDDATA": "0",
            "$BYTEORD": "1,2,3,4" if spec.byteorder == "little" else "4,3,2,1",
            "$DATATYPE": "F", "$MODE": "L", "$NEXTDATA": "0", "$PAR": str(len(columns)),
            "$TOT": str(len(events)), "$CYT": inst.cytometer, "$DATE": _fcs_date(spec.seed % 365),
            "$FIL": path.name, "$TIMESTEP": repr(_TIMESTEP)}
    if fluor and not inst.unmixed:
        s = _instrument_spillover(inst, [nominal_of[d] for d in spill_order]).to_numpy()
        names = [str(columns.index(d) + 1) for d in spill_order] if inst.spill_by_index else spill_order
        spill = ",".join([str(len(fluor)), *names, *(f"{v:g}" for v in s.ravel())])
        text[inst.spill_key or ("$SPILLOVER" if spec.fcs_version == "3.1" else "SPILL")] = spill
    for i, ch in enumerate(columns, start=1):
        text.update({f"$P{i}N": ch, f"$P{i}B": "32", f"$P{i}E": "0,0", f"$P{i}R": str(inst.pnr)})
        if pns.get(ch):
            text[f"$P{i}S"] = pns[ch]
    for key, value in (spec.keywords or {}).items():
        key = key.upper()
        if key in ("$BEGINDATA", "$ENDDATA", "$PAR", "$TOT", "$BYTEORD", "$DATATYPE", "$MODE"):
            msg = f"keywords may not set {key!r}: the writer derives it from the data."
            raise ValueError(msg)
        text[key] = str(value)
    path.write_bytes(_fcs_bytes(text, data, spec.fcs_version))

    counts = {f"n_{p}": int(np.count_nonzero(labels == p)) for p in POPULATIONS}
    n_cd4 = sum(counts[f"n_{p}"] for p in _CD4_POPULATIONS)
    markers = PANEL_MARKERS[panel]
    nothing_to_count = bool(set(spec.unstained) & _TREG_PATH_MARKERS)
    return {
        "n_events": len(events), "n_cd4": n_cd4, "n_treg": counts["n_treg"],
        "treg_pct_cd4": None if nothing_to_count else (
            100.0 * counts["n_treg"] / n_cd4 if n_cd4 else float("nan")),
        "treg_pct_cd4_target": float(spec.treg_pct_cd4), "fcs_version": spec.fcs_version,
        "byteorder": spec.byteorder, "seed": int(spec.seed), "drift": float(spec.drift),
        "hard": bool(spec.hard), **counts,
        "n_acquired": int(spec.n_events), "instrument": inst.family, "panel": panel,
        "shape": _kind_name(spec, "shape"), "unstained": list(spec.unstained), "pregated": spec.pregated,
        "detectors": {markers[d]: c for d, c in zip(FLUORESCENCE, compensated) if c in columns},
    }
