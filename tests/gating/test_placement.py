"""The data-driven Treg gate of treg_auto@1.0.0 (cytopipe.gating.placement.treg_auto), on hard generated files."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from cytopipe.batch.task import process_sample
from cytopipe.fcs.read import read_fcs
from cytopipe.gating.api import gate_sample, treg_percent
from cytopipe.gating.placement import FALLBACK_FLAG, fit_auto_gates
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.strategy.registry import load_gatingml, load_strategy

TREG = "root/Lymphocytes/Singlets/Live/CD3pos/CD4pos/Treg"


@pytest.fixture(scope="module")
def auto():
    return load_strategy("treg_auto@1.0.0")


@pytest.fixture(scope="module")
def hard_files(tmp_path_factory):
    """14 hard files (staining variation, drift 0.4), 20,000-50,000 events, with truth."""
    out = tmp_path_factory.mktemp("hard")
    rng = np.random.default_rng(8)
    files = []
    for k in range(14):
        spec = SampleSpec(n_events=(20_000, 50_000)[k % 2], treg_pct_cd4=round(float(rng.uniform(3, 20)), 3),
                          seed=9100 + 13 * k, drift=0.4, hard=True, fcs_version=("3.1", "3.0")[k % 2])
        path = out / f"h{k:02d}.fcs"
        files.append((path, write_fcs(path, spec)["treg_pct_cd4"]))
    return files


def test_auto_gate_meets_the_bound_where_the_fixed_gate_misses(hard_files, auto):
    fixed = load_strategy("treg@1.0.0")
    err_auto, err_fixed = [], []
    for path, truth in hard_files:
        sample = read_fcs(path)
        res = fit_auto_gates(sample, auto)
        assert res.gates[0]["status"] == "fitted", res.gates[0]
        err_auto.append(treg_percent(gate_sample(sample, auto, gating_strategy=res.gating_strategy), auto)[2] - truth)
        err_fixed.append(treg_percent(gate_sample(sample, fixed), fixed)[2] - truth)
    err_auto, err_fixed = np.abs(err_auto), np.abs(err_fixed)
    assert err_auto.max() <= 0.3, err_auto
    assert err_auto.mean() <= 0.1, err_auto
    assert err_fixed.max() > 1.0 and err_fixed.mean() > 3 * err_auto.mean(), err_fixed


def test_flowkit_reproduces_the_counts_from_the_written_gatingml(hard_files, auto, tmp_path):
    path, _ = hard_files[0]
    sample = read_fcs(path)
    res = fit_auto_gates(sample, auto)
    ours = gate_sample(sample, auto, gating_strategy=res.gating_strategy)
    xml = tmp_path / "gates.xml"
    xml.write_text(res.gatingml, encoding="utf-8")
    gs = load_gatingml(xml)  # the per-sample GatingML 2.0 file, read back
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gs.gate_sample(sample).report
    fk = {tuple(p) + (g,): int(c) for p, g, c in zip(report["gate_path"], report["gate_name"], report["count"])}
    assert {p: c.count for p, c in ours.items()} == fk
    template = gate_sample(sample, auto)[auto.numerator].count
    assert fk[auto.numerator] != template  # the custom gate, not the template, was counted
    gate = gs.get_gate("Treg", gate_path=auto.numerator[:-1])  # written in place of the template
    bounds = res.gates[0]["bounds"]
    assert {d.id: d.min for d in gate.dimensions} == pytest.approx(bounds)


def test_fit_is_deterministic(hard_files, auto):
    path, _ = hard_files[1]
    a = fit_auto_gates(read_fcs(path), auto)
    b = fit_auto_gates(read_fcs(path), auto)
    assert a.gates == b.gates and a.gatingml == b.gatingml


@pytest.mark.parametrize(("spec", "reason"), [
    (SampleSpec(n_events=3000, seed=3, hard=True), "too few parent events"),
    (SampleSpec(n_events=30000, treg_pct_cd4=0.0, seed=4, hard=True), "one mode only"),
])
def test_no_clear_population_falls_back_with_a_flag(tmp_path, auto, spec, reason):
    path = tmp_path / "x.fcs"
    write_fcs(path, spec)
    sample = read_fcs(path)
    res = fit_auto_gates(sample, auto)
    assert res.gates[0]["status"] == "fallback" and reason in res.gates[0]["reason"]
    assert res.qc_flags == [FALLBACK_FLAG]
    counts = gate_sample(sample, auto, gating_strategy=res.gating_strategy)
    assert counts == gate_sample(sample, auto)  # the template gate


def test_fit_outside_the_plausible_window_falls_back(hard_files, auto):
    man = json.loads(json.dumps(auto.manifest))
    man["auto_gates"][0]["plausible"]["APC-A"] = [0.90, 0.95]
    narrow = dataclasses.replace(auto, manifest=man)
    res = fit_auto_gates(read_fcs(hard_files[0][0]), narrow)
    assert res.gates[0]["status"] == "fallback" and "plausible window" in res.gates[0]["reason"]


def test_process_sample_returns_the_fitted_gates_also_when_cached(hard_files, auto, tmp_path):
    """The result carries the sample's GatingML with the fitted gate (the driver writes it to sample_gates/)."""
    path, truth = hard_files[2]
    cache = tmp_path / "out" / "cache"
    cache.mkdir(parents=True)
    first = process_sample(str(path), str(auto.directory), cache_dir=str(cache))
    assert first.error == "" and first.auto_gates["gates"][0]["status"] == "fitted"
    assert abs(first.treg_pct_cd4 - truth) <= 0.3
    xml = tmp_path / "gates.xml"
    xml.write_text(first.applied_gatingml(), encoding="utf-8")
    gate = load_gatingml(xml).get_gate("Treg", gate_path=auto.numerator[:-1])  # the fitted gate, not the template
    assert {d.id: d.min for d in gate.dimensions} == pytest.approx(first.auto_gates["gates"][0]["bounds"])
    again = process_sample(str(path), str(auto.directory), cache_dir=str(cache))
    assert again.cached and again.applied_gatingml() == first.applied_gatingml()
    assert again.treg_pct_cd4 == first.treg_pct_cd4


