"""The cudastack command line: parses, calls, prints."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import results, suite
from .display import case_summary
from .runners import SuiteArgs, run_local
from .worker import new_run_id

EXIT_BAD_INPUT = 2

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Benchmark PyTorch across pinned CUDA / cuDNN / PyTorch stacks.",
)
# soft_wrap: long lines (paths, case ids, errors) stay whole so they can be copied and grepped.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class UserError(ValueError):
    """Bad input found on the host side."""


BenchOpt = typer.Option("", "--bench", help="Comma-separated bench names (default: all).")
SelectOpt = typer.Option(None, "--select", help="Keep cases with key=value[,value]; repeatable.")
ProfileOpt = typer.Option(
    "auto", help="auto (quick on CPU, standard on GPU) | quick | standard | full."
)
BenchDirOpt = typer.Option(suite.DEFAULT_BENCH_DIR, help="Folder of bench files.")
ResultsOpt = typer.Option(Path("results"), help="Where run folders are created.")
OutOpt = typer.Option(None, "--out", help="Run folder to create (default: RESULTS_DIR/RUN_ID).")
DeviceOpt = typer.Option("auto", help="auto | cpu | cuda | cuda:N")
ThreadsOpt = typer.Option(0, help="CPU threads for torch (default: all usable cores).")


def _suite_args(
    bench: str,
    select: Optional[list[str]],
    profile: str,
    bench_dir: Path,
    device: str,
    threads: int,
) -> SuiteArgs:
    return SuiteArgs(
        [b for b in bench.split(",") if b], list(select or []), profile, bench_dir, device, threads
    )


def _new_run_dir(out: Optional[Path], results_dir: Path, run_id: str) -> Path:
    run_dir = out or results_dir / run_id
    if run_dir.exists():
        raise UserError(
            f"{run_dir} already exists; a run folder is never overwritten, pick another --out"
        )
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot create run folder {run_dir}: {exc.strerror}") from None
    return run_dir


def _echo(line: str) -> None:
    console.print(line, highlight=False, markup=False)


def _run_here(args: SuiteArgs, out: Optional[Path], results_dir: Path) -> None:
    cases = args.validate()
    if importlib.util.find_spec("torch") is None:
        raise UserError(
            f"torch is not installed in {sys.executable}; run `make setup` or pip install torch"
        )
    run_id = new_run_id()
    run_dir = _new_run_dir(out, results_dir, run_id)
    console.print(f"run {run_id}: up to {cases} cases -> {run_dir}")
    try:
        code = run_local(args, run_dir / "local", run_id, on_line=_echo)
    except KeyboardInterrupt:
        err.print("interrupted: keeping the cases that finished")
        code = 130
    if code == EXIT_BAD_INPUT and not (run_dir / "local" / results.RECORDS).exists():
        shutil.rmtree(run_dir)  # the worker refused its input: leave nothing half-written
        raise UserError("the worker refused its input (see the error above)")
    df = results.ingest_run(run_dir)
    console.print(
        case_summary(results.case_table(df), f"run {run_id}") if len(df) else "no records"
    )
    console.print(f"results: {run_dir / results.TABLE} and {results.CSV}")
    if code != 0:
        err.print(f"the worker exited with code {code}; its log is {run_dir / 'local' / 'log.txt'}")
        raise typer.Exit(1)


@app.command()
def run(
    bench: str = BenchOpt,
    select: Optional[list[str]] = SelectOpt,
    profile: str = ProfileOpt,
    out: Optional[Path] = OutOpt,
    results_dir: Path = ResultsOpt,
    bench_dir: Path = BenchDirOpt,
    device: str = DeviceOpt,
    threads: int = ThreadsOpt,
) -> None:
    """Run the suite in this Python environment (cell 'local') and write a results table."""
    _run_here(_suite_args(bench, select, profile, bench_dir, device, threads), out, results_dir)


@app.command()
def bench(
    bench: str = BenchOpt,
    select: Optional[list[str]] = SelectOpt,
    profile: str = ProfileOpt,
    out: Optional[Path] = OutOpt,
    results_dir: Path = ResultsOpt,
    bench_dir: Path = BenchDirOpt,
    device: str = DeviceOpt,
    threads: int = ThreadsOpt,
) -> None:
    """The main job (make bench): run the suite and print the table."""
    console.print(
        "cudastack bench: running the suite in this Python environment "
        "(profile auto: quick on a CPU, standard on a GPU)"
    )
    _run_here(_suite_args(bench, select, profile, bench_dir, device, threads), out, results_dir)


@app.command("list")
def list_(
    profile: str = typer.Option("quick", help="quick | standard | full"),
    cases: bool = typer.Option(False, "--cases", help="Also list every case id."),
    bench_dir: Path = BenchDirOpt,
) -> None:
    """Show the benchmarks, how many cases each profile runs, and the cells."""
    specs = suite.discover(bench_dir)
    suite.resolve_profile(profile, has_gpu=False)
    for spec in specs.values():
        counts = "  ".join(f"{p}:{len(spec.cases(p))}" for p in suite.PROFILES)
        console.print(f"[bold]{spec.name:<12}[/] {escape(spec.doc)}\n{'':<12} cases {counts}")
        if cases:
            for case in spec.cases(profile):
                console.print(f"{'':<14}{case.id}", highlight=False, markup=False)
    console.print("cells: local (this Python environment)")


@app.command()
def show(run_dir: Path = typer.Argument(..., help="A run folder.")) -> None:
    """Print the case summary of a finished run."""
    df = results.load_table(run_dir)
    console.print(case_summary(results.case_table(df), str(run_dir)))


def main() -> None:
    try:
        app()
    except (suite.SuiteError, results.ResultsError, UserError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(EXIT_BAD_INPUT)
