"""Figures of the endpoint analysis (matplotlib, Agg backend, PNG).

* Treg % of CD4 by visit per arm: mean +- SD, each patient a faint line.
* Change from baseline at the endpoint visit per arm, every patient shown.

A preliminary analysis (samples flagged for review and not approved were used)
puts PRELIMINARY in each figure's title and in the PNG's ``Title`` text chunk.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..outputs.tables import atomic_write

__all__ = ["plot_treg_by_visit", "plot_change_at_endpoint"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


_PRELIMINARY = "PRELIMINARY: includes samples not yet reviewed"


def _save(fig, path: str | os.PathLike, *, title: str | None = None) -> Path:
    # no Software/date metadata: the same data give the same bytes
    meta = {"Software": None, **({"Title": " ".join(title.split())} if title else {})}
    out = atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, metadata=meta))
    _pyplot().close(fig)
    return out


def plot_treg_by_visit(long: pd.DataFrame, path: str | os.PathLike, *, arm_order: list[str],
                       visit_order: list[str], preliminary: bool = False) -> Path:
    """Treg % of CD4 by visit, one panel per arm: mean +- SD and each patient faintly.

    Parameters
    ----------
    long
        One row per usable patient-visit: ``patient_id, arm, visit, treg_pct_cd4``.
    path
        PNG to write.
    arm_order, visit_order
        Panel and x-axis order.
    preliminary
        Title the figure PRELIMINARY.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(arm_order), figsize=(3.2 * len(arm_order), 3.4), sharey=True,
                             squeeze=False)
    x_of = {v: i for i, v in enumerate(visit_order)}
    for ax, arm, color in zip(axes[0], arm_order, plt.cm.viridis(np.linspace(0, 0.85, len(arm_order)))):
        sub = long[long["arm"] == arm]
        for _, g in sub.groupby("patient_id"):
            g = g.sort_values("visit", key=lambda s: s.map(x_of))
            ax.plot(g["visit"].map(x_of), g["treg_pct_cd4"], color=color, alpha=0.25, lw=1)
        stats = sub.groupby("visit")["treg_pct_cd4"].agg(["mean", "std", "count"]).reindex(visit_order)
        ax.errorbar(range(len(visit_order)), stats["mean"], yerr=stats["std"], color=color, lw=2,
                    marker="o", capsize=4, label="mean +- SD")
        ax.set_title(f"{arm} (n={sub['patient_id'].nunique()})", fontsize=10)
        ax.set_xticks(range(len(visit_order)), visit_order)
        ax.set_xlabel("visit")
    axes[0][0].set_ylabel("Treg % of CD4+ T cells")
    axes[0][0].legend(fontsize=8, loc="upper left")
    title = None
    if preliminary:
        title = _PRELIMINARY
        fig.suptitle(title, color="C3", fontsize=11, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path, title=title)


def plot_change_at_endpoint(by_patient: pd.DataFrame, path: str | os.PathLike, *, arm_order: list[str],
                            baseline: str, visit: str, preliminary: bool = False) -> Path:
    """Change from baseline at the endpoint visit per arm: every patient, mean +- SD.

    Parameters
    ----------
    by_patient
        ``change_by_patient`` (rows with status ``complete`` are drawn).
    path
        PNG to write.
    arm_order
        x-axis order (control first).
    baseline, visit
        For the axis label.
    preliminary
        Title the figure PRELIMINARY.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(arm_order) + 1.5, 3.6))
    ok = by_patient[by_patient["status"] == "complete"]
    rng = np.random.default_rng(0)  # fixed jitter: same figure every run
    for i, arm in enumerate(arm_order):
        y = ok.loc[ok["arm"] == arm, "change_pp"].to_numpy(float)
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(y)), y, s=22, color="0.35", zorder=3)
        if len(y):
            sd = y.std(ddof=1) if len(y) > 1 else 0.0
            ax.errorbar(i + 0.25, y.mean(), yerr=sd, fmt="D", color="C3", capsize=4, zorder=4)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.set_xticks(range(len(arm_order)), [f"{a}\n(n={int((ok['arm'] == a).sum())})" for a in arm_order])
    ax.set_ylabel(f"change in Treg % CD4, {baseline} to {visit}\n(percentage points)")
    title = "Change at the endpoint: each patient (grey), mean +- SD (red)"
    if preliminary:
        title = f"{_PRELIMINARY}\n" + title.replace("(grey), ", "(grey),\n")  # wrapped to fit
        ax.set_title(title, fontsize=10, color="C3")
    else:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, title=title if preliminary else None)
