"""The review station in headless Chromium: open it with its token, give a name, drag the Treg gate's
lower CD25 edge, see the count change, approve, and find it all in review.jsonl and treg_by_visit.csv."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from .conftest import TREG, XSS

REPO = Path(__file__).resolve().parents[2]


def _wait(drv, script: str, timeout: float = 30.0):
    """Poll a JS expression until it is truthy; return its value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = drv.execute_script("return " + script)
        if value:
            return value
        time.sleep(0.1)
    shown = drv.execute_script("return document.getElementById('message').textContent")
    raise AssertionError(f"timed out waiting for: {script}; message: {shown}")


@contextlib.contextmanager
def _browsing(run_dir, tmp_path):
    """Headless Chromium and the station serving ``run_dir`` (skips when Chromium is missing); both closed after."""
    from cytopipe.station import StationServer

    from ..conftest import headless_chromium

    drv = headless_chromium(tmp_path / "profile")
    srv = StationServer(run_dir, port=0).start()
    try:
        yield drv, srv
    finally:
        drv.quit()
        srv.stop()


def _open_as(drv, srv, name: str) -> None:
    """Open the station's link and give the reviewer's name when it asks (no registry: a name per session)."""
    drv.get(srv.url)
    _wait(drv, "!document.getElementById('modal').hidden")
    drv.find_element("id", "modal-input").send_keys(name)
    drv.find_element("id", "modal-ok").click()
    _wait(drv, f"document.getElementById('who').textContent.indexOf('{name}') >= 0")


