"""Gate-by-gate differences between two strategies, for reviewing a new version.

Gates are matched by id (GatingML ids are unique in a file). Each change says
what it is (added, removed, moved, type, dimension, threshold, vertices,
transform, compensation, boolean) and, for thresholds and vertices on a
transformed axis, also gives the value in linear (compensated) units, which
is how immunologists read a gate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .describe import GateInfo, describe_gates
from .registry import MANIFEST_FILE, load_gatingml, strategy_dir

__all__ = ["Change", "diff_strategies", "gatingml_of"]


@dataclass(frozen=True)
class Change:
    """One difference between strategy A and strategy B.

    Attributes
    ----------
    kind
        ``added``, ``removed``, ``moved``, ``type``, ``dimensions``,
        ``threshold``, ``vertices``, ``boolean``, ``transform`` or ``compensation``.
    item
        Gate id (or transform / matrix id).
    detail
        Human-readable description, with old and new values.
    """

    kind: str
    item: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:<12} {self.item:<14} {self.detail}"


def gatingml_of(ref: str | os.PathLike) -> Path:
    """The GatingML file of ``name@version``, a version folder, or a GatingML file itself."""
    import json

    from ..exceptions import StrategyError

    text = os.fspath(ref)
    p = Path(text)
    if p.is_file():
        return p
    if not p.is_dir() and "@" in text:
        p = strategy_dir(text, existing=False)
    if (p / MANIFEST_FILE).is_file():
        return p / json.loads((p / MANIFEST_FILE).read_text(encoding="utf-8"))["gatingml"]
    msg = f"{text!r} is neither a GatingML file, a strategy folder nor a known name@version."
    raise StrategyError(msg)


def _linear(gs, transform_id: str | None, value: float) -> str:
    if transform_id is None or value is None:
        return ""
    try:
        lin = float(gs.get_transform(transform_id).inverse(np.array([[value]]))[0, 0])
    except Exception:  # an unknown transform: show the stored value only
        return ""
    return f" ({lin:,.0f} linear)"


def _transform_params(t) -> dict:
    return {k: float(v) for k, v in vars(t).items() if k.startswith("param_") and v is not None}


def _compare_gate(ga: GateInfo, gb: GateInfo, gs_a, gs_b) -> list[Change]:
    name = ga.name
    out = []
    if ga.parent != gb.parent:
        out.append(Change("moved", name, f"parent {ga.parent} -> {gb.parent}"))
    if ga.gate_type != gb.gate_type:
        out.append(Change("type", name, f"{ga.gate_type} -> {gb.gate_type}"))
        return out
    dets_a = [d.detector for d in ga.dimensions]
    dets_b = [d.detector for d in gb.dimensions]
    if dets_a != dets_b:
        out.append(Change("dimensions", name, f"{dets_a} -> {dets_b}"))
        return out
    for da, db in zip(ga.dimensions, gb.dimensions):
        if da.transform != db.transform:
            out.append(Change("transform", name, f"{da.detector}: {da.transform or 'linear'} -> "
                                                 f"{db.transform or 'linear'}"))
        if da.compensation != db.compensation:
            out.append(Change("compensation", name, f"{da.detector}: {da.compensation} -> {db.compensation}"))
        for bound in ("min", "max"):
            va, vb = getattr(da, bound), getattr(db, bound)
            if va != vb:
                out.append(Change(
                    "threshold", name,
                    f"{da.detector} {bound} {va}{_linear(gs_a, da.transform, va)} -> "
                    f"{vb}{_linear(gs_b, db.transform, vb)}"))
    if ga.vertices != gb.vertices:
        if len(ga.vertices) != len(gb.vertices):
            out.append(Change("vertices", name, f"{len(ga.vertices)} -> {len(gb.vertices)} vertices: "
                                                f"{list(ga.vertices)} -> {list(gb.vertices)}"))
        else:
            for i, (va, vb) in enumerate(zip(ga.vertices, gb.vertices)):
                if va != vb:
                    out.append(Change("vertices", name, f"vertex {i + 1} moved {va} -> {vb}"))
    if ga.extra.get("refs") != gb.extra.get("refs") or ga.extra.get("boolean") != gb.extra.get("boolean"):
        out.append(Change("boolean", name, f"{ga.extra.get('boolean')} {ga.extra.get('refs')} -> "
                                           f"{gb.extra.get('boolean')} {gb.extra.get('refs')}"))
    for key in ("mean", "distance_square", "quadrants"):
        if ga.extra.get(key) != gb.extra.get(key):
            out.append(Change("threshold", name, f"{key} {ga.extra.get(key)} -> {gb.extra.get(key)}"))
    return out


def diff_strategies(a: str | os.PathLike, b: str | os.PathLike) -> list[Change]:
    """List every difference from strategy ``a`` to strategy ``b``, gate by gate.

    Parameters
    ----------
    a, b
        ``name@version``, a version folder, or a GatingML file.

    Returns
    -------
    list of Change
        Empty when the two define the same gates and transforms.

    Examples
    --------
    >>> [str(c) for c in diff_strategies("treg@1.0.0", "treg_cd127lo@1.0.0")]  # doctest: +SKIP
    ['added        CD127lo        parent Treg: RectangleGate on PE-A']
    """
    gs_a, gs_b = load_gatingml(gatingml_of(a)), load_gatingml(gatingml_of(b))
    gates_a = {g.name: g for g in describe_gates(gs_a)}
    gates_b = {g.name: g for g in describe_gates(gs_b)}
    changes = []
    for name, g in gates_a.items():
        if name not in gates_b:
            changes.append(Change("removed", name, f"was under {g.parent} ({g.gate_type})"))
    for name, g in gates_b.items():
        if name not in gates_a:
            dims = ", ".join(d.detector for d in g.dimensions)
            changes.append(Change("added", name, f"parent {g.parent}: {g.gate_type} on {dims}"))
        else:
            changes += _compare_gate(gates_a[name], g, gs_a, gs_b)
    for kind, ta, tb in (("transform", gs_a.transformations, gs_b.transformations),
                         ("compensation", gs_a.comp_matrices, gs_b.comp_matrices)):
        for tid in sorted(set(ta) | set(tb)):
            if tid not in tb:
                changes.append(Change(kind, tid, "removed"))
            elif tid not in ta:
                changes.append(Change(kind, tid, f"added ({type(tb[tid]).__name__})"))
            elif kind == "transform" and (type(ta[tid]) is not type(tb[tid])
                                          or _transform_params(ta[tid]) != _transform_params(tb[tid])):
                changes.append(Change(kind, tid, f"{type(ta[tid]).__name__} {_transform_params(ta[tid])} -> "
                                                 f"{type(tb[tid]).__name__} {_transform_params(tb[tid])}"))
            elif kind == "compensation" and (list(ta[tid].detectors) != list(tb[tid].detectors)
                                             or not np.array_equal(ta[tid].matrix, tb[tid].matrix)):
                changes.append(Change(kind, tid, "spillover matrix changed"))
    return changes
