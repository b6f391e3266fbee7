"""The cudastack command line: parses, calls, prints."""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cudastack.environment import suite
from cudastack.host.analysis import results
from cudastack.host.analysis.display import case_summary, cell_matrix
from cudastack.host.cells import check as checks
from cudastack.host.cells import doctor, images, matrix
from cudastack.host.cli.app import (
    EXIT_BAD_INPUT,
    BenchDirOpt,
    BenchOpt,
    CaFileOpt,
    CellOpt,
    DeviceOpt,
    EnvOpt,
    GpusOpt,
    IpcHostOpt,
    MatrixOpt,
    MinorCompatOpt,
    NprocOpt,
    OutOpt,
    ProfileOpt,
    RepeatOpt,
    ResultsOpt,
    SelectOpt,
    SetOpt,
    ShmOpt,
    ThreadsOpt,
    TimeoutOpt,
    TraceOpt,
    UserError,
    WheelhouseOpt,
    app,
    console,
    engine,
    err,
    names,
)
from cudastack.host.run import loop, pipeline
from cudastack.host.run.local import SuiteArgs

# pip's words when a wheel does not match its --hash in a --require-hashes install.
HASH_MISMATCH = "DO NOT MATCH THE HASHES"


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
    overrides: Optional[list[str]] = SetOpt,
    trace: bool = TraceOpt,
    nproc: int = NprocOpt,
    repeat: int = RepeatOpt,
    minor_version_compat: bool = MinorCompatOpt,
    env: Optional[list[str]] = EnvOpt,
    extra_work: float = typer.Option(
        0.0, hidden=True, help="Testing aid: every timed call this fraction slower, on its clock."
    ),
) -> None:
    """Run the suite here (cell 'local'), or in the containers of --cell cells."""
    args = SuiteArgs(
        names(bench),
        list(select or []),
        profile,
        bench_dir,
        device,
        threads,
        extra_work,
        list(overrides or []),
        trace,
        nproc,
        repeat,
        list(env or []),
    )
    if not cell:
        loop.run_here(args, out, results_dir, timeout)
        return
    try:
        loop.run_cells(
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
            minor_version_compat=minor_version_compat,
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
    overrides: Optional[list[str]] = SetOpt,
    trace: bool = TraceOpt,
    nproc: int = NprocOpt,
    repeat: int = RepeatOpt,
    minor_version_compat: bool = MinorCompatOpt,
    env: Optional[list[str]] = EnvOpt,
    local: bool = typer.Option(False, "--local", help="Skip the containers: run here."),
) -> None:
    """The main job (make bench): every compatible cell of the matrix, or here without Docker."""
    args = SuiteArgs(
        names(bench),
        list(select or []),
        profile,
        bench_dir,
        device,
        threads,
        overrides=list(overrides or []),
        trace=trace,
        nproc=nproc,
        repeat=repeat,
        env=list(env or []),
    )
    args.validate()
    matrix.select(matrix.load(matrix_file), names(cell))  # a bad matrix or cell fails first
    if not local:
        try:
            client = images.connect()
        except images.EngineUnavailable as exc:
            console.print(
                f"cudastack bench: {exc}: running the suite locally in this Python "
                "environment instead (profile auto: quick on a CPU, standard on a GPU)"
            )
        else:
            # Every cell gets its row, a skipped one with the reason `doctor` gives; when no
            # cell can run, the suite runs here as well, in the same run folder.
            loop.run_cells(
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
                minor_version_compat=minor_version_compat,
            )
            return
    else:
        console.print("cudastack bench: --local: running the suite in this Python environment")
    loop.run_here(args, out, results_dir, timeout)


@app.command()
def check(
    cell: str = CellOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
) -> None:
    """Check each cell before a build: its torch x CUDA variant was published, its packages
    resolve for its Python on Linux on this host's architecture (from PyPI, or --wheelhouse
    alone), and no known run-time rule is broken. Exit 0: all resolve; 1: a cell conflicts, or
    PyPI cannot be reached (nothing was shown to resolve); 2: bad input. build, bench and lock
    run it first."""
    cells = matrix.select(matrix.load(matrix_file, variants=False), names(cell))
    inputs = loop.build_inputs(matrix_file, wheelhouse, ca_file)
    try:
        found = checks.check_cells(cells, inputs.wheelhouse, inputs.ca_file)
    except checks.CheckUnavailable as exc:
        raise UserError(str(exc)) from None
    down = next((f.unreachable for f in found if f.unreachable), "")
    for f in found:
        for problem in f.problems:
            console.print(f"{f.cell}: {problem}", highlight=False, markup=False)
        if f.ok and not f.unreachable:
            console.print(
                f"{f.cell}: resolves ({len(f.resolved)} packages from {f.source}, "
                f"{f.seconds:.1f} s)",
                highlight=False,
                markup=False,
            )
    if down:
        err.print(
            f"error: {down}; the cells' packages could not be resolved (pass --wheelhouse DIR "
            "to resolve from a folder of wheels)",
            highlight=False,
            markup=False,
        )
    if down or not all(f.ok for f in found):
        raise typer.Exit(1)


