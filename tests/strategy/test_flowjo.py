"""FlowJo interchange, both shipped strategies on one batch, and XXE refusal."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from cytopipe.batch.driver import run_batch
from cytopipe.cli import cli
from cytopipe.exceptions import InterchangeError, StrategyError
from cytopipe.fcs.read import read_fcs
from cytopipe.gating.api import gate_sample
from cytopipe.sim.trial import generate_trial
from cytopipe.strategy.flowjo import export_wsp, gate_counts_from_wsp, import_wsp, xs_id
from cytopipe.strategy.registry import load_gatingml, load_strategy

from ..conftest import shared_dir


def test_xs_id():
    assert [xs_id(n) for n in ("CD3+", "aAmine-", "Q1: channel_A- , channel_B+", "7AAD")] == [
        "CD3pos", "aAmineneg", "Q1_channel_Aneg_channel_Bpos", "g_7AAD"]


def test_import_wsp_gates_count_like_flowjo(strategies_copy):
    wsp = shared_dir("flowjo_wsp") / "simple_line_example" / "simple_poly_and_rect_v2_poly50.wsp"
    res = CliRunner().invoke(cli, ["strategy", "import-wsp", str(wsp), "--group", "my_group", "--as", "line@1.0.0",
                                   "--numerator", "rect1", "--denominator", "poly1", "--author", "Dr X"])
    assert res.exit_code == 0, res.output
    s = load_strategy("line@1.0.0", allow_draft=True)
    assert s.is_draft and {p[-1] for p in s.gate_paths()} == {"poly1", "rect1"}
    changelog = (s.directory / "CHANGELOG.md").read_text()
    assert "Imported from FlowJo workspace simple_poly_and_rect_v2_poly50.wsp" in changelog
    sample = read_fcs(wsp.parent / "data_set_simple_line_100.fcs")
    ours = {p: c.count for p, c in gate_sample(sample, s).items()}
    flowjo = gate_counts_from_wsp(wsp, "data_set_simple_line_100.fcs",
                                  fcs_file=wsp.parent / "data_set_simple_line_100.fcs")
    assert ours == flowjo and ours[("root", "poly1")] == 50


def test_import_wsp_transforms_carried(strategies_copy):
    wsp = shared_dir("flowjo_wsp") / "simple_diamond_example" / "test_data_diamond_asinh_rect.wsp"
    r = import_wsp(wsp, "All Samples", "diamond@0.1.0", numerator="upper_right", denominator="upper_right")
    gs = load_gatingml(r.directory / "diamond.xml")
    assert {type(t).__name__ for t in gs.transformations.values()} == {"AsinhTransform"}
    ours = gate_sample(read_fcs(wsp.parent / "test_data_diamond_01.fcs"), load_strategy(r.directory,
                                                                                      allow_draft=True))
    fj = gate_counts_from_wsp(wsp, "test_data_diamond_01.fcs", fcs_file=wsp.parent / "test_data_diamond_01.fcs")
    assert ours[("root", "upper_right")].count == fj[("root", "upper_right")] > 0


def test_import_wsp_lists_what_it_cannot_carry(strategies_copy, tmp_path):
    base = shared_dir("flowjo_wsp")
    with pytest.raises(InterchangeError, match="'channel_A' is FlowJo WSPBiexTransform.*\\| transform of 'channel_B'"):
        import_wsp(base / "simple_diamond_example" / "test_data_diamond_biex_rect.wsp", "All Samples", "b@1.0.0",
                   numerator="upper_right", denominator="upper_right")
    with pytest.raises(InterchangeError, match="gate 'Time' differs between samples"):
        import_wsp(base / "8_color_data_set" / "8_color_ICS.wsp", "DEN", "ics@1.0.0")
    # an unsupported gate type, found in the XML with its line
    src = (base / "simple_line_example" / "simple_poly_and_rect.wsp").read_text()
    bad = tmp_path / "curly.wsp"
    bad.write_text(src.replace("gating:RectangleGate", "gating:CurlyQuadGate"))
    res = CliRunner().invoke(cli, ["strategy", "import-wsp", str(bad), "--group", "my_group", "--as", "c@1.0.0",
                                   "--numerator", "poly1", "--denominator", "poly1"])
    assert res.exit_code == 2 and "'rect1'" in res.output and "CurlyQuadGate" in res.output
    assert "line " in res.output and "Traceback" not in res.output
    assert not (strategies_copy / "c").exists() and not (strategies_copy / "b").exists()


def test_export_wsp_round_trips_with_samples_and_compensation(tmp_path):
    sheet = generate_trial(tmp_path / "t", n_patients=1, n_events=4000, seed=5)
    out = tmp_path / "flowjo" / "trial.wsp"
    res = CliRunner().invoke(cli, ["strategy", "export-wsp", "treg_cd127lo@1.0.0", "--samples", str(sheet),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert 'uri="../t/P01_D1.fcs"' in text and text.count('name="Acquisition-defined"') == 4
    s = load_strategy("treg_cd127lo@1.0.0")
    for name in ("P01_D1.fcs", "P01_D60.fcs"):  # FCS 3.1 and 3.0 files, each with its own spillover
        ours = {p: c.count for p, c in gate_sample(read_fcs(tmp_path / "t" / name), s).items()}
        assert gate_counts_from_wsp(out, name) == ours


def test_export_wsp_names_gates_it_cannot_write(tmp_path):
    (tmp_path / "e").mkdir()
    import shutil

    shutil.copy(shared_dir("gatingml_ref") / "gml" / "gml_ellipse1_gate.xml", tmp_path / "e" / "e.xml")
    man = json.loads(load_strategy("treg@1.0.0").directory.joinpath("manifest.json").read_text())
    man.update(gatingml="e.xml", status="draft", endpoint={"numerator": ["root", "Ellipse1"],
                                                          "denominator": ["root", "Ellipse1"]})
    (tmp_path / "e" / "manifest.json").write_text(json.dumps(man))
    generate_trial(tmp_path / "t", n_patients=1, n_events=1000, seed=1)
    with pytest.raises(InterchangeError, match=r"cannot write: root/Ellipse1 \(EllipsoidGate\)"):
        export_wsp(str(tmp_path / "e"), sorted((tmp_path / "t").glob("*.fcs")), tmp_path / "x.wsp", allow_draft=True)


def test_both_shipped_strategies_on_one_batch(trial, tmp_path, dask_client):
    truth = pd.read_csv(trial.parent / "truth.csv")
    tables = {}
    for ref in ("treg@1.0.0", "treg_cd127lo@1.0.0"):
        tables[ref] = run_batch(trial, tmp_path / ref, strategy=ref, client=dask_client).table
        name, version = ref.split("@")
        assert set(tables[ref]["strategy"]) == {name} and set(tables[ref]["strategy_version"]) == {version}
        assert tables[ref]["strategy_sha256"].nunique() == 1
        err = (tables[ref]["treg_pct_cd4"].to_numpy() - truth["treg_pct_cd4"].to_numpy())
        assert abs(err).max() <= 0.5, f"{ref}: {err}"
    a, b = tables["treg@1.0.0"], tables["treg_cd127lo@1.0.0"]
    assert a["strategy_sha256"].iloc[0] != b["strategy_sha256"].iloc[0]
    assert (b["treg_count"] <= a["treg_count"]).all() and (b["cd4_count"] == a["cd4_count"]).all()


@pytest.fixture
def passwd_entity():
    return '<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'


def test_xxe_gatingml_never_reads_the_file(tmp_path, passwd_entity):
    src = load_strategy("treg@1.0.0").gatingml_path.read_text().split("\n", 1)[1]
    bad = tmp_path / "xxe.xml"
    bad.write_text(passwd_entity + src.replace('gating:id="Live"', 'gating:id="&xxe;"'))
    with pytest.raises(StrategyError, match="DOCTYPE|external entity") as e:
        load_gatingml(bad)
    assert "root:" not in str(e.value)
    report = CliRunner().invoke(cli, ["strategy", "validate", str(bad)])
    assert report.exit_code == 2 and "entit" in report.output and "root:" not in report.output


def test_xxe_workspace_never_reads_the_file(tmp_path, strategies_copy, passwd_entity):
    wsp = shared_dir("flowjo_wsp") / "simple_line_example" / "simple_poly_and_rect.wsp"
    src = wsp.read_text().split("\n", 1)[1]
    bad = tmp_path / "xxe.wsp"
    bad.write_text(passwd_entity + src.replace('name="rect1"', 'name="&xxe;"'))
    res = CliRunner().invoke(cli, ["strategy", "import-wsp", str(bad), "--group", "my_group", "--as", "x@1.0.0",
                                   "--numerator", "poly1", "--denominator", "poly1"])
    assert res.exit_code == 2 and "external entity" in res.output and "root:" not in res.output
    assert not (strategies_copy / "x").exists()
    # an entity in element text parses, so the DOCTYPE refusal itself is what stops it
    bad.write_text(passwd_entity + src.replace("</Workspace>", "<Note>&xxe;</Note></Workspace>"))
    res = CliRunner().invoke(cli, ["strategy", "import-wsp", str(bad), "--group", "my_group", "--as", "x@1.0.0",
                                   "--numerator", "poly1", "--denominator", "poly1"])
    assert res.exit_code == 2 and "DOCTYPE" in res.output and "root:" not in res.output
    with pytest.raises(StrategyError, match="DOCTYPE"):
        gate_counts_from_wsp(bad, "data_set_simple_line_100.fcs")
