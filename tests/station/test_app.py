"""The review station's app through Starlette's TestClient: who gets in, what a request may change,
what a recount and a saved gate give compared with a real re-run."""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from cytopipe.cli import cli
from cytopipe.exceptions import ReviewError
from cytopipe.station import CSRF_HEADER, Station, check_host, create_app

from .conftest import TREG, XSS

TOKEN = "test-token-123"


@pytest.fixture
def station(run_copy):
    st = Station(run_copy)
    yield st
    st.close()


def _client(station, **kw) -> TestClient:
    return TestClient(create_app(station, token=TOKEN, **kw), base_url="http://127.0.0.1")


def _login(client) -> str:
    """Open the token link; return the page's CSRF token."""
    page = client.get(f"/?token={TOKEN}")
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


def _index(run_dir, patient, visit) -> int:
    table = pd.read_parquet(run_dir / "treg_by_visit.parquet")
    return int(np.flatnonzero((table["patient_id"] == patient) & (table["visit"] == visit))[0])


def _treg(opened):
    return next(g for g in opened["gates"] if g["path"] == TREG)


def _lowered(treg, by: float) -> dict:
    bounds = [list(b) for b in treg["geometry"]["bounds"]]
    bounds[0][0] -= by  # CD25 (PE-Cy7-A) lower edge, logicle units
    return {"bounds": bounds}


def test_no_token_no_entry(station):
    client = _client(station)
    for url in ("/", "/api/state", "/api/sample/0", "/static/app.js", f"/api/batch?gate={TREG}"):
        r = client.get(url)
        assert r.status_code == 401, url
    assert client.get("/?token=wrong").status_code == 403
    assert client.post("/api/reviewer", json={"name": "x"}).status_code == 401
    assert "cytopipe_station" not in client.cookies


def test_the_token_gives_a_strict_httponly_cookie_and_leaves_the_url(station):
    client = _client(station)
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "http://" not in page.text and "https://" not in page.text and "<script>" not in page.text
    assert client.get("/static/app.js").status_code == 200
    # the page builds the DOM from data as text only
    assert "innerHTML" not in client.get("/static/app.js").text
    # another host name (DNS rebinding) is refused even with the cookie
    other = TestClient(create_app(station, token=TOKEN), base_url="http://evil.example")
    assert other.get(f"/?token={TOKEN}").status_code == 400


def test_a_state_change_needs_the_csrf_header(station, run_copy):
    client = _client(station)
    csrf = _login(client)
    assert client.post("/api/reviewer", json={"name": "Dr A"}).status_code == 403
    assert client.post("/api/reviewer", json={"name": "Dr A"}, headers={CSRF_HEADER: "guess"}).status_code == 403
    assert client.post("/api/reviewer", json={"name": "Dr A"}, headers={CSRF_HEADER: csrf}).status_code == 200
    i = _index(run_copy, "P01", "D8")
    version = client.get(f"/api/sample/{i}").json()["sample"]["version"]
    r = client.post(f"/api/sample/{i}/decision", json={"version": version, "action": "approve"})
    assert r.status_code == 403
    assert not (run_copy / "review.jsonl").exists()
    r = client.post(f"/api/sample/{i}/decision", json={"version": version, "action": "approve"},
                    headers={CSRF_HEADER: csrf})
    assert r.status_code == 200, r.json()
    line = json.loads((run_copy / "review.jsonl").read_text().splitlines()[-1])
    assert (line["action"], line["reviewer"], line["visit"]) == ("approve", "Dr A", "D8")


def test_a_decision_needs_the_reviewer_name_first(station, run_copy):
    client = _client(station)
    csrf = _login(client)
    version = client.get("/api/sample/0").json()["sample"]["version"]
    r = client.post("/api/sample/0/decision", json={"version": version, "action": "approve"},
                    headers={CSRF_HEADER: csrf})
    assert r.status_code == 400 and "name" in r.json()["error"]
    assert not (run_copy / "review.jsonl").exists()