def test_reviewer_adjustment_wins_over_the_fitted_gate(hard_files, auto, tmp_path):
    from cytopipe.fcs.read import file_sha256
    from cytopipe.review.decisions import adjusted_gating_strategy, build_gate_spec

    path, _ = hard_files[3]
    spec = build_gate_spec(auto, TREG, bounds={"PE-Cy7-A": (5000, None), "APC-A": (2000, None)})
    review = {"action": "adjust", "gate_path": TREG, "gate": spec, "file": path.name,
              "file_sha256": file_sha256(path), "strategy_sha256": auto.sha256}
    res = process_sample(str(path), str(auto.directory), reviews=[review])
    assert res.auto_gates["gates"][0]["status"] == "reviewer"
    assert FALLBACK_FLAG not in res.qc_flags
    sample = read_fcs(path)
    counts = gate_sample(sample, auto, gating_strategy=adjusted_gating_strategy(auto, sample.id, {TREG: spec}))
    assert res.treg_count == counts[auto.numerator].count
    assert res.treg_count != process_sample(str(path), str(auto.directory)).treg_count


def test_cli_run_with_treg_auto_writes_every_sample_gate(tmp_path):
    from click.testing import CliRunner

    from cytopipe.cli import cli
    from cytopipe.sim.trial import generate_trial

    sheet = generate_trial(tmp_path / "trial", n_patients=2, n_events=20_000, seed=5, hard=True)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(sheet), "--out", str(out), "--strategy", "treg_auto@1.0.0",
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(out / "treg_by_visit.csv")
    truth = pd.read_csv(sheet.parent / "truth.csv")
    assert (table["strategy"] == "treg_auto").all()
    named = [s["gates_file"] for s in json.loads((out / "miflowcyt.json").read_text())["samples"]]
    assert all(n.startswith("sample_gates/") for n in named)
    names = [n.removeprefix("sample_gates/") for n in named]
    assert [n.split("_", 1)[0] for n in names] == [f"{i:04d}" for i in range(1, len(table) + 1)]
    assert [n.split("_", 1)[1].rsplit("_", 1)[0] for n in names] == [f.removesuffix(".fcs") for f in table["file"]]
    assert sorted(p.name for p in (out / "sample_gates").iterdir()) == sorted(names)
    err = (table["treg_pct_cd4"] - truth["treg_pct_cd4"]).abs()
    assert err.max() <= 0.3, err


def test_report_draws_the_fitted_gate(hard_files, auto):
    """The review report's Treg plot shows the per-sample gate, with the run's count."""
    from cytopipe.review.plotdata import gate_views

    path, _ = hard_files[1]
    sample = read_fcs(path)
    fitted = fit_auto_gates(sample, auto)
    counts = gate_sample(sample, auto, gating_strategy=fitted.gating_strategy)
    views, _ = gate_views(str(path), auto, {})
    treg = next(v for v in views if v.path == auto.numerator)
    assert treg.custom
    assert treg.count == counts[auto.numerator].count
    template = auto.gating_strategy().get_gate("Treg", gate_path=auto.numerator[:-1])
    assert [d.min for d in treg.gate.dimensions] != [d.min for d in template.dimensions]


def test_fit_from_the_whole_samples_rows_equals_the_fit_that_gates_its_subsample(hard_files, auto, tmp_path):
    """Upstream rows handed to the fit (``rows=``) and the count (``known_rows=``) change nothing."""
    from cytopipe.fcs.lean import read_fcs_lean
    from cytopipe.gating.api import gate_rows

    big = tmp_path / "big.fcs"  # over the manifest's prefilter_events: the fit takes every k-th event
    write_fcs(big, SampleSpec(n_events=250_001, seed=31, hard=True))
    above = [p for p in auto.gate_paths() if p != auto.numerator]
    for path in [big] + [p for p, _ in hard_files[:3]]:
        for sample in (read_fcs(path), read_fcs_lean(path)):
            own = fit_auto_gates(sample, auto)
            known = gate_rows(sample, auto.gating_strategy(), above)
            given = fit_auto_gates(sample, auto, rows=known)
            assert given.gates == own.gates and given.gatingml == own.gatingml
            reused = gate_sample(sample, auto, gating_strategy=given.gating_strategy, known_rows=known)
            fresh = gate_sample(sample, auto, gating_strategy=own.gating_strategy, engine="flowkit")
            assert {p: c.count for p, c in reused.items()} == {p: c.count for p, c in fresh.items()}
