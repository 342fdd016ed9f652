"""Regenerate the golden gate counts of every shipped strategy version on sample_fcs/.

WARNING: the golden files are the record of what each released strategy gives
on the committed sample files. Regenerate them ONLY together with a deliberate
change (a new strategy version, new sample_fcs/ files, or a reviewed FlowKit
upgrade), and say so in the commit. If tests/gating/test_golden.py fails and you did
not mean to change a gate, a transform or FlowKit, do not regenerate: find out
what changed.

Usage::

    .venv/bin/python tests/golden/regenerate.py            # every released version
    .venv/bin/python tests/golden/regenerate.py treg@1.0.0 # one version
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cytopipe.fcs.read import file_sha256, read_fcs  # noqa: E402
from cytopipe.gating.api import gate_sample  # noqa: E402
from cytopipe.gating.placement import place_gates, placement_specs
from cytopipe.strategy.registry import list_strategies, load_strategy  # noqa: E402


def _counts(sample, strategy):
    """Gate counts as a run gives them: a strategy that places its gates from the data places them first.

    (treg_auto@1.0.0's golden counts record its template gates, as they were made at its release.)
    """
    gs = place_gates(sample, strategy).gating_strategy if placement_specs(strategy) else None
    return gate_sample(sample, strategy, gating_strategy=gs)


def golden_counts(ref: str, sample_dir: Path) -> pd.DataFrame:
    """Counts per gate per file of ``ref`` on the files of ``sample_dir/samples.csv``."""
    strategy = load_strategy(ref)
    sheet = pd.read_csv(sample_dir / "samples.csv")
    rows = []
    for name in sheet["file"]:
        path = sample_dir / name
        counts = _counts(read_fcs(path), strategy)
        for gate_path, c in counts.items():
            rows.append({"file": name, "file_sha256": file_sha256(path), "gate_path": "/".join(gate_path),
                         "count": c.count})
    return pd.DataFrame(rows)


def main(argv: list[str]) -> None:
    refs = argv or [s["ref"] for s in list_strategies() if s["status"] == "released"]
    for ref in refs:
        out = Path(__file__).parent / f"{ref}.csv"
        golden_counts(ref, REPO / "sample_fcs").to_csv(out, index=False)
        print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
