"""Gates placed from each sample's own data (cytopipe.gating.placement: the driver, and treg_adaptive@1.0.0).

Worlds are drawn from seeds no number of the strategy was chosen on; the truth
is the generator's labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from cytopipe.batch.task import process_sample
from cytopipe.gating.placement import REVIEW_FLAG, needs_review_flags
from cytopipe.gating.placement._maths import modes
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.sim.world import World
from cytopipe.strategy.registry import DEFAULT_STRATEGY, load_strategy

from .pinned import pinned_errors


@pytest.fixture(scope="module")
def adaptive():
    return load_strategy("treg_adaptive@1.0.0")


def test_the_first_data_driven_version_stays_released_and_places_every_gate(adaptive):
    assert adaptive.status == "released" and adaptive.ref != DEFAULT_STRATEGY
    placed = [tuple(p["gate_path"]) for p in adaptive.manifest["placement"]]
    assert placed == adaptive.gate_paths()


def test_pinned_worlds_with_usual_staining_land_within_target_or_go_to_review(tmp_path, adaptive):
    """Labs' geometries the strategy never saw: a tube not sent to review is within 0.3 pp of the truth,
    and few tubes are sent to review (the flag is never a way to pass this test)."""
    reviewed, errors = pinned_errors(tmp_path, adaptive, (424_242, 31_337, 77_001), (4.0, 15.0))
    assert len(reviewed) <= 1, reviewed
    assert all(abs(e) <= 0.3 for _, _, e in errors), errors


def test_too_few_events_go_to_review_with_the_gate_named(tmp_path, adaptive):
    path = tmp_path / "short.fcs"
    write_fcs(path, SampleSpec(n_events=150, seed=3))
    res = process_sample(str(path), str(adaptive.directory))
    assert not res.error
    flags = needs_review_flags(res.qc_flags)
    assert flags and all(f.startswith(f"{REVIEW_FLAG}:") for f in flags)
    assert any(f.endswith(":too_few_events") for f in flags), flags
    assert {g["status"] for g in res.auto_gates["gates"]} >= {"review"}


def test_one_mode_where_two_are_expected_has_no_valley():
    """The density of a single Gaussian has one significant mode; two well-apart Gaussians two, the minimum between."""
    rng = np.random.default_rng(0)
    x = np.linspace(-5, 10, 256)

    def dens(v):
        h, _ = np.histogram(v, bins=np.linspace(-5, 10, 257))
        return np.convolve(h, np.exp(-0.5 * (np.arange(-8, 9) / 3) ** 2), mode="same").astype(float)

    peaks, valleys = modes(dens(rng.normal(0, 1, 20_000)), min_share=0.02, max_dip=0.7)
    assert len(peaks) == 1 and valleys == []
    two = np.concatenate([rng.normal(0, 1, 15_000), rng.normal(6, 1, 5_000)])
    peaks, valleys = modes(dens(two), min_share=0.02, max_dip=0.7)
    assert len(peaks) == 2 and 2.0 < x[valleys[0]] < 4.5


def test_flowkit_alone_reproduces_the_counts_from_the_written_sample_gates(tmp_path, adaptive):
    """The result's GatingML (written to DIR/sample_gates/ by the driver) holds the placed gates; FlowKit's
    own gate_sample on it gives the run's counts."""
    import flowkit as fk

    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=30_000, seed=9, world=World.draw(5)))
    res = process_sample(str(path), str(adaptive.directory))
    assert not res.error
    xml = tmp_path / "a.xml"
    xml.write_text(res.applied_gatingml(), encoding="utf-8")
    gs = fk.parse_gating_xml(str(xml))
    flowkit = gs.gate_sample(fk.Sample(str(path)))
    for gate_path, count, _ in res.gates:
        parts = tuple(gate_path.split("/"))
        assert flowkit.get_gate_count(parts[-1], gate_path=parts[:-1]) == count, gate_path


@pytest.mark.parametrize("n", [30_001, 40_000, 59_999, 1_000_003])
def test_a_larger_file_is_placed_on_exactly_the_cap_of_events_spread_over_its_acquisition(n):
    """1.2.0 on places on 30,000 events of any larger file, from its first to its last stretch. The
    every-k-th rule of 1.0.0 and 1.1.0 (k = ceil(n / cap)) would leave a 40,000-event file 20,000 of them
    under that cap (and a 60,000-event one 30,000 under their cap of 50,000)."""
    from cytopipe.gating.placement import prefilter_rows

    rows = prefilter_rows(n, 30_000, exact=True)
    assert rows.size == 30_000 and rows[0] == 0 and rows[-1] >= n - 2 - n // 30_000
    gaps = np.diff(rows)
    assert gaps.min() >= 1 and gaps.max() <= 2 + n // 30_000  # increasing, no stretch of the file skipped
    if n == 40_000:
        assert prefilter_rows(n, 30_000).size == 20_000
        assert prefilter_rows(60_000, 50_000).size == 30_000


def test_placement_sees_30000_events_of_a_larger_file(tmp_path, monkeypatch):
    """What place_gates hands its methods: 30,000 rows of a 75,000-event file under 1.3.0 (1.1.0: every 2nd)."""
    from cytopipe.gating import engine
    from cytopipe.gating.placement import place_gates

    seen = []
    real = engine.Context.__init__

    def spy(self, sample, gs, raw, *a, **k):
        seen.append(raw.shape[0])
        real(self, sample, gs, raw, *a, **k)

    monkeypatch.setattr(engine.Context, "__init__", spy)
    write_fcs(tmp_path / "big.fcs", SampleSpec(n_events=75_000, seed=8))
    from cytopipe.fcs.read import read_fcs

    sample = read_fcs(tmp_path / "big.fcs")
    for ref, want in (("treg_adaptive@1.3.0", 30_000), ("treg_adaptive@1.1.0", 37_500)):
        seen.clear()
        res = place_gates(sample, load_strategy(ref))
        assert seen[0] == want and not needs_review_flags(res.qc_flags), (ref, seen, res.qc_flags)
