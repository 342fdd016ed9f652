"""An installed cytopipe works outside the checkout: the wheel carries its data."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_strategies_report_and_qc_defaults(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    wheel = next(tmp_path.glob("cytopipe-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for ref in ("treg/1.0.0", "treg_cd127lo/1.0.0", "treg_auto/1.0.0", "treg_adaptive/1.0.0"):
        for f in ("manifest.json", "CHANGELOG.md"):
            assert f"cytopipe/gating_strategies/{ref}/{f}" in names, (ref, f)
    assert "cytopipe/gating_strategies/treg/1.0.0/treg.xml" in names
    assert "cytopipe/gating_strategies/treg_adaptive/1.0.0/treg_adaptive.xml" in names
    stages = ("fcs", "strategy", "gating", "outputs", "review", "batch", "endpoint", "sim")
    assert all(f"cytopipe/{stage}/__init__.py" in names for stage in stages)
    assert "cytopipe/review/report.py" in names and "cytopipe/gating/qc_defaults.toml" in names
    assert "cytopipe/_version.py" in names and "cytopipe/py.typed" in names