def test_a_decision_on_a_stale_view_is_refused(station, run_copy):
    client = _client(station)
    csrf = _login(client)
    client.post("/api/reviewer", json={"name": "Dr A"}, headers={CSRF_HEADER: csrf})
    i = _index(run_copy, "P01", "D1")
    version = client.get(f"/api/sample/{i}").json()["sample"]["version"]
    # meanwhile another reviewer rejects it from the command line
    res = CliRunner().invoke(cli, ["review", str(run_copy), "P01:D1", "--reject", "--reason", "clog",
                                   "--reviewer", "Dr B", "--no-report"])
    assert res.exit_code == 0, res.output
    r = client.post(f"/api/sample/{i}/decision", json={"version": version, "action": "approve"},
                    headers={CSRF_HEADER: csrf})
    assert r.status_code == 409
    assert "changed since your view loaded" in r.json()["error"] and "P01 D1" in r.json()["error"]
    lines = (run_copy / "review.jsonl").read_text().splitlines()
    assert [json.loads(x)["reviewer"] for x in lines] == ["Dr B"]
    # a recount on the stale view is refused too; the fresh version is accepted
    treg = _treg(client.get(f"/api/sample/{i}").json())
    r = client.post(f"/api/sample/{i}/recount", json={"version": version, "gates": {TREG: _lowered(treg, 0.05)}},
                    headers={CSRF_HEADER: csrf})
    assert r.status_code == 409


def test_a_host_other_machines_reach_needs_a_password(run_copy, station):
    with pytest.raises(ReviewError, match="without a password"):
        check_host("0.0.0.0", None)
    with pytest.raises(ReviewError, match="without a password"):
        check_host("review.lab.example", "")
    check_host("0.0.0.0", "s3cret")
    check_host("::1", None)
    res = CliRunner().invoke(cli, ["review", str(run_copy), "--serve", "--host", "0.0.0.0", "--no-browser"])
    assert res.exit_code == 2 and "without a password" in res.output
    # with a password: the token alone does not open the API; the password does, once
    client = _client(station, password="s3cret")
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    login = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
    assert client.get("/api/state").status_code == 401
    assert client.post("/login", data={"password": "guess", "csrf": csrf}).status_code == 403
    assert client.get("/api/state").status_code == 401
    assert client.post("/login", data={"password": "s3cret", "csrf": csrf}).status_code == 200
    assert client.get("/api/state").status_code == 200


def test_queue_in_review_order_with_what_is_left(station, run_copy):
    res = CliRunner().invoke(cli, ["review", str(run_copy), "P01:D60", "--approve", "--reviewer", "Dr B",
                                   "--no-report"])
    assert res.exit_code == 0, res.output
    client = _client(station)
    _login(client)
    state = client.get("/api/state").json()
    rows = state["rows"]
    assert len(rows) == 7 and state["left"] == 6
    # the short tube is flagged (low_events): first; the approved sample: last
    assert (rows[0]["file"], rows[0]["group"]) == ("short.fcs", 1) and "low_events" in rows[0]["flags"]
    assert (rows[-1]["patient"], rows[-1]["visit"], rows[-1]["review_status"]) == ("P01", "D60", "approved")
    assert [r["group"] for r in rows] == sorted(r["group"] for r in rows)
    table = pd.read_csv(run_copy / "treg_by_visit.csv", keep_default_na=False)
    for r in rows:
        t = table[table["file"] == r["file"]].iloc[0]
        assert r["treg_count"] == t["treg_count"] and r["patient"] == t["patient_id"]
        assert r["ci"][0] < 100 * t["treg_count"] / t["cd4_count"] < r["ci"][1]
    assert XSS in {r["patient"] for r in rows}  # sheet text is data; the page puts it in as text


def test_the_sample_view_labels_axes_by_marker_and_detector(station, run_copy):
    client = _client(station)
    _login(client)
    i = _index(run_copy, "P01", "D1")
    opened = client.get(f"/api/sample/{i}").json()
    treg = _treg(opened)
    assert [a["label"] for a in treg["axes"]] == ["CD25 (PE-Cy7-A)", "FOXP3 (APC-A)"]
    from cytopipe.strategy import load_strategy

    logicle = load_strategy("treg@1.0.0").gating_strategy().get_transform("logicle")
    ticks = {t["label"]: t["v"] for t in treg["axes"][0]["ticks"] if t["major"]}
    assert set(ticks) == {"-10³", "0", "10³", "10⁴", "10⁵"}
    assert ticks["10³"] == pytest.approx(float(logicle.apply(np.array([[1000.0]]))[0, 0]))
    pops = pd.read_parquet(run_copy / "populations.parquet")
    mine = pops[pops["file"] == opened["sample"]["file"]].set_index("gate_path")
    for g in opened["gates"]:  # the opened sample counts exactly what the run counted
        assert (g["count"], g["parent_count"]) == (mine.loc[g["path"], "count"], mine.loc[g["path"], "parent_count"])
    png = client.get(f"/api/sample/{i}/population", params={"gate": TREG})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    live = client.get(f"/api/sample/{i}/population", params={"gate": "root/Lymphocytes/Singlets/Live"}).json()
    assert sum(live["hist"]) == mine.loc["root/Lymphocytes/Singlets", "count"]  # every parent event drawn


