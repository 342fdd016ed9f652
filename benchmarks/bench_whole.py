"""The whole ``cytopipe run`` against a plain numpy script, measured side by side (issue 18).

Prints, on generated 12-channel files of the lab's panel, for 8 files of 1M
events and for 200 files of 50k events:

* the wall time of ``benchmarks/numpy_reference.py`` (read with FlowIO,
  compensate, gate ``treg@1.0.0`` with boolean masks; one process);
* the wall time of the real command, ``cytopipe run SHEET --out DIR
  --workers N --timings`` (a subprocess, from start to exit, report
  included), with 1 and 2 workers, and where it went: start-up (until the
  first sample started), the batch, the outputs (tables, run.json,
  MIFlowCyt), the report, and the exit (closing the cluster, the
  interpreter's own exit);
* the ratios to the reference, against the targets on 8 x 1M
  (<= 1.5x with 1 worker, <= 0.8x with 2 workers);
* that the command's counts equal the reference's on every file;
* a one-file run (issue 28, "Start-up"): one 50k-event file (20k with
  ``--quick``), the default strategy and workers, as ``cytopipe run`` is
  typed: when its first sample started and when it exited, against the
  targets (1 s and 1.5 s from the command), as ratios of the same run; next
  to the floor no Dask run can go under, a bare ``python -c 'import numpy,
  pandas, dask.distributed'``;
* on the 200 x 50k files, the command with the default strategy (every gate
  placed from the data) against the same fixed-gate reference, with 1 and 2
  workers, against issue 28's targets (3.0x and 1.7x), and where a tube's
  time went (the median of each phase of a sample: read, conform, place,
  gate, count, plots, time QC, store).

Each timing runs twice, in rounds (the reference and the command with 1 and
2 workers one after another, then again), each run after waiting (up to
``--wait-quiet`` seconds) for other jobs to leave the machine idle, and the
fastest counts: other load on a shared machine only ever adds time. The cores
other jobs used as the runs started are printed. The files are generated once (``cytopipe.sim``)
into a cache folder and reused by later runs.

Usage: ``python benchmarks/bench_whole.py [--quick] [--json OUT] [--data DIR] [--wait-quiet S]``
(``make bench``; ``make bench QUICK=1`` uses small files: a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CYTOPIPE = Path(sys.executable).parent / "cytopipe"
TARGETS = {1: 1.5, 2: 0.8}  # the command's wall time over the reference's, at most, on 8 x 1M
VISITS = ("D1", "D8", "D29", "D60")
_TIMINGS = re.compile(r"timings: start-up ([0-9.]+) s .* batch ([0-9.]+) s, outputs ([0-9.]+) s, "
                      r"report ([0-9.]+) s, teardown ([0-9.]+) s")
_PHASES = re.compile(r"timings: a freshly gated sample, median: (.*)")
WEEK_TARGETS = {1: 3.0, 2: 1.7}  # issue 28: a week of ordinary tubes, every gate placed, over the fixed-gate script
#: issue 28, "Start-up": a one-file run's first sample starts, and the run ends, this many seconds after the command
ONE_FILE_TARGETS = {"first sample starts": 1.0, "one-file run": 1.5}
FLOOR = "import numpy, pandas, dask.distributed"  # what any run of the command imports before it can gate


def _files(root: Path, name: str, n_files: int, n_events: int) -> Path:
    """``root/name/samples.csv``: n_files generated files, patients of four visits; made once."""
    from cytopipe._version import __version__
    from cytopipe.sim.sample import SampleSpec, write_fcs

    folder = root / name
    stamp = folder / ".generated"
    sheet = folder / "samples.csv"
    want = f"{n_files} {n_events} cytopipe {__version__}"
    if stamp.is_file() and stamp.read_text() == want and sheet.is_file():
        return sheet
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    lines = ["file,patient_id,visit,day"]
    for i in range(n_files):
        name_i = f"s{i:04d}.fcs"
        write_fcs(folder / name_i, SampleSpec(n_events=n_events, seed=5000 + i))
        visit = VISITS[i % len(VISITS)]
        lines.append(f"{name_i},P{i // len(VISITS):03d},{visit},{int(visit[1:])}")
    sheet.write_text("\n".join(lines) + "\n")
    stamp.write_text(want)
    return sheet


def _busy_cores(seconds: float = 0.5) -> float | None:
    """Cores in use on the machine over the next ``seconds`` (from /proc/stat); None where there is none."""
    def read() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:9]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / total) if total else 0.0


def _quiet(max_wait: float, seen: list[float]) -> None:
    """Wait, at most ``max_wait`` seconds, until other jobs use under a quarter of a core; note what they used."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = _busy_cores()
        if busy is None:
            return
        if busy < 0.25 or time.monotonic() >= deadline:
            seen.append(busy)
            return
        time.sleep(2.0)


