"""Tests for cytopipe.batch.task: one file's work in a worker, fresh or from the run's cache."""

from __future__ import annotations

import json
from pathlib import Path

from cytopipe.batch.task import process_sample
from cytopipe.fcs.read import file_sha256
from cytopipe.sim.sample import SampleSpec, write_fcs
from cytopipe.strategy.registry import load_strategy


def test_process_sample_gives_the_same_result_with_either_reader(tmp_path, monkeypatch):
    """Counts, Time QC and the treg_auto fit are unchanged by reading float32."""
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=30_000, seed=5, hard=True))
    for ref in ("treg@1.0.0", "treg_auto@1.0.0"):
        d = str(load_strategy(ref).directory)
        lean = process_sample(str(path), d)
        calls: list[str] = []
        monkeypatch.setattr("cytopipe.batch.task.read_fcs_lean", lambda p, calls=calls, **k: calls.append(p))
        full = process_sample(str(path), d)
        monkeypatch.undo()
        assert calls == [str(path)]  # the lean reader was asked, and declined
        assert not lean.error and not full.error
        for key in ("file_sha256", "events_total", "cd4_count", "treg_count", "treg_pct_cd4", "time_qc",
                    "qc_flags", "gates", "auto_gates", "instrument"):
            assert getattr(lean, key) == getattr(full, key), key


def test_a_stored_result_is_reused_and_flagged_with_todays_thresholds(tmp_path):
    """The cache keeps the measures; QC flags come from the thresholds of the run that reads them."""
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=30_000, seed=6))
    d, cache = str(load_strategy("treg@1.0.0").directory), tmp_path / "cache"
    cache.mkdir()
    first = process_sample(str(path), d, cache_dir=str(cache))
    assert not first.error and not first.cached and "low_events" not in first.qc_flags
    stored = list(cache.glob("*.json"))
    assert len(stored) == 1 and json.loads(stored[0].read_text())["file_sha256"] == file_sha256(path)

    # where the fresh sample's time went: every phase, together no more than the task took
    assert set(first.phases) == {"read", "conform", "place", "gate", "count", "plots", "time_qc", "store"}
    assert all(v >= 0 for v in first.phases.values()) and sum(first.phases.values()) <= first.duration_s
    assert "phases" not in json.loads(stored[0].read_text())  # timings are the run's, not the result's

    again = process_sample(str(path), d, cache_dir=str(cache), qc_thresholds={"min_events": 50_000})
    assert again.cached and again.path == str(path) and again.phases is None
    for key in ("file_sha256", "events_total", "cd4_count", "treg_count", "treg_pct_cd4", "gates", "time_qc"):
        assert getattr(again, key) == getattr(first, key), key
    assert again.qc_flags == ["low_events", *first.qc_flags]  # 30,000 < 50,000 today

    write_fcs(path, SampleSpec(n_events=30_000, seed=7))  # a changed file is a new key: gated afresh
    changed = process_sample(str(path), d, cache_dir=str(cache))
    assert not changed.cached and changed.file_sha256 != first.file_sha256
    assert len(list(cache.glob("*.json"))) == 2


def _under_limit(path: str, strategy_dir: str, limit: int, exact: bool):
    """process_sample in this Dask worker with its memory limit set to ``limit`` for the call.

    ``exact=False`` makes the lean read not exact for the strategy (as a gate on Time does),
    so the file must be read again with FlowKit's reader.
    """
    from distributed import get_worker

    import cytopipe.batch.task as task

    manager = get_worker().memory_manager
    saved_limit, saved_exact = manager.memory_limit, task.gates_exactly
    manager.memory_limit = limit
    if not exact:
        task.gates_exactly = lambda sample, gs: False
    try:
        return process_sample(path, strategy_dir)
    finally:
        manager.memory_limit, task.gates_exactly = saved_limit, saved_exact


