from __future__ import annotations

import json

import pytest

from cytopipe.exceptions import PanelError
from cytopipe.strategy import Panel
from cytopipe.strategy.panel import normalise_label, resolve_panel
from cytopipe.strategy.registry import load_strategy


@pytest.fixture(scope="module")
def strategy():
    return load_strategy("treg@1.0.0")


def _channels(strategy, **pns):
    pnn = list(strategy.scatter) + [m.detector for m in strategy.markers] + ["Time"]
    labels = {m.detector: m.marker for m in strategy.markers}
    labels.update(pns)
    return pnn, [labels.get(d, "") for d in pnn]


# The panel of treg@1.0.0, written out by hand.
TREG_DETECTORS = {
    "CD45RA": "FITC-A", "CD127": "PE-A", "CD25": "PE-Cy7-A", "FOXP3": "APC-A", "CD8": "APC-H7-A",
    "CD4": "V450-A", "CD3": "V500-A", "viability": "PerCP-Cy5-5-A",
}

# Realistic $PnS spellings of the expected marker on its treg@1.0.0 detector.
# "name": passes by the generic rule alone (the canonical marker name among the label's tokens or runs of
# adjacent tokens joined), so it passes even when the manifest lists no alias.
# "alias": needs a manifest alias of treg@1.0.0 (IL7Ra/IL-7Ra/IL7R, IL2Ra/IL-2Ra, 7-AAD/7AAD, L/D/LD,
# Live/Dead/LiveDead, Via); FoxP3 is only a case change of FOXP3, viability of the marker "viability".
PASSING = [
    # case
    ("FITC-A", "cd45ra", "name"),
    ("PE-Cy7-A", "cd25", "name"),
    ("APC-A", "Foxp3", "name"),
    ("V500-A", " CD3 ", "name"),
    # clone names
    ("FITC-A", "CD45RA HI100", "name"),
    ("PE-A", "CD127 HIL-7R-M21", "name"),
    ("PE-A", "CD127 (A019D5)", "name"),
    ("PE-Cy7-A", "CD25 M-A251", "name"),
    ("PE-Cy7-A", "CD25 (M-A251)", "name"),
    ("PE-Cy7-A", "CD25 (BC96)", "name"),
    ("PE-Cy7-A", "CD25 2A3", "name"),
    ("APC-A", "FOXP3 259D/C7", "name"),
    ("APC-A", "FOXP3 (259D/C7)", "name"),
    ("APC-A", "FoxP3 PCH101", "name"),
    ("APC-A", "FOXP3 236A/E7", "name"),
    ("APC-H7-A", "CD8 SK1", "name"),
    ("APC-H7-A", "CD8a RPA-T8", "name"),
    ("V450-A", "CD4 RPA-T4", "name"),
    ("V450-A", "CD4 SK3", "name"),
    ("V500-A", "CD3 UCHT1", "name"),
    ("V500-A", "CD3 SK7", "name"),
    # both names of a marker
    ("PE-A", "IL7Ra (CD127)", "name"),
    ("PE-A", "IL7Ra", "alias"),
    ("PE-A", "IL-7Ra", "alias"),
    ("PE-A", "IL-7R alpha", "alias"),
    ("PE-Cy7-A", "IL-2Ra/CD25", "name"),
    ("PE-Cy7-A", "CD25 (IL-2Ra)", "name"),
    ("PE-Cy7-A", "IL2RA", "alias"),
    # fluorochromes in any spelling and position
    ("FITC-A", "CD45RA FITC", "name"),
    ("FITC-A", "FITC-CD45RA", "name"),
    ("FITC-A", "CD45RAFITC", "name"),  # glued with no digit between: the fluorochrome is cut off
    ("PE-A", "CD127-PE", "name"),
    ("PE-A", "IL7RaPE", "alias"),
    ("PE-Cy7-A", "PE-Cy7 CD25", "name"),
    ("PE-Cy7-A", "CD25-PECy7", "name"),
    ("PE-Cy7-A", "CD25PE-Cy7", "name"),
    ("PE-Cy7-A", "cd25 PE-Cy7", "name"),
    ("PE-Cy7-A", "CD25_PE-Cy7 (M-A251)", "name"),
    ("APC-A", "AF647 FoxP3", "name"),
    ("APC-A", "FOXP3 AF647", "name"),
    ("APC-A", "Alexa Fluor 647 FoxP3", "name"),
    ("APC-A", "FoxP3-Alexa Fluor® 647 (259D/C7)", "name"),
    ("APC-A", "anti-human FOXP3", "name"),
    ("APC-H7-A", "APC-H7 CD8", "name"),
    ("APC-H7-A", "CD8 APC-H7", "name"),
    ("V450-A", "V450 CD4", "name"),
    ("V450-A", "CD4-V450", "name"),
    ("V450-A", "CD4 BV421", "name"),
    ("V500-A", "CD3 BV510", "name"),
    ("V500-A", "V500 CD3", "name"),
    ("V500-A", "CD3 (SK7) V500", "name"),
    # viability wordings
    ("PerCP-Cy5-5-A", "7-AAD", "alias"),
    ("PerCP-Cy5-5-A", "7AAD", "alias"),
    ("PerCP-Cy5-5-A", "L/D", "alias"),
    ("PerCP-Cy5-5-A", "Live/Dead", "alias"),
    ("PerCP-Cy5-5-A", "LIVE-DEAD", "alias"),
    ("PerCP-Cy5-5-A", "LIVE/DEAD Fixable", "alias"),
    ("PerCP-Cy5-5-A", "Live Dead 7-AAD", "alias"),
    ("PerCP-Cy5-5-A", "viability", "name"),
    ("PerCP-Cy5-5-A", "Viability dye", "name"),
    ("PerCP-Cy5-5-A", "7-AAD viability", "name"),
    ("PerCP-Cy5-5-A", "VIABILITY (7-AAD)", "name"),
]