def test_recount_gives_what_a_rerun_with_the_adjusted_gate_gives(station, run_copy, dask_client):
    from cytopipe.batch.driver import run_batch

    client = _client(station)
    csrf = _login(client)
    i = _index(run_copy, "P01", "D1")
    opened = client.get(f"/api/sample/{i}").json()
    treg = _treg(opened)
    r = client.post(f"/api/sample/{i}/recount", json={"version": opened["sample"]["version"],
                                                     "gates": {TREG: _lowered(treg, 0.08)}},
                    headers={CSRF_HEADER: csrf})
    assert r.status_code == 200, r.json()
    got = r.json()
    counts = {c["path"]: c["count"] for c in got["counts"]}
    assert counts[TREG] > treg["count"]  # a lower CD25 edge can only add Treg events
    assert {p: c for p, c in counts.items() if p != TREG} == {g["path"]: g["count"] for g in opened["gates"]
                                                               if g["path"] != TREG}
    lin = got["linear"][TREG]["bounds"]
    assert lin["PE-Cy7-A"][0] < 3000 and lin["PE-Cy7-A"][1] is None
    # the same adjustment typed on the command line, then a real re-run
    bounds = [f"{det}={'' if lo is None else repr(lo)}:{'' if hi is None else repr(hi)}"
              for det, (lo, hi) in lin.items()]
    res = CliRunner().invoke(cli, ["review", str(run_copy), "P01:D1", "--adjust-gate", TREG,
                                   *[a for b in bounds for a in ("--bound", b)], "--reason", "CD25 edge",
                                   "--reviewer", "Dr A", "--no-report"])
    assert res.exit_code == 0, res.output
    shutil.rmtree(run_copy / "cache")  # gate it afresh
    run = json.loads((run_copy / "run.json").read_text())
    run_batch(run["sample_sheet"], run_copy, client=dask_client, strategy="treg@1.0.0", report=False)
    pops = pd.read_parquet(run_copy / "populations.parquet")
    rerun = pops[pops["file"] == opened["sample"]["file"]].set_index("gate_path")["count"].to_dict()
    assert rerun == counts
    row = pd.read_csv(run_copy / "treg_by_visit.csv").set_index("file").loc[opened["sample"]["file"]]
    assert row["treg_count"] == got["treg"]["count"] and row["cd4_count"] == got["treg"]["cd4"]


