"""The cudastack command line: parses, calls, prints."""

from __future__ import annotations

import importlib.util
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.markup import escape

from . import compare, doctor, explain, images, matrix, pipeline, report, results, suite
from .cli_common import (
    EXIT_BAD_INPUT,
    BenchDirOpt,
    BenchOpt,
    CaFileOpt,
    CellOpt,
    DeviceOpt,
    GpusOpt,
    IpcHostOpt,
    MatrixOpt,
    OutOpt,
    ProfileOpt,
    ResultsOpt,
    SelectOpt,
    ShmOpt,
    ThreadsOpt,
    TimeoutOpt,
    UserError,
    WheelhouseOpt,
    app,
    console,
    echo,
    engine,
    err,
    names,
)
from .containers import ContainerOptions
from .display import case_summary, cell_matrix, reasons
from .runners import SuiteArgs, run_local
from .worker import new_run_id

# pip's words when a wheel does not match its --hash in a --require-hashes install.
HASH_MISMATCH = "DO NOT MATCH THE HASHES"


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


def _finish(run_dir: Path, run_id: str, failed: bool) -> None:
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


def _run_here(args: SuiteArgs, out: Optional[Path], results_dir: Path) -> None:
    cases = args.validate()
    if importlib.util.find_spec("torch") is None:
        raise UserError(
            f"torch is not installed in {sys.executable}; run `make setup` or pip install torch"
        )
    run_id = new_run_id()
    run_dir = _new_run_dir(out, results_dir, run_id)
    console.print(f"run {run_id}: up to {cases} cases -> {run_dir}", highlight=False)
    try:
        code = run_local(args, run_dir / "local", run_id, on_line=echo)
    except KeyboardInterrupt:
        err.print("interrupted: keeping the cases that finished")
        code = 130
    if code == EXIT_BAD_INPUT and not (run_dir / "local" / results.RECORDS).exists():
        shutil.rmtree(run_dir)  # the worker refused its input: leave nothing half-written
        raise UserError("the worker refused its input (see the error above)")
    if code != 0:
        err.print(f"the worker exited with code {code}; its log is {run_dir / 'local' / 'log.txt'}")
    _finish(run_dir, run_id, code != 0)


def _inputs(
    matrix_file: Path, wheelhouse: Optional[Path], ca_file: Optional[Path]
) -> pipeline.BuildInputs:
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise UserError(f"--wheelhouse {wheelhouse} is not a folder")
    if ca_file is not None and not ca_file.is_file():
        raise UserError(f"--ca-file {ca_file} is not a file")
    return pipeline.BuildInputs.for_matrix(matrix_file, wheelhouse, ca_file)


def _build_logger(cell: str) -> Callable[[str], None]:
    def show(line: str) -> None:
        console.print(f"[dim]{escape(cell)} | {escape(line)}[/]", highlight=False)

    return show


def _run_matrix(
    args: SuiteArgs,
    client: object,
    cells: list,
    inputs: pipeline.BuildInputs,
    opts: ContainerOptions,
    report: doctor.HostReport,
    out: Optional[Path],
    results_dir: Path,
    fallback_local: bool = False,
) -> None:
    run_id = new_run_id()
    run_dir = _new_run_dir(out, results_dir, run_id)
    console.print(f"run {run_id}: {len(cells)} cells -> {run_dir}", highlight=False)
    outcomes = []
    current = ""
    try:
        for cell, runnable, why in pipeline.plan_cells(cells, report, opts.gpus):
            current = cell.name
            if not runnable:
                outcomes.append(pipeline.skip_cell(run_dir, run_id, cell, why))
                console.print(f"[yellow]{escape(cell.name)}: skipped[/] ({escape(why)})")
                continue
            console.rule(escape(cell.name))
            res = pipeline.run_cell(
                client, cell, inputs, args, run_dir, run_id, opts, echo, _build_logger(cell.name)
            )
            outcomes.append(res)
            results.ingest_run(run_dir)  # each finished cell is in the table at once
            colour = {"ok": "green", "skipped": "yellow"}.get(res.status, "red")
            timing = f"build {res.build_s:.1f} s, run {res.run_s:.1f} s"
            if res.status == "ok":
                timing += f" (suite {res.suite_s:.1f} s, overhead {res.overhead_s:.1f} s)"
            console.print(
                f"[{colour}]{escape(cell.name)}: {res.status}[/] {timing} {escape(res.reason)}"
            )
    except KeyboardInterrupt:
        err.print("interrupted: containers removed, keeping the cells that finished")
        row = results.harness_row(run_id, current, "run", "failed", "interrupted by the user")
        results.append_records(run_dir / current, [row])
        _finish(run_dir, run_id, True)
    failed = any(o.status == "failed" for o in outcomes)
    if fallback_local and all(o.status == "skipped" for o in outcomes):
        console.print(
            "cudastack bench: no cell of the matrix could run here (see the reasons "
            "above): running the suite locally in this Python environment as well"
        )
        failed = run_local(args, run_dir / "local", run_id, on_line=echo) != 0
    _finish(run_dir, run_id, failed)


