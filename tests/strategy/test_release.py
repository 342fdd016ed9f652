"""validate, diff, new-version, release, show: the strategy commands an immunologist uses."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from cytopipe.cli import cli
from cytopipe.exceptions import StrategyError
from cytopipe.strategy.diff import diff_strategies
from cytopipe.strategy.registry import load_strategy
from cytopipe.strategy.release import changelog_entry, new_version, release_version, validate_strategy


def test_show_lists_type_dimensions_transform_parent_and_writes_image(tmp_path):
    img = tmp_path / "tree.png"
    res = CliRunner().invoke(cli, ["strategy", "show", "treg_cd127lo@1.0.0", "--image", str(img)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.strip().startswith("CD127lo"))
    assert "RectangleGate" in line and "parent Treg" in line and "PE-A" in line and "logicle" in line
    assert img.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_broken_xml_gives_line(tmp_path):
    bad = tmp_path / "bad.xml"
    text = (load_strategy("treg@1.0.0").gatingml_path).read_text()
    bad.write_text(text.replace('gating:id="CD3pos"', 'gating:id="CD3+"').replace("</gating:Gating-ML>", ""))
    report = validate_strategy(bad)
    assert not report.ok and "not well-formed" in report.errors[0]
    bad.write_text(text.replace('gating:id="CD3pos"', 'gating:id="CD3+"'))
    report = validate_strategy(bad)
    line = text[: text.index('gating:id="CD3pos"')].count("\n") + 1
    assert any(f"line {line}:" in e and "CD3+" in e for e in report.errors), report.errors
    res = CliRunner().invoke(cli, ["strategy", "validate", str(bad)])
    assert res.exit_code == 2 and f"line {line}" in res.output


def test_validate_manifest_checks(strategies_copy):
    d = strategies_copy / "treg" / "1.0.0"
    assert validate_strategy(d).ok
    man = json.loads((d / "manifest.json").read_text())
    man["markers"] = [m for m in man["markers"] if m["detector"] != "PE-Cy7-A"]
    man["endpoint"]["denominator"] = ["root", "CD4pos"]
    (d / "manifest.json").write_text(json.dumps(man))
    (d / "treg.xml").write_text((d / "treg.xml").read_text().replace('value="25000"', 'value="26000"', 1))
    errors = " ".join(validate_strategy(d).errors)
    assert "'PE-Cy7-A'" in errors and "denominator 'root/CD4pos'" in errors and "released" in errors


def test_diff_reports_added_threshold_vertex_and_transform(strategies_copy):
    d = new_version("treg", "1.0.0")
    gml = d / "treg.xml"
    text = gml.read_text().replace('gating:min="0.5622"', 'gating:min="0.58"')
    text = text.replace('<gating:coordinate data-type:value="140000"/>',
                        '<gating:coordinate data-type:value="150000"/>', 1)
    text = text.replace('transforms:W="0.5"', 'transforms:W="0.6"')
    gml.write_text(text)
    changes = diff_strategies("treg@1.0.0", "treg@1.1.0")
    kinds = {(c.kind, c.item) for c in changes}
    assert ("threshold", "Treg") in kinds and ("vertices", "Lymphocytes") in kinds and ("transform", "logicle") in kinds
    thr = next(c for c in changes if c.kind == "threshold")
    assert "PE-Cy7-A min 0.5622" in thr.detail and "linear" in thr.detail
    res = CliRunner().invoke(cli, ["strategy", "diff", "treg@1.0.0", "treg_cd127lo@1.0.0"])
    assert res.exit_code == 0 and "added" in res.output and "CD127lo" in res.output and "parent Treg" in res.output
    assert diff_strategies("treg@1.0.0", "treg@1.0.0") == []


def test_new_version_draft_and_release_rules(strategies_copy, tmp_path, trial, dask_client):
    res = CliRunner().invoke(cli, ["strategy", "new-version", "treg", "--from", "1.0.0"])
    assert res.exit_code == 0, res.output
    d = strategies_copy / "treg" / "1.1.0"
    man = json.loads((d / "manifest.json").read_text())
    assert man["status"] == "draft" and man["derived_from"] == "treg@1.0.0"
    assert changelog_entry(d / "CHANGELOG.md", "1.1.0") == {"date": "YYYY-MM-DD", "author": "TODO",
                                                            "reason": "TODO"}
    assert changelog_entry(d / "CHANGELOG.md", "1.0.0")["author"] == "cytopipe team"
    with pytest.raises(StrategyError, match="already exists"):
        new_version("treg", "1.0.0")
    # run refuses a draft unless --allow-draft; every output row says draft
    res = CliRunner().invoke(cli, ["run", str(trial), "--out", str(tmp_path / "o"), "--strategy", "treg@1.1.0",
                                   "--scheduler", dask_client.scheduler.address])
    assert res.exit_code == 2 and "--allow-draft" in res.output
    res = CliRunner().invoke(cli, ["run", str(trial), "--out", str(tmp_path / "o"), "--strategy", "treg@1.1.0",
                                   "--allow-draft", "--scheduler", dask_client.scheduler.address])
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(tmp_path / "o" / "treg_by_visit.csv")["strategy_version"]) == {"1.1.0 (draft)"}
    assert set(pd.read_parquet(tmp_path / "o" / "populations.parquet")["strategy_version"]) == {"1.1.0 (draft)"}
    # release needs author, date and reason
    with pytest.raises(StrategyError, match="no date.*no author.*no reason"):
        release_version("treg@1.1.0")
    log = d / "CHANGELOG.md"
    log.write_text(log.read_text().replace("## 1.1.0 — YYYY-MM-DD\n- Author: TODO\n- Reason: TODO",
                                           "## 1.1.0 — 2026-12-01\n- Author: A. Immunologist\n- Reason: tighter CD25"))
    res = CliRunner().invoke(cli, ["strategy", "release", "treg@1.1.0"])
    assert res.exit_code == 0, res.output
    s = load_strategy("treg@1.1.0")
    assert s.status == "released" and s.manifest["released"] == "2026-12-01"
    with pytest.raises(StrategyError, match="already released"):
        release_version("treg@1.1.0")
    res = CliRunner().invoke(cli, ["strategy", "list"])
    assert "treg@1.1.0" in res.output and "2026-12-01" in res.output and s.sha256 in res.output


def test_edited_released_version_fails_validate_and_run(strategies_copy, trial, tmp_path):
    gml = strategies_copy / "treg_cd127lo" / "1.0.0" / "treg_cd127lo.xml"
    gml.write_text(gml.read_text().replace('gating:max="0.4543"', 'gating:max="0.47"'))
    res = CliRunner().invoke(cli, ["strategy", "validate", "treg_cd127lo@1.0.0"])
    assert res.exit_code == 2 and "never changes" in res.output
    res = CliRunner().invoke(cli, ["run", str(trial), "--out", str(tmp_path), "--strategy", "treg_cd127lo@1.0.0"])
    assert res.exit_code == 2 and "no longer matches its released checksum" in res.output


@pytest.mark.parametrize("command", ["show", "validate", "diff", "new-version", "release", "import-wsp",
                                     "export-wsp", "list"])
def test_every_strategy_command_has_help(command):
    res = CliRunner().invoke(cli, ["strategy", command, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output
