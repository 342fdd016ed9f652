"""Shared fixtures: generated trials with known truth, and one Dask cluster."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_dir(name: str) -> Path:
    """A folder of ../shared, or skip the test with the reason."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is not present: real files live only in ../shared (CI always has it)")
    return path


@pytest.fixture(scope="session")
def trial(tmp_path_factory) -> Path:
    """A small generated trial (4 patients x 3 visits); returns its sample sheet."""
    from cytopipe.sim.trial import generate_trial

    out = tmp_path_factory.mktemp("trial")
    return generate_trial(out, n_patients=4, n_events=20_000, seed=11)


@pytest.fixture(scope="session")
def dask_client():
    """One local Dask cluster (2 single-threaded worker processes) for the session."""
    from distributed import Client

    from cytopipe.batch.cluster import make_local_cluster

    cluster = make_local_cluster(2, dashboard=True)  # test_cli checks its address is printed
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def strategies_copy(tmp_path, monkeypatch) -> Path:
    """A writable copy of gating_strategies/, made the registry for the test."""
    dst = tmp_path / "gating_strategies"
    shutil.copytree(REPO / "gating_strategies", dst)
    monkeypatch.setenv("CYTOPIPE_STRATEGIES", str(dst))
    return dst


def headless_chromium(profile: Path, window: str = "1600,1000"):
    """A headless Chromium WebDriver with the browser's console log kept; skips when either is missing.

    Used by the report's and the review station's browser tests. ``make test``
    installs Debian's ``chromium`` and ``chromium-driver`` when they are missing.
    """
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("chromium/chromedriver not installed: run scripts/ensure_chromium.sh (make test does)")
    pytest.importorskip("selenium", reason="selenium is not installed in the venv")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={window}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)
