"""Stage 7: the audit of a finished run: is its record intact, does every number trace back
to a stored result, the FCS files, the strategy and the signed review log (``cytopipe verify``).
"""

from __future__ import annotations

from .verify import verify_run

__all__ = ["verify_run"]