def test_saving_a_moved_gate_updates_that_sample_as_a_rerun_would(station, run_copy, dask_client):
    from cytopipe.batch.driver import run_batch
    from cytopipe.review import verify_review_chain

    client = _client(station)
    csrf = _login(client)
    client.post("/api/reviewer", json={"name": "Dr A"}, headers={CSRF_HEADER: csrf})
    i = _index(run_copy, "P01", "D8")
    before = pd.read_csv(run_copy / "treg_by_visit.csv", keep_default_na=False)
    opened = client.get(f"/api/sample/{i}").json()
    treg = _treg(opened)
    r = client.post(f"/api/sample/{i}/decision", headers={CSRF_HEADER: csrf}, json={
        "version": opened["sample"]["version"], "action": "adjust", "reason": "CD25-high cells cut off",
        "gates": {TREG: _lowered(treg, 0.08)}})
    assert r.status_code == 200, r.json()
    assert r.json()["recomputed"]
    after = pd.read_csv(run_copy / "treg_by_visit.csv", keep_default_na=False)
    mine = after["file"] == opened["sample"]["file"]
    assert after.loc[mine, "treg_count"].item() > before.loc[mine, "treg_count"].item()
    assert after.loc[mine, "review_status"].item() == "adjusted"
    # every other sample's row is as it was
    others = [c for c in after.columns if c not in ("review_status", "reviewer", "reviewed_at")]
    pd.testing.assert_frame_equal(after.loc[~mine, others], before.loc[~mine, others])
    assert pd.read_parquet(run_copy / "treg_by_visit.parquet")["treg_count"].tolist() == after["treg_count"].tolist()
    # approving the adjusted numbers needs no re-run (the command line accepts it too)
    version = r.json()["sample"]["version"]
    r = client.post(f"/api/sample/{i}/decision", json={"version": version, "action": "approve"},
                    headers={CSRF_HEADER: csrf})
    assert r.status_code == 200, r.json()
    assert verify_review_chain(run_copy) == []
    actions = [json.loads(x)["action"] for x in (run_copy / "review.jsonl").read_text().splitlines()]
    assert actions == ["adjust", "approve"]
    # the record names the gates that gave the new numbers, and the whole run still verifies
    from cytopipe.audit import verify_run

    entry = json.loads((run_copy / "miflowcyt.json").read_text())["samples"][i]
    assert entry["file"] == opened["sample"]["file"] and entry["adjusted_gates"] == [TREG]
    station_gates = (run_copy / entry["gates_file"]).read_bytes()
    assert verify_run(run_copy) == []
    saved = pd.read_csv(run_copy / "treg_by_visit.csv", keep_default_na=False)
    saved_pops = pd.read_parquet(run_copy / "populations.parquet")
    # a real re-run, gating afresh, gives the same rows (and keeps the approval); the station's report
    # pages are written first (their thread stores plot data under cache/ while it works)
    station.report.flush()
    shutil.rmtree(run_copy / "cache")
    run = json.loads((run_copy / "run.json").read_text())
    run_batch(run["sample_sheet"], run_copy, client=dask_client, strategy="treg@1.0.0", report=False)
    rerun = pd.read_csv(run_copy / "treg_by_visit.csv", keep_default_na=False)
    cols = ["file", "events_total", "cd4_count", "treg_count", "treg_pct_cd4", "qc_status", "qc_flags",
            "review_status", "reviewer"]
    pd.testing.assert_frame_equal(rerun[cols], saved[cols])
    pd.testing.assert_frame_equal(pd.read_parquet(run_copy / "populations.parquet")[["file", "gate_path", "count"]],
                                  saved_pops[["file", "gate_path", "count"]])
    assert (run_copy / entry["gates_file"]).read_bytes() == station_gates  # the re-run applies the same gates


def test_one_gate_across_the_batch(station, run_copy):
    client = _client(station)
    _login(client)
    b = client.get("/api/batch", params={"gate": TREG}).json()
    assert [a["label"] for a in b["axes"]] == ["CD25 (PE-Cy7-A)", "FOXP3 (APC-A)"]
    table = pd.read_csv(run_copy / "treg_by_visit.csv", keep_default_na=False).set_index("file")
    assert len(b["samples"]) == 7
    for s in b["samples"]:
        assert s["count"] == table.loc[s["file"], "treg_count"]
        assert s["parent_count"] == table.loc[s["file"], "cd4_count"]
        assert s["outlier"] in (True, False)  # the server's rule; the page only draws it
    assert "robust SDs" in b["outlier_rule"]
    t = client.get(f"/api/thumb/{b['samples'][1]['i']}", params={"gate": TREG, "tint": 2}).json()
    assert t["count"] == table.loc[b["samples"][1]["file"], "treg_count"]
    assert t["image"].startswith("data:image/png;base64,") and t["geometry"]["type"] == "rect"
    assert client.get("/api/batch", params={"gate": "root/Nope"}).status_code == 400