@pytest.mark.slow
def test_review_station_in_headless_chromium(run_copy, tmp_path):
    from cytopipe.station import StationServer

    from ..conftest import headless_chromium

    drv = headless_chromium(tmp_path / "profile")  # skips first when Chromium is missing
    from selenium.webdriver.common.action_chains import ActionChains

    artefacts = REPO / "test-artifacts"
    artefacts.mkdir(exist_ok=True)
    before = pd.read_csv(run_copy / "treg_by_visit.csv", keep_default_na=False)
    srv = StationServer(run_copy, port=0).start()
    try:
        # no token: refused
        base = srv.url.split("?", 1)[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "api/state", timeout=10)
        assert refused.value.code == 401
        refused.value.close()  # the error holds the response's socket
        drv.get(srv.url)
        assert "token=" not in drv.current_url  # the token leaves the address bar
        _wait(drv, "!document.getElementById('modal').hidden")
        drv.find_element("id", "modal-input").send_keys("Dr Browser")
        drv.find_element("id", "modal-ok").click()
        _wait(drv, "document.getElementById('who').textContent.indexOf('Dr Browser') >= 0")
        # a state change without the CSRF header is refused, even from the page itself
        status = drv.execute_async_script(
            "var done = arguments[0]; fetch('/api/reviewer', {method: 'POST', headers: {'Content-Type': "
            "'application/json'}, body: JSON.stringify({name: 'Mallory'})}).then(function (r) { done(r.status); });")
        assert status == 403
        # hostile sheet text shows as text and injects nothing
        assert XSS in drv.find_element("id", "queue").text
        assert drv.execute_script("return document.querySelectorAll('#queue img').length") == 0
        # open P01 D8 from the queue
        row = next(r for r in drv.find_elements("css selector", "#queue tbody tr")
                   if r.text.startswith("P01 D8"))
        row.click()
        treg_card = f'.card[data-gate="{TREG}"]'
        _wait(drv, f"document.querySelector('{treg_card} line.edge[data-handle=\"x-min\"]') && "
                   f"document.getElementById('sample-head').textContent.indexOf('D8') >= 0")
        _wait(drv, f"document.querySelector('{treg_card} image.density').getBBox().width > 0")
        file = before[(before["patient_id"] == "P01") & (before["visit"] == "D8")]["file"].item()
        old = int(drv.find_element("css selector", f"{treg_card} .count").get_attribute("data-count"))
        assert old == before.loc[before["file"] == file, "treg_count"].item()
        labels = drv.execute_script(f"return Array.from(document.querySelectorAll('{treg_card} text.label'))"
                                    ".map(function (t) {{ return t.textContent; }})")
        assert labels == ["CD25 (PE-Cy7-A)", "FOXP3 (APC-A)"]
        edge = drv.find_element("css selector", f'{treg_card} line.edge[data-handle="x-min"]')
        x_before = float(edge.get_attribute("x1"))
        ActionChains(drv).click_and_hold(edge).move_by_offset(-12, 0).move_by_offset(-12, 0) \
            .move_by_offset(-12, 0).release().perform()
        new = int(_wait(drv, f"(function () {{ var c = document.querySelector('{treg_card} .count'); "
                             f"return c.getAttribute('data-count') !== '{old}' && c.getAttribute('data-count'); }})()"))
        assert new > old  # lowering the CD25 edge can only add Treg events
        edge = drv.find_element("css selector", f'{treg_card} line.edge[data-handle="x-min"]')
        assert float(edge.get_attribute("x1")) < x_before - 20
        assert "saved:" in drv.find_element("css selector", treg_card).text
        drv.execute_script("window.scrollTo(0, 0)")
        drv.save_screenshot(str(artefacts / "review_station.png"))
        # approve: the moved gate is saved with a reason, then the sample approved
        drv.find_element("tag name", "body").send_keys("a")
        _wait(drv, "!document.getElementById('modal').hidden")
        drv.find_element("id", "modal-input").send_keys("CD25-high cells left out by the template")
        drv.find_element("id", "modal-ok").click()
        _wait(drv, "document.getElementById('message').textContent.indexOf('recorded') >= 0")
        lines = [json.loads(x) for x in (run_copy / "review.jsonl").read_text().splitlines()]
        assert [(d["action"], d["reviewer"], d["file"]) for d in lines] == [
            ("adjust", "Dr Browser", file), ("approve", "Dr Browser", file)]
        assert lines[0]["gate_path"] == TREG and lines[0]["reason"] == "CD25-high cells left out by the template"
        after = pd.read_csv(run_copy / "treg_by_visit.csv", keep_default_na=False).set_index("file")
        assert after.loc[file, "treg_count"] == new
        assert after.loc[file, "review_status"] == "approved" and after.loc[file, "reviewer"] == "Dr Browser"
        _wait(drv, f"document.getElementById('left').getAttribute('data-left') === '{len(before) - 1}'")
        assert drv.find_element("id", "left").text == f"{len(before) - 1} of {len(before)} left to decide"
        srv.station.report.flush()  # the report is re-rendered off the request's path
        index = (run_copy / "report" / "index.html").read_text(encoding="utf-8")
        assert "approved</span> (Dr Browser)" in index
        # one gate across the batch, a patient's visits overlaid
        drv.find_element("id", "tab-batch").click()
        _wait(drv, "document.querySelectorAll('#batch-grid .card image').length >= 6", timeout=60)
        from selenium.webdriver.support.ui import Select

        Select(drv.find_element("id", "batch-patient")).select_by_value("P01")
        _wait(drv, "document.querySelectorAll('#overlay image').length == 3", timeout=60)
        drv.save_screenshot(str(artefacts / "review_station_batch.png"))
        thumbs = drv.find_elements("css selector", "#batch-grid .card")
        assert len(thumbs) == len(before)
        thumbs[0].click()
        _wait(drv, "!document.getElementById('sample-view').hidden")
        errors = [e for e in drv.get_log("browser") if e["level"] in ("SEVERE", "ERROR")
                  and "/api/reviewer" not in e["message"]]  # the refused request above is logged
        assert errors == []
    finally:
        drv.quit()
        srv.stop()


