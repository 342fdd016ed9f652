"""A *world*: one lab's geometry, drawn from a seed, for judging a strategy on labs it was not tuned to.

The generator's defaults (:mod:`.sample`) put every population where this
project's own files have it. Another instrument set-up, reagent lot or site
puts them elsewhere. A :class:`World` draws, once per lab, everything the
panel description leaves open:

- where each marker's positive population sits on its axis, within a factor
  of two of the usual position, and how wide it is; the spread of negatives
  ("a few hundred");
- the scatter geometry (lymphocyte cloud, debris, myeloid cells) within
  +-40 %, and the singlet and doublet FSC-A/FSC-H ratios within their ranges;
- on CD25, only the order is fixed: negative below CD25-intermediate below
  CD25-high; how close the activated conventional cells come to the Tregs,
  and how many there are, is drawn; FOXP3-dim stays below FOXP3+;
- the share of debris, doublets, dead and myeloid cells;
- how the lab writes ``$PnS`` (with clone names, both names of a marker,
  fluorochromes first or last).

Three options say what kind of lab it is, and leave every draw above as it
was: ``instrument`` (the cytometer family, :mod:`.instrument`), ``panel``
(``"foxp3"``, the trial lab's; ``"surface"``, the HIPC standardised Treg
panel: CD3, CD4, CD25, CD127, CCR4, CD45RO, HLA-DR and a viability dye) and
``shape`` (``"cluster"``, today's log-normal clusters; ``"real"``, skewed,
heavy-tailed clouds with CD25 a continuum, see :mod:`.sample`). The instrument's
own conventions are drawn from a separate seed sequence (:meth:`World.instrument_seed`).

Samples of a world add their own drift and, when asked, staining variation,
as every sample does (:class:`~cytopipe.sim.sample.SampleSpec`).

Examples
--------
>>> from cytopipe.sim.world import World
>>> w = World.draw(3)
>>> 0.5 <= w.gain["PE-Cy7-A"] <= 2.0
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .instrument import FAMILIES

__all__ = ["LABEL_STYLES", "PANELS", "SHAPES", "World"]

#: Treg panels: ``foxp3`` (the trial lab's) and ``surface`` (HIPC, no FOXP3 and no CD8).
PANELS: tuple[str, ...] = ("foxp3", "surface")
#: Population shapes: Gaussian-ish ``cluster`` or ``real`` cells.
SHAPES: tuple[str, ...] = ("cluster", "real")

_FLUORESCENCE = ("FITC-A", "PE-A", "PE-Cy7-A", "APC-A", "APC-H7-A", "V450-A", "V500-A", "PerCP-Cy5-5-A")

#: How labs write ``$PnS``; ``{m}`` marker, ``{f}`` fluorochrome, ``{c}`` clone, ``{a}`` another name.
LABEL_STYLES: tuple[str, ...] = ("{m}", "{m} {f}", "{f} {m}", "{m}-{f}", "{m} ({c})", "{m} {c}", "{a} ({m})",
                                 "{m}/{a}", "{f}-{m} {c}")
#: Per detector: spellings of the marker, another name, clones and fluorochromes a lab might use.
_LABELS = {
    "FITC-A": (("CD45RA", "CD45RA"), ("CD45RA",), ("HI100", "L48"), ("FITC",)),
    "PE-A": (("CD127", "IL7Ra", "CD127"), ("IL-7Ra", "IL7R"), ("HIL-7R-M21", "A019D5"), ("PE",)),
    "PE-Cy7-A": (("CD25",), ("IL-2Ra", "IL2RA"), ("M-A251", "BC96", "2A3"), ("PE-Cy7", "PECy7")),
    "APC-A": (("FOXP3", "FoxP3", "Foxp3"), ("FOXP3",), ("259D/C7", "PCH101", "236A/E7"),
              ("AF647", "Alexa Fluor 647", "A647")),
    "APC-H7-A": (("CD8",), ("CD8a",), ("SK1", "RPA-T8"), ("APC-H7", "APC-Cy7")),
    "V450-A": (("CD4",), ("CD4",), ("RPA-T4", "SK3", "OKT4"), ("V450", "BV421")),
    "V500-A": (("CD3",), ("CD3",), ("UCHT1", "SK7", "OKT3"), ("V500", "BV510")),
    "PerCP-Cy5-5-A": (("7-AAD", "Viability", "L/D", "Live/Dead"), ("viability", "7AAD"), ("",), ("7-AAD",)),
}
# The surface panel puts CD45RO, CCR4 and HLA-DR where the FOXP3 panel has CD45RA, FOXP3 and CD8.
_SURFACE_LABELS = {
    **_LABELS,
    "FITC-A": (("CD45RO", "CD45R0"), ("CD45RO",), ("UCHL1",), ("FITC",)),
    "APC-A": (("CCR4", "CD194"), ("CD194", "CCR4"), ("1G1", "L291H4", "205410"), ("AF647", "Alexa Fluor 647")),
    "APC-H7-A": (("HLA-DR", "HLADR"), ("MHC-II", "HLA-DR"), ("L243", "G46-6"), ("APC-H7", "APC-Cy7")),
}


@dataclass(frozen=True)
class World:
    """One lab's geometry (see the module docstring). Draw one with :meth:`draw`.

    Attributes
    ----------
    seed
        The seed it was drawn from.
    gain
        Per channel, the factor on every population's position (fluorescence
        0.5-2, scatter 0.6-1.4).
    width
        Per channel, the factor on positive populations' log-normal widths (0.7-1.4).
    neg_sd
        Spread of negative populations (compensated linear units, 100-400).
    cd25_activated, cd25_conv
        CD25 of activated conventional CD4 cells, as a fraction of the Tregs'
        (0.08-0.4), and of conventional cells, as a fraction of the activated cells' (0.05-0.4).
    foxp3_dim
        FOXP3 of activated cells, as a fraction of the Tregs' (0.03-0.15).
    activated
        Share of CD4 cells that are activated conventional cells (0.02-0.20).
    shares
        Shares of all events: debris, doublet, dead, myeloid.
    singlet_ratio, doublet_ratio
        FSC-A / FSC-H of singlets (1.0-1.2) and doublets (1.5-2.0).
    label_style
        Index into :data:`LABEL_STYLES`; ``label_pick`` picks among the spellings.
    """

    seed: int
    gain: dict
    width: dict
    neg_sd: float
    cd25_activated: float
    cd25_conv: float
    foxp3_dim: float
    activated: float
    shares: dict
    singlet_ratio: float
    doublet_ratio: float
    label_style: int
    label_pick: int
    instrument: str = "bd"
    panel: str = "foxp3"
    shape: str = "cluster"

    def __post_init__(self) -> None:
        problems = [f"{name} must be one of {list(allowed)}, got {value!r}"
                    for name, value, allowed in (("instrument", self.instrument, FAMILIES),
                                                 ("panel", self.panel, PANELS), ("shape", self.shape, SHAPES))
                    if value not in allowed]
        if problems:
            msg = "Invalid World: " + "; ".join(problems) + "."
            raise ValueError(msg)

    def __hash__(self) -> int:
        return hash(self.seed)

    @classmethod
    def draw(cls, seed: int, *, instrument: str = "bd", panel: str = "foxp3", shape: str = "cluster") -> World:
        """Draw a world: every number uniform within the ranges the panel description allows.

        ``instrument``, ``panel`` and ``shape`` (see the module docstring) change no draw:
        the same seed gives the same geometry on every kind of lab.
        """
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7_001]))
        gain = {ch: float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) for ch in _FLUORESCENCE}
        for ch in ("FSC-A", "SSC-A"):
            gain[ch] = float(rng.uniform(0.6, 1.4))
        gain["FSC-H"] = gain["FSC-A"]
        width = {ch: float(rng.uniform(0.7, 1.4)) for ch in _FLUORESCENCE}
        shares = {"debris": rng.uniform(0.03, 0.2), "doublet": rng.uniform(0.02, 0.1),
                  "dead": rng.uniform(0.02, 0.15), "myeloid": rng.uniform(0.05, 0.3)}
        return cls(seed=int(seed), gain=gain, width=width, neg_sd=float(rng.uniform(100, 400)),
                   cd25_activated=float(rng.uniform(0.08, 0.4)), cd25_conv=float(rng.uniform(0.05, 0.4)),
                   foxp3_dim=float(rng.uniform(0.03, 0.15)), activated=float(rng.uniform(0.02, 0.20)),
                   shares={k: float(v) for k, v in shares.items()},
                   singlet_ratio=float(rng.uniform(1.0, 1.2)), doublet_ratio=float(rng.uniform(1.5, 2.0)),
                   label_style=int(rng.integers(len(LABEL_STYLES))), label_pick=int(rng.integers(1 << 16)),
                   instrument=instrument, panel=panel, shape=shape)

    def instrument_seed(self) -> np.random.SeedSequence:
        """Seed of this lab's instrument conventions and real-cell shapes, apart from :meth:`draw`'s."""
        return np.random.SeedSequence([self.seed, 7_002])

    def label(self, detector: str, k: int = 0, panel: str | None = None) -> str:
        """The ``$PnS`` this lab writes for nominal ``detector`` (``k`` varies the pick between tubes).

        ``panel`` (default: the world's) says which marker the detector carries.
        """
        labels = _SURFACE_LABELS if (panel or self.panel) == "surface" else _LABELS
        names, others, clones, fluors = labels[detector]
        pick = self.label_pick + k
        style = LABEL_STYLES[self.label_style]
        if detector == "PerCP-Cy5-5-A":  # a viability dye is its own fluorochrome
            style = "{m}"
        return style.format(m=names[pick % len(names)], a=others[pick % len(others)],
                            c=clones[pick % len(clones)], f=fluors[pick % len(fluors)]).strip()