@pytest.mark.parametrize("detector,label,rule", PASSING)
def test_realistic_spellings_pass(strategy, detector, label, rule):
    pnn, pns = _channels(strategy, **{detector: label})
    panel = resolve_panel(pnn, pns, strategy)
    assert panel.detectors == TREG_DETECTORS
    assert panel.qc_flags == ()


def test_the_table_covers_every_detector():
    assert {d for d, _, _ in PASSING} == set(TREG_DETECTORS.values())
    assert len(PASSING) >= 40


@pytest.fixture
def no_aliases(strategies_copy):
    """treg@1.0.0 with every marker's manifest aliases removed: only the generic rules are left."""
    path = strategies_copy / "treg" / "1.0.0" / "manifest.json"
    man = json.loads(path.read_text(encoding="utf-8"))
    for m in man["markers"]:
        m["aliases"] = []
    path.write_text(json.dumps(man), encoding="utf-8")
    return load_strategy("treg@1.0.0")


@pytest.mark.parametrize("detector,label,rule", PASSING)
def test_which_spellings_need_a_manifest_alias(no_aliases, detector, label, rule):
    pnn, pns = _channels(no_aliases, **{detector: label})
    panel = resolve_panel(pnn, pns, no_aliases)
    expected = () if rule == "name" else (f"unlabelled:{detector}",)
    assert panel.qc_flags == expected


def test_channel_order_does_not_matter(strategy):
    pnn, pns = _channels(strategy)
    assert resolve_panel(pnn[::-1], pns[::-1], strategy) == resolve_panel(pnn, pns, strategy)


def test_panel_is_a_frozen_record(strategy):
    pnn, pns = _channels(strategy)
    panel = resolve_panel(pnn, pns, strategy)
    assert isinstance(panel, Panel)
    assert panel == Panel(detectors=TREG_DETECTORS, qc_flags=())
    with pytest.raises(AttributeError):
        panel.qc_flags = ("x",)


def test_mislabelled_tube(strategy):
    pnn, pns = _channels(strategy, **{"PE-Cy7-A": "CD127"})
    with pytest.raises(PanelError) as e:
        resolve_panel(pnn, pns, strategy, source="x.fcs")
    assert str(e.value) == (
        "x.fcs: detector PE-Cy7-A should carry CD25 but the file says 'CD127' (that is the CD127 marker: "
        "a mislabelled tube?); accepted $PnS spellings: ['CD25', 'IL2Ra', 'IL-2Ra']."
    )