@pytest.mark.slow
def test_sign_in_signed_approval_expiry_and_sign_in_again_in_headless_chromium(run_copy, tmp_path):
    from cytopipe.review import ReviewerRegistry, signature_report
    from cytopipe.station import StationServer

    from ..conftest import headless_chromium

    drv = headless_chromium(tmp_path / "profile")  # skips first when Chromium is missing
    registry = ReviewerRegistry(tmp_path / "reviewers.json")
    registry.add("Dr Signer", "correct horse battery")
    srv = StationServer(run_copy, port=0, registry=registry.path, idle_timeout=4.0).start()

    def sign_in(name, password):
        _wait(drv, "document.getElementById('login-name')")
        drv.find_element("id", "login-name").send_keys(name)
        drv.find_element("id", "login-password").send_keys(password)
        drv.find_element("id", "login-ok").click()

    try:
        drv.get(srv.url)
        assert drv.current_url.endswith("/login") and "token=" not in drv.current_url
        sign_in("Dr Signer", "not the password")
        _wait(drv, "document.getElementById('login-note').textContent.indexOf('not recognised') >= 0")
        sign_in("dr signer", "correct horse battery")
        _wait(drv, "document.getElementById('who').textContent === 'reviewer: Dr Signer (signing)'")
        assert drv.execute_script("return document.getElementById('modal').hidden")  # no name to type
        row = next(r for r in drv.find_elements("css selector", "#queue tbody tr") if r.text.startswith("P01 D8"))
        row.click()
        _wait(drv, "document.getElementById('sample-head').textContent.indexOf('D8') >= 0")
        drv.find_element("tag name", "body").send_keys("a")
        _wait(drv, "document.getElementById('message').textContent.indexOf('recorded') >= 0")
        (line,) = [json.loads(x) for x in (run_copy / "review.jsonl").read_text().splitlines()]
        assert (line["action"], line["reviewer"], line["visit"]) == ("approve", "Dr Signer", "D8")
        assert signature_report(run_copy, registry).problems == () and line["signature"]
        # idle past the timeout: the next request is refused and the page goes back to the sign-in
        time.sleep(4.5)
        row = next(r for r in drv.find_elements("css selector", "#queue tbody tr") if r.text.startswith("P01 D1"))
        row.click()
        _wait(drv, "window.location.pathname === '/login'")
        sign_in("Dr Signer", "correct horse battery")
        _wait(drv, "document.getElementById('who').textContent === 'reviewer: Dr Signer (signing)'")
        # the printed link was used: opening it again gives nothing
        drv.get(srv.url)
        assert "used already" in drv.find_element("tag name", "body").text
    finally:
        drv.quit()
        srv.stop()


