"""The review report: flags on files made to trigger them, escaping, and a real browser."""

from __future__ import annotations

import html
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytopipe.batch.driver import run_batch
from cytopipe.sim.sample import SampleSpec, simulate_events, write_fcs

XSS = "<img src=x onerror=alert(1)>"
REPO = Path(__file__).resolve().parents[2]


def _rewrite_events(path: Path, edit) -> None:
    """Change the DATA of a generated FCS file in place: ``edit(events_by_pnn)`` mutates columns."""
    import fcsparser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = fcsparser.parse(str(path), meta_data_only=True, reformat_meta=True)
    start, end = meta["__header__"]["data start"], meta["__header__"]["data end"]
    dtype = "<f4" if meta["$BYTEORD"] == "1,2,3,4" else ">f4"
    raw = bytearray(path.read_bytes())
    data = np.frombuffer(bytes(raw[start:end + 1]), dtype=dtype).reshape(-1, int(meta["$PAR"])).copy()
    cols = {name: data[:, i] for i, name in enumerate(meta["_channel_names_"])}
    edit(cols)
    for i, name in enumerate(meta["_channel_names_"]):
        data[:, i] = cols[name]
    raw[start:end + 1] = data.astype(dtype).tobytes()
    path.write_bytes(bytes(raw))


def _clog(cols) -> None:
    # 4 % of the events trickle through over 10x their time: a partial clog
    t = cols["Time"].astype(float)
    a, b = t.min() + 0.4 * np.ptp(t), t.min() + 0.44 * np.ptp(t)
    out = t.copy()
    out[(t >= a) & (t < b)] = a + (t[(t >= a) & (t < b)] - a) * 10
    out[t >= b] = t[t >= b] + 9 * (b - a)
    cols["Time"][:] = out


@pytest.fixture(scope="module")
def flagged_run(tmp_path_factory, dask_client):
    """A batch with one file made to trigger each flag, hostile text, and a mislabelled tube."""
    d = tmp_path_factory.mktemp("flagged")
    specs = {"normal.fcs": SampleSpec(n_events=30_000, seed=21), "low_events.fcs": SampleSpec(n_events=8_000, seed=22),
             "low_cd4.fcs": SampleSpec(n_events=30_000, seed=23), "clog.fcs": SampleSpec(n_events=30_000, seed=24),
             "mislabelled.fcs": SampleSpec(n_events=5_000, seed=25, pns_overrides={"PE-Cy7-A": "CD127 " + XSS})}
    for name, spec in specs.items():
        write_fcs(d / name, spec)
    labels = simulate_events(specs["low_cd4.fcs"])[1]
    drop = np.isin(labels, ["treg", "cd4_activated", "cd4_conv"]) & (np.random.default_rng(0).random(labels.size) < 0.8)
    _rewrite_events(d / "low_cd4.fcs", lambda c: c["V450-A"].__setitem__(drop, 0.0))
    _rewrite_events(d / "clog.fcs", _clog)
    sheet = pd.DataFrame({
        "file": list(specs), "patient_id": [XSS, "P2", "P3", "P4", "P5"], "visit": ["D1"] * 5,
        "note": ["ok", XSS, "", "", ""],
    })
    sheet.to_csv(d / "samples.csv", index=False)
    out = d / "out"
    result = run_batch(d / "samples.csv", out, client=dask_client)
    return result, out


def test_each_flag_fires_on_the_file_made_for_it(flagged_run):
    result, out = flagged_run
    table = pd.read_csv(out / "treg_by_visit.csv", keep_default_na=False).set_index("file")
    flags = {f: set(re.sub(r":[0-9.]+%", "", v).split(";")) - {""} for f, v in table["qc_flags"].items()}
    assert flags["normal.fcs"] == set()
    assert flags["low_events.fcs"] >= {"low_events"} and not {"flow_rate", "signal_drift"} & flags["low_events.fcs"]
    assert flags["low_cd4.fcs"] == {"low_cd4"}
    assert flags["clog.fcs"] == {"flow_rate"}
    share = float(re.search(r"flow_rate:([0-9.]+)%", table.loc["clog.fcs", "qc_flags"]).group(1))
    assert 2.0 < share < 6.0  # ~4 % of the events were acquired during the clog
    assert table.loc["mislabelled.fcs", "qc_status"] == "error"
    assert list(table.columns[-4:]) == ["review_status", "reviewer", "reviewed_at", "note"]
    assert (table["review_status"] == "pending").all()
    index = (out / "report" / "index.html").read_text()
    assert "low_cd4" in index and "flow_rate:" in index


def test_everything_from_files_and_sheet_is_escaped(flagged_run):
    _, out = flagged_run
    pages = [out / "report" / "index.html", *sorted((out / "report" / "samples").glob("*.html"))]
    assert len(pages) == 6
    texts = [p.read_text() for p in pages]
    for text in texts:
        assert XSS not in text and "<img src=x" not in text
    escaped = html.escape(XSS, quote=True)
    assert escaped in texts[0]  # the patient id
    assert any(escaped in t and "note" in t for t in texts[1:])  # the carried-through sheet column
    mislabelled = next(t for t in texts[1:] if "mislabelled.fcs" in t)
    assert "Not gated:" in mislabelled and escaped in mislabelled  # the $PnS inside the error message
    # every img of every page is an embedded PNG: nothing loads from anywhere
    for text in texts:
        assert set(re.findall(r'<img[^>]* src="([a-z]+):', text)) <= {"data"}
        assert "http://" not in text and "https://" not in text


