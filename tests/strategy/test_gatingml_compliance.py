"""GatingML 2.0 compliance: every reference case loads through cytopipe and matches its truth exactly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cytopipe.exceptions import StrategyError
from cytopipe.strategy.registry import load_gatingml

from ..conftest import SHARED, shared_dir

CASES = sorted(p.name for p in (SHARED / "gatingml_ref" / "gml").glob("*.xml")) or ["(gatingml_ref absent)"]
# The one reference file that is deliberately not valid GatingML (an unknown <sample> element).
INVALID = {"gml_range_gate_attr_testing.xml": r"line 7: Element 'sample'"}
# Truth files named after something other than the gate id.
TRUTH_ALIAS = {"ParRectangle1": "ParQuadRect"}
# Gates the reference set gives no truth for (they must still load and gate).
NO_TRUTH = {"myEllipse2"}


@pytest.fixture(scope="module")
def data1():
    import flowkit as fk

    return fk.Sample(str(shared_dir("gatingml_ref") / "data1.fcs"))


@pytest.mark.parametrize("case", CASES)
def test_reference_case(case, data1):
    ref = shared_dir("gatingml_ref")
    path = ref / "gml" / case
    if case in INVALID:
        with pytest.raises(StrategyError, match=INVALID[case]):
            load_gatingml(path)
        return
    gs = load_gatingml(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = gs.gate_sample(data1)
    checked = 0
    for gate_id, parent in gs.get_gate_ids():
        if gate_id not in results._gate_lut:  # a QuadrantGate: its quadrants are checked instead
            continue
        membership = results.get_gate_membership(gate_id, gate_path=tuple(parent)).astype(int)
        assert membership.shape == (13367,)
        truth_file = ref / "truth" / f"Results_{TRUTH_ALIAS.get(gate_id, gate_id)}.txt"
        if gate_id in NO_TRUTH:
            assert not truth_file.exists()
            continue
        truth = np.loadtxt(truth_file, dtype=int)
        mismatch = np.flatnonzero(truth != membership)
        assert mismatch.size == 0, f"{case}: gate {gate_id}: {mismatch.size} events differ, first {mismatch[:5]}"
        checked += 1
    assert checked or set(g for g, _ in gs.get_gate_ids()) <= NO_TRUTH


def test_every_truth_file_is_used():
    ref = shared_dir("gatingml_ref")
    gate_ids = set()
    for case in CASES:
        if case not in INVALID:
            gate_ids |= {TRUTH_ALIAS.get(g, g) for g, _ in load_gatingml(ref / "gml" / case).get_gate_ids()}
    truths = {p.name[len("Results_"):-len(".txt")] for p in (ref / "truth").glob("Results_*.txt")}
    assert truths <= gate_ids
