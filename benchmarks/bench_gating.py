"""Speed and memory of cytopipe's gating, measured against FlowKit in one run.

Prints, on generated 12-channel files of the lab's panel:

* events/s per core of cytopipe (read as ``process_sample`` reads: float32
  events via :mod:`cytopipe.fcs.lean`, + panel check + cascade gating), of
  FlowKit (``Sample`` + ``GatingStrategy.gate_sample``) with the same
  strategy, and of a plain numpy cascade reference (DATA read with numpy,
  only needed channels compensated, logicle on each gate's parent events);
  the ratios, and that all three give the same counts;
* peak RSS per sample above the process baseline, as a multiple of the
  file's raw float32 event matrix (each engine in a fresh process);
* wall time of one batch on 1 and on 2 Dask workers, and the speed-up;
* the wall time of a many-file batch.

Usage: ``python benchmarks/bench_gating.py [--quick]`` (``make bench``).
Targets (issue 6): cytopipe >= 3x FlowKit and >= the numpy cascade per core;
peak memory <= 4x the raw float32 matrix; 2 workers >= 1.8x one worker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cytopipe.sim.sample import SampleSpec, write_fcs

TARGETS = {"vs_flowkit": 3.0, "vs_numpy": 1.0, "memory_x_raw": 4.0, "scaling_2_workers": 1.8}


def _numpy_cascade(path: Path, strategy) -> dict[tuple[str, ...], int]:
    """Reference: the same gates in plain numpy, logicle on each parent's events."""
    from flowutils import gating as fu_gating
    from flowutils import transforms as fu_xf

    from cytopipe.fcs.read import scan_header

    meta = scan_header(path)
    n, p = int(meta["$TOT"]), int(meta["$PAR"])
    dtype = "<f4" if meta["$BYTEORD"] == "1,2,3,4" else ">f4"
    begin = int(meta["$BEGINDATA"])
    data = np.fromfile(path, dtype=dtype, count=n * p, offset=begin).reshape(n, p)
    names = [meta[f"$P{i}N"] for i in range(1, p + 1)]
    idx = {nm: i for i, nm in enumerate(names)}
    spill_text = meta.get("$SPILLOVER", meta.get("SPILL"))
    parts = spill_text.split(",")
    k = int(parts[0])
    sp_names = parts[1 : k + 1]
    inv = np.linalg.inv(np.array(parts[k + 1 :], dtype=float).reshape(k, k))
    sp_cols = [idx[nm] for nm in sp_names]
    gs = strategy.gating_strategy()
    rows = np.arange(n)
    counts = {}
    for path_ in strategy.gate_paths():
        gate = gs.get_gate(path_[-1], gate_path=path_[:-1])
        cols = []
        for dim in gate.dimensions:
            c = idx[dim.id]
            if dim.compensation_ref == "FCS":
                v = data[np.ix_(rows, sp_cols)].astype(np.float64) @ inv[:, sp_names.index(dim.id)]
            else:
                v = data[rows, c].astype(np.float64)
            if dim.transformation_ref:
                xf = gs.get_transform(dim.transformation_ref)
                v = fu_xf.logicle(v.reshape(-1, 1), None, t=xf.param_t, m=xf.param_m, w=xf.param_w,
                                  a=xf.param_a).ravel()
            cols.append(v)
        if gate.gate_type == "PolygonGate":
            inside = fu_gating.points_in_polygon(np.array(gate.vertices, dtype=float), np.column_stack(cols))
        else:
            inside = np.ones(rows.size, dtype=bool)
            for dim, v in zip(gate.dimensions, cols):
                if dim.min is not None:
                    inside &= v >= dim.min
                if dim.max is not None:
                    inside &= v < dim.max
        rows = rows[inside]
        counts[path_] = int(rows.size)
    return counts