def _reference(sheet: Path, tmp: Path) -> tuple[float, dict]:
    out = tmp / "reference.json"
    t = time.perf_counter()
    res = subprocess.run([sys.executable, str(HERE / "numpy_reference.py"), str(sheet), "--json", str(out)],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode:
        raise SystemExit(f"the numpy reference failed:\n{res.stderr}")
    return wall, json.loads(out.read_text())["counts"]


def _command(sheet: Path, out: Path, workers: int | None, strategy: str | None = "treg@1.0.0") -> dict:
    """The command from start to exit; ``strategy=None``: without ``--strategy``, as a user types it."""
    shutil.rmtree(out, ignore_errors=True)  # a fresh folder: nothing reused from an earlier run
    args = [str(CYTOPIPE), "run", str(sheet), "--out", str(out), "--timings"]
    if strategy is not None:
        args += ["--strategy", strategy]
    if workers:
        args += ["--workers", str(workers)]
    t = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode:
        raise SystemExit(f"cytopipe run failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    m = _TIMINGS.search(res.stderr)
    if not m:
        raise SystemExit(f"no timings line in the command's output:\n{res.stderr}")
    start, batch, outputs, report, teardown = (float(g) for g in m.groups())
    p = _PHASES.search(res.stderr)
    phases = {k: float(v) for k, v in re.findall(r"(\w+) ([0-9.]+) ms", p.group(1))} if p else {}
    return {"wall_s": wall, "startup_s": start, "batch_s": batch, "outputs_s": outputs, "report_s": report,
            "exit_s": wall - start - batch - outputs - report, "teardown_s": teardown, "phases_ms": phases}


def _counts(out: Path) -> dict[str, dict[str, int]]:
    import pandas as pd

    pops = pd.read_parquet(out / "populations.parquet", columns=["file", "gate", "count"])
    counts: dict[str, dict[str, int]] = {}
    for f, g, c in zip(pops["file"], pops["gate"], pops["count"]):
        counts.setdefault(str(f), {})[str(g)] = int(c)
    return counts


def _best(fn, repeat: int):
    runs = [fn() for _ in range(repeat)]
    return min(runs, key=lambda r: r[0] if isinstance(r, tuple) else r["wall_s"])


def _check_counts(out: Path, ref_counts: dict) -> None:
    mine = _counts(out)
    diff = {f: {g: mine[f][g] - c for g, c in gates.items() if mine[f][g] != c}
            for f, gates in ref_counts.items() if any(mine[f][g] != c for g, c in gates.items())}
    if diff:
        raise SystemExit(f"counts differ from the numpy reference: {diff}")


def _breakdown(r: dict) -> str:
    return (f"start-up {r['startup_s']:.2f} s, batch {r['batch_s']:.2f} s, outputs {r['outputs_s']:.2f} s, "
            f"report {r['report_s']:.2f} s, exit {r['exit_s']:.2f} s")


def _dataset(label: str, sheet: Path, tmp: Path, repeat: int, report: dict, targets: bool, wait: float) -> None:
    n_files = len(sheet.read_text().splitlines()) - 1
    print(f"== {label}: {n_files} files (best of {repeat} runs each)")
    # in rounds (the reference, then the command with 1 and 2 workers), so that another job's load,
    # which comes and goes on a shared machine, falls on all three alike rather than on one of them;
    # each run waits for a quiet moment first
    refs, runs, busy = [], {1: [], 2: []}, []
    for _ in range(repeat):
        _quiet(wait, busy)
        refs.append(_reference(sheet, tmp))
        for workers in runs:
            out = tmp / f"out-{label}-{workers}"
            _quiet(wait, busy)
            runs[workers].append(_command(sheet, out, workers))
            _check_counts(out, refs[-1][1])
    if busy:
        print(f"  (other jobs used {min(busy):.1f}-{max(busy):.1f} cores as the runs started)")
        report[f"{label}_other_load_cores"] = busy
    ref_wall = min(wall for wall, _ in refs)
    print(f"  numpy reference        {ref_wall:6.2f} s")
    report[f"{label}_reference_s"] = ref_wall
    for workers, rs in runs.items():
        r = min(rs, key=lambda r: r["wall_s"])
        ratio = r["wall_s"] / ref_wall
        goal = f" (target <= {TARGETS[workers]}x)" if targets else ""
        print(f"  cytopipe run, {workers} worker{'s' if workers > 1 else ' '} {r['wall_s']:6.2f} s = {ratio:.2f}x"
              f"{goal}: {_breakdown(r)}")
        report[f"{label}_workers{workers}"] = {**r, "ratio": ratio}
    print("  counts: identical to the numpy reference on every file")


def _week(label: str, sheet: Path, tmp: Path, repeat: int, report: dict, wait: float) -> None:
    """The same files with the default strategy, every gate placed from the data, over the fixed-gate reference."""
    from cytopipe.strategy import DEFAULT_STRATEGY

    ref_wall = report[f"{label}_reference_s"]
    print(f"== {label}, {DEFAULT_STRATEGY} (every gate placed from the data) over the same fixed-gate reference")
    for workers, target in WEEK_TARGETS.items():
        rs = []
        for _ in range(repeat):
            _quiet(wait, [])
            rs.append(_command(sheet, tmp / f"out-week-{workers}", workers, DEFAULT_STRATEGY))
        r = min(rs, key=lambda r: r["wall_s"])
        ratio = r["wall_s"] / ref_wall
        report[f"{label}_default_workers{workers}"] = {**r, "ratio": ratio}
        print(f"  cytopipe run, {workers} worker{'s' if workers > 1 else ' '} {r['wall_s']:6.2f} s = {ratio:.2f}x "
              f"(target <= {target}x: {'met' if ratio <= target else 'NOT MET'}): {_breakdown(r)}")
        if workers == 1 and r["phases_ms"]:
            print("  a tube's time, median per phase: " + ", ".join(f"{k} {v:.0f} ms" for k, v in
                                                                     r["phases_ms"].items()))


def _floor(wait: float) -> float:
    """Wall seconds of a bare ``python -c FLOOR``: the imports every run of the command needs."""
    _quiet(wait, [])
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR], check=True)
    return time.perf_counter() - t


