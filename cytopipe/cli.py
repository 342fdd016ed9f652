"""The ``cytopipe`` command: parse arguments, call one API function, report.

User errors (``CytopipeError``) become one line on stderr and a non-zero exit,
never a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import click

from ._version import __version__
from .exceptions import CytopipeError

EXIT_OK, EXIT_SAMPLES_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def _process_started() -> float:
    """The epoch time this process started (Linux, to 10 ms), else now.

    From the process's start, not this module's import: the interpreter's own
    start and the imports before this line are part of a run's start-up too.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # starttime, in clock ticks after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()
    # imported long after the start: not the command (a test session, a notebook)
    return time.time() - age if 0 <= age < 2 else time.time()


_STARTED = _process_started()  # when the command started: what --timings counts start-up from


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
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, BrokenPipeError):
            raise  # a closed pipe is the reader's choice (`| head`), not an internal error: click exits 1 quietly
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


class _EchoHandler(logging.Handler):
    """Library log messages (e.g. the Dask dashboard address) to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


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


def _rows(sheet: Path) -> int:
    """About the sample sheet's rows, before it is read and checked: its non-empty lines after the header."""
    try:
        with open(sheet, encoding="utf-8-sig", errors="replace") as fh:
            return max(sum(1 for line in fh if line.strip()) - 1, 1)
    except OSError:
        return 1


@cli.command()
@click.argument("sample_sheet", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (re-runs into it reuse finished samples).")
@click.option("--strategy", default=None,
              help="Strategy as name@version, or a strategy folder [default: treg_adaptive@1.5.0, every gate "
                   "placed from the file's own data].")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786.")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None,
              help="Workers of the local Dask cluster [default: one per core].")
@click.option("--allow-draft", is_flag=True, help="Accept a draft (unreleased) strategy.")
@click.option("--allow-outside", is_flag=True, help="Accept sample sheet paths outside the sheet's folder.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append one JSON line per sample (start, end, duration, worker, outcome).")
@click.option("--include-keywords", default="", metavar="KEY[,KEY...]",
              help="Add these FCS keywords as fcs_<KEY> columns (e.g. '$CYT,$DATE'). Off by default: "
                   "free-text keywords ($FIL, $SRC, $COM, operators) may hold patient names.")
@click.option("--memory-limit", default="auto", show_default=True,
              help="Memory limit per local Dask worker, e.g. 4GB; files needing more are refused.")
@click.option("--dashboard", is_flag=True, help="Serve the local Dask cluster's dashboard (its address is printed); "
              "off by default, as it adds ~0.7 s to the start-up.")
@click.option("--timings", is_flag=True, help="Print where the wall time went (start-up, batch, outputs, report), "
              "and a sample's phases (read, place, gate, plots, ...).")
@click.option("--panel", "panel", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Lab panel CSV (columns marker,detector): each marker's detector, for files whose $PnS are "
                   "empty; wins over $PnS. A 'panel' column of the sheet names one per row.")
@click.option("--starts-at", "starts_at", default=None, metavar="GATE",
              help="The files are pre-gated exports holding only GATE's events (e.g. CD4pos); the gates down "
                   "to it are not applied. A 'starts_at' column of the sheet sets it per row.")