def test_no_decision_lands_while_another_process_holds_the_run_folder(station, run_copy):
    """A decision's log line and the tables it rewrites go together: none while the folder is locked."""
    from cytopipe.outputs import run_folder_lock

    client = _client(station)
    csrf = _login(client)
    client.post("/api/reviewer", json={"name": "Dr A"}, headers={CSRF_HEADER: csrf})
    i = _index(run_copy, "P01", "D8")
    opened = client.get(f"/api/sample/{i}").json()
    table_before = (run_copy / "treg_by_visit.csv").read_bytes()
    with run_folder_lock(run_copy, "cytopipe run (a test)"):
        r = client.post(f"/api/sample/{i}/decision", headers={CSRF_HEADER: csrf},
                        json={"version": opened["sample"]["version"], "action": "approve"})
        assert r.status_code == 409 and "cytopipe run (a test)" in r.json()["error"]
        res = CliRunner().invoke(cli, ["review", str(run_copy), "P01:D8", "--approve", "--reviewer", "Dr B",
                                       "--no-report"])
        assert res.exit_code == 2 and "cytopipe run (a test)" in res.output
    assert not (run_copy / "review.jsonl").exists() or (run_copy / "review.jsonl").read_text() == ""
    assert (run_copy / "treg_by_visit.csv").read_bytes() == table_before
    # once the folder is free, the same decision lands
    r = client.post(f"/api/sample/{i}/decision", headers={CSRF_HEADER: csrf},
                    json={"version": opened["sample"]["version"], "action": "approve"})
    assert r.status_code == 200, r.json()
    assert [json.loads(x)["action"] for x in (run_copy / "review.jsonl").read_text().splitlines()] == ["approve"]


PW = "correct horse battery"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from cytopipe.review import ReviewerRegistry

    reg = ReviewerRegistry(tmp_path_factory.mktemp("lab") / "reviewers.json")
    reg.add("Dr A", PW)
    return reg


def _sign_in(client, name, password):
    login = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', login.text).group(1)
    return client.post("/login", data={"name": name, "password": password, "csrf": csrf}, follow_redirects=False)


def test_with_a_registry_a_session_signs_in_signs_its_decisions_and_expires_when_idle(station, run_copy, registry):
    import time

    from cytopipe.review import signature_report

    client = _client(station, registry=registry, idle_timeout=0.6)
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    again = TestClient(client.app, base_url="http://127.0.0.1").get(f"/?token={TOKEN}")
    assert again.status_code == 403 and "used already" in again.text  # the token opens one session, once
    assert client.get("/api/state").json()["login"] is True
    assert _sign_in(client, "Dr A", "wrong password").status_code == 403
    assert _sign_in(client, "Dr Z", PW).status_code == 403
    assert client.get("/api/state").status_code == 401
    r = _sign_in(client, "dr a", PW)
    assert r.status_code == 303 and r.headers["location"] == "/"
    page = client.get("/")
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    state = client.get("/api/state").json()
    assert (state["reviewer"], state["signed"]) == ("Dr A", True)
    r = client.post("/api/reviewer", json={"name": "Mallory"}, headers={CSRF_HEADER: csrf})
    assert r.status_code == 403 and "signed in as 'Dr A'" in r.json()["error"]  # no renaming once signed in
    i = _index(run_copy, "P01", "D8")
    version = client.get(f"/api/sample/{i}").json()["sample"]["version"]
    r = client.post(f"/api/sample/{i}/decision", json={"version": version, "action": "approve"},
                    headers={CSRF_HEADER: csrf})
    assert r.status_code == 200, r.text
    line = json.loads((run_copy / "review.jsonl").read_text().splitlines()[-1])
    assert (line["reviewer"], line["signer_key"]) == ("Dr A", registry.get("Dr A").public_key)
    assert signature_report(run_copy, registry).problems == ()
    # idle past the timeout: the sign-in has expired, the key is dropped, nothing more is recorded
    time.sleep(0.8)
    i = _index(run_copy, "P01", "D1")
    r = client.post(f"/api/sample/{i}/decision", json={"version": version, "action": "approve"},
                    headers={CSRF_HEADER: csrf})
    assert r.status_code == 401 and r.json()["login"] is True and "expired" in r.json()["error"]
    assert len((run_copy / "review.jsonl").read_text().splitlines()) == 1
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert _sign_in(client, "Dr A", PW).status_code == 303  # signing in again opens the same session
    assert client.get("/api/state").json()["reviewer"] == "Dr A"