@pytest.mark.slow
def test_no_decision_by_accident_in_headless_chromium(run_copy, tmp_path):
    """Space after Approve decides nothing; the next sample in queue order opens; a flagged sample's approval
    asks why (issue 27: two samples were approved 2-3 s apart by a focused button)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    log = run_copy / "review.jsonl"
    lines = lambda: len(log.read_text().splitlines()) if log.exists() else 0  # noqa: E731
    with _browsing(run_copy, tmp_path) as (drv, srv):
        _open_as(drv, srv, "Dr Careful")
        rows = drv.find_elements("css selector", "#queue tbody tr")
        order = [(r.get_attribute("data-i"), r.find_elements("css selector", "td")[3].text) for r in rows]
        k = next(n for n, (_, flags) in enumerate(order) if not flags and n + 1 < len(order))
        first, after = order[k][0], order[k + 1][0]
        rows[k].click()
        _wait(drv, f"document.querySelector('#queue tr.current') && "
                   f"document.querySelector('#queue tr.current').getAttribute('data-i') === '{first}' && "
                   "document.querySelectorAll('#plots .card').length > 0")
        # the patient's other visits beside it, from the run's table
        table = pd.read_parquet(run_copy / "treg_by_visit.parquet")
        me = table.iloc[int(first)]
        others = table[(table["patient_id"] == me["patient_id"]) & (table.index != int(first))]
        shown = drv.find_element("id", "other-visits").text
        assert len(others) >= 1
        for _, o in others.iterrows():
            assert f"{o['visit']} {o['treg_pct_cd4']:.2f} %" in shown, shown
        drv.find_element("id", "btn-approve").click()
        _wait(drv, "document.getElementById('message').textContent.indexOf('approve recorded') >= 0")
        assert lines() == 1
        assert drv.execute_script("return document.activeElement.tagName") != "BUTTON"
        # the sample after it in the queue as it was is the one now open, not the queue's first undecided
        _wait(drv, f"document.querySelector('#queue tr.current').getAttribute('data-i') === '{after}'")
        ActionChains(drv).send_keys(Keys.SPACE).send_keys(Keys.ENTER).perform()
        time.sleep(1.5)
        assert lines() == 1, "Space or Enter after Approve recorded a decision"
        # a flagged sample: Approve asks why; Cancel records nothing
        flagged = next(i for i, flags in order if flags)
        drv.find_element("css selector", f'#queue tr[data-i="{flagged}"]').click()
        _wait(drv, f"document.querySelector('#queue tr.current').getAttribute('data-i') === '{flagged}' && "
                   "document.getElementById('sample-head').textContent.indexOf('QC:') >= 0")
        drv.find_element("id", "btn-approve").click()
        _wait(drv, "!document.getElementById('modal').hidden")
        assert "is flagged" in drv.find_element("id", "modal-label").text
        drv.find_element("id", "modal-cancel").click()
        time.sleep(0.5)
        assert lines() == 1


@pytest.fixture(scope="module")
def polygon_run(tmp_path_factory, dask_client):
    """A run of the default strategy (placed polygon Treg gates) on two generated tubes."""
    from cytopipe.batch.driver import run_batch
    from cytopipe.sim.sample import SampleSpec, write_fcs

    d = tmp_path_factory.mktemp("polygons")
    for i in range(2):  # usual staining (CD127lo holds every Treg), then staining variation (it cuts)
        write_fcs(d / f"t{i}.fcs", SampleSpec(n_events=20_000, seed=40 + i, hard=i == 1))
    pd.DataFrame({"file": ["t0.fcs", "t1.fcs"], "patient_id": ["P01", "P02"], "visit": ["D1", "D1"]}).to_csv(
        d / "samples.csv", index=False)
    run_batch(d / "samples.csv", d / "run", client=dask_client, report=False)
    return d / "run"


_POINTS = """return (function (card) {{
  var poly = document.querySelector(card + ' polygon.shape');
  return poly ? poly.getAttribute('points').trim().split(/\\s+/).map(function (p) {{
    return p.split(',').map(Number); }}) : null; }})('{card}')"""


def _same(a, b):
    """Two polygons' points alike within half a pixel (the server rounds a moved gate's values)."""
    return a is not None and b is not None and len(a) == len(b) and all(
        abs(p[0] - q[0]) < 0.5 and abs(p[1] - q[1]) < 0.5 for p, q in zip(a, b))


@pytest.mark.slow
def test_a_whole_gate_moves_vertices_are_added_and_undo_steps_back_in_headless_chromium(polygon_run, tmp_path):
    """Issue 27's editable gates: every handle on the plot, the whole polygon dragged at once, a vertex added
    by a double click on an edge, and undo and redo one step at a time."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    card = f'.card[data-gate="{TREG}"]'
    with _browsing(polygon_run, tmp_path) as (drv, srv):
        _open_as(drv, srv, "Dr Editor")
        _wait(drv, f"document.querySelector('{card} polygon.shape') && document.querySelectorAll('#plots .card')"
                   ".length >= 6")
        # every handle of every gate is drawn within its plot's frame
        outside = drv.execute_script("""return Array.from(document.querySelectorAll('#plots svg')).map(function (s) {
            var f = s.querySelector('rect.frame'), x0 = +f.getAttribute('x'), y0 = +f.getAttribute('y');
            var x1 = x0 + +f.getAttribute('width'), y1 = y0 + +f.getAttribute('height');
            return Array.from(s.querySelectorAll('circle')).filter(function (c) {
              var cx = +c.getAttribute('cx'), cy = +c.getAttribute('cy');
              return cx < x0 - 0.01 || cx > x1 + 0.01 || cy < y0 - 0.01 || cy > y1 + 0.01; }).length; })
            .reduce(function (a, b) { return a + b; }, 0);""")
        assert outside == 0
        # P01's CD127lo holds all of Treg's events (the run's populations say so): no plot to review, a line
        # under Treg's card instead, and the header's count is Treg's; P02's cuts, and is drawn
        pops = pd.read_parquet(polygon_run / "populations.parquet").set_index(["file", "gate_path"])
        child = f'.card[data-gate="{TREG}/CD127lo"]'
        for file, patient in (("t1.fcs", "P02"), ("t0.fcs", "P01")):
            count, parent = pops.loc[(file, f"{TREG}/CD127lo"), ["count", "parent_count"]]
            next(r for r in drv.find_elements("css selector", "#queue tbody tr") if r.text.startswith(patient)).click()
            _wait(drv, f"document.getElementById('sample-head').textContent.indexOf('{patient}') >= 0 && "
                       f"document.querySelector('{card} polygon.shape')")
            assert drv.execute_script(f"return document.querySelector('{child}').hidden") == bool(count == parent)
        assert count == parent  # P01, open now
        note = drv.find_element("css selector", f"{card} .whole-child").text
        assert note == f"CD127lo holds all {int(count):,} of them (not drawn)"
        assert f"({int(count):,} of" in drv.find_element("id", "sample-head").text  # the header's count
        saved = drv.execute_script(_POINTS.format(card=card))
        old = drv.find_element("css selector", f"{card} .count").get_attribute("data-count")
        # drag the whole polygon 15 px right, grabbing it inside, away from its vertices
        poly = drv.find_element("css selector", f"{card} polygon.shape")
        drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", poly)  # whole, below the plot controls
        grab = drv.execute_script("""var poly = arguments[0], svg = poly.ownerSVGElement, b = poly.getBBox();
            var m = svg.getScreenCTM(), r = poly.getBoundingClientRect(), best = null, far = 0;
            var vs = Array.from(poly.points);
            for (var i = 1; i < 20; i++) { for (var j = 1; j < 20; j++) {
              var p = svg.createSVGPoint(); p.x = b.x + b.width * i / 20; p.y = b.y + b.height * j / 20;
              if (!poly.isPointInFill(p)) { continue; }
              var d = Math.min.apply(null, vs.map(function (v) { return Math.hypot(v.x - p.x, v.y - p.y); }));
              if (d > far) { far = d; best = [m.a * p.x + m.e, m.d * p.y + m.f]; }
            } }
            var e = best && document.elementFromPoint(best[0], best[1]);
            return best && [best[0] - (r.x + r.width / 2), best[1] - (r.y + r.height / 2), far,
                            e && (e.getAttribute('data-handle') || e.tagName)];""", poly)
        assert grab is not None and grab[2] > 8 and grab[3] == "all", grab  # the gate itself is under the pointer
        ActionChains(drv).move_to_element_with_offset(poly, round(grab[0]), round(grab[1])).click_and_hold() \
            .move_by_offset(5, 0).move_by_offset(5, 0).move_by_offset(5, 0).release().perform()
        _wait(drv, "document.getElementById('treg-candidate').textContent.indexOf('with the moved gate') >= 0")
        moved = drv.execute_script(_POINTS.format(card=card))
        shifts = [(m[0] - s[0], m[1] - s[1]) for m, s in zip(moved, saved)]
        assert len(moved) == len(saved) and all(abs(dx - shifts[0][0]) < 0.6 and abs(dy) < 0.6 for dx, dy in shifts)
        assert shifts[0][0] > 10  # every vertex moved together, right
        # a double click on an edge adds a vertex there (dispatched where the edge is: its midpoint)
        n = len(moved)
        drv.execute_script("""var poly = arguments[0], a = arguments[1], b = arguments[2];
            var m = poly.ownerSVGElement.getScreenCTM();
            var x = (a[0] + b[0]) / 2, y = (a[1] + b[1]) / 2;
            var at = {bubbles: true, clientX: m.a * x + m.e, clientY: m.d * y + m.f};
            poly.dispatchEvent(new MouseEvent('dblclick', at));
            """, drv.find_element("css selector", f"{card} polygon.shape"), moved[0], moved[1])
        _wait(drv, f"document.querySelectorAll('{card} circle.vertex').length === {n + 1}")
        # undo one step: the vertex goes, the move stays; again: the saved gate; redo: the move is back
        body = drv.find_element("tag name", "body")
        body.send_keys(Keys.ESCAPE)
        _wait(drv, f"document.querySelectorAll('{card} circle.vertex').length === {n}")
        time.sleep(1.0)  # the recount of the restored step has answered (and no earlier one overwrote it)
        assert _same(drv.execute_script(_POINTS.format(card=card)), moved)
        body.send_keys(Keys.ESCAPE)
        _wait(drv, f"document.querySelector('{card} .count').getAttribute('data-count') === '{old}' && "
                   "document.getElementById('treg-candidate').textContent === ''")
        assert _same(drv.execute_script(_POINTS.format(card=card)), saved)
        body.send_keys("y")
        _wait(drv, "document.getElementById('treg-candidate').textContent.indexOf('with the moved gate') >= 0")
        time.sleep(1.0)
        assert _same(drv.execute_script(_POINTS.format(card=card)), moved)