def _resolve_gpus(gpus: str, report: doctor.HostReport) -> str:
    if gpus == "auto":
        return "all" if report.driver and report.gpu_runtime else "none"
    if not re.fullmatch(r"all|none|[A-Za-z0-9-]+(,[A-Za-z0-9-]+)*", gpus):
        raise UserError(f"--gpus {gpus!r} is not all, none or a list of indices / UUIDs")
    return gpus


def _containers(
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
) -> None:
    args.validate()
    cells = matrix.select(matrix.load(matrix_file), names(cell))
    inputs = _inputs(matrix_file, wheelhouse, ca_file)
    client = client or images.connect()
    report = doctor.inspect(client)
    opts = ContainerOptions(_resolve_gpus(gpus, report), shm_size, ipc_host, timeout)
    _run_matrix(args, client, cells, inputs, opts, report, out, results_dir, fallback_local)


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
    cell: str = CellOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
    gpus: str = GpusOpt,
    ipc_host: bool = IpcHostOpt,
    shm_size: str = ShmOpt,
    timeout: float = TimeoutOpt,
    extra_work: float = typer.Option(
        0.0, hidden=True, help="Testing aid: every timed call this fraction slower (CPU)."
    ),
) -> None:
    """Run the suite here (cell 'local'), or in the containers of --cell cells."""
    args = SuiteArgs(
        names(bench), list(select or []), profile, bench_dir, device, threads, extra_work
    )
    if not cell:
        _run_here(args, out, results_dir)
        return
    try:
        _containers(
            args,
            matrix_file,
            cell,
            wheelhouse,
            ca_file,
            gpus,
            ipc_host,
            shm_size,
            timeout,
            out,
            results_dir,
        )
    except images.EngineUnavailable as exc:
        raise UserError(
            f"{exc}; --cell needs a Docker engine (run without --cell to run here)"
        ) from None


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
    cell: str = CellOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
    gpus: str = GpusOpt,
    ipc_host: bool = IpcHostOpt,
    shm_size: str = ShmOpt,
    timeout: float = TimeoutOpt,
    local: bool = typer.Option(False, "--local", help="Skip the containers: run here."),
) -> None:
    """The main job (make bench): every compatible cell of the matrix, or here without Docker."""
    args = SuiteArgs(names(bench), list(select or []), profile, bench_dir, device, threads)
    args.validate()
    cells = matrix.select(matrix.load(matrix_file), names(cell))
    if not local:
        try:
            client = images.connect()
        except images.EngineUnavailable as exc:
            console.print(
                f"cudastack bench: {exc}: running the suite locally in this Python "
                "environment instead (profile auto: quick on a CPU, standard on a GPU)"
            )
        else:
            report = doctor.inspect(client)
            gpus = _resolve_gpus(gpus, report)
            if any(ok for _, ok, _ in pipeline.plan_cells(cells, report, gpus)):
                _containers(
                    args,
                    matrix_file,
                    cell,
                    wheelhouse,
                    ca_file,
                    gpus,
                    ipc_host,
                    shm_size,
                    timeout,
                    out,
                    results_dir,
                    client,
                    fallback_local=True,
                )
                return
            console.print(
                "cudastack bench: no cell of the matrix can run on this host "
                "(see `cudastack doctor`): running the suite locally instead"
            )
    else:
        console.print("cudastack bench: --local: running the suite in this Python environment")
    _run_here(args, out, results_dir)