def test_without_a_registry_the_session_name_is_set_once_and_must_be_visible(station):
    client = _client(station)
    csrf = _login(client)
    r = client.post("/api/reviewer", json={"name": "Dr\u200bA"}, headers={CSRF_HEADER: csrf})
    assert r.status_code == 400 and "U+200B ZERO WIDTH SPACE" in r.json()["error"]
    assert client.post("/api/reviewer", json={"name": " Dr  A "}, headers={CSRF_HEADER: csrf}).json() == {
        "reviewer": "Dr A"}
    r = client.post("/api/reviewer", json={"name": "Mallory"}, headers={CSRF_HEADER: csrf})
    assert r.status_code == 409 and "cannot change" in r.json()["error"]
    assert client.get("/api/state").json()["reviewer"] == "Dr A"


@pytest.mark.parametrize("url", ["/api/sample/0/population?gate=root/Nope", "/api/sample/0/population",
                                 "/api/thumb/0?gate=root/Nope", "/api/thumb/0?tint=abc", "/api/thumb/0?tint=9999",
                                 "/api/batch?gate=root/Nope", "/api/batch", "/api/sample/999",
                                 "/api/sample/999/population?gate=" + TREG, "/api/thumb/999"])
def test_a_bad_gate_tint_or_sample_is_a_4xx_with_a_message(station, url):
    client = TestClient(create_app(station, token=TOKEN), base_url="http://127.0.0.1", raise_server_exceptions=False)
    _login(client)
    res = client.get(url)
    assert 400 <= res.status_code < 500, (url, res.status_code, res.text[:200])
    assert res.json()["error"]


def test_thumbnails_come_from_the_plot_data_the_workers_stored(tmp_path, dask_client, monkeypatch):
    """Issue 27/28: the batch view draws from ``cache/plots/`` (no file is read again), and what it draws is
    what a re-gated sample gives: the same gates, the same counts, the same events in the same bins."""
    from cytopipe.batch.driver import run_batch
    from cytopipe.sim.sample import SampleSpec, write_fcs
    from cytopipe.station.sample import OpenSample

    for k in range(2):  # under 20,000 events: every parent event is plotted, by both paths
        write_fcs(tmp_path / f"t{k}.fcs", SampleSpec(n_events=12_000, seed=60 + k))
    pd.DataFrame({"file": ["t0.fcs", "t1.fcs"], "patient_id": ["P1", "P2"], "visit": ["D1", "D1"]}).to_csv(
        tmp_path / "samples.csv", index=False)
    run_batch(tmp_path / "samples.csv", tmp_path / "run", client=dask_client)  # the report stores plot data
    st = Station(tmp_path / "run")
    try:
        row = st.table().iloc[0]
        _, adjustments = st._key(row, st._decisions())
        stored = st._stored_thumbs(row, adjustments)
        opened = OpenSample(str(st.run().sample_path(str(row["file"]))), st.strategy, adjustments)
        assert set(stored["hists"]) == {"/".join(p) for p in opened.paths}
        fresh = opened.histograms()
        for p in opened.paths:
            name = "/".join(p)
            assert stored["geometry"][name] == opened.geometry(p), name
            assert stored["counts"][name] == next(c for c in opened.counts() if c["path"] == name), name
            np.testing.assert_array_equal(stored["hists"][name], fresh[name], err_msg=name)

        def no_read(*a, **k):
            raise AssertionError("a thumbnail read the file again")

        monkeypatch.setattr(OpenSample, "__init__", no_read)
        thumbs = [st.thumb(0, "/".join(p)) for p in opened.paths]
        assert all(t["count"] == stored["counts"][t_name]["count"]
                   for t, t_name in zip(thumbs, ["/".join(p) for p in opened.paths]))
    finally:
        st.close()