@pytest.mark.slow
def test_approve_all_unflagged_from_a_summary_in_headless_chromium(run_copy, tmp_path):
    table = pd.read_parquet(run_copy / "treg_by_visit.parquet")
    clean = [f for f, flags in zip(table["file"], table["qc_flags"]) if not (isinstance(flags, str) and flags)]
    with _browsing(run_copy, tmp_path) as (drv, srv):
        _open_as(drv, srv, "Dr Batch")
        _wait(drv, "document.querySelectorAll('#queue tbody tr').length > 0")
        drv.find_element("id", "btn-approve-unflagged").click()
        _wait(drv, "!document.getElementById('modal').hidden")
        label = drv.find_element("id", "modal-label").text
        assert label.startswith(f"Approve these {len(clean)} unflagged samples, one decision each:")
        drv.find_element("id", "modal-ok").click()  # the suggested reason
        _wait(drv, f"document.getElementById('message').textContent.indexOf('{len(clean)} approved') === 0")
        lines = [json.loads(x) for x in (run_copy / "review.jsonl").read_text().splitlines()]
        assert sorted(d["file"] for d in lines) == sorted(clean) and {d["action"] for d in lines} == {"approve"}
        left = len(table) - len(clean)
        _wait(drv, f"document.getElementById('left').getAttribute('data-left') === '{left}'")


