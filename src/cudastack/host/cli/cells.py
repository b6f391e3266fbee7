"""Commands about the matrix's cells before a run: check, build, doctor."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from cudastack.contract import ospackages
from cudastack.contract.errors import EXIT_FAILED, UserError
from cudastack.host.cells import check as checks
from cudastack.host.cells import doctor, images, matrix
from cudastack.host.cli.app import (
    BenchDirOpt,
    CaFileOpt,
    CellOpt,
    GpusOpt,
    MatrixOpt,
    MinorCompatOpt,
    ResultsOpt,
    WheelhouseOpt,
    engine,
    names,
)
from cudastack.host.console import console, err
from cudastack.host.run import loop, pipeline

# pip's words when a wheel does not match its --hash in a --require-hashes install.
HASH_MISMATCH = "DO NOT MATCH THE HASHES"


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
        raise typer.Exit(EXIT_FAILED)


def build(
    cell: str = CellOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
    apt_snapshot: Optional[str] = typer.Option(
        None,
        "--apt-snapshot",
        metavar="YYYYMMDDTHHMMSSZ",
        help="Install the OS packages from the distribution's snapshot archive at this time "
        "(snapshot.debian.org, snapshot.ubuntu.com): for a cell's OS lock whose versions its "
        "archive no longer serves.",
    ),
) -> None:
    """Build the cells' images; a cell whose content-hash tag exists is not rebuilt. A locked
    cell's first build pins the OS packages it installed (locks/CELL.os.txt); later builds
    install those versions."""
    unhashed = {"APT_SNAPSHOT": ospackages.checked_snapshot(apt_snapshot)} if apt_snapshot else {}
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
                tag, built = pipeline.ensure_image(client, c, inputs, on_line, unhashed)
            except images.BuildFailed as exc:
                if HASH_MISMATCH in str(exc):
                    # A lock that disagrees with its wheels is bad input (exit 2); its line is
                    # the one `run` and `bench` record for this cell.
                    raise UserError(exc.headline) from None
                failed.append(c.name)
                # The reason `bench` and `run --cell` record and print; the log was streamed.
                err.print(f"[red]{escape(c.name)}: build failed[/]\n{escape(exc.headline)}")
                continue
        took = time.perf_counter() - started
        console.print(
            f"{escape(c.name)}: {tag} " + (f"built in {took:.0f} s" if built else "up to date"),
            highlight=False,
        )
    if failed:
        err.print(f"{len(failed)} of {len(cells)} cells failed to build: {', '.join(failed)}")
        raise typer.Exit(EXIT_FAILED)


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
    to_build = pipeline.cells_to_build(client, plan, inputs) if client is not None else []
    for c, ok, why in plan:
        verdict, colour_of = ("runs", "green") if ok else ("skip", "yellow")
        # What bench does before building a cell it has no image of: a conflict fails it.
        if c in to_build:
            found = pipeline.check_before_build(c, inputs)
            if found.problems:
                verdict, colour_of, why = "fail", "red", f"check: {'; '.join(found.problems)}"
                failed = True
        console.print(f"[{colour_of}]{verdict:>4}[/]  {escape(c.name)}: {escape(why)}")
    if client is not None:  # the disk the images bench builds take, against the engine's
        check = doctor.image_disk(to_build, report.disk)
        console.print(
            f"[{colour[check.status]}]{check.status:>4}[/]  {check.name}: {escape(check.detail)}"
        )
    if deep:
        smoke = loop.run_smoke(bench_dir, results_dir)
        status = "fail" if smoke.failed or not smoke.ok else "ok"
        console.print(
            f"[{colour[status]}]{status:>4}[/]  smoke profile here: {smoke.ok} ok, "
            f"{smoke.skipped} skipped, {smoke.failed} failed ({escape(str(smoke.run_dir))})"
        )
        failed = failed or status == "fail"
    if failed:
        raise typer.Exit(EXIT_FAILED)
