"""The plain numpy reference ``make bench`` compares the whole ``cytopipe run`` against.

Written as a user would write it by hand, in one process: read each file with
FlowIO, compensate with the file's own ``$SPILLOVER``, logicle-transform with
flowutils (FlowKit's own transform code) and gate with boolean masks, each
gate on its parent's events. The gates are ``treg@1.0.0``'s, copied from its
GatingML (the bench checks the counts against cytopipe's, so a copy that
drifted would be caught).

This is a cost reference, not a pipeline: no hashing, no resume cache, no
panel check, no Time QC, no tables, no report, no error handling. What
``cytopipe run`` does on top of it is what the comparison prices.

Usage: ``python benchmarks/numpy_reference.py SAMPLE_SHEET [--json OUT]``;
prints the wall time and each file's Treg % of CD4.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import flowio
import numpy as np
from flowutils.gating import points_in_polygon
from flowutils.transforms import logicle

# treg@1.0.0 (gating_strategies/treg/1.0.0/treg.xml): scatter polygons in linear units,
# fluorescence thresholds in logicle units (T=262144, W=0.5, M=4.5, A=0)
LYMPHOCYTES = np.array([[25000, -2000], [140000, -2000], [140000, 38000], [110000, 52000], [25000, 52000]], float)
SINGLETS = np.array([[0, 0], [262144, 194181], [262144, 349525], [0, 1000]], float)
LIVE_MAX = {"PerCP-Cy5-5-A": 0.496}
CD3_MIN = {"V500-A": 0.4732}
CD4_MIN, CD4_MAX = {"V450-A": 0.496}, {"APC-H7-A": 0.496}
TREG_MIN = {"PE-Cy7-A": 0.5622, "APC-A": 0.4543}


def _logicle(values: np.ndarray) -> np.ndarray:
    return logicle(values.reshape(-1, 1), None, t=262144, m=4.5, w=0.5, a=0).ravel()


def gate_file(path: str | Path) -> dict[str, int]:
    """Event counts of every ``treg@1.0.0`` gate in one FCS file."""
    fd = flowio.FlowData(str(path))
    events = fd.as_array(preprocess=True)  # float64, Time scaled by $TIMESTEP, as FlowKit reads it
    names = [fd.channels[i + 1]["pnn"] for i in range(fd.channel_count)]
    col = {name: i for i, name in enumerate(names)}

    spill = (fd.text.get("spillover") or fd.text["spill"]).split(",")
    k = int(spill[0])
    detectors = spill[1:k + 1]
    matrix = np.array(spill[k + 1:], dtype=float).reshape(k, k)
    comp = events[:, [col[d] for d in detectors]] @ np.linalg.inv(matrix)
    fluo = {d: comp[:, j] for j, d in enumerate(detectors)}

    counts = {}
    lymph = np.flatnonzero(points_in_polygon(LYMPHOCYTES, events[:, [col["FSC-A"], col["SSC-A"]]]))
    counts["Lymphocytes"] = lymph.size
    single = lymph[points_in_polygon(SINGLETS, events[np.ix_(lymph, [col["FSC-A"], col["FSC-H"]])])]
    counts["Singlets"] = single.size

    def rect(rows, lower, upper):
        keep = np.ones(rows.size, dtype=bool)
        for det, lo in lower.items():
            keep &= _logicle(fluo[det][rows]) >= lo
        for det, hi in upper.items():
            keep &= _logicle(fluo[det][rows]) < hi
        return rows[keep]

    live = rect(single, {}, LIVE_MAX)
    counts["Live"] = live.size
    cd3 = rect(live, CD3_MIN, {})
    counts["CD3pos"] = cd3.size
    cd4 = rect(cd3, CD4_MIN, CD4_MAX)
    counts["CD4pos"] = cd4.size
    counts["Treg"] = rect(cd4, TREG_MIN, {}).size
    return {name: int(n) for name, n in counts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample_sheet", type=Path)
    ap.add_argument("--json", type=Path, help="write {file: counts} and the wall time here")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    with open(args.sample_sheet, newline="", encoding="utf-8") as fh:
        files = [row["file"] for row in csv.DictReader(fh)]
    results = {}
    for name in files:
        counts = gate_file(args.sample_sheet.parent / name)
        results[name] = counts
        print(f"{name}: Treg % CD4 {100 * counts['Treg'] / max(counts['CD4pos'], 1):.3f}")
    wall = time.perf_counter() - started
    print(f"{len(files)} files in {wall:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"wall_s": wall, "counts": results}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
