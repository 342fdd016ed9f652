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

from .world import World

__all__ = [
    "CHANNELS",
    "FLUORESCENCE",
    "MARKERS",
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

    def __post_init__(self) -> None:
        problems = []
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
                   if d not in CHANNELS]
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


def _rngs(seed: int) -> list[np.random.Generator]:
    # Separate streams for events, drift, staining and file layout, so that e.g.
    # drift=0 vs 0.4 or shuffle on/off changes nothing else.
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _activated_share(spec: SampleSpec) -> float:
    if spec.world is not None:
        return spec.world.activated * (1.5 if spec.hard else 1.0)
    return _ACTIVATED_OF_CD4_HARD if spec.hard else _ACTIVATED_OF_CD4


def _component_probs(treg_pct: float, activated: float, shares: Mapping[str, float] = _SHARES) -> np.ndarray:
    lymph = 1.0 - sum(shares.values())
    cd4 = lymph * _LYMPH_SHARES["cd4"]
    t = treg_pct / 100.0
    label_p = {**shares, "cd3neg_lymph": lymph * _LYMPH_SHARES["cd3neg_lymph"],
               "cd8": lymph * _LYMPH_SHARES["cd8"], "treg": cd4 * t,
               "cd4_activated": cd4 * activated, "cd4_conv": cd4 * (1.0 - t - activated)}
    p = np.array([label_p[label] * share for _, label, share, _ in _COMPONENTS])
    return np.clip(p, 0.0, None) / p.sum()


def _parameter_tables(spec: SampleSpec, drift_rng, stain_rng):
    """Per (component, channel) mixture parameters after drift and staining variation."""
    n_comp, chans = len(_COMPONENTS), CHANNELS[:-1]  # Time is handled apart
    p_pos = np.zeros((n_comp, len(chans)))
    centre = np.ones((n_comp, len(chans)))
    sigma = np.zeros((n_comp, len(chans)))
    mean = np.zeros((n_comp, len(chans)))
    sd = np.full((n_comp, len(chans)), _NEG_SD)
    ratio = np.zeros((n_comp, 2))
    for c, (_, _, _, specs) in enumerate(_COMPONENTS):
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
        _apply_world(spec.world, centre, sigma, mean, sd, ratio, chans)
    d = spec.drift
    gain = drift_rng.uniform(1 - 0.75 * d, 1 + 0.75 * d, size=len(chans))
    gain[chans.index("FSC-H")] = gain[chans.index("FSC-A")]  # one detector, two parameters
    labels = [label for _, label, _, _ in _COMPONENTS]
    size = (len(POPULATIONS), len(chans))
    label_jitter = drift_rng.uniform(1 - 0.25 * d, 1 + 0.25 * d, size=size)
    jitter = label_jitter[[POPULATIONS.index(lb) for lb in labels]]
    centre, mean = centre * jitter, mean * jitter

    foxp3_scale = stain_rng.uniform(0.5, 1.5)
    if spec.hard:
        # Staining variation between staining runs: CD25 a continuum, activated cells CD25+ FOXP3-dim,
        # and the whole FOXP3 axis brighter or dimmer.
        j_cd25, j_foxp3 = chans.index("PE-Cy7-A"), chans.index("APC-A")
        for c, (name, _, _, _) in enumerate(_COMPONENTS):
            if name in ("cd4_conv", "doublet_t", "dead_t"):
                centre[c, j_cd25] *= 2.0
                sigma[c, j_cd25] = 1.0
            elif name == "cd4_activated":
                centre[c, j_cd25] *= 1.8
                centre[c, j_foxp3] *= 3.0
                sigma[c, j_cd25], sigma[c, j_foxp3] = 0.5, 0.4
            elif name in ("treg", "doublet_treg"):
                sigma[c, j_cd25], sigma[c, j_foxp3] = 0.4, 0.4
        centre[:, j_foxp3] *= foxp3_scale
        mean[:, j_foxp3] *= foxp3_scale
        sd[:, j_foxp3] *= foxp3_scale
    return p_pos, centre, sigma, mean, sd, ratio, gain


def _apply_world(world: World, centre, sigma, mean, sd, ratio, chans) -> None:
    """Move the default tables to the world's geometry, in place (before the sample's drift)."""
    names = [name for name, _, _, _ in _COMPONENTS]
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
            centre[c, j25], centre[c, jfox] = act25, tregfox * world.foxp3_dim
        elif name in ("cd4_conv", "doublet_t", "dead_t"):
            centre[c, j25] = act25 * world.cd25_conv
        ratio[c, 0] = world.doublet_ratio if name.startswith("doublet") else (
            world.singlet_ratio if ratio[c, 0] == _LYMPH["ratio"][0] else ratio[c, 0])