@pytest.mark.slow
def test_the_queue_filters_and_sorts_and_thumbnails_show_status_in_headless_chromium(run_copy, tmp_path):
    table = pd.read_parquet(run_copy / "treg_by_visit.parquet")
    rows_js = ("return Array.from(document.querySelectorAll('#queue tbody tr'))"
               ".map(function (r) { return r.textContent; })")
    with _browsing(run_copy, tmp_path) as (drv, srv):
        _open_as(drv, srv, "Dr Sort")
        _wait(drv, f"document.querySelectorAll('#queue tbody tr').length === {len(table)}")
        drv.find_element("id", "queue-filter").send_keys("P01")
        shown = drv.execute_script(rows_js)
        assert len(shown) == int((table["patient_id"] == "P01").sum()) and all(t.startswith("P01") for t in shown)
        drv.find_element("id", "queue-filter").clear()
        drv.execute_script("var f = document.getElementById('queue-filter'); f.value = '';"
                           "f.dispatchEvent(new Event('input'))")
        # sorted by Treg % CD4 on a click, the other way on a second; gated samples in the table's order of values
        header = drv.find_element("css selector", '#queue th[data-sort="treg_pct"]')
        header.click()
        gated = table.dropna(subset=["treg_pct_cd4"]).sort_values("treg_pct_cd4", kind="stable")
        want = [f"{p}{v}" for p, v in zip(gated["patient_id"], gated["visit"])]
        got = [t for t in drv.execute_script(rows_js) if any(t.startswith(w) for w in want)]
        assert [next(w for w in want if t.startswith(w)) for t in got] == want
        header.click()
        got = [t for t in drv.execute_script(rows_js) if any(t.startswith(w) for w in want)]
        assert [next(w for w in want if t.startswith(w)) for t in got] == want[::-1]
        # only the flagged ones
        from selenium.webdriver.support.ui import Select

        Select(drv.find_element("id", "queue-show")).select_by_value("flagged")
        flagged = int(sum(bool(f) for f in table["qc_flags"].fillna("")) + (table["qc_status"] == "error").sum())
        assert len(drv.execute_script(rows_js)) == flagged > 0
        # each thumbnail of the batch view says its review status and flags
        drv.find_element("id", "tab-batch").click()
        _wait(drv, f"document.querySelectorAll('#batch-grid .thumb-status').length === {len(table)}")
        texts = drv.execute_script("return Array.from(document.querySelectorAll('#batch-grid .thumb-status'))"
                                   ".map(function (p) { return p.textContent; })")
        assert all(t.split(" · ")[0] == "pending" for t in texts)
        assert sum(" · " in t for t in texts) == int(sum(bool(f) for f in table["qc_flags"].fillna("")))