@app.command()
def build(
    cell: str = CellOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
) -> None:
    """Build the cells' images; a cell whose content-hash tag exists is not rebuilt."""
    cells = matrix.select(matrix.load(matrix_file), names(cell))
    inputs = loop.build_inputs(matrix_file, wheelhouse, ca_file)
    client = engine("building images")
    failed = []
    for c in cells:
        started = time.perf_counter()
        with console.status(f"building {escape(c.name)}") as status:

            def on_line(line: str, name: str = c.name) -> None:
                step = re.match(r"Step (\d+/\d+)", line)
                if step:
                    status.update(f"building {escape(name)}: step {step.group(1)}")
                loop.build_logger(name)(line)

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
def doctor_cmd(
    matrix_file: Path = MatrixOpt,
    gpus: str = GpusOpt,
    minor_version_compat: bool = MinorCompatOpt,
    deep: bool = typer.Option(
        False, "--deep", help="Also run the smoke profile here and count its ok/failed cases."
    ),
    bench_dir: Path = BenchDirOpt,
    results_dir: Path = ResultsOpt,
) -> None:
    """Check the host: Docker engine, GPU runtime, driver vs each cell, disk, /dev/shm; per cell
    what `bench` with the same --gpus and --minor-version-compat will do. --deep also runs the
    smoke profile in this Python environment (a run folder under --results-dir) and exits 1 when
    a case failed."""
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
    loop.resolve_gpus(gpus, report)  # refuses a malformed --gpus
    inputs = pipeline.BuildInputs.for_matrix(matrix_file)
    plan = pipeline.plan_cells(cells, report, gpus, client, inputs, minor_version_compat)
    failed = any(ch.status == "fail" for ch in report.checks)
    for c, ok, why in plan:
        verdict, colour_of = ("runs", "green") if ok else ("skip", "yellow")
        # What bench does before building a cell it has no image of: a conflict fails it.
        if ok and client is not None and not images.exists(client, inputs.tag(c)):
            found = pipeline.check_before_build(c, inputs)
            if found.problems:
                verdict, colour_of, why = "fail", "red", f"check: {'; '.join(found.problems)}"
                failed = True
        console.print(f"[{colour_of}]{verdict:>4}[/]  {escape(c.name)}: {escape(why)}")
    if deep:
        smoke = loop.run_smoke(bench_dir, results_dir)
        status = "fail" if smoke.failed or not smoke.ok else "ok"
        console.print(
            f"[{colour[status]}]{status:>4}[/]  smoke profile here: {smoke.ok} ok, "
            f"{smoke.skipped} skipped, {smoke.failed} failed ({escape(str(smoke.run_dir))})"
        )
        failed = failed or status == "fail"
    if failed:
        raise typer.Exit(1)


@app.command("list")
def list_(
    profile: str = typer.Option(
        "quick",
        help="Whose cases --cases lists: smoke | quick | standard | full | auto (as run picks).",
    ),
    cases: bool = typer.Option(False, "--cases", help="Also list every case id."),
    bench_dir: Path = BenchDirOpt,
    matrix_file: Path = MatrixOpt,
) -> None:
    """Show the benchmarks, how many cases each profile runs, and the cells."""
    specs = suite.discover(bench_dir)
    # auto is no grid of its own: list what a run here would pick (a GPU NVML sees: standard).
    profile = suite.resolve_profile(profile, has_gpu=bool(doctor.nvml_host()[2])).name
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
    from cudastack.host.cli import handoff, reading  # noqa: F401  (register their commands)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except (suite.SuiteError, results.ResultsError, matrix.MatrixError, UserError) as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(EXIT_BAD_INPUT)
