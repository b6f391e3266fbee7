"""Commands that pin and hand over cells: lock, reproduce, push, export, import, shell."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.markup import escape

from cudastack.contract import ospackages, runfolder
from cudastack.contract.errors import EXIT_FAILED, UserError
from cudastack.host.cells import check, handoff, images, lock, matrix, reproduce
from cudastack.host.cli.app import (
    CaFileOpt,
    CellOpt,
    EnvOpt,
    GpusOpt,
    MatrixOpt,
    ResultsOpt,
    ShmOpt,
    WheelhouseOpt,
    engine,
    names,
    run_folder,
)
from cudastack.host.console import console, err
from cudastack.host.run import pipeline
from cudastack.host.run.container import (
    base_environment,
    check_shm_size,
    harness_volume,
    invoking_user,
)
from cudastack.host.run.suite_args import cell_env


def _one_cell(matrix_file: Path, name: str) -> matrix.Cell:
    (cell,) = matrix.select(matrix.load(matrix_file), [name])
    return cell


def _existing_tag(client: object, cell: matrix.Cell, matrix_file: Path) -> str:
    tag = pipeline.BuildInputs.for_matrix(matrix_file).tag(cell)
    if not images.exists(client, tag):
        raise UserError(
            f"cell {cell.name} has no image {tag} here; run `cudastack build --cell "
            f"{cell.name}` first"
        )
    return tag


def lock_cmd(
    cell: str = CellOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
) -> None:
    """Pin each cell's base image to its registry digest and its packages to hashes."""
    cells = matrix.select(matrix.load(matrix_file), names(cell))
    for c in cells:  # `cudastack check` first: no lock is written for a cell that conflicts
        found = check.check_cell(c, wheelhouse, ca_file)
        if found.problems:
            raise UserError(f"cell {c.name} fails `cudastack check`: {'; '.join(found.problems)}")
    client = engine("resolving base image digests")
    locks_dir = matrix_file.parent / "locks"
    for c in cells:
        pinned = lock.base_digest(client, c.base_image)
        if pinned != c.base_image:
            lock.pin_base(matrix_file, c.base_image, pinned)
        lines = lock.resolve(c, wheelhouse, ca_file)
        lock.write_lock(c.lock_path(locks_dir), c, lines)
        console.print(
            f"{escape(c.name)}: base {escape(pinned)}; {len(lines)} packages -> "
            f"{c.lock_path(locks_dir)}",
            highlight=False,
        )
        # The OS versions a build of the old lock installed may not fit a new base: the next
        # build of this lock pins its own.
        os_lock = lock.os_lock_path(c, locks_dir)
        if os_lock.is_file():
            os_lock.unlink()
            console.print(
                f"{escape(c.name)}: removed {os_lock}: the next build pins the OS packages it "
                "installs",
                highlight=False,
            )


def _recorded_cells(
    run: str, results_dir: Path
) -> tuple[Optional[Path], list[tuple[dict, Callable[[], dict]]]]:
    """(the archive, if ``run`` is one; [(recorded inputs, its env.json's reader)] per cell):
    from an export made with --run, or from the run's folder."""
    if Path(run).is_file():
        _, record, env = handoff.run_records(Path(run))
        return Path(run), [(record, lambda: env)]

    def reader(env_file: Path) -> Callable[[], dict]:
        def read() -> dict:
            if not env_file.is_file():
                raise UserError(f"{env_file.parent} has no {runfolder.ENV}: its cell never ran")
            return runfolder.read_json(env_file)

        return read

    run_dir = run_folder(run, results_dir)
    recorded = sorted(run_dir.glob(f"*/{runfolder.INPUTS}"))
    if not recorded:
        raise UserError(
            f"{run_dir} has no cells with recorded inputs ({runfolder.INPUTS}); only container "
            "runs can be reproduced, from their run folder or an export made with --run"
        )
    return None, [
        (reproduce.checked_record(runfolder.read_json(p), str(p)), reader(p.parent / runfolder.ENV))
        for p in recorded
    ]