@pytest.mark.slow
def test_the_name_prompt_can_be_dismissed_and_help_opens_with_a_key_in_headless_chromium(run_copy, tmp_path):
    from selenium.webdriver.common.keys import Keys

    with _browsing(run_copy, tmp_path) as (drv, srv):
        drv.get(srv.url)
        _wait(drv, "!document.getElementById('modal').hidden")
        drv.find_element("id", "modal-cancel").click()  # dismissed: the samples can be looked at
        _wait(drv, "document.getElementById('modal').hidden && "
                   "document.getElementById('message').textContent.indexOf('No name given') === 0")
        _wait(drv, "document.querySelectorAll('#plots .card').length > 0")
        body = drv.find_element("tag name", "body")
        body.send_keys("?")
        _wait(drv, "!document.getElementById('help').hidden")
        assert "double-click an edge to add a vertex" in drv.find_element("id", "help").text
        body.send_keys(Keys.ESCAPE)
        _wait(drv, "document.getElementById('help').hidden")
        drv.find_element("id", "btn-approve").click()  # a decision asks for the name first, and records nothing
        _wait(drv, "!document.getElementById('modal').hidden")
        assert drv.find_element("id", "modal-label").text.startswith("Your name")
        assert not (run_copy / "review.jsonl").exists()