def _time_engines(files: list[Path], strategy) -> dict[str, float]:
    import flowkit as fk

    from cytopipe.fcs.lean import read_for_gating
    from cytopipe.gating.api import gate_sample
    from cytopipe.strategy.panel import resolve_panel

    times = {"cytopipe": 0.0, "flowkit": 0.0, "numpy": 0.0}
    events = 0
    for f in files:
        t = time.perf_counter()
        gs = strategy.gating_strategy()
        sample = read_for_gating(f, gs)  # as process_sample reads
        resolve_panel(sample.pnn_labels, sample.pns_labels, strategy)
        ours = gate_sample(sample, strategy, gating_strategy=gs, engine="cascade")
        times["cytopipe"] += time.perf_counter() - t
        del sample

        t = time.perf_counter()
        fks = fk.Sample(str(f))
        res = strategy.gating_strategy().gate_sample(fks)
        times["flowkit"] += time.perf_counter() - t
        ref = {tuple(p) + (g,): int(c) for p, g, c in zip(res.report.gate_path, res.report.gate_name,
                                                          res.report["count"])}
        del fks, res

        t = time.perf_counter()
        plain = _numpy_cascade(f, strategy)
        times["numpy"] += time.perf_counter() - t

        mine = {p: c.count for p, c in ours.items()}
        if mine != ref:
            raise SystemExit(f"COUNTS DIFFER from FlowKit on {f}: {mine} vs {ref}")
        worst = max(abs(plain[p] - mine[p]) for p in mine)
        if worst > 2:  # plain numpy uses inv() instead of FlowKit's solve; allow boundary ties
            raise SystemExit(f"numpy reference differs by {worst} events on {f}")
        events += int(ours[strategy.gate_paths()[0]].total)
    return {k: events / v for k, v in times.items()}


_MEM_CHILD = r"""
import os, sys, threading, time
import flowkit, numpy, pandas
from cytopipe.strategy.registry import load_strategy
from cytopipe.fcs.lean import read_for_gating
from cytopipe.gating.api import gate_sample
s = load_strategy(); gs = s.gating_strategy()
page = os.sysconf('SC_PAGE_SIZE')
def rss(): return int(open('/proc/self/statm').read().split()[1]) * page
base = rss(); peak = [base]; done = False
def watch():
    while not done:
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
t = threading.Thread(target=watch, daemon=True); t.start()
engine, path = sys.argv[1], sys.argv[2]
try:
    if engine == "flowkit":
        smp = flowkit.Sample(path); gs.gate_sample(smp)
    else:
        smp = read_for_gating(path, gs); gate_sample(smp, s, gating_strategy=gs, engine="cascade")
finally:
    peak[0] = max(peak[0], rss()); done = True; t.join()
print(peak[0] - base)
"""