@pytest.mark.slow
def test_report_in_headless_chromium(flagged_run, tmp_path):
    from ..conftest import headless_chromium

    _, out = flagged_run
    drv = headless_chromium(tmp_path / "profile", window="1400,1600")
    artefacts = REPO / "test-artifacts"
    artefacts.mkdir(exist_ok=True)
    try:
        drv.get((out / "report" / "index.html").as_uri())
        links = drv.execute_script("return Array.from(document.querySelectorAll('#overview tbody tr td:first-child a'))"
                                   ".map(a => a.href)")
        assert len(links) == 5
        drv.find_element("css selector", "#overview th:nth-child(7)").click()  # sort by Treg %
        drv.save_screenshot(str(artefacts / "report_index.png"))
        assert drv.execute_script("return document.images.length") >= 3
        n_gates = 0
        for url in links:
            drv.get(url)
            gates = drv.execute_script(
                "return Array.from(document.querySelectorAll('img.gate')).map(i => [i.complete, i.naturalWidth])")
            if "mislabelled" in drv.page_source:
                assert gates == []
                continue
            assert len(gates) == 7 and all(ok and w > 0 for ok, w in gates), (url, gates)
            n_gates += len(gates)
            if "clog" in url:
                drv.save_screenshot(str(artefacts / "report_sample_clog.png"))
        assert n_gates == 4 * 7
        errors = [e for e in drv.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        drv.quit()


def _copy_run(out: Path, dst: Path) -> Path:
    """A copy of a run folder and of its sample sheet's folder, run.json pointing at the copy."""
    import json

    run = json.loads((out / "run.json").read_text())
    files = dst / "files"
    shutil.copytree(Path(run["sample_sheet"]).parent, files, ignore=shutil.ignore_patterns("out"))
    copy = shutil.copytree(out, dst / "run")
    run["sample_sheet"] = str(files / Path(run["sample_sheet"]).name)
    (copy / "run.json").write_text(json.dumps(run))
    return copy


def _pages(run: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((run / "report" / "samples").glob("*.html"))}


def test_the_report_reads_no_fcs_file(flagged_run, tmp_path, monkeypatch):
    """Drawn from what the workers stored: with every FCS file gone, each gated page still has its 6 gates."""
    import cytopipe.review.report as report

    _, out = flagged_run
    run = _copy_run(out, tmp_path)
    for f in (tmp_path / "files").glob("*.fcs"):
        f.unlink()
    monkeypatch.setattr(report, "gate_views", lambda *a, **k: pytest.fail("the report re-read a file"))
    report.write_report(run)
    pages = _pages(run)
    assert len(pages) == 5
    gated = [t for t in pages.values() if "Not gated:" not in t]
    assert len(gated) == 4
    for text in gated:
        assert text.count('class="gate"') == 7 and "Cannot re-read" not in text
        assert "Time channel: flow-rate anomalies" in text
    assert _pages(out) == pages  # the same pages as the run's own report


def test_a_decision_re_renders_its_page_and_the_index_only(flagged_run, tmp_path):
    from cytopipe.exceptions import ReviewError
    from cytopipe.review.decisions import record_decision, update_review_columns
    from cytopipe.review.report import write_report

    _, out = flagged_run
    run = _copy_run(out, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in (run / "report" / "samples").glob("*.html")}
    record_decision(run, "clog.fcs", action="approve", reviewer="ana", reason="clog noted")
    update_review_columns(run)
    write_report(run, samples=["clog.fcs"])
    after = {p.name: p.stat().st_mtime_ns for p in (run / "report" / "samples").glob("*.html")}
    changed = {name for name in before if after[name] != before[name]}
    assert len(changed) == 1 and "clog" in next(iter(changed))
    clog = (run / "report" / "samples" / next(iter(changed))).read_text()
    assert "approved" in clog and "clog noted" in clog
    index = (run / "report" / "index.html").read_text()
    assert 'class="approved"' in index
    with pytest.raises(ReviewError, match="nope.fcs"):
        write_report(run, samples=["nope.fcs"])


def test_an_adjusted_gate_reads_that_one_file_again(flagged_run, tmp_path, monkeypatch):
    """A reviewer's adjustment since the run: only that sample's file is re-read, and its page shows the new gate."""
    import cytopipe.review.report as report
    from cytopipe.review.decisions import record_decision, update_review_columns

    _, out = flagged_run
    run = _copy_run(out, tmp_path)
    record_decision(run, "normal.fcs", action="adjust", reviewer="ana", reason="wider", gate_path="root/Lymphocytes",
                    bounds={"FSC-A": (20000, 150000), "SSC-A": (None, 60000)})
    update_review_columns(run)
    read = []
    real = report.gate_views
    monkeypatch.setattr(report, "gate_views", lambda path, *a, **k: read.append(Path(path).name) or real(path, *a, **k))
    report.write_report(run)
    assert read == ["normal.fcs"]
    normal = next(t for t in _pages(run).values() if "normal.fcs" in t)
    assert normal.count('class="gate"') == 7
