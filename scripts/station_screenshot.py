"""Regenerate ``docs/review_station.png``: the review station on ``demo_out/`` in headless Chromium.

Run ``make demo`` first (and ``sh scripts/ensure_chromium.sh``), then::

    .venv/bin/python scripts/station_screenshot.py [RUN_DIR] [OUT_PNG]

The run is copied to a temporary folder, so the screenshot records no
decision in ``demo_out/``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _wait(drv, script: str, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if drv.execute_script("return " + script):
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for: {script}")


def main(run_dir: Path, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from cytopipe.station import StationServer

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        raise SystemExit("chromium/chromedriver not found: run sh scripts/ensure_chromium.sh")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / run_dir.name
        shutil.copytree(run_dir, copy)
        srv = StationServer(copy, port=0).start()
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1600,900",
                     f"--user-data-dir={Path(tmp) / 'profile'}"):
            opts.add_argument(flag)
        drv = webdriver.Chrome(service=Service(driver), options=opts)
        try:
            drv.get(srv.url)
            _wait(drv, "!document.getElementById('modal').hidden")
            drv.find_element("id", "modal-input").send_keys("A. Smith")
            drv.find_element("id", "modal-ok").click()
            rows = drv.find_elements("css selector", "#queue tbody tr")
            rows[min(1, len(rows) - 1)].click()
            _wait(drv, "document.querySelectorAll('.card').length >= 6 && "
                       "document.querySelector('.card[data-gate$=\"/Treg\"] image') !== null")
            time.sleep(2.0)  # the other cards' images
            drv.save_screenshot(str(out))
        finally:
            drv.quit()
            srv.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]) if args else REPO / "demo_out",
         Path(args[1]) if len(args) > 1 else REPO / "docs" / "review_station.png")