@pytest.mark.slow
def test_plot_axes_histogram_overlay_and_zoom_in_headless_chromium(run_copy, tmp_path):
    """Issue 27, plot controls: Time x FOXP3 on the Treg plot (its parent, its events in red, no gate to drag),
    a histogram whose bars hold every CD4 event, another visit overlaid, then the gate's own axes zoomed, its
    edge dragged while zoomed, and the whole axes again."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    pops = pd.read_parquet(run_copy / "populations.parquet").set_index(["file", "gate_path"])
    table = pd.read_parquet(run_copy / "treg_by_visit.parquet")
    file_of = {v: table[(table["patient_id"] == "P01") & (table["visit"] == v)]["file"].item() for v in ("D1", "D8")}
    cd4 = TREG.rsplit("/", 1)[0]
    card = f'.card[data-gate="{TREG}"]'
    svg = f"document.querySelector('{card} svg')"
    with _browsing(run_copy, tmp_path) as (drv, srv):
        _open_as(drv, srv, "Dr Plots")
        next(r for r in drv.find_elements("css selector", "#queue tbody tr") if r.text.startswith("P01 D1")).click()
        _wait(drv, f"document.getElementById('sample-head').textContent.indexOf('D1') >= 0 && "
                   f"document.querySelector('{card} line.edge[data-handle=\"x-min\"]')")
        drv.execute_script(f"document.querySelector('{card}').scrollIntoView({{block: 'center'}})")
        select = lambda cls: Select(drv.find_element("css selector", f"{card} select.{cls}"))  # noqa: E731
        labels = (f"Array.from(document.querySelectorAll('{card} text.label'))"
                  ".map(function (t) { return t.textContent; })")
        # Time x FOXP3: the parent's density, the gate's events highlighted, the gate itself not drawn
        select("axis-x").select_by_value("Time")
        _wait(drv, f"{svg}.getAttribute('data-x') === 'Time' && {svg}.getAttribute('data-own') === '0' && "
                   f"document.querySelector('{card} image.highlight') && document.querySelector('{card} image.density')"
                   f".getAttribute('data-src').indexOf('x=Time') >= 0")
        assert drv.execute_script(f"return {labels}") == ["Time", "FOXP3 (APC-A)"]
        assert drv.execute_script(f"return document.querySelectorAll('{card} .shape, {card} .edge').length") == 0
        assert drv.execute_script(f"return document.querySelector('{card} image.density').getAttribute('href')"
                                  ".indexOf('data:image/png') === 0")
        assert "Treg is drawn on CD25 (PE-Cy7-A) × FOXP3 (APC-A)" in drv.find_element(
            "css selector", f"{card} .axes-note").text
        # the histogram of Time: its bars hold every CD4 event of the run, the red ones every Treg event
        select("plot-kind").select_by_value("hist")
        _wait(drv, f"document.querySelector('{card} path.hist.parent') && "
                   f"document.querySelector('{card} path.hist.highlight')")
        total = lambda role: int(drv.execute_script(  # noqa: E731
            f"return document.querySelector('{card} path.hist.{role}').getAttribute('data-total')"))
        assert total("parent") == pops.loc[(file_of["D1"], cd4), "count"]
        assert total("highlight") == pops.loc[(file_of["D1"], TREG), "count"]
        assert drv.execute_script(f"return {labels}") == ["Time", "events"]
        # P01's D8 overlaid: its own CD4 events, on this plot
        Select(drv.find_element("id", "overlay-sample")).select_by_visible_text("P01 D8")
        _wait(drv, f"document.querySelector('{card} path.hist.overlay')")
        assert total("overlay") == pops.loc[(file_of["D8"], cd4), "count"]
        # the gate's own axes again, as a density: the gate is back, draggable, with the overlay's picture
        select("plot-kind").select_by_value("density")
        select("axis-x").select_by_value("PE-Cy7-A")
        _wait(drv, f"{svg}.getAttribute('data-own') === '1' && "
                   f"document.querySelector('{card} line.edge[data-handle=\"x-min\"]') && "
                   f"document.querySelector('{card} image.overlay') && "
                   f"!document.querySelector('{card} image.highlight')")
        whole = drv.execute_script(f"return {svg}.getAttribute('data-window')")
        full = [float(v) for v in whole.split(",")]
        # zoom in three wheel notches around the plot's middle: the window narrows, the picture is binned again
        drv.execute_script("""var s = arguments[0], f = s.querySelector('rect.frame').getBoundingClientRect();
            for (var k = 0; k < 3; k++) { s.dispatchEvent(new WheelEvent('wheel', {deltaY: -100, bubbles: true,
              cancelable: true, clientX: f.x + f.width / 2, clientY: f.y + f.height / 2})); }""",
                           drv.find_element("css selector", f"{card} svg"))
        _wait(drv, f"document.querySelector('{card} image.density').getAttribute('data-src').indexOf('window=') >= 0")
        zoomed = [float(v) for v in drv.execute_script(f"return {svg}.getAttribute('data-window')").split(",")]
        for k in (0, 2):  # each axis 1.25^3 narrower, around the middle
            assert (zoomed[k + 1] - zoomed[k]) == pytest.approx((full[k + 1] - full[k]) / 1.25 ** 3, rel=1e-6)
            assert (zoomed[k] + zoomed[k + 1]) / 2 == pytest.approx((full[k] + full[k + 1]) / 2, abs=1e-3)
        # every handle still on the visible plot; the lower CD25 edge dragged while zoomed adds Treg events
        inside = drv.execute_script(f"""var s = {svg}, f = s.querySelector('rect.frame');
            var x0 = +f.getAttribute('x'), y0 = +f.getAttribute('y'), x1 = x0 + +f.getAttribute('width'),
                y1 = y0 + +f.getAttribute('height');
            return Array.from(s.querySelectorAll('.handles line, .handles circle')).every(function (h) {{
              var xs = [h.getAttribute('x1') || h.getAttribute('cx'), h.getAttribute('x2') || h.getAttribute('cx')];
              var ys = [h.getAttribute('y1') || h.getAttribute('cy'), h.getAttribute('y2') || h.getAttribute('cy')];
              return xs.every(function (v) {{ return +v >= x0 - 0.01 && +v <= x1 + 0.01; }}) &&
                     ys.every(function (v) {{ return +v >= y0 - 0.01 && +v <= y1 + 0.01; }}); }});""")
        assert inside
        old = drv.find_element("css selector", f"{card} .count").get_attribute("data-count")
        edge = drv.find_element("css selector", f'{card} line.edge[data-handle="x-min"]')
        ActionChains(drv).click_and_hold(edge).move_by_offset(-12, 0).move_by_offset(-12, 0).release().perform()
        new = int(_wait(drv, f"(function () {{ var c = document.querySelector('{card} .count'); "
                             f"return c.getAttribute('data-count') !== '{old}' && c.getAttribute('data-count'); }})()"))
        assert new > int(old)
        assert [float(v) for v in drv.execute_script(f"return {svg}.getAttribute('data-window')").split(",")] == zoomed
        # 0: the whole axes again
        drv.find_element("tag name", "body").send_keys("0")
        _wait(drv, f"{svg}.getAttribute('data-window') === '{whole}' && "
                   f"document.querySelector('{card} image.density').getAttribute('data-src').indexOf('window=') < 0")
        errors = [e for e in drv.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