def test_approve_all_unflagged_records_one_decision_a_sample_and_leaves_the_rest(station, run_copy):
    client = _client(station)
    csrf = _login(client)
    client.post("/api/reviewer", json={"name": "Dr Batch"}, headers={CSRF_HEADER: csrf})
    rows = client.get("/api/state").json()["rows"]
    table = pd.read_parquet(run_copy / "treg_by_visit.parquet")
    # what the run says is unflagged and pending: written out from the table, not from the station
    clean = {f"{p} {v}" for p, v, f, s in zip(table["patient_id"], table["visit"], table["qc_flags"],
                                                 table["review_status"])
             if not (isinstance(f, str) and f) and s == "pending"}
    assert clean and len(clean) < len(rows)  # some flagged samples to leave out
    versions = {r["i"]: r["version"] for r in rows}
    stale = next(r for r in rows if f"{r['patient']} {r['visit']}" in clean)
    versions[stale["i"]] = "an-old-version"
    r = client.post("/api/approve-unflagged", json={"versions": versions, "reason": "checked in the batch view"},
                    headers={CSRF_HEADER: csrf})
    assert r.status_code == 200, r.text
    out = r.json()
    name = f"{stale['patient']} {stale['visit']}"
    assert set(out["approved"]) == clean - {name}
    assert {s["sample"]: s["why"] for s in out["skipped"]}[name] == "changed since the summary"
    assert all(s["why"] == "flagged" for s in out["skipped"] if s["sample"] != name)
    lines = [json.loads(x) for x in (run_copy / "review.jsonl").read_text().splitlines()]
    assert [(d["action"], d["reviewer"], d["reason"]) for d in lines] == [
        ("approve", "Dr Batch", "checked in the batch view")] * len(clean - {name})
    assert len({d["file"] for d in lines}) == len(lines)  # one line a sample
    # no reason: nothing recorded
    r = client.post("/api/approve-unflagged", json={"versions": versions, "reason": " "}, headers={CSRF_HEADER: csrf})
    assert r.status_code == 400 and len((run_copy / "review.jsonl").read_text().splitlines()) == len(lines)


# -- plot controls: any channels, histograms, contours, zoom windows, overlays (issue 27, section 3) ---------------

CD4 = "root/Lymphocytes/Singlets/Live/CD3pos/CD4pos"


def _flowkit_view(station, i):
    """Sample ``i`` read, compensated, transformed and gated by FlowKit alone (not cytopipe's engine): each
    channel as the plot rule says (fluorescence compensated by the file's spillover and logicle-transformed,
    scatter and Time as read), and the CD4pos and Treg memberships."""
    import warnings

    import flowkit as fk

    from cytopipe.strategy import load_strategy

    row = station.table().iloc[i]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = fk.Sample(str(station.run().sample_path(str(row["file"]))))
        meta = s.get_metadata()
        s.apply_compensation(meta.get("spill") or meta["spillover"])
        gs = load_strategy("treg@1.0.0").gating_strategy()
        res = gs.gate_sample(s)
    raw, comp = s.get_events(source="raw"), s.get_events(source="comp")
    logicle = gs.get_transform("logicle")
    values = {name: (logicle.apply(comp[:, k].reshape(-1, 1)).ravel() if k in s.fluoro_indices else raw[:, k])
              for k, name in enumerate(s.pnn_labels)}
    cd4 = res.get_gate_membership("CD4pos", gate_path=tuple(CD4.split("/")[:-1]))
    treg = res.get_gate_membership("Treg", gate_path=tuple(CD4.split("/")))
    return values, cd4, treg


def _hist(values, lo, hi, window=None):
    w = window or (lo, hi)
    return np.histogram(np.clip(values, lo, hi), bins=160, range=w)[0].tolist()