def run(sample_sheet: Path, out_dir: Path, strategy: str, scheduler: str | None, n_workers: int | None,
        allow_draft: bool, allow_outside: bool, log_file: Path | None, include_keywords: str,
        memory_limit: str, dashboard: bool, timings: bool, panel: Path | None, starts_at: str | None) -> None:
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
    ahead = contextlib.nullcontext()
    if scheduler is None:  # the workers' forkserver loads FlowKit, and the cluster starts, while this process loads
        from .batch.cluster import cluster_ahead, start_worker_processes

        # first of all: its imports and warming are the longest path to the first sample
        start_worker_processes(strategy, default_strategy=strategy is None)
        ahead = cluster_ahead(n_workers, _rows(sample_sheet), memory_limit=memory_limit, dashboard=dashboard)
    from .strategy.registry import DEFAULT_STRATEGY

    strategy = strategy or DEFAULT_STRATEGY
    with ahead:
        from .batch import run_batch

        log = logging.getLogger("cytopipe")
        if not any(isinstance(h, _EchoHandler) for h in log.handlers):
            log.addHandler(_EchoHandler())
        log.setLevel(logging.INFO)
        result = run_batch(sample_sheet, out_dir, strategy=strategy, scheduler=scheduler, n_workers=n_workers,
                           allow_draft=allow_draft, allow_outside=allow_outside, progress=_Progress(),
                           log_file=log_file, memory_limit=memory_limit,
                           include_keywords=[k for k in include_keywords.split(",") if k.strip()],
                           panel=panel, starts_at=starts_at, dashboard=dashboard)
    if timings:
        t = result.timings
        click.echo(f"timings: start-up {t['started_at'] - _STARTED + t['startup_s']:.2f} s (until the first "
                   f"sample started), batch {t['batch_s']:.2f} s, outputs {t['outputs_s']:.2f} s, report "
                   f"{t['report_s']:.2f} s, teardown {t['teardown_s']:.2f} s", err=True)
        if t.get("phases_ms"):
            click.echo("timings: a freshly gated sample, median: " + ", ".join(
                f"{k} {v:.0f} ms" for k, v in t["phases_ms"].items()), err=True)
    click.echo(f"{result.n_ok} of {len(result.table)} samples gated "
               f"({result.n_cached} reused from earlier runs), {result.n_failed} failed; outputs in {out_dir}")
    for _, row in result.table[result.table["qc_status"] == "error"].iterrows():
        click.echo(f"  failed: {row['error']}", err=True)  # the error names the file
    sys.exit(result.exit_code)


