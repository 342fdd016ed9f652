"""Tests for cytopipe.strategy.describe: a strategy's gates as an immunologist reads them."""

from __future__ import annotations

from cytopipe.strategy.describe import describe_gates, format_gate
from cytopipe.strategy.registry import load_strategy


def test_every_gate_is_described_as_flowkit_holds_it():
    """Paths, types, detectors and bounds come from the GatingML itself, parents before children."""
    strategy = load_strategy("treg@1.0.0")
    gs = strategy.gating_strategy()
    infos = describe_gates(gs)
    assert sorted(i.path for i in infos) == sorted(strategy.gate_paths())
    depths = [len(i.path) for i in infos]
    assert depths == sorted(depths)
    for info in infos:
        gate = gs.get_gate(info.name, info.path[:-1])
        assert info.gate_type == type(gate).__name__
        assert [d.detector for d in info.dimensions] == [d.id for d in gate.dimensions]
        if info.gate_type == "RectangleGate":
            assert [(d.min, d.max) for d in info.dimensions] == [(d.min, d.max) for d in gate.dimensions]
        if info.gate_type == "PolygonGate":
            assert [list(v) for v in info.vertices] == [list(v) for v in gate.vertices]
    treg = next(i for i in infos if i.path == strategy.numerator)
    line = format_gate(treg)
    assert line.strip().startswith(treg.name) and f"parent {treg.parent}" in line
    assert all(d.detector in line for d in treg.dimensions)
