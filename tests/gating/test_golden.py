"""Golden counts: each shipped strategy version on the committed sample_fcs/ files, compared exactly.

An accidental change to a gate, a transform or FlowKit's behaviour shows here.
Regenerate only with a deliberate change: see tests/golden/regenerate.py.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cytopipe.fcs.read import file_sha256, read_fcs
from cytopipe.gating.api import gate_sample
from cytopipe.gating.placement import place_gates, placement_specs
from cytopipe.strategy.registry import list_strategies, load_strategy

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
RELEASED = [s["ref"] for s in list_strategies(REPO / "gating_strategies") if s["status"] == "released"]


def test_every_released_version_has_golden_counts():
    assert sorted(p.stem for p in GOLDEN.glob("*.csv")) == sorted(RELEASED)


def _counts(sample, strategy):
    """Gate counts as a run gives them: a strategy that places its gates from the data places them first.

    (treg_auto@1.0.0's golden counts record its template gates, as they were made at its release.)
    """
    gs = place_gates(sample, strategy).gating_strategy if placement_specs(strategy) else None
    return gate_sample(sample, strategy, gating_strategy=gs)


@pytest.mark.parametrize("ref", RELEASED)
def test_golden_counts_exact(ref, monkeypatch):
    monkeypatch.delenv("CYTOPIPE_STRATEGIES", raising=False)
    golden = pd.read_csv(GOLDEN / f"{ref}.csv")
    strategy = load_strategy(ref)
    for name, expected in golden.groupby("file", sort=False):
        path = REPO / "sample_fcs" / name
        if not path.is_file():
            pytest.fail(f"{path} is missing; golden counts need the committed sample_fcs/ (make sample-fcs)")
        sha = file_sha256(path)
        assert sha == expected["file_sha256"].iloc[0], (
            f"{path} is not the file the golden counts were made on; if sample_fcs/ was changed on purpose, "
            f"run tests/golden/regenerate.py and commit both")
        got = {"/".join(p): c.count for p, c in _counts(read_fcs(path), strategy).items()}
        want = dict(zip(expected["gate_path"], expected["count"].astype(int)))
        assert got == want, f"{ref} on {name}: gate counts changed"