def reproduce_cmd(
    run: str = typer.Argument(
        ..., help="A run id (under --results-dir), a run folder, or an archive from export --run."
    ),
    cell: str = CellOpt,
    results_dir: Path = ResultsOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even if the image is here."),
    apt_snapshot: Optional[str] = typer.Option(
        None,
        "--apt-snapshot",
        metavar="YYYYMMDDTHHMMSSZ",
        help="With --rebuild: install the recorded OS packages from the distribution's snapshot "
        "archive at this time (snapshot.debian.org, snapshot.ubuntu.com), for versions its "
        "archive no longer serves.",
    ),
    show_identical: bool = typer.Option(
        False, "--show-identical", help="Also list what was compared and found equal."
    ),
) -> None:
    """Get a past run's cells' images back (present, imported, pulled or rebuilt from their
    recorded inputs, OS packages at their recorded versions) and verify the environment against
    the run's: base image, Python, OS and pip packages, torch and its CUDA libraries, lock."""
    if apt_snapshot is not None and not rebuild:
        raise UserError("--apt-snapshot applies to a rebuild: add --rebuild")
    if apt_snapshot is not None:
        ospackages.checked_snapshot(apt_snapshot)
    archive, recorded = _recorded_cells(run, results_dir)
    wanted = names(cell)
    known = [record["cell"]["name"] for record, _ in recorded]
    if any(w not in known for w in wanted):
        raise UserError(
            f"unknown cell {', '.join(w for w in wanted if w not in known)}; "
            f"cells of this run: {', '.join(known)}"
        )
    client = engine("reproducing cells")
    locks_dir = matrix_file.parent / "locks"
    differs = False
    for record, read_env in recorded:
        c = reproduce.cell_from(record)
        if wanted and c.name not in wanted:
            continue
        original = read_env()
        pushed = handoff.pushed_record(locks_dir, c)
        ref = pushed.read_text().strip() if pushed.is_file() else ""
        # The OS packages the original build installed, at their versions: build args outside
        # the tag (see images.build), so the rebuild is the same cell, not "inputs changed".
        if apt_snapshot and "ARG APT_SNAPSHOT" not in record["dockerfile"]:
            # Its recorded Dockerfile predates snapshots: the engine would ignore the argument.
            raise UserError(
                f"cell {c.name} was built from a Dockerfile that cannot use --apt-snapshot "
                "(recorded before cudastack pinned OS packages); rebuild without it"
            )
        unhashed = {
            "OS_PACKAGES": reproduce.os_pins(original, f"cell {c.name}'s {runfolder.ENV}"),
            "APT_SNAPSHOT": apt_snapshot or "",
        }

        def build(
            cell_: matrix.Cell, dockerfile: Path, locks: Path, args: dict[str, str] = unhashed
        ) -> str:
            inputs = pipeline.BuildInputs(dockerfile, locks, wheelhouse, ca_file)
            tag, _ = pipeline.ensure_image(client, cell_, inputs, lambda line: None, args)
            return tag

        # From an archive, the image comes out of it (hashes checked first) when it is not here.
        load = functools.partial(handoff.import_archive, client, archive) if archive else None
        try:
            how = reproduce.obtain(client, record, ref, rebuild, build, load)
        except images.BuildFailed as exc:  # a failure, not bad input: exit 1, as build's
            err.print(f"error: {exc.headline}", highlight=False, markup=False)
            raise typer.Exit(EXIT_FAILED) from None
        now = reproduce.probe(client, record["tag"])
        base_before = str(record.get("base") or "")
        # An image the run itself used holds its base in its own bytes; another build of the
        # same inputs (a rebuild) is judged by the base it was built on.
        same_image = reproduce.is_recorded_image(
            client, record["tag"], str(record.get("image") or "")
        )
        base_now = (
            base_before
            if same_image
            else reproduce.base_identity(client, c.base_image, record["tag"])
        )
        categories = reproduce.compare(original, now, base_before, base_now)
        console.print(
            f"{escape(c.name)}: image {how} as {record['tag']}: {reproduce.status(categories)}",
            highlight=False,
        )
        for line in reproduce.report(categories, show_identical):
            console.print(f"  {escape(line)}", highlight=False)
        differs = differs or reproduce.differences(categories) > 0
    if differs:
        raise typer.Exit(EXIT_FAILED)


def push_cmd(
    cell: str = typer.Argument(..., help="The cell to push."),
    registry: str = typer.Option(..., help="HOST[:PORT]/REPO to push to."),
    matrix_file: Path = MatrixOpt,
) -> None:
    """Push a cell's image and record the pushed digest beside its lock."""
    c = _one_cell(matrix_file, cell)
    client = engine("pushing")
    tag = _existing_tag(client, c, matrix_file)
    ref = handoff.push(client, tag, registry)
    record = handoff.pushed_record(matrix_file.parent / "locks", c)
    record.parent.mkdir(parents=True, exist_ok=True)
    runfolder.atomic_write(record, lambda p: p.write_text(ref + "\n", encoding="utf-8"))
    console.print(f"{escape(c.name)}: pushed {ref} (recorded in {record})", highlight=False)