def _one_file_report(r: dict, floor: float, n_events: int, report: dict) -> None:
    """Print the one-file run (issue 28's start-up targets as ratios of that one run) and the import floor."""
    print(f"== one-file run ({n_events:,} events, the default strategy and workers): {r['wall_s']:.2f} s from "
          f"start to exit: {_breakdown(r)}")
    for (label, target), seconds in zip(ONE_FILE_TARGETS.items(), (r["startup_s"], r["wall_s"])):
        ratio = seconds / target
        report[f"one_file_{label.replace(' ', '_').replace('-', '_')}_ratio"] = ratio
        print(f"  {label:20s} {seconds:5.2f} s = {ratio:.2f}x target ({target} s): "
              f"{'met' if ratio <= 1 else 'NOT MET'}")
    print(f"  floor: python -c '{FLOOR}' {floor:.2f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small files, a smoke run (used by the tests)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this file")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "cytopipe-bench-whole",
                    help="where the generated files are kept between runs [default: %(default)s]")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each timing; the fastest counts")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                    help="before each run, wait up to this long for other jobs to leave the machine idle "
                         "[default: 60; 0 with --quick]")
    args = ap.parse_args(argv)
    wait = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0)

    big, many = ((4, 100_000), (20, 20_000)) if args.quick else ((8, 1_000_000), (200, 50_000))
    label_big, label_many = f"{big[0]}x{big[1] // 1000}k", f"{many[0]}x{many[1] // 1000}k"
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="cytopipe-bench-whole-") as tmp:
        tmp = Path(tmp)
        sheets = {label_big: _files(args.data, label_big, *big), label_many: _files(args.data, label_many, *many)}
        _dataset(label_big, sheets[label_big], tmp, args.repeat, report, targets=True, wait=wait)
        _dataset(label_many, sheets[label_many], tmp, args.repeat, report, targets=False, wait=wait)
        _week(label_many, sheets[label_many], tmp, args.repeat, report, wait=wait)

        one_sheet = tmp / "one" / "samples.csv"  # the first of the small files, alone
        one_sheet.parent.mkdir()
        shutil.copy(sheets[label_many].parent / "s0000.fcs", one_sheet.parent / "s0000.fcs")
        one_sheet.write_text("file,patient_id,visit,day\ns0000.fcs,P000,D1,1\n")
        def one_file() -> dict:
            _quiet(wait, [])
            return _command(one_sheet, tmp / "out-one", None, strategy=None)

        r = _best(one_file, args.repeat)
        report["one_file"] = r
        floor = min(_floor(wait) for _ in range(args.repeat))
        report["import_floor_s"] = floor
        _one_file_report(r, floor, many[1], report)

    print("== targets (8 x 1M: the whole command, report included, over the numpy reference)")
    for workers, target in TARGETS.items():
        ratio = report[f"{label_big}_workers{workers}"]["ratio"]
        print(f"  {workers} worker{'s' if workers > 1 else ' '}  {ratio:5.2f}x  target <= {target}x  "
              f"{'met' if ratio <= target else 'NOT MET'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.quick:
        print("(quick run: small files; the ratios are indicative only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
