"""A manifest's placement entries read into each method's frozen parameters (cytopipe.gating.placement.registry):
every released key declared, today's defaults, and a misspelt key or a value out of range refused with where it is."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from cytopipe.cli import cli
from cytopipe.exceptions import StrategyError
from cytopipe.gating import METHODS, auto_gate_specs, place_gates, placement_problems, placement_specs
from cytopipe.strategy.registry import list_strategies, load_strategy
from cytopipe.strategy.release import validate_strategy

TREG = "root/Lymphocytes/Singlets/Live/CD3pos/CD4pos/Treg"


def _released():
    return [f"{s['name']}@{s['version']}" for s in list_strategies() if s["status"] == "released"]


@pytest.mark.parametrize("ref", _released())
def test_every_key_of_a_released_manifest_is_a_declared_parameter(ref):
    """Released manifests load unchanged: each entry's keys are its method's fields, read as written."""
    strategy = load_strategy(ref)
    assert placement_problems(strategy.manifest, strategy.directory / "manifest.json") == []
    entries = strategy.manifest.get("placement") or strategy.manifest.get("auto_gates") or []
    params = placement_specs(strategy) or auto_gate_specs(strategy)
    assert len(params) == len(entries)
    for entry, p in zip(entries, params):
        assert dataclasses.is_dataclass(p) and p.gate_path == tuple(entry["gate_path"])
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.seed = 1  # type: ignore[misc]
        for key, value in entry.items():
            got = getattr(p, key)
            if key in ("keep", "anchor", "fit_window", "plausible"):
                continue  # objects: their own types
            want = tuple(value) if isinstance(value, list) and key != "init_means" else value
            assert got == want or (key == "init_means" and [list(m) for m in got] == value), (key, got, value)


def test_defaults_are_the_values_placement_took_when_a_key_is_absent():
    """The defaults the code had, spread over adaptive.py and treg_cluster.py before the parameters were typed."""
    common = {"prefilter_events": 50_000, "prefilter_exact": False, "fit_events": 10_000, "seed": 0,
              "min_events": 200, "anchor_events": None}
    density = {"grid": 256, "min_mode_share": 0.02, "max_dip": 0.7}
    want = {
        "scatter_cloud": {**common, **density, "edge_margin": 0.02, "components": 3, "radius": 3.5, "tol": 1e-3},
        "ratio_band": {**common, **density, "edge_sd": 4.0, "range": (-0.5, 1.5)},
        "density_valley": {**common, **density, "edge_sd": 4.0, "edge_margin": 0.02, "optional_second_mode": ()},
        "treg_mixture": {**common, "window_sd": 2.0, "components": (2, 3, 4), "merge_sd": 1.75, "merge_far_sd": 3.0,
                         "merge_foxp3_sd": 1.0, "min_separation": 2.0, "max_bic_gap": 10.0,
                         "max_disagreement_pp": 0.5, "max_ambiguous_pct": 1.0, "boundary": "count",
                         "contour_grid": 96, "simplify": 0.01},
        "treg_cluster": {**common, "components": (2, 3, 4, 5), "tol": 1e-3, "max_bic_gap": 10.0,
                         "max_disagreement_pp": 0.5, "cofactor_from": None, "same_position_axes": None,
                         "restart_seeds": (),
                         "contour_grid": 64, "simplify": 0.01, "max_vertices": None},
        "treg_split": {**common, "contour_grid": 64, "simplify": 0.01, "max_vertices": None},
    }
    assert set(want) == set(METHODS)
    for method, defaults in want.items():
        fields = {f.name: f.default for f in dataclasses.fields(METHODS[method][0])
                  if f.default is not dataclasses.MISSING and f.name != "description"}
        assert fields == defaults, method


def _entry(strategy, gate: str) -> dict:
    return next(e for e in strategy.manifest["placement"] if "/".join(e["gate_path"]) == gate)


def _edited(strategy, gate: str, **change):
    man = json.loads(json.dumps(strategy.manifest))
    entry = next(e for e in man["placement"] if "/".join(e["gate_path"]) == gate)
    for key, value in change.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    return dataclasses.replace(strategy, manifest=man)


@pytest.fixture(scope="module")
def default():
    return load_strategy("treg_adaptive@1.3.0")


def test_a_misspelt_key_is_refused_naming_the_key_the_gate_and_the_manifest(default):
    entry = _entry(default, TREG)
    bad = _edited(default, TREG, min_separation=None, min_seperation=entry["min_separation"])
    with pytest.raises(StrategyError) as e:
        placement_specs(bad)
    msg = str(e.value)
    assert "'min_seperation'" in msg and "did you mean 'min_separation'?" in msg, msg
    assert TREG in msg and str(default.directory / "manifest.json") in msg, msg
    assert "more" in msg  # the required min_separation is then missing too
    with pytest.raises(ValueError, match="min_seperation"):  # a StrategyError is a ValueError
        place_gates(None, bad)  # refused before the sample is looked at


@pytest.mark.parametrize(("gate", "key", "value", "expected"), [
    ("root/Lymphocytes", "radius", -5.0, "> 0"),
    (TREG, "keep_mass", 1.5, "in (0, 1]"),
    (TREG, "components", [0, 7], ">= 1"),
    (TREG, "components", "7", "a non-empty list of integers"),
    (TREG, "cofactor_from", "all-events", "one of ['all_events', 'parent']"),
    ("root/Lymphocytes/Singlets/Live", "optional_second_mode", ["V500-A"], "which 'keep' does not"),
    ("root/Lymphocytes/Singlets", "range", [1.5, -0.5], "low < high"),
    ("root/Lymphocytes/Singlets", "fit_events", 4000.5, "an integer"),
])
def test_a_value_out_of_range_or_of_the_wrong_type_is_refused(default, gate, key, value, expected):
    with pytest.raises(StrategyError) as e:
        placement_specs(_edited(default, gate, **{key: value}))
    msg = str(e.value)
    assert f"'{key}'" in msg and expected in msg and gate in msg and repr(value) in msg.replace('"', "'"), msg


def test_a_missing_required_key_an_unknown_method_and_prefilters_that_disagree(default):
    with pytest.raises(StrategyError, match="required key 'keep_mass'"):
        placement_specs(_edited(default, TREG, keep_mass=None))
    with pytest.raises(StrategyError, match="method among"):
        placement_specs(_edited(default, TREG, method="treg_clusters"))
    with pytest.raises(StrategyError, match="'prefilter_events' is 50000 but the first entry's is 30000"):
        placement_specs(_edited(default, TREG, prefilter_events=50_000))


def test_an_auto_gate_key_is_checked_too():
    auto = load_strategy("treg_auto@1.0.0")
    man = json.loads(json.dumps(auto.manifest))
    man["auto_gates"][0]["min_weigth"] = 0.02
    man["auto_gates"][0]["min_separation"] = -1
    problems = placement_problems(man, "m.json")
    assert len(problems) == 2 and "'min_weigth'" in problems[0] and "'min_separation' must be >= 0" in problems[1]
    with pytest.raises(StrategyError, match="min_weigth"):
        auto_gate_specs(dataclasses.replace(auto, manifest=man))


def test_strategy_validate_reports_a_misspelt_key_and_a_value_out_of_range(strategies_copy):
    """A strategy folder edited on disk: the command lists both problems and exits 2; the library call,
    given the same check, finds them too."""
    folder = strategies_copy / "treg_adaptive" / "1.3.0"
    man = json.loads((folder / "manifest.json").read_text())
    man["placement"][0]["radius"] = -5.0
    man["placement"][3]["edge_sdd"] = 4.0
    (folder / "manifest.json").write_text(json.dumps(man, indent=2))
    res = CliRunner().invoke(cli, ["strategy", "validate", str(folder)])
    assert res.exit_code == 2, res.output
    assert "'radius' must be > 0, got -5.0" in res.output and "root/Lymphocytes)" in res.output
    assert "unknown key 'edge_sdd' (did you mean 'edge_sd'?)" in res.output
    assert str(folder / "manifest.json") in res.output
    report = validate_strategy(folder, manifest_checks=[placement_problems])
    assert sum("placement[" in e for e in report.errors) == 2, report.errors
    with pytest.raises(StrategyError, match="'radius' must be > 0"):
        placement_specs(load_strategy(folder))
    assert CliRunner().invoke(cli, ["strategy", "validate", "treg_adaptive@1.2.0"]).exit_code == 0