def test_the_memory_guard_asks_what_the_reader_taking_the_file_needs(tmp_path, dask_client):
    """A float32 file read lean needs less than half of what FlowKit's reader does: a limit in
    between gates it lean, and refuses it, naming the limit, when FlowKit's reader must read it."""
    from cytopipe.batch.cluster import _LEAN_BYTES_PER_EVENT, _PEAK_BYTES_PER_VALUE, _WORKER_BASELINE

    path = tmp_path / "big.fcs"
    n, p = 200_000, 12
    write_fcs(path, SampleSpec(n_events=n, seed=3))
    lean_need = n * (p * 4 + _LEAN_BYTES_PER_EVENT) + _WORKER_BASELINE
    flowkit_need = n * p * _PEAK_BYTES_PER_VALUE + _WORKER_BASELINE
    limit = (lean_need + flowkit_need) // 2
    d = str(load_strategy("treg@1.0.0").directory)

    lean = dask_client.submit(_under_limit, str(path), d, limit, True, pure=False).result()
    assert not lean.error and lean.treg_count > 0
    refused = dask_client.submit(_under_limit, str(path), d, limit, False, pure=False).result()
    assert "big.fcs" in refused.error and f"limit of {limit / 1e9:.1f} GB" in refused.error
    assert refused.treg_count is None and refused.file_sha256 == lean.file_sha256
    roomy = dask_client.submit(_under_limit, str(path), d, flowkit_need + 1, False, pure=False).result()
    assert not roomy.error and roomy.treg_count == lean.treg_count  # FlowKit's reader, same count


def test_a_result_travels_as_a_typed_object_and_its_cache_record_round_trips(tmp_path):
    """The driver reads attributes, not dict keys; the stored record leaves out where and when it ran."""
    from cytopipe.batch.task import SampleResult

    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=20_000, seed=8))
    res = process_sample(str(path), str(load_strategy("treg@1.0.0").directory))
    assert isinstance(res, SampleResult) and not res.error and res.treg_count > 0
    record = res.cache_record()
    assert {"path", "worker", "started", "duration_s"}.isdisjoint(record)
    assert json.loads(json.dumps(record))["gates"] == res.gates
    back = SampleResult.from_cache({**record, "from_a_newer_version": 1}, str(path), "w:1")
    assert (back.path, back.worker, back.treg_count, back.gates) == (str(path), "w:1", res.treg_count, res.gates)


def test_a_stored_result_is_recomputed_after_an_upgrade_and_carries_the_new_versions(tmp_path, monkeypatch):
    """The cache key holds the computing software: a new FlowKit (or numpy, ...) gates the file again."""
    import cytopipe.batch.task as task

    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=20_000, seed=12))
    d, cache = str(load_strategy("treg@1.0.0").directory), tmp_path / "cache"
    cache.mkdir()
    real = task.worker_versions()
    first = process_sample(str(path), d, cache_dir=str(cache))
    assert not first.cached and first.versions == real and real["flowkit"] != "9.9.9"
    assert process_sample(str(path), d, cache_dir=str(cache)).cached

    gated = []
    real_gate = task.gate_file
    monkeypatch.setattr(task, "gate_file", lambda *a, **k: gated.append(1) or real_gate(*a, **k))
    for name in ("flowkit", "numpy", "flowutils", "scikit-learn", "cytopipe-source"):
        monkeypatch.setattr(task, "worker_versions", lambda name=name: {**real, name: "9.9.9"})
        upgraded = process_sample(str(path), d, cache_dir=str(cache))
        assert not upgraded.cached and upgraded.versions[name] == "9.9.9", name
        assert upgraded.treg_count == first.treg_count  # same numbers here, but computed again
        stored = {json.loads(p.read_text())["versions"][name] for p in cache.glob("*.json")}
        assert stored == {"9.9.9", real[name]}  # the old entry stays, stamped with the old version
    assert len(gated) == 5 and len(list(cache.glob("*.json"))) == 6

    monkeypatch.setattr(task, "worker_versions", lambda: {**real, "pandas": "0.1", "platform": "elsewhere"})
    again = process_sample(str(path), d, cache_dir=str(cache))  # software that computes no number: reused
    assert again.cached and again.versions == real and len(gated) == 5