@app.command()
def build(
    cell: str = CellOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
) -> None:
    """Build the cells' images; a cell whose content-hash tag exists is not rebuilt."""
    cells = matrix.select(matrix.load(matrix_file), names(cell))
    inputs = _inputs(matrix_file, wheelhouse, ca_file)
    client = engine("building images")
    failed = []
    for c in cells:
        started = time.perf_counter()
        with console.status(f"building {escape(c.name)}") as status:

            def on_line(line: str, name: str = c.name) -> None:
                step = re.match(r"Step (\d+/\d+)", line)
                if step:
                    status.update(f"building {escape(name)}: step {step.group(1)}")
                _build_logger(name)(line)

            try:
                tag, built = pipeline.ensure_image(client, c, inputs, on_line)
            except images.BuildFailed as exc:
                if HASH_MISMATCH in str(exc):
                    raise UserError(
                        f"{c.name}: lock {c.lock_path(inputs.locks_dir)} does not match the "
                        "wheels' hashes (edited by hand, or a wheel changed); re-run "
                        f"`cudastack lock --cell {c.name}`"
                    ) from None
                failed.append(c.name)
                err.print(f"[red]{escape(c.name)}: build failed[/]\n{escape(str(exc))}")
                continue
        took = time.perf_counter() - started
        console.print(
            f"{escape(c.name)}: {tag} " + (f"built in {took:.0f} s" if built else "up to date"),
            highlight=False,
        )
    if failed:
        err.print(f"{len(failed)} of {len(cells)} cells failed to build: {', '.join(failed)}")
        raise typer.Exit(1)


@app.command(name="doctor")
def doctor_cmd(matrix_file: Path = MatrixOpt, gpus: str = GpusOpt) -> None:
    """Check the host: Docker engine, GPU runtime, driver vs each cell, disk, /dev/shm."""
    cells = matrix.load(matrix_file)
    try:
        client: Optional[object] = images.connect()
    except images.EngineUnavailable:
        client = None
    report = doctor.inspect(client)
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    for check in report.checks:
        console.print(
            f"[{colour[check.status]}]{check.status:>4}[/]  {check.name}: {escape(check.detail)}"
        )
    gpus = _resolve_gpus(gpus, report)
    for c, ok, why in pipeline.plan_cells(cells, report, gpus):
        console.print(
            f"[{'green' if ok else 'yellow'}]{'runs' if ok else 'skip':>4}[/]  "
            f"{escape(c.name)}: {escape(why)}"
        )
    if any(ch.status == "fail" for ch in report.checks):
        raise typer.Exit(1)


@app.command("list")
def list_(
    profile: str = typer.Option("quick", help="quick | standard | full"),
    cases: bool = typer.Option(False, "--cases", help="Also list every case id."),
    bench_dir: Path = BenchDirOpt,
    matrix_file: Path = MatrixOpt,
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
    for c in matrix.load(matrix_file):
        console.print(
            f"  {c.name:<28} {c.base_image}  torch {c.torch} ({c.index})",
            highlight=False,
            markup=False,
        )


@app.command()
def show(run_dir: Path = typer.Argument(..., help="A run folder.")) -> None:
    """Print the case summary of a finished run."""
    table = results.case_table(results.load_table(run_dir))
    view = cell_matrix if table["cell"].nunique() > 1 else case_summary
    console.print(view(table, str(run_dir)))


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: containers removed, results kept


def main() -> None:
    from . import cli_compare, cli_handoff  # noqa: F401  (register their commands)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except (suite.SuiteError, results.ResultsError, matrix.MatrixError, UserError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(EXIT_BAD_INPUT)