# detector, $PnS naming another marker, expected marker, the marker the message names
MISLABELLED = [
    ("PE-Cy7-A", "CD127", "CD25", "CD127"),
    ("PE-Cy7-A", "IL7Ra", "CD25", "CD127"),
    ("PE-Cy7-A", "IL-7Ra (CD127) PE", "CD25", "CD127"),
    ("PE-Cy7-A", "FOXP3", "CD25", "FOXP3"),
    ("APC-H7-A", "CD4", "CD8", "CD4"),
    ("APC-H7-A", "CD4 RPA-T4", "CD8", "CD4"),
    ("FITC-A", "CD45RO", "CD45RA", "CD45"),
    ("FITC-A", "CD45RO UCHL1", "CD45RA", "CD45"),
    ("FITC-A", "CD45", "CD45RA", "CD45"),
    ("FITC-A", "CD4", "CD45RA", "CD4"),
    ("V450-A", "CD8", "CD4", "CD8"),
    ("V450-A", "CD45", "CD4", "CD45"),  # "CD4" is not found in "CD45"
    ("V450-A", "CD45RA", "CD4", "CD45RA"),  # cd 45 ra: no run spells cd4
    ("V450-A", "CD56", "CD4", "CD56"),
    ("V500-A", "CD8", "CD3", "CD8"),
    ("V500-A", "CD19", "CD3", "CD19"),
    ("V500-A", "7-AAD", "CD3", "viability"),
    ("V500-A", "CD47AAD", "CD3", "CD47"),
    ("APC-A", "CD25", "FOXP3", "CD25"),
    ("APC-A", "CD25 (M-A251)", "FOXP3", "CD25"),
    ("PE-A", "CD12", "CD127", "CD12"),  # "CD127" is not CD12, nor CD12 CD127
    ("PE-A", "IL-2Ra", "CD127", "CD25"),
    ("PerCP-Cy5-5-A", "CD3 UCHT1", "viability", "CD3"),
]


@pytest.mark.parametrize("detector,label,expected,named", MISLABELLED)
def test_a_label_naming_another_marker_is_a_mislabelled_tube(strategy, detector, label, expected, named):
    pnn, pns = _channels(strategy, **{detector: label})
    with pytest.raises(PanelError) as e:
        resolve_panel(pnn, pns, strategy, source="x.fcs")
    assert str(e.value).startswith(
        f"x.fcs: detector {detector} should carry {expected} but the file says {label!r} "
        f"(that is the {named} marker: a mislabelled tube?); accepted $PnS spellings: ["
    )


@pytest.mark.parametrize(
    "detector,label",
    [("PE-Cy7-A", ""), ("PE-Cy7-A", "   "), ("PE-Cy7-A", "Comp-PE-Cy7-A"), ("PE-Cy7-A", "PE-Cy7-A"),
     ("PE-Cy7-A", "PE-Cy7"), ("PE-Cy7-A", "tube 3"), ("PE-A", "PE-A"), ("PE-A", "Comp-PE-A"), ("APC-A", "Ki67"),
     ("V450-A", "CD"), ("FITC-A", "45RA"), ("PE-Cy7-A", "<img src=x onerror=alert(1)>")],
)
def test_a_label_naming_no_marker_is_gated_by_pnn_and_flagged(strategy, detector, label):
    pnn, pns = _channels(strategy, **{detector: label})
    panel = resolve_panel(pnn, pns, strategy)
    assert panel.detectors == TREG_DETECTORS
    assert panel.qc_flags == (f"unlabelled:{detector}",)


def test_each_unlabelled_detector_has_its_flag_in_panel_order(strategy):
    pnn, pns = _channels(strategy, **{"APC-A": "tube 3", "PE-Cy7-A": "", "V450-A": "CD4 RPA-T4"})
    panel = resolve_panel(pnn, pns, strategy)
    assert panel.detectors == TREG_DETECTORS
    assert panel.qc_flags == ("unlabelled:PE-Cy7-A", "unlabelled:APC-A")


