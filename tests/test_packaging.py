"""An installed cytopipe works outside the checkout: the wheel carries its data; the
checkout's install is requirements.lock, exactly."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


# --- the locked install: `make setup` installs requirements.lock, exactly ---

LOCK = REPO / "requirements.lock"


def _lock() -> list[tuple[Requirement, list[str], list[str]]]:
    """Each requirement of the lock with its hashes and any other option on its line."""
    out = []
    for line in LOCK.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        req, *opts = text.split(" --")
        opts = ["--" + o.strip() for o in opts]
        out.append((Requirement(req.strip()), [o for o in opts if o.startswith("--hash=")],
                    [o for o in opts if not o.startswith("--hash=")]))
    return out


def _pinned(req: Requirement) -> str:
    (spec,) = req.specifier
    return spec.version


def test_every_lock_line_is_one_exact_version_with_sha256_hashes():
    entries = _lock()
    assert len(entries) > 50  # the whole tree, not only the direct dependencies
    for req, hashes, other in entries:
        assert [s.operator for s in req.specifier] == ["=="], str(req)
        assert hashes and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), str(req)
        assert not other and not req.extras and req.url is None, str(req)
    names = [canonicalize_name(r.name) for r, _, _ in entries]
    assert len(names) == len(set(names))
    header = LOCK.read_text(encoding="utf-8").split("\n\n")[0]
    assert "CPython 3.11 on Linux x86_64" in header and "--require-hashes" in header


def _lock_applies() -> None:
    if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip(f"requirements.lock is resolved for CPython 3.11 on Linux x86_64, not Python "
                    f"{platform.python_version()} on {sys.platform} {platform.machine()}")


def test_the_running_environment_has_exactly_the_locked_versions():
    _lock_applies()
    wrong = []
    for req, _, _ in _lock():
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            have = None
        if have != _pinned(req):
            wrong.append(f"{req.name} {have} (locked {_pinned(req)})")
    assert not wrong, "not the locked versions, run 'make setup': " + ", ".join(wrong)
    res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_declared_dependency_is_in_the_lock_at_a_version_it_allows():
    with open(REPO / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)
    locked = {canonicalize_name(r.name): _pinned(r) for r, _, _ in _lock()}
    env = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    declared = (project["project"]["dependencies"] + project["project"]["optional-dependencies"]["test"]
                + project["build-system"]["requires"])
    assert any(d.startswith("pyreadstat") for d in declared)
    for dep in declared:
        req = Requirement(dep)
        if req.marker is not None and not req.marker.evaluate(env):
            continue  # e.g. tomli, for Python 3.10 only
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is declared in pyproject.toml but not locked: run 'make lock'"
        assert req.specifier.contains(locked[name], prereleases=True), f"{req.name}=={locked[name]} not in {dep!r}"
        for extra in req.extras:  # dask[distributed]: what the extra brings is locked too
            for sub in map(Requirement, metadata.requires(req.name) or []):
                if sub.marker is not None and sub.marker.evaluate({**env, "extra": extra}) \
                        and not sub.marker.evaluate(env):
                    assert canonicalize_name(sub.name) in locked, f"{sub.name} (from {dep!r}) not locked"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_setup_installs_the_lock_and_reinstalls_when_it_changes(tmp_path):
    for f in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy(REPO / f, tmp_path / f)
    stamp = tmp_path / ".venv" / ".installed-stamp"
    stamp.parent.mkdir()
    stamp.touch()

    def dry_run() -> list[str]:  # -n: print the commands, run none
        res = subprocess.run(["make", "-n", "setup"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return [ln for ln in res.stdout.splitlines() if "pip" in ln]

    assert dry_run() == []  # set up, and nothing changed since
    later = stamp.stat().st_mtime + 10
    os.utime(tmp_path / "requirements.lock", (later, later))
    assert dry_run() == [".venv/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock",
                         ".venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .",
                         ".venv/bin/python -m pip check"]
