"""Show a strategy's gates: each gate's type, dimensions, transform and parent, as text and as an image.

What an immunologist reads before approving a version (``cytopipe strategy
describe``), and what :mod:`cytopipe.strategy.diff` compares between two
versions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DimensionInfo", "GateInfo", "describe_gates", "format_gate", "write_gate_tree_image"]


@dataclass(frozen=True)
class DimensionInfo:
    """One dimension of a gate: detector, compensation, transform and range."""

    detector: str
    compensation: str | None
    transform: str | None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class GateInfo:
    """What an immunologist needs to know about one gate.

    Attributes
    ----------
    path
        Full gate path, ``("root", ..., gate_id)``.
    gate_type
        FlowKit class name, e.g. ``"RectangleGate"``.
    dimensions
        The gate's dimensions in order.
    vertices
        Polygon vertices (in the transformed scale), else empty.
    extra
        Type-specific details (boolean references, quadrant ids, ellipse mean).
    """

    path: tuple[str, ...]
    gate_type: str
    dimensions: tuple[DimensionInfo, ...]
    vertices: tuple[tuple[float, ...], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """The gate id."""
        return self.path[-1]

    @property
    def parent(self) -> str:
        """The parent gate id (``"root"`` for a top gate)."""
        return self.path[-2]


def describe_gates(gating_strategy) -> list[GateInfo]:
    """Describe every gate of a FlowKit strategy, parents before children.

    Parameters
    ----------
    gating_strategy : flowkit.GatingStrategy

    Returns
    -------
    list of GateInfo
    """
    from flowkit.exceptions import QuadrantReferenceError

    out = []
    for gate_id, parent_path in gating_strategy.get_gate_ids():
        path = tuple(parent_path) + (gate_id,)
        try:
            gate = gating_strategy.get_gate(gate_id, tuple(parent_path))
        except QuadrantReferenceError:
            out.append(GateInfo(path, "Quadrant", (), extra={"quadrant_of": parent_path[-1]}))
            continue
        dims = tuple(
            DimensionInfo(
                detector=getattr(d, "id", None) or getattr(d, "ratio_ref", "?"),
                compensation=getattr(d, "compensation_ref", None),
                transform=getattr(d, "transformation_ref", None),
                min=getattr(d, "min", None),
                max=getattr(d, "max", None),
            )
            for d in gate.dimensions
        )
        extra: dict[str, Any] = {}
        if hasattr(gate, "gate_refs"):
            extra["boolean"] = gate.type
            extra["refs"] = [("not " if r.get("complement") else "") + r["ref"] for r in gate.gate_refs]
        if hasattr(gate, "quadrants"):
            extra["quadrants"] = list(gate.quadrants)
        if hasattr(gate, "covariance_matrix"):
            extra["mean"] = [float(c) for c in gate.coordinates]
            extra["distance_square"] = float(gate.distance_square)
        vertices = tuple(tuple(float(c) for c in v) for v in getattr(gate, "vertices", None) or ())
        out.append(GateInfo(path, type(gate).__name__, dims, vertices, extra))
    return sorted(out, key=lambda g: len(g.path))


def _dim_text(d: DimensionInfo) -> str:
    rng = []
    if d.min is not None:
        rng.append(f">= {d.min:g}")
    if d.max is not None:
        rng.append(f"< {d.max:g}")
    comp = d.compensation or "uncompensated"
    return f"{d.detector} [comp {comp}, transform {d.transform or 'linear'}]" + (f" {' '.join(rng)}" if rng else "")


def format_gate(info: GateInfo) -> str:
    """One line per gate for ``cytopipe strategy show``."""
    depth = "  " * (len(info.path) - 2)
    dims = "; ".join(_dim_text(d) for d in info.dimensions) or "-"
    more = ""
    if info.vertices:
        more = f"; {len(info.vertices)} vertices"
    if "refs" in info.extra:
        more = f"; {info.extra['boolean']} of {', '.join(info.extra['refs'])}"
    return f"{depth}{info.name:<14} {info.gate_type:<14} parent {info.parent:<12} {dims}{more}"


def write_gate_tree_image(gating_strategy, path: str | os.PathLike, *, title: str = "") -> Path:
    """Draw the gate tree (one box per gate: id, type, dimensions) with matplotlib.

    FlowKit's ``export_gate_hierarchy_image`` needs the graphviz ``dot``
    program, which a fresh clone does not have; matplotlib is a dependency.

    Parameters
    ----------
    gating_strategy : flowkit.GatingStrategy
    path
        Image file; the format follows the extension (``.png``, ``.svg``, ``.pdf``).
    title
        Drawn above the tree.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    gates = describe_gates(gating_strategy)
    children: dict[tuple[str, ...], list[GateInfo]] = {}
    for g in gates:
        children.setdefault(g.path[:-1], []).append(g)
    pos: dict[tuple[str, ...], tuple[float, float]] = {}
    next_x = [0.0]

    def place(node: tuple[str, ...], depth: int) -> float:
        kids = children.get(node, [])
        if not kids:
            x = next_x[0]
            next_x[0] += 1.0
        else:
            xs = [place(k.path, depth + 1) for k in kids]
            x = sum(xs) / len(xs)
        pos[node] = (x, -depth)
        return x

    place(("root",), 0)
    width = max(next_x[0], 1.0)
    depth = max(len(g.path) for g in gates) if gates else 1
    fig, ax = plt.subplots(figsize=(max(4.0, 3.2 * width), 1.3 * (depth + 1)))
    try:
        by_path = {g.path: g for g in gates}
        for node, (x, y) in pos.items():
            if node != ("root",):
                px, py = pos[node[:-1]]
                ax.plot([px, x], [py - 0.18, y + 0.18], color="0.5", lw=1, zorder=1)
            g = by_path.get(node)
            label = "root (all events)" if g is None else (
                f"{g.name}\n{g.gate_type}\n" + ", ".join(
                    f"{d.detector}" + (f" ({d.transform})" if d.transform else "") for d in g.dimensions))
            ax.text(x, y, label, ha="center", va="center", fontsize=8, zorder=2,
                    bbox={"boxstyle": "round", "fc": "#eef3fb", "ec": "#4a6fa5"})
        ax.set_xlim(-0.7, width - 0.3)
        ax.set_ylim(-depth - 0.6, 0.6)
        ax.axis("off")
        if title:
            ax.set_title(title)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, bbox_inches="tight")
    finally:
        plt.close(fig)
    return out