def _simulate(spec: SampleSpec):
    """Return (true signal by component block, detector noise, event shuffle, label codes)."""
    ev_rng, drift_rng, stain_rng, _ = _rngs(spec.seed)
    n = int(spec.n_events)
    shares = spec.world.shares if spec.world is not None else _SHARES
    counts = ev_rng.multinomial(n, _component_probs(spec.treg_pct_cd4, _activated_share(spec), shares))
    p_pos, centre, sigma, mean, sd, ratio, gain = _parameter_tables(spec, drift_rng, stain_rng)

    # Channel-major, one contiguous block of events per component (no per-event
    # parameter gathers), then a single shuffle of the events: fast at 1e6 events.
    n_ch = len(CHANNELS) - 1
    i_fsca, i_fsch = CHANNELS.index("FSC-A"), CHANNELS.index("FSC-H")
    true = ev_rng.standard_normal((len(CHANNELS), n))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for c in range(len(_COMPONENTS)):
        lo, hi = bounds[c], bounds[c + 1]
        for j in range(n_ch):
            if j == i_fsch:  # derived from FSC-A below
                continue
            z = true[j, lo:hi]
            if p_pos[c, j] >= 1:
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
    label_of = np.array([POPULATIONS.index(label) for _, label, _, _ in _COMPONENTS])
    return true, noise, order, np.repeat(label_of, counts)[order]


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
    if not compensated:  # spillover and noise are per event, so the block order does not matter
        fl = [CHANNELS.index(f) for f in FLUORESCENCE]
        values[fl] = spillover_matrix().to_numpy().T @ values[fl] + _DETECTOR_NOISE_SD * noise
        np.minimum(values, _SATURATION, out=values)
    time = values[-1].astype(np.float32)
    keep = [i for i, ch in enumerate(CHANNELS) if ch not in spec.drop_detectors]
    table = np.take(values[keep].T.astype(np.float32), order, axis=0)
    if "Time" not in spec.drop_detectors:
        table[:, -1] = time
    events = pd.DataFrame(table, columns=[CHANNELS[i] for i in keep], copy=False)
    return events, np.asarray(POPULATIONS)[codes]


def _spell(detector: str, rng: np.random.Generator) -> str:
    base = str(rng.choice(PNS_SPELLINGS[detector]))
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
    months = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
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
    layout_rng = _rngs(spec.seed)[3]
    columns = list(events.columns)
    order = list(layout_rng.permutation(len(columns))) if spec.shuffle_channels else None
    if order is not None:
        columns = [columns[i] for i in order]
    fluor = [d for d in FLUORESCENCE if d in columns]
    spill_order = [fluor[i] for i in layout_rng.permutation(len(fluor))]
    if spec.world is None:
        pns = {d: _spell(d, layout_rng) for d in FLUORESCENCE}
    else:  # the lab's own conventions, varying between its tubes
        k = int(layout_rng.integers(1 << 16))
        pns = {d: spec.world.label(d, k) for d in FLUORESCENCE}
    pns.update(spec.pns_overrides or {})

    dtype = "<f4" if spec.byteorder == "little" else ">f4"
    data = events[columns].to_numpy(dtype=np.float32).astype(dtype).tobytes()
    text = {"$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0", "$ENDSTEXT": "0",
            "$BEGINDATA": "0", "$ENDDATA": "0",
            "$BYTEORD": "1,2,3,4" if spec.byteorder == "little" else "4,3,2,1",
            "$DATATYPE": "F", "$MODE": "L", "$NEXTDATA": "0", "$PAR": str(len(columns)),
            "$TOT": str(len(events)), "$CYT": "LSRFortessa", "$DATE": _fcs_date(spec.seed % 365),
            "$FIL": path.name, "$TIMESTEP": repr(_TIMESTEP)}
    if fluor:
        s = spillover_matrix(spill_order).to_numpy()
        spill = ",".join([str(len(fluor)), *spill_order, *(f"{v:g}" for v in s.ravel())])
        text["$SPILLOVER" if spec.fcs_version == "3.1" else "SPILL"] = spill
    for i, ch in enumerate(columns, start=1):
        text.update({f"$P{i}N": ch, f"$P{i}B": "32", f"$P{i}E": "0,0", f"$P{i}R": str(_PNR)})
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
    return {
        "n_events": int(spec.n_events), "n_cd4": n_cd4, "n_treg": counts["n_treg"],
        "treg_pct_cd4": 100.0 * counts["n_treg"] / n_cd4 if n_cd4 else float("nan"),
        "treg_pct_cd4_target": float(spec.treg_pct_cd4), "fcs_version": spec.fcs_version,
        "byteorder": spec.byteorder, "seed": int(spec.seed), "drift": float(spec.drift),
        "hard": bool(spec.hard), **counts,
    }
