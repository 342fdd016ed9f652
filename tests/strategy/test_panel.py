from __future__ import annotations

import pytest

from cytopipe.exceptions import PanelError
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


@pytest.mark.parametrize(
    "detector,label",
    [("PE-Cy7-A", "cd25 PE-Cy7"), ("V450-A", "CD4-V450"), ("APC-A", "FoxP3"), ("PE-A", "IL7Ra"),
     ("PerCP-Cy5-5-A", "7AAD"), ("PerCP-Cy5-5-A", "L/D"), ("V500-A", " CD3 "), ("APC-A", "FOXP3 AF647"),
     ("APC-A", "Alexa Fluor 647 FoxP3")],
)
def test_spelling_variants_are_accepted(strategy, detector, label):
    pnn, pns = _channels(strategy, **{detector: label})
    resolved = resolve_panel(pnn, pns, strategy)
    assert resolved["CD25"] == "PE-Cy7-A" and len(resolved) == len(strategy.markers)


def test_channel_order_does_not_matter(strategy):
    pnn, pns = _channels(strategy)
    assert resolve_panel(pnn[::-1], pns[::-1], strategy) == resolve_panel(pnn, pns, strategy)


def test_mislabelled_tube(strategy):
    pnn, pns = _channels(strategy, **{"PE-Cy7-A": "CD127"})
    with pytest.raises(PanelError) as e:
        resolve_panel(pnn, pns, strategy, source="x.fcs")
    assert "detector PE-Cy7-A should carry CD25 but the file says 'CD127'" in str(e.value)
    assert str(e.value).startswith("x.fcs: ")


def test_missing_detector_lists_what_the_file_has(strategy):
    pnn, pns = _channels(strategy)
    i = pnn.index("APC-A")
    del pnn[i], pns[i]
    with pytest.raises(PanelError, match=r"missing detector\(s\) \['APC-A'\].*the file has \['FSC-A'"):
        resolve_panel(pnn, pns, strategy)


def test_empty_pns_is_an_error(strategy):
    pnn, pns = _channels(strategy, **{"V450-A": ""})
    with pytest.raises(PanelError, match="V450-A has no \\$PnS"):
        resolve_panel(pnn, pns, strategy)


def test_a_prefix_of_another_marker_is_not_accepted(strategy):
    # "CD45" is not "CD4"; "CD8" is not "CD3"
    for det, label in (("V450-A", "CD45"), ("V500-A", "CD8")):
        pnn, pns = _channels(strategy, **{det: label})
        with pytest.raises(PanelError):
            resolve_panel(pnn, pns, strategy)


def test_normalise_label():
    assert normalise_label("CD25 PE-Cy7") == "cd25pecy7"


def test_every_generated_spelling_is_accepted(tmp_path, strategy):
    """The generator's $PnS drift (case, aliases, fluorochromes) all resolve."""
    from cytopipe.fcs.read import read_fcs
    from cytopipe.sim.sample import SampleSpec, write_fcs

    seen = set()
    for seed in range(40):
        path = tmp_path / f"{seed}.fcs"
        write_fcs(path, SampleSpec(n_events=200, seed=seed))
        sample = read_fcs(path)
        assert len(resolve_panel(sample.pnn_labels, sample.pns_labels, strategy)) == 8
        seen.update(sample.pns_labels)
    assert len(seen) > 20  # the spellings really did vary
