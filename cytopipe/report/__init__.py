"""The HTML review report of a run: ``DIR/report/index.html`` and one page per sample.

Self-contained: plots are PNGs embedded as ``data:`` URIs, the only script is
inline, and a Content-Security-Policy forbids loading anything else, so the
report opens from disk with no network.
"""

from __future__ import annotations

from .build import write_report

__all__ = ["write_report"]
