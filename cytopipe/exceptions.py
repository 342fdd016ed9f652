"""The exceptions cytopipe raises.

Every error a user can cause is a :class:`CytopipeError`. Subclasses also
inherit the builtin a caller would expect, as scikit-learn does, so
``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CytopipeError",
    "FCSReadError",
    "PanelError",
    "StrategyError",
    "StrategyChecksumError",
    "SampleSheetError",
    "GatingError",
]


class CytopipeError(Exception):
    """Base class of every error cytopipe raises on purpose."""


class FCSReadError(CytopipeError, ValueError):
    """An FCS file cannot be read or is not what the panel expects."""


class PanelError(CytopipeError, ValueError):
    """A file's detectors or markers do not match the strategy's panel."""


class StrategyError(CytopipeError, ValueError):
    """A gating strategy cannot be found, parsed or checked."""


class StrategyChecksumError(StrategyError):
    """A released strategy's GatingML no longer matches its released sha256."""


class SampleSheetError(CytopipeError, ValueError):
    """The sample sheet is malformed; the message lists every problem."""


class GatingError(CytopipeError, RuntimeError):
    """FlowKit failed to gate a sample."""
