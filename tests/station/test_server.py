"""``cytopipe review RUN_DIR --serve``: one line with the URL and its token, a refused request without
it, a clean stop on Ctrl-C."""

from __future__ import annotations

import http.cookiejar
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest


def test_serve_prints_its_url_and_stops_cleanly_on_ctrl_c(station_run):
    proc = subprocess.Popen([sys.executable, "-m", "cytopipe", "review", str(station_run), "--serve",
                             "--no-browser", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=60)
    try:
        assert lines, "no URL printed within 60 s"
        m = re.fullmatch(r"review station for (\S+): (http://127\.0\.0\.1:(\d+)/\?token=(\S+))  \(Ctrl-C stops it\)\n",
                         lines[0])
        assert m and m.group(1) == str(station_run) and len(m.group(4)) >= 30, lines[0]
        base = f"http://127.0.0.1:{m.group(3)}/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "api/state", timeout=10)
        assert refused.value.code == 401
        refused.value.close()  # the error holds the response's socket
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with opener.open(m.group(2), timeout=30) as page:  # the token, then the cookie
            assert page.status == 200 and "review station" in page.read().decode()
        with opener.open(base + "api/state", timeout=30) as state:
            assert state.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "review station stopped" and "Traceback" not in err


def test_serve_refuses_a_sample_and_a_missing_run(tmp_path, station_run):
    from click.testing import CliRunner

    from cytopipe.cli import cli

    res = CliRunner().invoke(cli, ["review", str(station_run), "P01:D1", "--serve", "--no-browser"])
    assert res.exit_code == 2 and "RUN_DIR only" in res.output
    res = CliRunner().invoke(cli, ["review", str(tmp_path), "--serve", "--no-browser", "--port", "0"])
    assert res.exit_code == 2 and "treg_by_visit.parquet" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["review", str(station_run), "P01:D1", "--approve"])
    assert res.exit_code == 2 and "--reviewer" in res.output


def test_an_ipv6_loopback_url_answers(station_run):
    # `--host ::1` printed http://[::1]:PORT/... and every request to it answered 400 (Host "[::1]" refused)
    import socket

    from cytopipe.station.server import StationServer

    try:
        socket.socket(socket.AF_INET6).close()
        srv = StationServer(station_run, host="::1", port=0).start()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        assert srv.url.startswith(f"http://[::1]:{srv.port}/?token=")
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with opener.open(srv.url, timeout=30) as page:
            assert page.status == 200 and "review station" in page.read().decode()
    finally:
        srv.stop()