@cli.command("panel")
@click.argument("sample_sheet", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--strategy", default=None, help="NAME@VERSION or a folder [default: the default strategy].")
@click.option("--panel", "panel", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Lab panel CSV (columns marker,detector) for rows without their own.")
@click.option("--starts-at", "starts_at", default=None, metavar="GATE", help="Pre-gated files start at GATE.")
@click.option("--allow-draft", is_flag=True, help="Accept a draft (unreleased) strategy.")
def panel_cmd(sample_sheet: Path, strategy: str | None, panel: Path | None, starts_at: str | None,
              allow_draft: bool) -> None:
    """Print each file's marker-to-detector resolution, how each was found, and what is missing.

    Reads headers only; nothing is gated. Exit status 1 when a file cannot be resolved.
    """
    from .batch import check_panels
    from .strategy.registry import DEFAULT_STRATEGY

    table = check_panels(sample_sheet, strategy=strategy or DEFAULT_STRATEGY, panel=panel, starts_at=starts_at,
                         allow_draft=allow_draft)
    bad = 0
    for file, rows in table.groupby("file", sort=False):
        click.echo(file)
        for _, r in rows.iterrows():
            if r["error"]:
                bad += 1
                click.echo(f"  ERROR {r['error']}")
                continue
            flags = f"  [{r['flags']}]" if r["flags"] else ""
            click.echo(f"  {r['marker']:<10} {r['detector'] or '-':<16} {r['found_by']}{flags}")
    click.echo(f"{table['file'].nunique() - bad} of {table['file'].nunique()} files resolved")
    sys.exit(1 if bad else 0)


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--patients", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--events", default=None, type=click.IntRange(min=1),
              help="Events per file [default: 15000; 30000 with --trial].")
@click.option("--seed", default=2026, show_default=True, type=int)
@click.option("--drift", default=0.4, show_default=True, type=click.FloatRange(0, 0.9),
              help="Largest relative move of population positions.")
@click.option("--hard", is_flag=True, help="Add staining-run variation (FOXP3 brightness, CD25 continuum).")
@click.option("--trial", is_flag=True, help="Simulate the paper's 24-patient, 4-arm trial (D1, D8, D60; "
              "--patients ignored) with randomisation.csv; see cytopipe.sim.trial.")
def synth(out_dir: Path, patients: int, events: int | None, seed: int, drift: float, hard: bool,
          trial: bool) -> None:
    """Write a generated trial with known truth into OUT_DIR.

    Writes one FCS file per patient-visit, samples.csv (the sample sheet)
    and truth.csv (the true Treg % of CD4 of every file). With --trial, also
    randomisation.csv (patient_id, arm, dose); the sample sheet stays blinded.
    """
    if trial:
        from .sim import simulate_trial

        sheet = simulate_trial(out_dir, visits=(("D1", 1), ("D8", 8), ("D60", 60)), n_events=events or 30000,
                               seed=seed, drift=drift, hard=hard)
        click.echo(f"wrote {sheet} and {sheet.parent / 'randomisation.csv'}")
        return
    from .sim import generate_trial

    events = events or 15000
    sheet = generate_trial(out_dir, n_patients=patients, n_events=events, seed=seed, drift=drift, hard=hard)
    click.echo(f"wrote {sheet}")


@cli.group()
def strategy() -> None:
    """List and inspect gating strategies."""


@strategy.command("list")
def strategy_list() -> None:
    """List every strategy version with its status, release date and sha256."""
    from .strategy import list_strategies, load_strategy

    for s in list_strategies():
        try:
            markers = ",".join(m.marker for m in load_strategy(s["ref"], allow_draft=True).markers)
        except Exception:  # noqa: BLE001 - the listing names the others all the same
            markers = "?"
        click.echo(f"{s['ref']:<24} {s['status']:<9} {s['released']:<11} {s['sha256']}  markers: {markers}")


@strategy.command("show")
@click.argument("ref")
@click.option("--allow-draft", is_flag=True)
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to draw the gate tree (.png, .svg, .pdf) [default: NAME@VERSION.png here].")
@click.option("--no-image", is_flag=True, help="Print the tree only; draw no image.")
def strategy_show(ref: str, allow_draft: bool, image: Path | None, no_image: bool) -> None:
    """Show a strategy's gate tree (each gate's type, dimensions, transform and parent),
    panel and endpoint gate paths; also draw the tree as an image."""
    from .strategy import describe_gates, format_gate, load_strategy, write_gate_tree_image

    s = load_strategy(ref, allow_draft=allow_draft)
    click.echo(f"{s.ref} ({s.status}) sha256 {s.sha256}")
    gs = s.gating_strategy()
    click.echo(gs.get_gate_hierarchy())
    for info in describe_gates(gs):
        click.echo(format_gate(info))
    if not no_image:
        target = image if image is not None else Path(f"{s.ref}.png")
        written = write_gate_tree_image(gs, target, title=f"{s.ref} ({s.status})")
        click.echo(f"gate tree image: {written}")
    for m in s.markers:
        click.echo(f"  {m.marker:<10} {m.detector:<14} $PnS aliases: {', '.join(m.aliases)}")
    click.echo(f"Treg % CD4 = {'/'.join(s.numerator)} over {'/'.join(s.denominator)}")


@strategy.command("validate")
@click.argument("path")
def strategy_validate(path: str) -> None:
    """Validate a GatingML file, a strategy folder or NAME@VERSION.

    GatingML 2.0 schema errors are listed with their line; for a strategy
    folder the manifest is checked too (markers cover every gated detector,
    endpoint gate paths exist, sha256, CHANGELOG entry, and every key and
    value of its placement entries). Exit 2 on any error.
    """
    from .gating.placement import placement_problems
    from .strategy import validate_strategy

    report = validate_strategy(path, manifest_checks=[placement_problems])
    for note in report.notes:
        click.echo(f"  {note}")
    for err in report.errors:
        click.echo(f"ERROR {err}", err=True)
    if not report.ok:
        sys.exit(EXIT_USAGE)
    click.echo(f"{report.path}: valid")


@strategy.command("diff")
@click.argument("a")
@click.argument("b")
def strategy_diff(a: str, b: str) -> None:
    """Gate-by-gate changes from A to B (NAME@VERSION, folder or GatingML file).

    Lists added and removed gates, moved gates, moved vertices, changed
    thresholds (with linear values), transforms and compensation.
    """
    from .strategy import diff_strategies

    changes = diff_strategies(a, b)
    for c in changes:
        click.echo(str(c))
    if not changes:
        click.echo("no differences in gates, transforms or compensation")


@strategy.command("new-version")
@click.argument("name")
@click.option("--from", "from_version", required=True, help="Version to copy, e.g. 1.0.0.")
@click.option("--version", "version", default=None, help="New version [default: next minor].")
def strategy_new_version(name: str, from_version: str, version: str | None) -> None:
    """Copy NAME@FROM into a new draft version with a CHANGELOG stub to fill in."""
    from .strategy import new_version

    dst = new_version(name, from_version, version=version)
    click.echo(f"draft {name}@{dst.name} in {dst}; edit the GatingML, fill CHANGELOG.md "
               f"(author, date, reason), then 'cytopipe strategy release {name}@{dst.name}'")


@strategy.command("release")
@click.argument("ref")
def strategy_release(ref: str) -> None:
    """Release a draft: needs a valid strategy and a CHANGELOG entry with author, date and reason.

    Records the GatingML sha256; from then on the version never changes.
    """
    from .strategy import release_version

    click.echo(f"released {ref}: {release_version(ref)}")


@strategy.command("import-wsp")
@click.argument("workspace", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--group", required=True, help="FlowJo sample group whose gate tree to import.")
@click.option("--as", "ref", required=True, help="New draft as NAME@VERSION, e.g. treg@1.1.0.")
@click.option("--numerator", default=None, help="Treg gate path as in FlowJo [default: previous version's].")
@click.option("--denominator", default=None, help="CD4 gate path as in FlowJo [default: previous version's].")
@click.option("--author", default="TODO", help="Author for the CHANGELOG stub.")
def strategy_import_wsp(workspace: Path, group: str, ref: str, numerator: str | None,
                        denominator: str | None, author: str) -> None:
    """Turn a FlowJo 10 workspace group's gates, transforms and compensation into a draft strategy.

    Anything that cannot be carried (unsupported gate or transform types,
    gates that differ between the group's samples) is listed as an error;
    nothing is dropped silently.
    """
    from .strategy import import_wsp

    res = import_wsp(workspace, group, ref, numerator=numerator, denominator=denominator, author=author)
    for note in res.notes:
        click.echo(f"  note: {note}")
    click.echo(f"draft {ref} with {len(res.gate_paths)} gates in {res.directory}")


@strategy.command("export-wsp")
@click.argument("ref")
@click.option("--samples", "sample_sheet", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Sample sheet (CSV).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Workspace file to write (.wsp).")
@click.option("--group", default="cytopipe", show_default=True, help="FlowJo group of the samples.")
@click.option("--allow-draft", is_flag=True)
def strategy_export_wsp(ref: str, sample_sheet: Path, out: Path, group: str, allow_draft: bool) -> None:
    """Write a FlowJo 10 workspace with the strategy's gates and the sheet's samples attached.

    Only rectangle and polygon gates can be written (FlowKit's limit); any
    other gate is named in the error.
    """
    from .batch import read_sample_sheet
    from .strategy import export_wsp

    files = list(read_sample_sheet(sample_sheet)["path"])
    click.echo(f"wrote {export_wsp(ref, files, out, group=group, allow_draft=allow_draft)}")


def _parse_bound(text: str) -> tuple[str, tuple[float | None, float | None]]:
    det, sep, rng = text.rpartition("=")
    lo, colon, hi = rng.partition(":")
    try:
        if not sep or not colon or not det:
            raise ValueError
        return det, (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
    except ValueError:
        msg = f"--bound {text!r}: expected DETECTOR=MIN:MAX in linear units, e.g. PE-Cy7-A=3500: (open max)"
        raise click.BadParameter(msg) from None


def _parse_vertex(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        msg = f"--vertex {text!r}: expected X,Y in linear units, e.g. 30000,0"
        raise click.BadParameter(msg) from None
    return x, y


def _registry_option(f):
    return click.option(
        "--registry", "registry", default=None, envvar="CYTOPIPE_REVIEWERS",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The lab's reviewer registry (a JSON file) [default: $CYTOPIPE_REVIEWERS].")(f)


def _password_stdin_option(f):
    return click.option("--password-stdin", is_flag=True,
                        help="Read the password from the first line of stdin (scripts), not a hidden prompt.")(f)


def _password(prompt: str, from_stdin: bool, *, twice: bool = False) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=twice)


def _need_registry(registry: Path | None) -> Path:
    if registry is None:
        raise click.UsageError("Give the reviewer registry: --registry PATH, or set CYTOPIPE_REVIEWERS.")
    return registry


@cli.group()
def reviewer() -> None:
    """Enrol, list and revoke the reviewers who may sign review decisions; change a password."""


@reviewer.command("add")
@click.argument("name")
@_registry_option
@_password_stdin_option
def reviewer_add(name: str, registry: Path | None, password_stdin: bool) -> None:
    """Enrol NAME: asks for their password twice, makes their signing key, writes the registry.

    The name is printed on every decision they sign: NFC-normalised, spaces
    collapsed; invisible and control characters are refused, and it must be
    unique whatever its case. The reviewer types the password themselves.
    """
    from .review import ReviewerRegistry, normalise_name

    reg = ReviewerRegistry(_need_registry(registry))
    printed = normalise_name(name)  # refused before anyone types a password
    if reg.get(printed) is not None:
        raise click.UsageError(f"{printed!r} is already enrolled in {reg.path} as {reg.require(printed).name!r}.")
    entry = reg.add(printed, _password(f"Password for {printed}", password_stdin, twice=True))
    click.echo(f"enrolled {entry.name!r} in {reg.path} (Ed25519 key {entry.public_key[:12]}...)")


@reviewer.command("list")
@_registry_option
def reviewer_list(registry: Path | None) -> None:
    """List the enrolled reviewers: name, enrolment time, the start of their public key."""
    from .review import ReviewerRegistry

    reg = ReviewerRegistry(_need_registry(registry))
    entries = reg.reviewers()
    if not entries:
        click.echo(f"no reviewer is enrolled in {reg.path}: 'cytopipe reviewer add NAME'", err=True)
    for r in entries:
        gone = f"  revoked {r.revoked['time']}: {r.revoked['reason']}" if r.revoked else ""
        click.echo(f"{r.name:<32} {r.enrolled:<26} {r.public_key[:12]}...{gone}")


@reviewer.command("passwd")
@click.argument("name")
@_registry_option
@_password_stdin_option
def reviewer_passwd(name: str, registry: Path | None, password_stdin: bool) -> None:
    """Change NAME's password: asks for the current one, then the new one twice (stdin: one line each).

    The signing key stays the same, so every decision they signed still verifies.
    """
    from .review import ReviewerRegistry

    reg = ReviewerRegistry(_need_registry(registry))
    entry = reg.require(name)  # an unknown name is refused before anyone types a password
    old = _password(f"Current password for {entry.name}", password_stdin)
    new = _password(f"New password for {entry.name}", password_stdin, twice=True)
    reg.change_password(entry.name, old, new)
    click.echo(f"changed the password of {entry.name!r} in {reg.path} (same key: past signatures verify)")


@reviewer.command("revoke")
@click.argument("name")
@click.option("--reason", required=True, help="Why (left the lab, password disclosed, ...); recorded.")
@_registry_option
def reviewer_revoke(name: str, reason: str, registry: Path | None) -> None:
    """Revoke NAME from now on: they can sign nothing more; what they signed before still verifies.

    A decision signed with their key after the revocation time fails 'cytopipe verify'.
    """
    from .review import ReviewerRegistry

    reg = ReviewerRegistry(_need_registry(registry))
    entry = reg.revoke(name, reason=reason)
    click.echo(f"revoked {entry.name!r} at {entry.revoked['time']} in {reg.path}" if entry.revoked else "")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("sample", required=False)
@click.option("--approve", "action", flag_value="approve", help="Approve the sample's gates and number.")
@click.option("--reject", "action", flag_value="reject", help="Reject the sample (needs --reason).")
@click.option("--adjust-gate", "gate_path", default=None, metavar="GATE_PATH",
              help="Replace this gate for this sample only (a FlowKit custom sample gate); needs --reason "
                   "and --bound or --vertex.")
@click.option("--bound", "bounds", multiple=True, metavar="DET=MIN:MAX",
              help="Rectangle gate bound in compensated linear units; empty side = open. Repeatable.")
@click.option("--vertex", "vertices", multiple=True, metavar="X,Y",
              help="Polygon gate vertex in linear units. Repeat for every vertex.")
@click.option("--reason", default="", help="Why (required to reject or adjust).")
@click.option("--reviewer", default=None, help="Who decides (required with a SAMPLE).")
@click.option("--no-report", is_flag=True, help="Do not re-render RUN_DIR/report.")
@click.option("--serve", is_flag=True, help="Start the review station, a local web app over RUN_DIR.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8765, show_default=True,
              help="Station port (0: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Station address; any other than loopback needs --password.")
@click.option("--no-browser", is_flag=True, help="Print the station's URL without opening a browser.")
@click.option("--password", default=None, envvar="CYTOPIPE_REVIEW_PASSWORD",
              help="Asked once per browser session [default: $CYTOPIPE_REVIEW_PASSWORD].")
@_registry_option
@_password_stdin_option
def review(run_dir: Path, sample: str | None, action: str | None, gate_path: str | None, bounds: tuple[str, ...],
           vertices: tuple[str, ...], reason: str, reviewer: str | None, no_report: bool, serve: bool, port: int,
           host: str, no_browser: bool, password: str | None, registry: Path | None, password_stdin: bool) -> None:
    """Approve, reject or adjust one SAMPLE of RUN_DIR (its file as in the sheet, or PATIENT:VISIT).

    Decisions are appended to RUN_DIR/review.jsonl with reviewer, time and
    reason, and bound to the file's and the strategy's sha256. An adjusted
    gate takes effect at the next 'cytopipe run' into RUN_DIR.

    With a reviewer registry (--registry or CYTOPIPE_REVIEWERS) the reviewer
    must be enrolled: their password is asked for and each line is signed
    with their key. Without one, lines are unsigned and 'cytopipe verify'
    says so.

    With --serve (and no SAMPLE), start the review station instead: it
    prints its URL (with a one-time token), opens it in the browser, and
    records decisions the same way; Ctrl-C stops it.
    """
    if serve:
        if sample or action or gate_path:
            raise click.UsageError("--serve reviews the whole run in the browser: give RUN_DIR only.")
        from .station import serve as serve_station

        serve_station(run_dir, host=host, port=port, open_browser=not no_browser, password=password,
                      echo=click.echo, registry=registry)
        return
    if not sample:
        raise click.UsageError("Give the SAMPLE to decide on (its file as in the sheet, or PATIENT:VISIT), "
                               "or --serve.")
    if not reviewer:
        raise click.UsageError("Missing option '--reviewer': who decides.")
    from .review import ReviewerRegistry, decide, normalise_name

    if gate_path and action:
        raise click.UsageError("Give one of --approve, --reject or --adjust-gate.")
    action = "adjust" if gate_path else action
    if action is None:
        raise click.UsageError("Give one of --approve, --reject or --adjust-gate GATE_PATH.")
    gates = {gate_path: {"bounds": dict(_parse_bound(b) for b in bounds) or None,
                         "vertices": [_parse_vertex(v) for v in vertices] or None}} if gate_path else None
    signer = None
    if registry is not None:  # enrolled and the password right, or nothing is written
        reg = ReviewerRegistry(registry)
        name = reg.require(normalise_name(reviewer)).name  # before the prompt: a name not enrolled is refused
        signer = reg.unlock(name, _password(f"Password for {name}", password_stdin))
    # under the folder's lock: never while a run or the station rewrites the tables
    rec = decide(run_dir, sample, action, reviewer=reviewer, reason=reason, gates=gates,
                 holder="cytopipe review", signer=signer).records[-1]
    if not no_report:  # this sample's page and the index; the other pages did not change
        from .review import write_report

        write_report(run_dir, samples=[rec.file])
    how = "signed" if rec.signature else "unsigned (no reviewer registry)"
    click.echo(f"{rec.action} {rec.file} by {rec.reviewer} recorded, {how}, in {run_dir / 'review.jsonl'}")
    if action == "adjust":
        click.echo(f"re-run 'cytopipe run ... --out {run_dir}' to gate {rec.file} with the adjusted gate")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR/report/ from the run's outputs and review.jsonl."""
    from .review import write_report

    click.echo(f"wrote {write_report(run_dir)}")


@cli.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_registry_option
def verify(run_dir: Path, registry: Path | None) -> None:
    """Check RUN_DIR's record: print OK, or every discrepancy (one line each, naming the file and row).

    Checks the review log's hash chain and, with a reviewer registry, every
    decision's signature (enrolled key, not forged or copied, in the key
    owner's name); every table row against its stored
    result (cache/) and run.json; the FCS files and sample sheet, where still
    present, against their recorded sha256; the strategy against its release
    and the registry; each table's CSV against its Parquet and both against
    the table's manifest; each sample's gates file against miflowcyt.json.

    \b
    Exit status:
      0  OK
      1  one or more discrepancies
      2  RUN_DIR is not a run folder
    """
    from .audit import verify_run
    from .review import signature_report

    problems = verify_run(run_dir, registry=registry)
    for line in problems:
        click.echo(line)
    if problems:
        sys.exit(EXIT_SAMPLES_FAILED)
    click.echo("OK")
    counts = signature_report(run_dir, None)
    if registry is None and counts.unsigned:
        click.echo(f"note: {counts.unsigned} review decision(s) are unsigned: no reviewer registry was given "
                   "(--registry or CYTOPIPE_REVIEWERS)", err=True)
    elif counts.signed:
        click.echo(f"{counts.signed} review decision(s) signed by enrolled reviewers")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--randomisation", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with patient_id, arm (and optional numeric dose).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder.")
@click.option("--baseline", default="D1", show_default=True, help="Baseline visit.")
@click.option("--visit", default="D60", show_default=True, help="Endpoint visit.")
@click.option("--study-id", default=None,
              help="SDTM STUDYID [default: $CYTOPIPE_STUDY_ID]; without one, sdtm_cp (.csv, .xpt) and "
                   "define.xml are not written.")
@click.option("--control", default="placebo", show_default=True, help="Control arm.")
@click.option("--supersede", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A run folder whose patient-visits found in another run are replaced (repeatable).")
@click.option("--include-unreviewed", is_flag=True,
              help="Use samples flagged for review (needs_review, auto_gate_fallback) that are not approved; "
                   "every output is marked PRELIMINARY.")
def endpoint(run_dirs: tuple[Path, ...], randomisation: Path, out_dir: Path, baseline: str, visit: str,
             study_id: str | None, control: str, supersede: tuple[Path, ...], include_unreviewed: bool) -> None:
    """Change in Treg % of CD4 from BASELINE to VISIT per patient and per arm, and SDTM CP.

    RUN_DIRS are folders written by 'cytopipe run' (visits gated in different
    weeks can be combined). The same patient-visit in two runs is an error
    unless one is superseded: a 'superseded' column (yes) in its sample sheet,
    or --supersede RUN_DIR. Writes OUT/change_by_patient.csv/.parquet,
    arm_summary.csv, trend_test.csv, exclusions.csv, sdtm_cp.csv with its SAS
    transport copy sdtm_cp.xpt and define.xml (with a study id), two PNG
    figures and endpoint.json.

    A sample flagged for review (needs_review, auto_gate_fallback) must be
    approved with 'cytopipe review' first; --include-unreviewed goes on and
    marks every output PRELIMINARY.
    """
    from .endpoint import run_endpoint

    res = run_endpoint(list(run_dirs), randomisation, out_dir, baseline=baseline, visit=visit,
                       study_id=study_id, control=control, supersede=list(supersede),
                       include_unreviewed=include_unreviewed)
    n_ok = int((res.by_patient["status"] == "complete").sum())
    mark = (f"PRELIMINARY ({len(res.unreviewed)} sample(s) flagged for review and not approved included, "
            "listed in endpoint.json): " if res.preliminary else "")
    click.echo(f"{mark}{n_ok} of {len(res.by_patient)} patients with a {baseline}-to-{visit} change; "
               f"{len(res.exclusions)} sample(s) excluded (see exclusions.csv); outputs in {out_dir}")
    if res.sdtm is None:
        click.echo("note: no study id (--study-id or CYTOPIPE_STUDY_ID): sdtm_cp was not written "
                   "(nor sdtm_cp.xpt, define.xml)", err=True)
    for _, r in res.unreviewed.iterrows():
        click.echo(f"  unreviewed: {r['run_dir']} {r['patient_id']}:{r['visit']} ({r['file']}; {r['flags']})",
                   err=True)
    for _, r in res.by_patient[res.by_patient["status"] != "complete"].iterrows():
        click.echo(f"  {r['patient_id']}: {r['status']}: {r['reason']}", err=True)


def main() -> None:
    """Entry point of the ``cytopipe`` command."""
    try:
        cli(prog_name="cytopipe")
        code = 0
    except SystemExit as e:
        code = e.code
    except Exception as e:  # --debug re-raises: the traceback, then the exit status the error has without it
        import traceback

        traceback.print_exc()
        code = EXIT_USAGE if isinstance(e, CytopipeError) else EXIT_INTERNAL
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    # The command is done and has closed its files. Skip the interpreter's teardown of FlowKit, pandas,
    # matplotlib and Dask: ~0.7 s, a tenth of a short run (docs/performance.md, "Start-up and exit").
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # the reader went away (`cytopipe ... | head`), or the stream is closed
        with contextlib.suppress(BrokenPipeError, ValueError):
            stream.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
