"""Instrument families: how a cytometer names its detectors, scales its values and writes its spillover.

The generator simulates every event on one set of *nominal* detectors (the
trial lab's BD names, :data:`cytopipe.sim.sample.CHANNELS`); an
:class:`Instrument` then says what a file of another family calls each of
them, which parameters it writes (``-A``, ``-H`` or both), its ``$PnR``,
and how its spillover keyword looks. What each family does comes from
PANEL.md ("Other sites, other instruments, other panels") and from the
instruments' own files:

========  =========================  ===========  ======================================
family    detector names             ``$PnR``     spillover
========  =========================  ===========  ======================================
bd        by fluorochrome            262,144      ``$SPILLOVER`` (3.1) / ``SPILL`` (3.0)
cytoflex  ``PC7-A``, ``PB450-A``...  1,048,576    ``SPILL`` or ``$SPILLOVER`` (drawn)
attune    laser + channel, -A & -H   1,048,576    ``$COMP`` or ``$SPILLOVER``, by index
                                                  or by name, on -A or -H (each drawn)
ique      laser + channel, -A & -H   16,777,216   ``$COMP`` or ``$SPILLOVER``, by index
          (-H only when exported)                 or by name (drawn), on -H
aurora    unmixed, by fluorochrome   4,194,304    none: the values are already unmixed
========  =========================  ===========  ======================================

PANEL.md gives the iQue an ``-A`` and an ``-H`` parameter for every detector, as
the Attune; the iQue3 export of already-gated cells the issue describes held
heights only, so a pre-gated iQue export (``heights_only``) is written so.

Values scale with the range (``$PnR`` / 262,144): an iQue file's lymphocytes
sit near FSC-H 4,000,000. The spillover fractions of a non-BD instrument
are the trial lab's, each multiplied by a factor drawn log-uniform in
0.5-2 (other optics, other filters); photon statistics (used by the
real-cell shapes) take one conversion factor per detector, drawn
log-uniform in 10-200 linear units (on a 262,144 scale) per photoelectron,
which gives spillover spreading coefficients sqrt(spill x factor) of about
0.5-7 for the panel's spillover fractions, the range reported for
conventional instruments (Nguyen et al., Cytometry A 2013).

Examples
--------
>>> from cytopipe.sim.instrument import Instrument
>>> Instrument.draw("cytoflex", 1, fluorescence=("PE-Cy7-A",)).names["PE-Cy7-A"]
'PC7-A'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FAMILIES", "Instrument"]

#: Instrument families the generator writes.
FAMILIES: tuple[str, ...] = ("bd", "cytoflex", "attune", "ique", "aurora")

# Nominal detector -> the family's detector (without the -A/-H suffix). The nominal
# detectors carry the same fluorochromes in both panels (FITC, PE, PE-Cy7, Alexa Fluor 647,
# APC-H7, V450, V500, 7-AAD), so a family's names do not depend on the panel.
_BASE_NAMES = {
    "bd": {"FITC-A": "FITC", "PE-A": "PE", "PE-Cy7-A": "PE-Cy7", "APC-A": "APC", "APC-H7-A": "APC-H7",
           "V450-A": "V450", "V500-A": "V500", "PerCP-Cy5-5-A": "PerCP-Cy5-5"},
    "cytoflex": {"FITC-A": "FITC", "PE-A": "PE", "PE-Cy7-A": "PC7", "APC-A": "APC", "APC-H7-A": "APC-A750",
                 "V450-A": "PB450", "V500-A": "KO525", "PerCP-Cy5-5-A": "PC5.5"},
    # Attune NxT: blue BL1 530/30, BL3 695/40; yellow YL1 585/16, YL4 780/60; red RL1 670/14,
    # RL3 780/60; violet VL1 440/50, VL2 512/25.
    "attune": {"FITC-A": "BL1", "PE-A": "YL1", "PE-Cy7-A": "YL4", "APC-A": "RL1", "APC-H7-A": "RL3",
               "V450-A": "VL1", "V500-A": "VL2", "PerCP-Cy5-5-A": "BL3"},
    # iQue3 (no yellow laser): blue BL1 530/30, BL2 572/28, BL3 675/30, BL4 780/60; red RL1 675/30,
    # RL2 780/60; violet VL1 445/45, VL2 530/30.
    "ique": {"FITC-A": "BL1", "PE-A": "BL2", "PE-Cy7-A": "BL4", "APC-A": "RL1", "APC-H7-A": "RL2",
             "V450-A": "VL1", "V500-A": "VL2", "PerCP-Cy5-5-A": "BL3"},
    "aurora": {"FITC-A": "FITC", "PE-A": "PE", "PE-Cy7-A": "PE-Cy7", "APC-A": "Alexa Fluor 647",
               "APC-H7-A": "APC-Fire 750", "V450-A": "BV421", "V500-A": "BV510", "PerCP-Cy5-5-A": "7-AAD"},
}
_RANGE = {"bd": 262144, "cytoflex": 1 << 20, "attune": 1 << 20, "ique": 1 << 24, "aurora": 1 << 22}
_CYT = {"bd": "LSRFortessa", "cytoflex": "CytoFLEX S", "attune": "Attune NxT", "ique": "iQue3",
        "aurora": "Aurora"}
_NOMINAL_RANGE = 262144
_SCATTER = ("FSC-A", "FSC-H", "SSC-A")


@dataclass(frozen=True)
class Instrument:
    """One cytometer's file conventions. Draw one with :meth:`draw`.

    Attributes
    ----------
    family
        One of :data:`FAMILIES`.
    names
        Nominal detector (``FITC-A``, ..., ``FSC-A``) -> the family's ``-A``
        name (for a heights-only ``ique`` export, its ``-H`` name).
    parameters
        The file's parameters in nominal order: ``($PnN, nominal detector, "A" or "H")``.
        ``Time`` is not listed.
    pnr
        ``$PnR`` of every parameter; values are scaled by ``pnr / 262144``.
    spill_key
        The spillover keyword, or None (aurora: unmixed data, no keyword).
        For bd, None here too: the writer follows the FCS version as before.
    spill_by_index
        True: the spillover's channel list names parameters by 1-based index.
    compensates
        ``"A"`` or ``"H"``: the parameters the spillover applies to.
    spill_factor
        Per (source, destination) nominal pair, the factor on the trial lab's spillover fraction.
    photon_units
        Per nominal fluorescence detector, linear units (on the 262,144 scale) per photoelectron.
    cytometer
        ``$CYT``.
    """

    family: str
    names: dict
    parameters: tuple
    pnr: int
    spill_key: str | None
    spill_by_index: bool
    compensates: str
    cytometer: str
    spill_factor: dict = field(default_factory=dict)
    photon_units: dict = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.family, self.spill_key, self.spill_by_index, self.compensates))

    @property
    def scale(self) -> float:
        """Factor from the generator's 262,144 scale to this instrument's values."""
        return self.pnr / _NOMINAL_RANGE

    @property
    def unmixed(self) -> bool:
        """True when the file holds unmixed (already compensated) values."""
        return self.family == "aurora"

    def detector(self, nominal: str) -> str:
        """The ``$PnN`` the spillover (and gating) uses for a nominal fluorescence detector."""
        base = self.names[nominal].rsplit("-", 1)[0]
        return f"{base}-{self.compensates}"

    @classmethod
    def draw(cls, family: str, seed, *, fluorescence: tuple[str, ...] = (), spill_pairs=(),
             heights_only: bool = False) -> Instrument:
        """Draw one instrument of ``family``.

        Parameters
        ----------
        family
            One of :data:`FAMILIES`.
        seed
            Anything ``numpy.random.default_rng`` takes (a ``SeedSequence``).
        fluorescence
            Nominal fluorescence detectors, in nominal order.
        spill_pairs
            Nominal (source, destination) pairs that spill.
        heights_only
            An ``ique`` export that kept only the ``-H`` parameters (pre-gated exports are written so).

        Raises
        ------
        ValueError
            When ``family`` is not one of :data:`FAMILIES`.
        """
        if family not in FAMILIES:
            msg = f"instrument must be one of {list(FAMILIES)}, got {family!r}."
            raise ValueError(msg)
        rng = np.random.default_rng(seed)
        base = _BASE_NAMES[family]
        if family == "ique" and heights_only:
            suffixes, scatter = ("H",), (("FSC-H", "FSC-H"), ("SSC-H", "SSC-A"))
        elif family in ("attune", "ique"):
            suffixes = ("A", "H")
            scatter = (("FSC-A", "FSC-A"), ("FSC-H", "FSC-H"), ("SSC-A", "SSC-A"), ("SSC-H", "SSC-A"))
        else:
            suffixes, scatter = ("A",), tuple((s, s) for s in _SCATTER)
        params = [(name, nominal, "H" if name.endswith("-H") else "A") for name, nominal in scatter]
        for nominal in fluorescence:
            params += [(f"{base[nominal]}-{s}", nominal, s) for s in suffixes]
        names = {nominal: f"{base[nominal]}-{suffixes[0]}" for nominal in fluorescence}
        names.update({nominal: name for name, nominal in scatter if nominal not in names})
        # iQue compensates its heights (its -H parameters are the ones it writes in every export)
        spill_key, by_index, compensates = None, False, "H" if family == "ique" else suffixes[0]
        if family == "cytoflex":
            spill_key = ("SPILL", "$SPILLOVER")[int(rng.integers(2))]
        elif family in ("attune", "ique"):
            spill_key = ("$COMP", "$SPILLOVER")[int(rng.integers(2))]
            by_index = bool(rng.integers(2))
            if family == "attune":
                compensates = ("A", "H")[int(rng.integers(2))]
        spill_factor = {} if family == "bd" else {
            pair: float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) for pair in spill_pairs}
        photon = {d: float(np.exp(rng.uniform(np.log(10.0), np.log(200.0)))) for d in fluorescence}
        return cls(family=family, names=names, parameters=tuple(params), pnr=_RANGE[family],
                   spill_key=spill_key, spill_by_index=by_index, compensates=compensates,
                   cytometer=_CYT[family], spill_factor=spill_factor, photon_units=photon)
