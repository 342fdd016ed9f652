"""Gates placed from each sample's own data: the driver, one module a method, the shared maths.

=====================  ==========================================================================
``driver``             :func:`place_gates` (every gate of a ``placement`` chain, in gate-tree
                       order), :func:`data_driven_gates` (whichever way the strategy declares),
                       the ``needs_review`` flags
``registry``           :data:`METHODS` (method name -> its parameters' dataclass and its function),
                       the manifest's entries read and checked (:func:`placement_specs`,
                       :func:`placement_problems`)
``scatter_cloud``      Lymphocytes: the rectangle around the CD3-bright events' scatter cloud
``ratio_band``         Singlets: a band around the FSC-A / FSC-H diagonal
``density_valley``     Live, CD3pos, CD4pos: thresholds at 1-D density minima
``treg_cluster``       Treg (1.1.0 on): the Treg cluster of a mixture on CD25 x FOXP3 x CD127
``treg_split``         CD127lo (1.1.0 on): drawn from the Treg cluster's fit
``treg_mixture``       Treg of ``treg_adaptive@1.0.0``: a mixture on CD25 x FOXP3
``treg_auto``          ``treg_auto@1.0.0``'s Treg rectangle (``auto_gates``, binned EM)
``result``             :class:`AutoGateResult`, :func:`sample_gatingml`
``_base``              the parameters' base class and their checks, :class:`~._base.Review`, subsets
``_maths``             densities and modes, fitting axes, polygons, mixture helpers, the ridgeline
=====================  ==========================================================================
"""

from __future__ import annotations

from ._maths import ridge_unimodal
from .driver import REVIEW_FLAG, data_driven_gates, needs_review_flags, place_gates, prefilter_rows
from .registry import METHODS, placement_problems, placement_specs
from .result import AutoGateResult, sample_gatingml
from .treg_auto import FALLBACK_FLAG, AutoGateParams, auto_gate_specs, fit_auto_gates

__all__ = [
    "AutoGateParams",
    "AutoGateResult",
    "FALLBACK_FLAG",
    "METHODS",
    "REVIEW_FLAG",
    "auto_gate_specs",
    "data_driven_gates",
    "fit_auto_gates",
    "needs_review_flags",
    "place_gates",
    "placement_problems",
    "placement_specs",
    "prefilter_rows",
    "ridge_unimodal",
    "sample_gatingml",
]