def test_the_code_digest_follows_every_source_byte_and_nothing_else(tmp_path):
    """cytopipe's version is not bumped by every change: the digest of its code is, so a cached result of older
    code is not served to newer (the key holds it, above)."""
    import hashlib
    import shutil

    import cytopipe
    import cytopipe.batch.task as task

    package = Path(cytopipe.__file__).parent
    copy = tmp_path / "cytopipe"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert task._tree_digest(copy) == task._tree_digest(package) == task.worker_versions()["cytopipe-source"]
    # by hand: the files in order, each as path, NUL, bytes, NUL
    h = hashlib.sha256()
    for p in sorted(q for q in copy.rglob("*") if q.suffix in (".py", ".toml")):
        h.update(p.relative_to(copy).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    assert task._tree_digest(copy) == h.hexdigest()[:16]

    before = task._tree_digest(copy)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.py").write_text("# compiled leftovers are not code\n")
    (copy / "notes.txt").write_text("not code either\n")
    assert task._tree_digest(copy) == before
    gated = copy / "gating" / "gated.py"
    gated.write_bytes(gated.read_bytes() + b"\n")  # one byte
    assert task._tree_digest(copy) != before


def test_a_stored_result_is_recomputed_after_the_strategy_manifest_changes(tmp_path):
    """The manifest changes numbers too (here the numerator): an edited one is never served from the cache."""
    import shutil

    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=20_000, seed=12))
    folder = tmp_path / "treg_copy"
    shutil.copytree(load_strategy("treg@1.0.0").directory, folder)
    cache = tmp_path / "cache"
    cache.mkdir()
    first = process_sample(str(path), str(folder), cache_dir=str(cache))
    assert not first.cached and 0 < first.treg_count < first.cd4_count
    assert process_sample(str(path), str(folder), cache_dir=str(cache)).cached
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["endpoint"]["numerator"] = manifest["endpoint"]["denominator"]  # "Tregs" = every CD4+ cell
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    edited = process_sample(str(path), str(folder), cache_dir=str(cache))
    assert not edited.cached and edited.treg_count == first.cd4_count  # computed again, from the new numerator
    assert len(list(cache.glob("*.json"))) == 2


def test_the_time_qc_thresholds_are_in_the_cache_key_and_the_flag_only_ones_are_not(tmp_path):
    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=20_000, seed=13))
    d, cache = str(load_strategy("treg@1.0.0").directory), tmp_path / "cache"
    cache.mkdir()
    first = process_sample(str(path), d, cache_dir=str(cache))
    binned = process_sample(str(path), d, cache_dir=str(cache), qc_thresholds={"time_bin_events": 400})
    assert not binned.cached and binned.time_qc["n_bins"] == 50 and first.time_qc["n_bins"] == 100
    for flag_only in ({"min_events": 50_000}, {"max_drift_pct": 1.0}, {"outlier_fold": 2.0}):
        assert process_sample(str(path), d, cache_dir=str(cache), qc_thresholds=flag_only).cached, flag_only


def test_the_result_is_stored_while_the_plots_are_drawn_and_before_it_is_returned(tmp_path, monkeypatch):
    """The cache entry's write and sync overlap the plots' drawing, but it is on disk when the task returns;
    a failing write is the sample's error, as without plots."""
    from cytopipe.exceptions import OutputError

    path = tmp_path / "a.fcs"
    write_fcs(path, SampleSpec(n_events=8_000, seed=9))
    d, cache = str(load_strategy("treg@1.0.0").directory), tmp_path / "cache"
    res = process_sample(str(path), d, cache_dir=str(cache), plots=True)
    entries = list(cache.glob("*.json"))
    assert not res.error and len(entries) == 1 and not list(cache.glob(".*.tmp"))
    assert json.loads(entries[0].read_text())["treg_count"] == res.treg_count
    again = process_sample(str(path), d, cache_dir=str(cache), plots=True)
    assert again.cached and again.treg_count == res.treg_count

    def full_disk(target, write):
        raise OutputError(f"Cannot write {target}: No space left on device.")

    monkeypatch.setattr("cytopipe.batch.task.atomic_write", full_disk)
    failed = process_sample(str(path), d, cache_dir=str(tmp_path / "other"), plots=True)
    assert "No space left on device" in failed.error
