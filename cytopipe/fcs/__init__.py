"""Stage 1: read and check one FCS file, and scan a batch's headers."""

from __future__ import annotations

from .header import ChannelInfo, channels, file_sha256, scan_header, scan_headers
from .lean import LeanSample, gates_exactly, read_fcs_lean, read_for_gating
from .read import default_sample_id, read_fcs, spillover_channels, spillover_names

__all__ = [
    "ChannelInfo",
    "channels",
    "file_sha256",
    "scan_header",
    "scan_headers",
    "default_sample_id",
    "read_fcs",
    "spillover_channels",
    "spillover_names",
    "LeanSample",
    "gates_exactly",
    "read_fcs_lean",
    "read_for_gating",
]