def test_a_gates_population_on_any_channel_counts_as_flowkit_does(station, run_copy):
    client = _client(station)
    _login(client)
    i = _index(run_copy, "P01", "D1")
    opened = client.get(f"/api/sample/{i}").json()
    values, cd4, treg = _flowkit_view(station, i)
    channels = {a["detector"]: a for a in opened["channels"]}
    assert list(channels) == list(values)  # every channel of the file, Time included
    assert channels["PE-A"]["label"] == "CD127 (PE-A)" and channels["Time"]["label"] == "Time"
    time = values["Time"]
    assert channels["Time"]["range"] == pytest.approx([time.min(), time.max()])
    assert cd4.sum() < 20_000 < 50_000  # every parent event drawn: no subsample

    def get(**params):
        r = client.get(f"/api/sample/{i}/population", params={"gate": TREG, **params})
        assert r.status_code == 200, r.text
        return r

    # Time x the Treg gate's parent: the flow-rate check
    h = get(x="Time", kind="hist").json()
    assert h["range"] == pytest.approx([time.min(), time.max()]) and h["events"] == cd4.sum()
    assert h["hist"] == _hist(time[cd4], time.min(), time.max())
    # CD127, a channel no gate of treg@1.0.0 uses: compensated and logicle-transformed as the gates' channels are
    cd127 = values["PE-A"]
    assert get(x="PE-A", kind="hist").json()["hist"] == _hist(cd127[cd4], -0.25, 1.0)
    # the gate's own events, to highlight them on the parent
    gate_only = get(x="PE-A", kind="hist", events="gate").json()
    assert gate_only["hist"] == _hist(cd127[treg], -0.25, 1.0) and gate_only["events"] == treg.sum()
    # zoomed: only the window binned
    zoom = get(x="PE-A", kind="hist", window="0.2,0.6").json()
    assert zoom["range"] == [0.2, 0.6] and zoom["hist"] == _hist(cd127[cd4], -0.25, 1.0, (0.2, 0.6))
    # 2-D on Time x FOXP3: a bin is painted exactly where FlowKit's events fall
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(get(x="Time", y="APC-A").content)).convert("RGBA"))
    want = np.histogram2d(np.clip(time[cd4], time.min(), time.max()), np.clip(values["APC-A"][cd4], -0.25, 1.0),
                          bins=160, range=((time.min(), time.max()), (-0.25, 1.0)))[0]
    assert ((img[..., 3] > 0) == (want.T[::-1] > 0)).all()
    lines = np.asarray(Image.open(io.BytesIO(get(x="Time", y="APC-A", kind="contour").content)).convert("RGBA"))
    painted = np.pad(img[..., 3] > 0, 2)
    near = np.zeros(img.shape[:2], dtype=bool)  # within the smoothing kernel's reach (2 bins) of an event
    for dy in range(5):
        for dx in range(5):
            near |= painted[dy:dy + img.shape[0], dx:dx + img.shape[1]]
    assert lines.shape == img.shape and (lines[..., 3] > 0).sum() > 100 and near[lines[..., 3] > 0].all()
    # the gate's own axes, asked by name, are the default picture
    assert get(x="PE-Cy7-A", y="APC-A").content == get().content


def test_an_overlay_is_the_other_samples_population_on_this_samples_axes(station, run_copy):
    client = _client(station)
    _login(client)
    i, j = _index(run_copy, "P01", "D1"), _index(run_copy, "P01", "D8")
    mine, _, _ = _flowkit_view(station, i)
    theirs, cd4_j, _ = _flowkit_view(station, j)
    r = client.get(f"/api/sample/{i}/population", params={"gate": TREG, "x": "APC-A", "kind": "hist",
                                                           "overlay": j})
    assert r.status_code == 200, r.text
    assert r.json()["hist"] == _hist(theirs["APC-A"][cd4_j], -0.25, 1.0) and r.json()["events"] == cd4_j.sum()
    # Time on the opened sample's span, so the two line up
    lo, hi = mine["Time"].min(), mine["Time"].max()
    t = client.get(f"/api/sample/{i}/population", params={"gate": TREG, "x": "Time", "kind": "hist",
                                                           "overlay": j}).json()
    assert t["range"] == pytest.approx([lo, hi]) and t["hist"] == _hist(theirs["Time"][cd4_j], lo, hi)
    png = client.get(f"/api/sample/{i}/population", params={"gate": TREG, "overlay": j, "tint": 4,
                                                             "kind": "contour"})
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


@pytest.mark.parametrize(("query", "names"), [
    ("x=Nope", "'Nope'"), ("x=../../etc/passwd&y=APC-A", "'../../etc/passwd'"), ("y=APC-A", "needs its x"),
    ("x=Time&kind=density", "two axes"), ("x=Time&y=APC-A&kind=pie", "'pie'"), ("events=all", "'all'"),
    ("window=1", "'1'"), ("window=a,b", "'a,b'"), ("window=nan,1", "'nan,1'"), ("window=0.6,0.2", "lo < hi"),
    ("x=Time&kind=hist&window=1,2,3,4,5,6", "'1,2,3,4,5,6'"), ("overlay=999", "No sample number 999"),
    ("overlay=-1", "'-1'"), ("overlay=1e3", "'1e3'"), ("tint=x", "'x'")])
def test_a_bad_plot_parameter_answers_400_naming_it(station, query, names):
    client = TestClient(create_app(station, token=TOKEN), base_url="http://127.0.0.1", raise_server_exceptions=False)
    _login(client)
    res = client.get(f"/api/sample/0/population?gate={TREG}&{query}")
    assert res.status_code == 400, (query, res.status_code, res.text[:300])
    assert names in res.json()["error"], res.json()["error"]
