"""Recounts on a strategy that places its gates from the data (``treg_adaptive``): a moved gate above
placed gates has them placed again, as a re-run does; a moved polygon vertex is recorded as given."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from cytopipe.cli import cli
from cytopipe.station import CSRF_HEADER, Station, create_app

from .conftest import TREG

CD4 = "root/Lymphocytes/Singlets/Live/CD3pos/CD4pos"


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory, dask_client):
    from cytopipe.batch.driver import run_batch
    from cytopipe.sim.trial import generate_trial

    d = tmp_path_factory.mktemp("adaptive")
    sheet = generate_trial(d / "trial", n_patients=1, n_events=20_000, seed=8, hard=True)
    run_batch(sheet, d / "run", client=dask_client, strategy="treg_adaptive@1.0.0", report=False)
    return d / "run"


def _recount(run_dir, gate_path, move):
    """Open sample 0 in the app, move one gate with ``move(geometry)``; the recount's answer and the gates."""
    station = Station(run_dir)
    client = TestClient(create_app(station, token="t"), base_url="http://127.0.0.1")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/?token=t").text).group(1)
    opened = client.get("/api/sample/0").json()
    gate = next(g for g in opened["gates"] if g["path"] == gate_path)
    r = client.post("/api/sample/0/recount", headers={CSRF_HEADER: csrf},
                    json={"version": opened["sample"]["version"], "gates": {gate_path: move(gate["geometry"])}})
    assert r.status_code == 200, r.json()
    station.close()
    return r.json(), opened


def _rerun_counts(run_dir, dask_client, file, cli_args):
    from cytopipe.batch.driver import run_batch

    res = CliRunner().invoke(cli, ["review", str(run_dir), file, *cli_args, "--reason", "moved",
                                   "--reviewer", "Dr A", "--no-report"])
    assert res.exit_code == 0, res.output
    shutil.rmtree(run_dir / "cache")
    run = json.loads((run_dir / "run.json").read_text())
    run_batch(run["sample_sheet"], run_dir, client=dask_client, strategy="treg_adaptive@1.0.0", report=False)
    pops = pd.read_parquet(run_dir / "populations.parquet")
    return pops[pops["file"] == file].set_index("gate_path")["count"].to_dict()


def test_a_moved_cd4_gate_has_the_treg_gate_placed_again_as_a_rerun_does(adaptive_run, tmp_path, dask_client):
    run_dir = tmp_path / "run"
    shutil.copytree(adaptive_run, run_dir)

    def raise_cd4(geometry):
        geometry["bounds"][0][0] += 0.2  # CD4 (V450-A) lower edge into the CD4+ cells: fewer of them
        return geometry

    got, opened = _recount(run_dir, CD4, raise_cd4)
    counts = {c["path"]: c["count"] for c in got["counts"]}
    before = {g["path"]: g["count"] for g in opened["gates"]}
    assert counts[CD4] < before[CD4]
    treg_gate = next(g for g in opened["gates"] if g["path"] == TREG)["geometry"]
    assert treg_gate["type"] == "polygon"  # placed from the data
    lin = got["linear"][CD4]["bounds"]
    bounds = [a for det, (lo, hi) in lin.items()
              for a in ("--bound", f"{det}={'' if lo is None else repr(lo)}:{'' if hi is None else repr(hi)}")]
    rerun = _rerun_counts(run_dir, dask_client, opened["sample"]["file"], ["--adjust-gate", CD4, *bounds])
    assert rerun == counts


def test_a_moved_polygon_vertex_counts_as_a_rerun_does(adaptive_run, tmp_path, dask_client):
    run_dir = tmp_path / "run"
    shutil.copytree(adaptive_run, run_dir)

    def widen(geometry):
        v = geometry["vertices"]
        mean_y = sum(y for _, y in v) / len(v)
        mid_x = (min(x for x, _ in v) + max(x for x, _ in v)) / 2
        # the vertex of the lower (FOXP3-dim) side nearest the middle of the CD25 range, moved lower still
        k = min((k for k in range(len(v)) if v[k][1] < mean_y), key=lambda k: abs(v[k][0] - mid_x))
        v[k] = [v[k][0], v[k][1] - 0.1]
        return geometry

    got, opened = _recount(run_dir, TREG, widen)
    counts = {c["path"]: c["count"] for c in got["counts"]}
    before = {g["path"]: g["count"] for g in opened["gates"]}
    assert counts[TREG] != before[TREG]
    assert {p: c for p, c in counts.items() if p != TREG} == {p: c for p, c in before.items() if p != TREG}
    vertices = got["linear"][TREG]["vertices"]
    args = ["--adjust-gate", TREG, *[a for x, y in vertices for a in ("--vertex", f"{x!r},{y!r}")]]
    rerun = _rerun_counts(run_dir, dask_client, opened["sample"]["file"], args)
    assert rerun == counts
