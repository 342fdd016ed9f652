"""What placing a sample's gates gives: :class:`AutoGateResult`, and the sample's gates as GatingML."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AutoGateResult", "sample_gatingml"]


@dataclass
class AutoGateResult:
    """What placing (or fitting) a sample's data-driven gates gave.

    Attributes
    ----------
    gating_strategy : flowkit.GatingStrategy
        The strategy to gate the sample with (placed gates added as custom
        sample gates; reviewer adjustments already in it are kept).
    gates
        One record per placed gate: ``gate_path, status`` (``placed``,
        ``review``, ``fitted``, ``fallback`` or ``reviewer``), ``reason``,
        and what the method found (thresholds in gate units ``bounds`` and
        compensated linear units ``bounds_linear``, ``n_fit`` events fitted,
        component ``weights`` and ``means``, ...).
    qc_flags
        ``needs_review:<gate>:<reason>`` flags, or ``["auto_gate_fallback"]``
        when a ``treg_auto`` gate fell back to the template.
    gatingml
        GatingML 2.0 text of the strategy with this sample's custom gates.
    fits
        Gate path to ``(digest of its parent's events, the fit it left for the gate below)``, for the
        placements whose fit places their child (``feeds_child``): placing again on the same parent
        events takes the fit instead of fitting again (a reviewer moving that gate). Not stored.
    """

    gating_strategy: Any
    gates: list[dict[str, Any]] = field(default_factory=list)
    qc_flags: list[str] = field(default_factory=list)
    gatingml: str = ""
    fits: dict[str, Any] = field(default_factory=dict, repr=False)

    def record(self) -> dict[str, Any]:
        """JSON-able summary stored with the sample's result."""
        return {"gates": self.gates, "qc_flags": list(self.qc_flags), "gatingml": self.gatingml}


def sample_gatingml(gs, sample_id: str) -> str:
    """GatingML 2.0 text of ``gs`` with ``sample_id``'s custom gates in place of the template's."""
    import flowkit as fk

    buf = io.BytesIO()
    with warnings.catch_warnings():  # FlowKit's export warns about gate ids it rewrites
        warnings.simplefilter("ignore")
        fk.export_gatingml(gs, buf, sample_id=sample_id)
    return buf.getvalue().decode("utf-8")