def _run_cell(run: str, results_dir: Path, cell: str) -> tuple[dict, dict[str, bytes]]:
    """A run's recorded inputs of one cell, and the files export --run carries."""
    folder = run_folder(run, results_dir) / cell
    files = {}
    for name in handoff.RUN_FILES:
        if not (folder / name).is_file():
            raise UserError(
                f"{folder} has no {name}; --run takes a container run that measured cell {cell}"
            )
        files[name] = (folder / name).read_bytes()
    inputs = folder / runfolder.INPUTS
    return reproduce.checked_record(runfolder.read_json(inputs), str(inputs)), files


def export_cmd(
    cell: str = typer.Argument(..., help="The cell to export."),
    out: Path = typer.Option(..., "-o", "--out", help="Archive file to write."),
    matrix_file: Path = MatrixOpt,
    run: Optional[str] = typer.Option(
        None,
        "--run",
        help="A run (id or folder) of this cell: export the image it measured with, and its "
        "records, so `cudastack reproduce FILE` needs nothing else.",
    ),
    results_dir: Path = ResultsOpt,
) -> None:
    """Write a cell's image, lock and manifest into one archive."""
    files: Optional[dict[str, bytes]] = None
    if run:
        record, files = _run_cell(run, results_dir, cell)
        c, tag, lock_text = reproduce.cell_from(record), record["tag"], record["lock"]
    else:
        c = _one_cell(matrix_file, cell)
    if out.exists():
        raise UserError(f"{out} already exists; choose another -o")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist")
    client = engine("exporting")
    if run:
        if not images.exists(client, tag):
            raise UserError(
                f"cell {cell} has no image {tag} here, the one run {run} measured with; "
                f"`cudastack reproduce {run} --cell {cell}` gets it back"
            )
    else:
        tag = _existing_tag(client, c, matrix_file)
        lock_text = handoff.lock_text(matrix_file.parent / "locks", c)
    manifest = handoff.export(client, c, tag, lock_text, out, files)
    size = out.stat().st_size / 1e9
    console.print(
        f"{escape(c.name)}: {out} ({size:.2f} GB), image {manifest['image_id']}", highlight=False
    )


def import_cmd(
    archive: Path = typer.Argument(..., help="An archive from `cudastack export`."),
) -> None:
    """Load an exported cell after checking its hashes; a damaged archive loads nothing."""
    if not archive.is_file():
        raise UserError(f"{archive} is not a file")
    client = engine("importing")
    manifest = handoff.import_archive(client, archive)
    console.print(
        f"{manifest['cell']}: loaded {manifest['tag']} ({manifest['image_id']}), hashes verified",
        highlight=False,
        markup=False,
    )


def shell_cmd(
    ctx: typer.Context,
    cell: str = typer.Argument(..., help="The cell to enter."),
    matrix_file: Path = MatrixOpt,
    gpus: str = GpusOpt,
    shm_size: str = ShmOpt,
    env: Optional[list[str]] = EnvOpt,
) -> None:
    """Open a shell (or run a command after --) in a cell, GPUs and this folder mounted."""
    variables = {**base_environment(), **cell_env(list(env or []))}  # bad --env: error first
    check_shm_size(shm_size)
    c = _one_cell(matrix_file, cell)
    if shutil.which("docker") is None:
        raise UserError("the docker command line is needed for an interactive shell")
    client = engine("a shell")
    tag = _existing_tag(client, c, matrix_file)
    argv = [
        "docker",
        "run",
        "--rm",
        "-i",
        "--user",
        invoking_user(),
        # Names only: docker takes each value from its own environment, so that no value (a
        # token given with --env) is on a command line every user of this host can read.
        *(a for k in variables for a in ("-e", k)),
        *(a for host, m in harness_volume().items() for a in ("-v", f"{host}:{m['bind']}:ro")),
        "-v",
        f"{Path.cwd()}:/work",
        "-w",
        "/work",
        "--shm-size",
        shm_size,
    ]
    if sys.stdin.isatty():
        argv.append("-t")
    if gpus not in ("auto", "none"):
        argv += ["--gpus", gpus if gpus == "all" else f'"device={gpus}"']
    elif gpus == "auto" and pipeline.doctor.inspect(client).gpu_runtime:
        argv += ["--gpus", "all"]
    argv += [tag, *(ctx.args or ["bash"])]
    sys.exit(subprocess.call(argv, env={**os.environ, **variables}))
