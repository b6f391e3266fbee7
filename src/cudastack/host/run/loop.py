"""How a run goes, for the run and bench commands: run folders, cells in containers, the end."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.markup import escape

from cudastack.environment.worker import new_run_id
from cudastack.host.analysis import compare, explain, report, results
from cudastack.host.analysis.display import case_summary, cell_matrix, reasons
from cudastack.host.cells import doctor, images, matrix
from cudastack.host.cli.app import EXIT_BAD_INPUT, UserError, console, echo, err, names
from cudastack.host.run import pipeline
from cudastack.host.run.container import ContainerOptions
from cudastack.host.run.local import DEFAULT_TIMEOUT_S, LocalResult, SuiteArgs, run_local


def new_run_dir(out: Optional[Path], results_dir: Path, run_id: str) -> Path:
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


def finish(run_dir: Path, run_id: str, failed: bool) -> None:
    df = results.ingest_run(run_dir)
    table = results.case_table(df) if len(df) else None
    if table is None:
        console.print("no records")
    elif table["cell"].nunique() > 1:
        console.print(cell_matrix(table, f"run {run_id}"))
    else:
        console.print(case_summary(table, f"run {run_id}"))
    for line in reasons(table) if table is not None else []:
        console.print(f"  {line}", highlight=False, markup=False)
    if len(df):
        side = df.assign(side=compare.label_sides(df))
        envs = {c: explain.load_env(run_dir, c) for c in side["cell"].unique()}
        report.write(run_dir / "report.html", report.html_report(side, envs))
    console.print(
        f"results: {run_dir / results.TABLE}, {results.CSV} and report.html", highlight=False
    )
    if failed:
        raise typer.Exit(1)


def check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise UserError(f"--timeout {timeout:g}: give a time limit in seconds above 0")


def run_here(
    args: SuiteArgs, out: Optional[Path], results_dir: Path, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    cases = args.validate()
    check_timeout(timeout)
    if importlib.util.find_spec("torch") is None:
        raise UserError(
            f"torch is not installed in {sys.executable}; run `make setup` or pip install torch"
        )
    run_id = new_run_id()
    run_dir = new_run_dir(out, results_dir, run_id)
    console.print(f"run {run_id}: up to {cases} cases -> {run_dir}", highlight=False)
    try:
        outcome = run_local(args, run_dir / "local", run_id, on_line=echo, timeout_s=timeout)
    except KeyboardInterrupt:
        err.print("interrupted: keeping the cases that finished")
        outcome = LocalResult(130, "interrupted by the user")
    code = outcome.code
    if code == EXIT_BAD_INPUT and not (run_dir / "local" / results.RECORDS).exists():
        shutil.rmtree(run_dir)  # the worker refused its input: leave nothing half-written
        raise UserError("the worker refused its input (see the error above)")
    if code != 0:
        err.print(f"{outcome.reason}; its log is {run_dir / 'local' / 'log.txt'}")
    finish(run_dir, run_id, code != 0)


@dataclass(frozen=True)
class SmokeCounts:
    """How the smoke profile's cases ended here (what `doctor --deep` reports)."""

    run_dir: Path
    ok: int
    skipped: int
    failed: int


def run_smoke(bench_dir: Path, results_dir: Path) -> SmokeCounts:
    """Run the smoke profile here as `run --profile smoke` does, into a new run folder under
    ``results_dir``, and count its cases by status. A worker that exited with an error counts as
    at least one failed case, since the cases it never reached have no rows."""
    run_dir = results_dir / f"smoke-{new_run_id()}"
    died = False
    try:
        run_here(SuiteArgs(profile="smoke", bench_dir=bench_dir), run_dir, results_dir)
    except typer.Exit:
        died = True
    statuses = results.load_table(run_dir).drop_duplicates(["cell", "case"])["status"]
    ok, skipped, failed = ((statuses == s).sum() for s in ("ok", "skipped", "failed"))
    return SmokeCounts(run_dir, int(ok), int(skipped), max(int(failed), int(died)))


def build_inputs(
    matrix_file: Path, wheelhouse: Optional[Path], ca_file: Optional[Path]
) -> pipeline.BuildInputs:
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise UserError(f"--wheelhouse {wheelhouse} is not a folder")
    if ca_file is not None and not ca_file.is_file():
        raise UserError(f"--ca-file {ca_file} is not a file")
    return pipeline.BuildInputs.for_matrix(matrix_file, wheelhouse, ca_file)


def build_logger(cell: str) -> Callable[[str], None]:
    def show(line: str) -> None:
        console.print(f"[dim]{escape(cell)} | {escape(line)}[/]", highlight=False)

    return show


