"""The ``cytopipe`` command: parse arguments, call one API function, report.

User errors (``CytopipeError``) become one line on stderr and a non-zero exit,
never a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from . import __version__
from .exceptions import CytopipeError

EXIT_OK, EXIT_SAMPLES_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class _Group(click.Group):
    """Turn our errors into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CytopipeError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(EXIT_USAGE)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Internal error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", err=True)
            ctx.exit(EXIT_INTERNAL)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cytopipe")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """cytopipe: FCS files to Treg % of CD4 per patient-visit, reproducibly."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


class _Progress:
    """A one-line progress display on a terminal: done, failed, time left."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.tty = self.stream.isatty()

    def __call__(self, done: int, failed: int, total: int) -> None:
        if not self.tty:
            return
        elapsed = time.monotonic() - self.start
        left = elapsed / done * (total - done) if done else float("nan")
        width = 30
        bar = "#" * int(width * done / total) + "." * (width - int(width * done / total))
        eta = f"{int(left // 60)}:{int(left % 60):02d}" if left == left else "?"
        self.stream.write(f"\r[{bar}] {done}/{total} done, {failed} failed, ~{eta} left ")
        self.stream.flush()
        if done == total:
            self.stream.write("\n")


@cli.command()
@click.argument("sample_sheet", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (re-runs into it reuse finished samples).")
@click.option("--strategy", default="treg@1.0.0", show_default=True,
              help="Strategy as name@version, or a strategy folder.")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786.")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None,
              help="Workers of the local Dask cluster [default: one per core].")
@click.option("--allow-draft", is_flag=True, help="Accept a draft (unreleased) strategy.")
@click.option("--allow-outside", is_flag=True, help="Accept sample sheet paths outside the sheet's folder.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append one JSON line per sample (start, end, duration, worker, outcome).")
def run(sample_sheet: Path, out_dir: Path, strategy: str, scheduler: str | None, n_workers: int | None,
        allow_draft: bool, allow_outside: bool, log_file: Path | None) -> None:
    """Gate every file of SAMPLE_SHEET and write Treg % of CD4 per patient-visit.

    SAMPLE_SHEET is a CSV with columns file (relative to the sheet's folder),
    patient_id, visit and optionally day; other columns are carried through.

    Writes OUT/treg_by_visit.csv and .parquet, OUT/populations.parquet and
    OUT/run.json.

    \b
    Exit status:
      0  every sample was gated
      1  the run finished but one or more samples failed (see the error column)
      2  bad invocation: bad sample sheet, unknown or altered strategy, bad options
      3  internal error (re-run with --debug and report it)
    """
    from .batch import run_batch

    result = run_batch(sample_sheet, out_dir, strategy=strategy, scheduler=scheduler, n_workers=n_workers,
                       allow_draft=allow_draft, allow_outside=allow_outside, progress=_Progress(),
                       log_file=log_file)
    click.echo(f"{result.n_ok} of {len(result.table)} samples gated "
               f"({result.n_cached} reused from earlier runs), {result.n_failed} failed; outputs in {out_dir}")
    for _, row in result.table[result.table["qc_status"] == "error"].iterrows():
        click.echo(f"  failed: {row['file']}: {row['error']}", err=True)
    sys.exit(result.exit_code)


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--patients", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--events", default=15000, show_default=True, type=click.IntRange(min=1),
              help="Events per file.")
@click.option("--seed", default=2026, show_default=True, type=int)
@click.option("--drift", default=0.4, show_default=True, type=click.FloatRange(0, 0.9),
              help="Largest relative move of population positions.")
@click.option("--hard", is_flag=True, help="Add staining-run variation (FOXP3 brightness, CD25 continuum).")
def synth(out_dir: Path, patients: int, events: int, seed: int, drift: float, hard: bool) -> None:
    """Write a generated trial with known truth into OUT_DIR.

    Writes one FCS file per patient-visit, samples.csv (the sample sheet)
    and truth.csv (the true Treg % of CD4 of every file).
    """
    from .synth import generate_trial

    sheet = generate_trial(out_dir, n_patients=patients, n_events=events, seed=seed, drift=drift, hard=hard)
    click.echo(f"wrote {sheet}")


@cli.group()
def strategy() -> None:
    """List and inspect gating strategies."""


@strategy.command("list")
def strategy_list() -> None:
    """List every strategy version with its status, release date and sha256."""
    from .strategy import list_strategies

    for s in list_strategies():
        click.echo(f"{s['ref']:<24} {s['status']:<9} {s['released']:<11} {s['sha256']}")


@strategy.command("show")
@click.argument("ref")
@click.option("--allow-draft", is_flag=True)
def strategy_show(ref: str, allow_draft: bool) -> None:
    """Show a strategy's gate tree, panel and endpoint gate paths."""
    from .strategy import load_strategy

    s = load_strategy(ref, allow_draft=allow_draft)
    click.echo(f"{s.ref} ({s.status}) sha256 {s.sha256}")
    click.echo(s.gating_strategy().get_gate_hierarchy())
    for m in s.markers:
        click.echo(f"  {m.marker:<10} {m.detector:<14} $PnS aliases: {', '.join(m.aliases)}")
    click.echo(f"Treg % CD4 = {'/'.join(s.numerator)} over {'/'.join(s.denominator)}")


def main() -> None:
    """Entry point of the ``cytopipe`` command."""
    cli(prog_name="cytopipe")


if __name__ == "__main__":
    main()
