"""Commands that pin and hand over cells: lock, reproduce, push, export, import, shell."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from . import handoff, images, lock, matrix, pipeline, reproduce, results
from .cli_common import (
    CaFileOpt,
    CellOpt,
    GpusOpt,
    MatrixOpt,
    ResultsOpt,
    ShmOpt,
    UserError,
    WheelhouseOpt,
    app,
    console,
    engine,
    names,
)
from .containers import HARNESS_SRC, IN_SRC


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


@app.command("lock")
def lock_cmd(
    cell: str = CellOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
) -> None:
    """Pin each cell's base image to its registry digest and its packages to hashes."""
    cells = matrix.select(matrix.load(matrix_file), names(cell))
    client = engine("resolving base image digests")
    locks_dir = matrix_file.parent / "locks"
    try:
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
    except lock.LockError as exc:
        raise UserError(str(exc)) from None


@app.command("reproduce")
def reproduce_cmd(
    run: str = typer.Argument(..., help="A run id (under --results-dir) or a run folder."),
    cell: str = CellOpt,
    results_dir: Path = ResultsOpt,
    matrix_file: Path = MatrixOpt,
    wheelhouse: Optional[Path] = WheelhouseOpt,
    ca_file: Optional[Path] = CaFileOpt,
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even if the image is here."),
) -> None:
    """Rebuild (or pull) a past run's cells from its recorded inputs and verify the environment."""
    run_dir = Path(run) if Path(run).is_dir() else results_dir / run
    recorded = sorted(run_dir.glob(f"*/{reproduce.INPUTS}"))
    if not recorded:
        raise UserError(
            f"{run_dir} has no cells with recorded inputs ({reproduce.INPUTS}); "
            "only container runs can be reproduced"
        )
    wanted = names(cell)
    known = [p.parent.name for p in recorded]
    if any(w not in known for w in wanted):
        raise UserError(
            f"unknown cell {', '.join(w for w in wanted if w not in known)}; "
            f"cells of this run: {', '.join(known)}"
        )
    client = engine("reproducing cells")
    locks_dir = matrix_file.parent / "locks"
    differs = False
    for path in recorded:
        if wanted and path.parent.name not in wanted:
            continue
        record = json.loads(path.read_text())
        c = reproduce.cell_from(record)
        pushed = handoff.pushed_record(locks_dir, c)
        ref = pushed.read_text().strip() if pushed.is_file() else ""

        def build(cell_: matrix.Cell, dockerfile: Path, locks: Path) -> str:
            inputs = pipeline.BuildInputs(dockerfile, locks, wheelhouse, ca_file)
            tag, _ = pipeline.ensure_image(client, cell_, inputs, lambda line: None)
            return tag

        try:
            how = reproduce.obtain(client, record, ref, rebuild, build)
        except images.BuildFailed as exc:
            raise UserError(exc.headline) from None
        now = reproduce.probe(client, record["tag"])
        original = json.loads((path.parent / results.ENV).read_text())
        lines = reproduce.diff(original, now)
        status = "identical environment" if not lines else f"{len(lines)} differences"
        console.print(
            f"{escape(c.name)}: image {how} as {record['tag']}: {status}", highlight=False
        )
        for line in lines:
            console.print(f"  {escape(line)}", highlight=False)
        differs = differs or bool(lines)
    if differs:
        raise typer.Exit(1)


@app.command("push")
def push_cmd(
    cell: str = typer.Argument(..., help="The cell to push."),
    registry: str = typer.Option(..., help="HOST[:PORT]/REPO to push to."),
    matrix_file: Path = MatrixOpt,
) -> None:
    """Push a cell's image and record the pushed digest beside its lock."""
    c = _one_cell(matrix_file, cell)
    client = engine("pushing")
    tag = _existing_tag(client, c, matrix_file)
    try:
        ref = handoff.push(client, tag, registry)
    except handoff.HandoffError as exc:
        raise UserError(str(exc)) from None
    record = handoff.pushed_record(matrix_file.parent / "locks", c)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(ref + "\n")
    console.print(f"{escape(c.name)}: pushed {ref} (recorded in {record})", highlight=False)


@app.command("export")
def export_cmd(
    cell: str = typer.Argument(..., help="The cell to export."),
    out: Path = typer.Option(..., "-o", "--out", help="Archive file to write."),
    matrix_file: Path = MatrixOpt,
) -> None:
    """Write a cell's image, lock and manifest into one archive."""
    c = _one_cell(matrix_file, cell)
    if out.exists():
        raise UserError(f"{out} already exists; choose another -o")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist")
    client = engine("exporting")
    tag = _existing_tag(client, c, matrix_file)
    try:
        manifest = handoff.export(
            client, c, tag, handoff.lock_text(matrix_file.parent / "locks", c), out
        )
    except handoff.HandoffError as exc:
        raise UserError(str(exc)) from None
    size = out.stat().st_size / 1e9
    console.print(
        f"{escape(c.name)}: {out} ({size:.2f} GB), image {manifest['image_id']}", highlight=False
    )


@app.command("import")
def import_cmd(
    archive: Path = typer.Argument(..., help="An archive from `cudastack export`."),
) -> None:
    """Load an exported cell after checking its hashes; a damaged archive loads nothing."""
    if not archive.is_file():
        raise UserError(f"{archive} is not a file")
    client = engine("importing")
    try:
        manifest = handoff.import_archive(client, archive)
    except handoff.HandoffError as exc:
        raise UserError(str(exc)) from None
    console.print(
        f"{manifest['cell']}: loaded {manifest['tag']} ({manifest['image_id']}), hashes verified",
        highlight=False,
        markup=False,
    )


@app.command("shell", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def shell_cmd(
    ctx: typer.Context,
    cell: str = typer.Argument(..., help="The cell to enter."),
    matrix_file: Path = MatrixOpt,
    gpus: str = GpusOpt,
    shm_size: str = ShmOpt,
) -> None:
    """Open a shell (or run a command after --) in a cell, GPUs and this folder mounted."""
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
        f"{os.getuid()}:{os.getgid()}",
        "-e",
        "HOME=/tmp",
        "-e",
        "CUDA_DEVICE_ORDER=PCI_BUS_ID",
        "-e",
        f"PYTHONPATH={IN_SRC}",
        "-v",
        f"{HARNESS_SRC}:{IN_SRC}:ro",
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
    sys.exit(subprocess.call(argv))