def _peak_rss(engine: str, path: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _MEM_CHILD, engine, str(path)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def _rss() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _warm(client, sheet: Path) -> None:
    """One sample on every worker first: imports, the strategy's checks and first-call costs."""
    from cytopipe.batch.task import process_sample
    from cytopipe.strategy.registry import load_strategy

    first = sheet.parent / sheet.read_text().splitlines()[1].split(",")[0]
    d = str(load_strategy("treg@1.0.0").directory)
    client.gather([client.submit(process_sample, str(first), d, workers=[w], pure=False)
                   for w in client.scheduler_info()["workers"]])


def _batch_wall(sheet: Path, out: Path, workers: int, *, rss: dict | None = None,
                parts: dict | None = None) -> float:
    from distributed import Client

    from cytopipe.batch.cluster import make_local_cluster
    from cytopipe.batch.driver import run_batch

    log = out.with_suffix(".jsonl")
    with make_local_cluster(workers) as cluster, Client(cluster) as client:
        _warm(client, sheet)  # a running cluster's throughput: start-up is not part of the batch
        before = client.run(_rss)
        t = time.perf_counter()
        result = run_batch(sheet, out, client=client, report=False, log_file=log)  # gating only
        wall = time.perf_counter() - t
        if rss is not None:  # worker RSS after the batch, to show nothing accumulates
            after = client.run(_rss)
            rss.update(before=max(before.values()), after=max(after.values()))
    if result.n_failed:
        raise SystemExit(f"{result.n_failed} samples failed in the benchmark batch")
    if parts is not None:
        parts.update(_wall_parts(wall, [json.loads(line) for line in log.read_text().splitlines()]))
    return wall


def _wall_parts(wall: float, records: list[dict]) -> dict[str, float]:
    """Where a batch's wall time went, from its ``--log-file`` records.

    ``task``: mean seconds per sample; ``tail``: how long the first worker to
    run out of samples waited for the last one; ``serial``: the wall time
    outside the samples (reading the sheet, submitting, the result tables).
    """
    ends: dict[str, float] = {}
    for r in records:
        ends[r["worker"]] = max(ends.get(r["worker"], 0.0), r["end"])
    span = max(ends.values()) - min(r["start"] for r in records)
    return {"task": float(np.mean([r["duration_s"] for r in records])),
            "tail": max(ends.values()) - min(ends.values()), "serial": wall - span}


_PLAIN_CHILD = r"""
import sys, threading, time
from cytopipe.batch.task import process_sample
from cytopipe.strategy.registry import load_strategy
d = str(load_strategy("treg@1.0.0").directory)
def work(paths):  # in a thread, as a Dask worker runs a task (glibc then gives it its own malloc arena)
    t = threading.Thread(target=lambda: [process_sample(p, d) for p in paths]); t.start(); t.join()
work(sys.argv[1:2])  # warm: imports and first-call costs are not the work
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
work(sys.argv[1:])
print(time.perf_counter() - t, flush=True)
"""


def _plain_ceiling(files: list[Path]) -> float:
    """The machine's own 2-process speed-up on the same per-sample work, without Dask.

    Each process warms up, then all start together; the wall time is the
    slowest process's.
    """
    from cytopipe.batch.cluster import WORKER_MALLOC

    env = {**__import__("os").environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **WORKER_MALLOC}

    def wall(groups: list[list[Path]]) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", _PLAIN_CHILD, *map(str, g)], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE) for g in groups]
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        times = [float(proc.stdout.readline()) for proc in procs]
        for proc in procs:
            proc.wait()
        return max(times)

    half = len(files) // 2
    return wall([files]) / wall([files[:half], files[half:]])


def _write_sheet(folder: Path, n_files: int, n_events: int, seed: int) -> Path:
    lines = ["file,patient_id,visit,day"]
    for i in range(n_files):
        name = f"s{i:04d}.fcs"
        write_fcs(folder / name, SampleSpec(n_events=n_events, seed=seed + i))
        lines.append(f"{name},P{i:04d},D1,1")
    sheet = folder / "samples.csv"
    sheet.write_text("\n".join(lines) + "\n")
    return sheet


def _auto_gate_section(tmp: Path, n_events: int, n_hard: int) -> dict[str, float]:
    """Overhead of the treg_auto fit on one file, and fixed vs auto accuracy on hard files (issue 8)."""
    from cytopipe.batch.task import process_sample
    from cytopipe.fcs.read import read_fcs
    from cytopipe.gating.api import gate_sample, treg_percent
    from cytopipe.gating.placement import fit_auto_gates
    from cytopipe.strategy.registry import load_strategy

    auto, fixed = load_strategy("treg_auto@1.0.0"), load_strategy("treg@1.0.0")
    f = tmp / "auto_speed.fcs"
    write_fcs(f, SampleSpec(n_events=n_events, seed=77, hard=True))
    # a sample's whole processing in a worker (hash, read, panel, gates, Time QC), with and without the fit
    timings: dict[str, list[float]] = {"fixed": [], "auto": []}
    for _ in range(4):
        for name, strat in (("fixed", fixed), ("auto", auto)):
            t = time.perf_counter()
            res = process_sample(str(f), str(strat.directory))
            timings[name].append(time.perf_counter() - t)
            assert not res.error, res.error
    base, with_fit = min(timings["fixed"]), min(timings["auto"])
    overhead = (with_fit - base) / base
    print(f"== treg_auto fit on {n_events:,} events: a sample takes {1000 * with_fit:.0f} ms with the fit, "
          f"{1000 * base:.0f} ms without = +{100 * overhead:.1f} % (target <= 20 %)")
    from cytopipe.strategy import DEFAULT_STRATEGY

    adaptive = load_strategy(DEFAULT_STRATEGY)
    placed = []
    for _ in range(4):
        t = time.perf_counter()
        res = process_sample(str(f), str(adaptive.directory))
        placed.append(time.perf_counter() - t)
        assert not res.error, res.error
    share = (min(placed) - base) / base
    print(f"== {DEFAULT_STRATEGY} (every gate placed from the data, the default) on {n_events:,} events: a sample "
          f"takes {1000 * min(placed):.0f} ms, {1000 * base:.0f} ms with treg@1.0.0's fixed gates = "
          f"+{100 * share:.1f} % for placing the gates (target <= 30 %)")
    rng = np.random.default_rng(2026)
    errs: dict[str, list[float]] = {"treg@1.0.0": [], "treg_auto@1.0.0": []}
    sk_times: list[float] = []
    for i in range(n_hard):
        g = tmp / "auto_hard.fcs"
        truth = write_fcs(g, SampleSpec(n_events=50_000, treg_pct_cd4=round(float(rng.uniform(3, 20)), 3),
                                        seed=3000 + i, hard=True))["treg_pct_cd4"]
        sample = read_fcs(g)
        errs["treg@1.0.0"].append(treg_percent(gate_sample(sample, fixed), fixed)[2] - truth)
        gs = fit_auto_gates(sample, auto).gating_strategy
        errs["treg_auto@1.0.0"].append(treg_percent(gate_sample(sample, auto, gating_strategy=gs), auto)[2] - truth)
        pct, seconds = _sklearn_gmm_pct(sample, auto)
        errs.setdefault("sklearn GMM", []).append(pct - truth)
        sk_times.append(seconds)
    print(f"== Treg % CD4 error on {n_hard} hard files (staining variation, drift 0.4), percentage points")
    out = {"auto_gate_overhead": overhead, "placement_overhead": share}
    for name, e in errs.items():
        a = np.abs(e)
        print(f"  {name:<16} max {a.max():5.2f}  mean {a.mean():5.3f}  (bound: max <= 0.3, mean <= 0.1)")
        out[f"hard_max_err_{name.split('@')[0].replace(' ', '_')}"] = float(a.max())
    print(f"  (sklearn GMM: GaussianMixture(3) on the same fit window and subsample, events classified by "
          f"posterior; median fit {1000 * float(np.median(sk_times)):.0f} ms; treg_auto's binned EM is the "
          f"alternative autogate.py's docstring justifies)")
    return out


def _sklearn_gmm_pct(sample, strategy) -> tuple[float, float]:
    """Treg % CD4 from scikit-learn's GaussianMixture on treg_auto's fit window (the rejected alternative)."""
    from sklearn.mixture import GaussianMixture

    from cytopipe.gating.api import gate_rows, gate_values
    from cytopipe.gating.placement import auto_gate_specs

    spec = auto_gate_specs(strategy)[0]
    gs = strategy.gating_strategy()
    rows = gate_rows(sample, gs, strategy.gate_paths())
    gate = gs.get_gate(spec.gate_path[-1], gate_path=spec.gate_path[:-1])
    parent = rows[spec.gate_path[:-1]]
    ids = [d.id for d in gate.dimensions]
    xy = gate_values(sample, gs, gate, rows=parent)
    lo = np.array([spec.fit_window[i][0] for i in ids], dtype=float)
    inwin = (xy >= lo).all(axis=1)
    fit_rows = np.flatnonzero(inwin)
    rng = np.random.default_rng(spec.seed)
    if fit_rows.size > spec.subsample_events:
        fit_rows = rng.choice(fit_rows, spec.subsample_events, replace=False)
    t = time.perf_counter()
    gmm = GaussianMixture(n_components=3, random_state=0).fit(xy[fit_rows])
    seconds = time.perf_counter() - t
    k = int(np.argmax(gmm.means_[:, ids.index(spec.treg_component)]))
    treg = inwin.copy()
    treg[inwin] = gmm.predict(xy[inwin]) == k
    return 100.0 * treg.sum() / max(parent.size, 1), seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small files, a smoke run (used by the tests)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = ap.parse_args(argv)

    from cytopipe.strategy.registry import load_strategy

    strategy = load_strategy("treg@1.0.0")
    n_events = 100_000 if args.quick else 1_000_000
    n_speed = 2 if args.quick else 4
    # 24 files: a small lab batch; the last sample's tail and the serial part weigh half what they do at 12
    n_scale, scale_events = (4, 100_000) if args.quick else (24, 1_000_000)
    n_trials = 1 if args.quick else 7
    n_many, many_events = (20, 20_000) if args.quick else (500, 50_000)
    report: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cytopipe-bench-") as tmp:
        tmp = Path(tmp)
        files = []
        for i in range(n_speed):
            f = tmp / f"speed{i}.fcs"
            write_fcs(f, SampleSpec(n_events=n_events, seed=100 + i, fcs_version=("3.1", "3.0")[i % 2]))
            files.append(f)
        print(f"== per-core throughput: {n_speed} files x {n_events:,} events x 12 channels")
        _time_engines(files[:1], strategy)  # warm imports and caches
        rates = _time_engines(files, strategy)
        for name, rate in rates.items():
            print(f"  {name:<9} {rate / 1e6:6.2f} M events/s   ({n_events / rate:.3f} s per file)")
        report["vs_flowkit"] = rates["cytopipe"] / rates["flowkit"]
        report["vs_numpy"] = rates["cytopipe"] / rates["numpy"]
        print(f"  ratio cytopipe/FlowKit gate_sample: {report['vs_flowkit']:.2f}x (target >= 3)")
        print(f"  ratio cytopipe/numpy cascade:       {report['vs_numpy']:.2f}x (target >= 1)")
        print("  counts: identical to FlowKit on every file")

        raw_bytes = n_events * 12 * 4
        print(f"== peak RSS per sample above baseline (raw float32 matrix {raw_bytes / 1e6:.0f} MB)")
        for engine in ("cytopipe", "flowkit"):
            peak = _peak_rss(engine, files[0])
            report[f"memory_x_raw_{engine}"] = peak / raw_bytes
            print(f"  {engine:<9} {peak / 1e6:7.0f} MB = {peak / raw_bytes:.2f}x raw")
        report["memory_x_raw"] = report["memory_x_raw_cytopipe"]

        print(f"== Dask scaling: {n_scale} files x {scale_events:,} events, {n_trials} trials of 1 then 2 workers")
        scale_dir = tmp / "scale"
        scale_dir.mkdir()
        sheet = _write_sheet(scale_dir, n_scale, scale_events, 500)
        walls: dict[int, list[float]] = {1: [], 2: []}
        parts: dict[int, list[dict]] = {1: [], 2: []}
        for trial in range(n_trials):
            for n in (1, 2):
                parts[n].append({})
                walls[n].append(_batch_wall(sheet, tmp / f"out{n}_{trial}", n, parts=parts[n][-1]))
            print(f"  trial {trial + 1}: 1 worker {walls[1][-1]:.2f} s, 2 workers {walls[2][-1]:.2f} s: "
                  f"{walls[1][-1] / walls[2][-1]:.2f}x")
        # other load on a shared machine only ever adds time: the fastest of each is the least
        # disturbed measure of the work itself (as timeit reports); the median shows the spread
        report["scaling_2_workers"] = min(walls[1]) / min(walls[2])
        report["scaling_2_workers_median"] = float(np.median(walls[1]) / np.median(walls[2]))
        print(f"  fastest of each: {report['scaling_2_workers']:.2f}x (target >= 1.8); "
              f"medians: {report['scaling_2_workers_median']:.2f}x")
        fast = {n: parts[n][int(np.argmin(walls[n]))] for n in (1, 2)}
        report["scaling_task_slowdown"] = fast[2]["task"] / fast[1]["task"]
        print(f"  where the fastest 2-worker batch's time went: a sample took {fast[2]['task']:.3f} s "
              f"({fast[1]['task']:.3f} s on 1 worker: {100 * (report['scaling_task_slowdown'] - 1):+.1f} %: Dask's "
              f"own threads (scheduler, client, the workers' event loops), which 1 worker leaves to the idle "
              f"core, preempt the gating, and two busy cores share the L3 cache and memory), "
              f"the last sample's tail {fast[2]['tail']:.2f} s, "
              f"the serial part (sheet, submission, tables) {fast[2]['serial']:.2f} s")
        ceiling = _plain_ceiling(sorted(scale_dir.glob("*.fcs")))
        report["scaling_plain_processes"] = ceiling
        print(f"  the same work in 1 vs 2 plain processes, no Dask: {ceiling:.2f}x (this machine's ceiling)")

        print(f"== batch of {n_many} files x {many_events:,} events, 2 workers")
        many_dir = tmp / "many"
        many_dir.mkdir()
        sheet = _write_sheet(many_dir, n_many, many_events, 10_000)
        rss: dict[str, int] = {}
        wall = _batch_wall(sheet, tmp / "outmany", 2, rss=rss)
        report["many_files_wall_s"] = wall
        report["many_files_worker_rss_growth_mb"] = (rss["after"] - rss["before"]) / 1e6
        print(f"  wall {wall:.1f} s ({n_many / wall:.1f} files/s); worker RSS {rss['before'] / 1e6:.0f} MB "
              f"before, {rss['after'] / 1e6:.0f} MB after: nothing accumulates across files")

        report.update(_auto_gate_section(tmp, n_events, 6 if args.quick else 30))  # issue 8

    print("== targets")
    failed = []
    for key, target in TARGETS.items():
        ok = report[key] <= target if key.startswith("memory") else report[key] >= target
        print(f"  {key:<18} {report[key]:6.2f}  target {'<=' if key.startswith('memory') else '>='} {target}"
              f"  {'met' if ok else 'NOT MET'}")
        if not ok:
            failed.append(key)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.quick:
        print("(quick run: small files; the ratios are indicative only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
