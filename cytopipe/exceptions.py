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
    "OutputError",
    "EndpointError",
    "OutputSchemaError",
    "QCConfigError",
    "ReviewError",
    "one_line",
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


class OutputError(CytopipeError, OSError):
    """An output file could not be written; earlier outputs are left intact."""


class GatingError(CytopipeError, RuntimeError):
    """FlowKit failed to gate a sample."""


class EndpointError(CytopipeError, ValueError):
    """The endpoint analysis cannot run on the given runs and randomisation list."""


class OutputSchemaError(CytopipeError, ValueError):
    """An output table does not match its data dictionary (``cytopipe.outputs.schema``)."""


class QCConfigError(CytopipeError, ValueError):
    """A QC thresholds file or ``CYTOPIPE_QC_*`` variable is unreadable or invalid."""


class ReviewError(CytopipeError, ValueError):
    """A review decision cannot be recorded or applied (unknown sample, bad gate)."""


class InterchangeError(StrategyError):
    """A FlowJo workspace or GatingML file cannot be carried into or out of a strategy."""


def one_line(text: object) -> str:
    """``text`` (an exception or any object) as one line: error columns and logs hold one line a sample."""
    return " ".join(str(text).split())
