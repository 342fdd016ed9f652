"""The report's plot data on disk: one ``.npz`` per sample under ``DIR/cache/plots/``.

The worker that gated a sample renders its plots and stores them with their
plot data (:func:`store_sample_plots`, :func:`save_plots`), keyed by
:func:`plot_key` (the file's and the strategy's sha256 and the sample's gate
adjustments, as the result cache is); the report reads them back
(:func:`load_plots`). A file that cannot be read, or was written by another
version of cytopipe, reads as None: the report then re-reads the FCS file
(:func:`cytopipe.review.plotdata.gate_views`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .plotdata import GatePlot, PlotDim, SamplePlots

__all__ = ["load_plots", "plot_key", "replace_file", "save_plots", "store_sample_plots"]

#: Version of what :func:`save_plots` writes; a report ignores plots of another version.
PLOTS_FORMAT = 1


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def plot_key(file_sha: str, strategy_sha: str, adjustments: dict[str, dict[str, Any]]) -> str:
    """The name (without ``.npz``) of a sample's stored plots under ``DIR/cache/plots/``.

    The plots depend on the file, the strategy and the sample's gate
    adjustments, as a stored result does; the worker's software versions
    are checked when the plots are read (:func:`load_plots`).

    Examples
    --------
    >>> len(plot_key("a" * 64, "b" * 64, {}))
    64
    """
    from .decisions import adjustments_digest

    text = f"{file_sha}:{strategy_sha}:{adjustments_digest(adjustments)}:plots{PLOTS_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()


def save_plots(path: str | os.PathLike, data: SamplePlots) -> Path:
    """Store a sample's plot data in one compressed ``.npz`` (no pickles).

    Arrays hold the histograms, events, vertices and PNGs; a JSON string
    the rest (paths, counts, axes, Time QC, format and cytopipe version).
    The PNGs are stored as they are (deflated already), the rest deflated
    at level 1: a quarter of :func:`numpy.savez_compressed`'s time (~1 ms
    a sample), files ~4 % larger; :func:`numpy.load` reads either.
    """
    import zipfile

    from .._version import __version__

    arrays: dict[str, np.ndarray] = {}
    gates = []
    for k, p in enumerate(data.plots):
        arrays[f"hist{k}"] = p.hist
        if p.vertices is not None:
            arrays[f"vertices{k}"] = p.vertices
        if p.points is not None:
            arrays[f"points{k}"] = p.points
        gates.append({"path": list(p.path), "custom": p.custom, "count": p.count, "parent_count": p.parent_count,
                      "dims": [{"id": d.id, "min": d.min, "max": d.max, "ticks": d.ticks} for d in p.dims]})
    for k, png in enumerate(data.pngs):
        arrays[f"png{k}"] = np.frombuffer(png, dtype=np.uint8)
    meta = {"format": PLOTS_FORMAT, "cytopipe_version": __version__, "gates": gates, "n_pngs": len(data.pngs),
            "time_qc": data.time_qc, "thresholds": data.thresholds, "max_events": data.max_events}
    arrays["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.asanyarray(array), allow_pickle=False)
            if name.startswith("png"):
                zf.writestr(f"{name}.npy", npy.getvalue(), compress_type=zipfile.ZIP_STORED)
            else:
                zf.writestr(f"{name}.npy", npy.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
    return replace_file(path, buf.getvalue())


def replace_file(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary sibling, then rename it over ``path``; never a partial file there.

    Not synced to disk (unlike :func:`~cytopipe.outputs.tables.atomic_write`, ~4 ms a file here): for
    what can be made again. After a power cut such a file may be empty or gone; :func:`load_plots`
    then returns None, and the report reads the FCS file instead.
    """
    import tempfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; as the run's other outputs
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_plots(path: str | os.PathLike, *, pngs_only: bool = False) -> SamplePlots | None:
    """A sample's stored plot data; None when absent, unreadable, or from another version of cytopipe.

    ``pngs_only``: when every gate's PNG is stored, leave its histogram empty
    and its events and vertices out (a third of the time): what a report
    page shows.
    """
    from .._version import __version__

    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != PLOTS_FORMAT or meta.get("cytopipe_version") != __version__:
                return None
            arrays = not (pngs_only and meta["n_pngs"] == len(meta["gates"]))
            plots = []
            for k, g in enumerate(meta["gates"]):
                plots.append(GatePlot(
                    path=tuple(g["path"]), custom=g["custom"], count=g["count"], parent_count=g["parent_count"],
                    dims=[PlotDim(d["id"], d["min"], d["max"], None if d["ticks"] is None else tuple(d["ticks"]))
                          for d in g["dims"]],
                    vertices=z[f"vertices{k}"] if arrays and f"vertices{k}" in z else None,
                    hist=z[f"hist{k}"] if arrays else np.zeros(0, dtype=np.uint32),
                    points=z[f"points{k}"] if arrays and f"points{k}" in z else None))
            pngs = [z[f"png{k}"].tobytes() for k in range(meta["n_pngs"])]
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return SamplePlots(plots, pngs, meta["time_qc"], meta["thresholds"], meta["max_events"])


def store_sample_plots(path: str | os.PathLike, plots: list[GatePlot], *, time_qc: dict[str, Any] | None,
                       thresholds: dict[str, Any], max_events: int = 20_000, render: bool = True) -> Path:
    """Render (:func:`~cytopipe.review.plots.gate_png`) and store (:func:`save_plots`) a sample's plots.

    Called by the worker that gated the sample, with :func:`~cytopipe.review.plotdata.gate_plots`
    computed while the gates' events were in memory.
    """
    pngs: Sequence[bytes] = []
    if render:
        from .plots import gate_png

        pngs = [gate_png(p) for p in plots]
    return save_plots(path, SamplePlots(list(plots), list(pngs), time_qc, dict(thresholds), max_events))