def run_matrix(
    args: SuiteArgs,
    client: object,
    cells: list,
    inputs: pipeline.BuildInputs,
    opts: ContainerOptions,
    report: doctor.HostReport,
    gpus: str,
    out: Optional[Path],
    results_dir: Path,
    fallback_local: bool = False,
) -> None:
    """Run the cells the plan admits; ``gpus`` is the --gpus as given (auto stays auto)."""
    run_id = new_run_id()
    run_dir = new_run_dir(out, results_dir, run_id)
    console.print(f"run {run_id}: {len(cells)} cells -> {run_dir}", highlight=False)
    outcomes: dict[str, pipeline.CellResult] = {}
    current = ""
    plan = pipeline.plan_cells(cells, report, gpus, client, inputs, opts.minor_version_compat)
    try:
        # With --repeat N the cells take turns (a, b, a, b, ...): a drift of the machine over
        # the run then touches every cell alike instead of whichever ran last.
        for process in range(args.repeat):
            for cell, runnable, why in plan:
                current = cell.name
                if process == 0 and not runnable:
                    outcomes[cell.name] = pipeline.skip_cell(run_dir, run_id, cell, why)
                    console.print(f"[yellow]{escape(cell.name)}: skipped[/] ({escape(why)})")
                if not runnable or (process > 0 and outcomes[cell.name].status != "ok"):
                    continue
                title = (
                    cell.name if args.repeat == 1 else f"{cell.name} ({process + 1}/{args.repeat})"
                )
                console.rule(escape(title))
                res = pipeline.run_cell(
                    client,
                    cell,
                    inputs,
                    args,
                    run_dir,
                    run_id,
                    opts,
                    echo,
                    build_logger(cell.name),
                    process,
                )
                outcomes[cell.name] = res
                _report_cell(run_dir, res)
    except KeyboardInterrupt:
        err.print("interrupted: containers removed, keeping the cells that finished")
        row = results.harness_row(run_id, current, "run", "failed", "interrupted by the user")
        results.append_records(run_dir / current, [row])
        finish(run_dir, run_id, True)
    failed = any(o.status == "failed" for o in outcomes.values())
    if fallback_local and all(o.status == "skipped" for o in outcomes.values()):
        console.print(
            "cudastack bench: no cell of the matrix could run here (see the reasons "
            "above): running the suite locally in this Python environment as well"
        )
        local = run_local(args, run_dir / "local", run_id, echo, opts.timeout_s)
        failed = local.code != 0
    finish(run_dir, run_id, failed)


def _report_cell(run_dir: Path, res: pipeline.CellResult) -> None:
    results.ingest_run(run_dir)  # each finished cell is in the table at once
    colour = {"ok": "green", "skipped": "yellow"}.get(res.status, "red")
    timing = f"build {res.build_s:.1f} s, run {res.run_s:.1f} s"
    if res.status == "ok":
        timing += f" (suite {res.suite_s:.1f} s, overhead {res.overhead_s:.1f} s)"
    console.print(f"[{colour}]{escape(res.cell)}: {res.status}[/] {timing} {escape(res.reason)}")


def resolve_gpus(gpus: str, report: doctor.HostReport) -> str:
    """The GPUs a container asks for. With auto on a host without a usable GPU that is none, for
    the CPU cells; the plan (`pipeline.plan_cells`, given auto) skips the CUDA cells there."""
    if gpus == "auto":
        return "all" if report.driver and report.gpu_runtime else "none"
    if not re.fullmatch(r"all|none|[A-Za-z0-9-]+(,[A-Za-z0-9-]+)*", gpus):
        raise UserError(f"--gpus {gpus!r} is not all, none or a list of indices / UUIDs")
    return gpus


def run_cells(
    args: SuiteArgs,
    matrix_file: Path,
    cell: str,
    wheelhouse: Optional[Path],
    ca_file: Optional[Path],
    gpus: str,
    ipc_host: bool,
    shm_size: str,
    timeout: float,
    out: Optional[Path],
    results_dir: Path,
    client: Optional[object] = None,
    fallback_local: bool = False,
    minor_version_compat: bool = False,
) -> None:
    """Run the named cells (all by default) of a matrix in their containers."""
    args.validate()
    check_timeout(timeout)
    cells = matrix.select(matrix.load(matrix_file), names(cell))
    inputs = build_inputs(matrix_file, wheelhouse, ca_file)
    client = client or images.connect()
    report = doctor.inspect(client)
    opts = ContainerOptions(
        resolve_gpus(gpus, report), shm_size, ipc_host, timeout, minor_version_compat
    )
    run_matrix(args, client, cells, inputs, opts, report, gpus, out, results_dir, fallback_local)
