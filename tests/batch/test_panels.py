"""``cytopipe panel``: each file's marker-to-detector resolution from its header, as a run resolves it."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from cytopipe.batch import check_panels
from cytopipe.cli import cli
from cytopipe.sim import SampleSpec, World, write_fcs


def _sheet(tmp_path, specs):
    rows, truths = [], {}
    for i, spec in enumerate(specs):
        name = f"f{i}.fcs"
        truths[name] = write_fcs(tmp_path / name, spec)
        rows.append({"file": name, "patient_id": f"P{i}", "visit": "D1"})
    pd.DataFrame(rows).to_csv(tmp_path / "samples.csv", index=False)
    return tmp_path / "samples.csv", truths


def test_each_file_resolves_to_the_detector_the_generator_gated(tmp_path):
    # Attune labs compensate -A or -H and name the matrix's channels by number or by $PnN (drawn per lab):
    # the header scan must pick the compensated kind as the reader does (seed 9: -H, named by number)
    specs = [SampleSpec(n_events=3000, seed=s, world=World.draw(s, instrument=fam))
             for s, fam in [(1, "attune"), (3, "attune"), (9, "attune"), (4, "cytoflex"), (5, "aurora")]]
    sheet, truths = _sheet(tmp_path, specs)
    table = check_panels(sheet)
    assert (table["error"] == "").all()
    for name, truth in truths.items():
        got = table[table["file"] == name].set_index("marker")["detector"].to_dict()
        assert got == truth["detectors"]
        assert set(table[table["file"] == name]["found_by"]) == {"$PnS"}


def test_the_command_names_a_file_it_cannot_resolve_and_exits_1(tmp_path):
    sheet, _ = _sheet(tmp_path, [SampleSpec(n_events=3000, seed=1),
                                 SampleSpec(n_events=3000, seed=2, panel="surface")])
    result = CliRunner().invoke(cli, ["panel", str(sheet)])
    assert result.exit_code == 1
    assert "f0.fcs\n  CD45RA" in result.output
    assert "f1.fcs\n  ERROR f1.fcs: detector FITC-A should carry CD45RA" in result.output
    assert result.output.rstrip().endswith("1 of 2 files resolved")