def test_a_label_naming_the_expected_marker_and_another_passes(strategy):
    pnn, pns = _channels(strategy, **{"V450-A": "CD4/CD8 gate tube", "PE-Cy7-A": "CD25 (not CD127)"})
    assert resolve_panel(pnn, pns, strategy).qc_flags == ()


def test_aliases_come_from_the_manifest(strategies_copy):
    """Spellings the released manifest lacks pass once a strategy lists them."""
    path = strategies_copy / "treg" / "1.0.0" / "manifest.json"
    released = load_strategy("treg@1.0.0")
    labels = {"PerCP-Cy5-5-A": "Dead cells", "FITC-A": "45RA FITC"}
    pnn, pns = _channels(released, **labels)
    assert resolve_panel(pnn, pns, released).qc_flags == ("unlabelled:FITC-A", "unlabelled:PerCP-Cy5-5-A")
    man = json.loads(path.read_text(encoding="utf-8"))
    extra = {"viability": ["Dead"], "CD45RA": ["45RA"]}
    for m in man["markers"]:
        m["aliases"] += extra.get(m["marker"], [])
    path.write_text(json.dumps(man), encoding="utf-8")
    extended = load_strategy("treg@1.0.0")
    assert resolve_panel(pnn, pns, extended).qc_flags == ()
    pnn, pns = _channels(extended, **{"V450-A": "45RA"})  # and now names CD45RA elsewhere
    with pytest.raises(PanelError, match="that is the CD45RA marker"):
        resolve_panel(pnn, pns, extended)


def test_missing_detector_lists_what_the_file_has(strategy):
    pnn, pns = _channels(strategy)
    i = pnn.index("APC-A")
    del pnn[i], pns[i]
    with pytest.raises(PanelError) as e:
        resolve_panel(pnn, pns, strategy)
    assert str(e.value).startswith(
        "no detector for marker(s) ['FOXP3']: no $PnS names them and the file has no ['APC-A'] (required by "
        "treg@1.0.0); the file's channels: FSC-A, FSC-H, SSC-A, FITC-A ('CD45RA'), PE-A ('CD127'), ")
    assert "--panel PANEL.csv" in str(e.value)


def test_normalise_label():
    assert normalise_label("CD25 PE-Cy7") == "cd25pecy7"


def test_every_generated_spelling_is_accepted(tmp_path, strategy):
    """The generator's $PnS drift (case, aliases, fluorochromes) all resolve, with no flag."""
    from cytopipe.fcs.read import read_fcs
    from cytopipe.sim.sample import SampleSpec, write_fcs

    seen = set()
    for seed in range(40):
        path = tmp_path / f"{seed}.fcs"
        write_fcs(path, SampleSpec(n_events=200, seed=seed))
        sample = read_fcs(path)
        panel = resolve_panel(sample.pnn_labels, sample.pns_labels, strategy)
        assert panel.detectors == TREG_DETECTORS and panel.qc_flags == ()
        seen.update(sample.pns_labels)
    assert len(seen) > 20  # the spellings really did vary


def test_an_unlabelled_detector_is_gated_and_flagged_fresh_and_cached(tmp_path, strategy):
    from cytopipe.batch.task import process_sample
    from cytopipe.sim.sample import SampleSpec, write_fcs

    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=5000, seed=1, pns_overrides={"PE-Cy7-A": "Comp-PE-Cy7-A"}))
    cache = tmp_path / "cache"
    cache.mkdir()
    fresh = process_sample(str(path), str(strategy.directory), cache_dir=str(cache))
    assert fresh.error == ""
    assert fresh.cd4_count > 0 and fresh.treg_count > 0
    assert "unlabelled:PE-Cy7-A" in fresh.qc_flags
    cached = process_sample(str(path), str(strategy.directory), cache_dir=str(cache))
    assert cached.cached and cached.error == ""
    assert cached.qc_flags == fresh.qc_flags
    assert (cached.cd4_count, cached.treg_count) == (fresh.cd4_count, fresh.treg_count)
