"""`cudastack bench` across the matrix: check the host, build what is missing, run, ingest."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from cudastack.contract import ospackages, runfolder
from cudastack.contract.errors import UserError
from cudastack.host.analysis import results
from cudastack.host.cells import check, doctor, images, lock, reproduce, stacks
from cudastack.host.cells.matrix import DEFAULT_MATRIX, Cell
from cudastack.host.run.container import ContainerOptions, container_kwargs, run_container
from cudastack.host.run.launcher import CellPlan, CellResult, finished_cell
from cudastack.host.run.suite_args import SuiteArgs


@dataclass(frozen=True)
class BuildInputs:
    """Where a cell's image comes from."""

    dockerfile: Path
    locks_dir: Path
    wheelhouse: Optional[Path] = None
    ca_file: Optional[Path] = None

    def __post_init__(self) -> None:
        """A Dockerfile the builder cannot take is bad input: refused before any build."""
        found = images.buildkit_only(self.dockerfile.read_text(encoding="utf-8"))
        if found:
            raise UserError(
                f"{self.dockerfile}: {found} needs BuildKit, and cudastack builds with the classic "
                "builder (the Docker SDK for Python has no BuildKit): write that step without it"
            )

    @classmethod
    def for_matrix(
        cls, matrix_file: Path, wheelhouse: Optional[Path] = None, ca_file: Optional[Path] = None
    ) -> BuildInputs:
        """A matrix's Dockerfile sits beside it (else the shipped one); its locks in locks/."""
        dockerfile = matrix_file.parent / "Dockerfile"
        if not dockerfile.is_file():
            dockerfile = DEFAULT_MATRIX.parent / "Dockerfile"
        return cls(dockerfile, matrix_file.parent / "locks", wheelhouse, ca_file)

    def tag(self, cell: Cell) -> str:
        return cell.image_tag(self.dockerfile, self.locks_dir)


def check_before_build(cell: Cell, inputs: BuildInputs) -> check.CellCheck:
    """`cudastack check` as a build of ``cell`` from ``inputs`` needs it (cached per process):
    resolved against the wheelhouse when there is one, judged by the lock when there is one."""
    lock = cell.lock_path(inputs.locks_dir)
    return check.check_cell(
        cell, inputs.wheelhouse, inputs.ca_file, lock if lock.is_file() else None
    )


class CellImage(NamedTuple):
    """A cell's image: its content-hash tag, and whether this call built it."""

    tag: str
    built: bool


def ensure_image(
    client: Any,
    cell: Cell,
    inputs: BuildInputs,
    on_line: Callable[[str], None],
    unhashed_args: Optional[dict[str, str]] = None,
) -> CellImage:
    """Build the cell's image unless its content-hash tag already exists (``unhashed_args``:
    see images.build; its OS_PACKAGES, when given, replace the cell's OS lock)."""
    tag = inputs.tag(cell)
    if images.exists(client, tag):
        return CellImage(tag, False)
    # `cudastack check` first (cached per process): a cell whose packages cannot install fails
    # in seconds with the conflict named, before a base is pulled or pip runs. A cell built
    # from a wheelhouse is resolved against that folder alone, so offline builds stay offline;
    # a locked cell is judged by its lock's pins, which is what it installs.
    found = check_before_build(cell, inputs)
    if found.problems:
        raise images.BuildFailed(f"build of {cell.name} failed: check: {'; '.join(found.problems)}")
    if found.unreachable:
        on_line(f"check: {found.unreachable}; building without the resolution check")
    # A locked cell's OS packages are pinned by its first build (below): every later build,
    # here or on a teammate's host, installs those versions. Outside the tag, as reproduce's
    # pins are (images.build): the pins make the same cell, not a new one.
    os_lock = lock.os_lock_path(cell, inputs.locks_dir)
    unhashed_args = dict(unhashed_args or {})
    if "OS_PACKAGES" not in unhashed_args and os_lock.is_file():
        try:
            pins = lock.read_os_lock(os_lock)
        except lock.LockError as exc:
            raise images.BuildFailed(f"build of {cell.name} failed: {exc}") from None
        unhashed_args["OS_PACKAGES"] = ospackages.as_build_arg(pins)
        on_line(f"OS packages pinned by {os_lock}")
    context = images.make_context(
        cell, inputs.dockerfile, inputs.locks_dir, inputs.wheelhouse, inputs.ca_file
    )
    try:
        images.build(
            client,
            cell,
            tag,
            cell.inputs_hash(inputs.dockerfile, inputs.locks_dir),
            context,
            on_line,
            unhashed_args,
        )
    finally:
        shutil.rmtree(context, ignore_errors=True)
    if cell.lock_path(inputs.locks_dir).is_file() and not os_lock.is_file():
        installed = images.apt_installed(client, tag)
        if installed:
            lock.write_os_lock(os_lock, cell, installed)
            on_line(f"{len(installed)} OS packages this build installed pinned -> {os_lock}")
    return CellImage(tag, True)


def ensure_logged_image(
    client: Any, cell: Cell, inputs: BuildInputs, cell_dir: Path, log: Callable[[str], None]
) -> CellImage:
    """``ensure_image``, every line of a build also appended to the cell's build.log."""
    with open(cell_dir / runfolder.BUILD_LOG, "a", encoding="utf-8") as build_log:

        def build_line(line: str) -> None:
            build_log.write(line + "\n")
            log(line)

        return ensure_image(client, cell, inputs, build_line)


def run_cell(
    client: Any,
    cell: Cell,
    inputs: BuildInputs,
    args: SuiteArgs,
    run_dir: Path,
    run_id: str,
    opts: ContainerOptions,
    say: Callable[[str], None],
    log: Callable[[str], None],
    process: int = 0,
) -> CellResult:
    """Build (if needed) and run one cell; any failure becomes a harness row, never an exception.
    ``process`` above 0 is a repeat (--repeat): the cell's folder exists and is added to."""
    cell_dir = run_dir / cell.name
    cell_dir.mkdir(parents=True, exist_ok=process > 0 or args.resume)
    started = time.perf_counter()
    try:
        tag, built = ensure_logged_image(client, cell, inputs, cell_dir, log)
    except images.BaseUnavailable as exc:
        # Like a missing GPU, a base that cannot be had here is a fact about this host. A base
        # tag that does not exist (BaseGone) is not: the matrix is wrong, and the cell fails.
        results.append_records(
            cell_dir,
            [results.harness_row(run_id, cell.name, "build", "skipped", str(exc), process=process)],
        )
        return CellResult(cell.name, "skipped", str(exc), time.perf_counter() - started)
    except images.BuildFailed as exc:
        reason = exc.headline  # the log's decisive lines; all of it is in the cell's build.log
        results.append_records(
            cell_dir,
            [results.harness_row(run_id, cell.name, "build", "failed", reason, process=process)],
        )
        return CellResult(cell.name, "failed", reason, time.perf_counter() - started)
    build_s = time.perf_counter() - started
    say(f"{cell.name}: image {tag} {'built' if built else 'up to date'}")
    ref = record_cell(client, cell, inputs, cell_dir, tag)
    kwargs = container_kwargs(tag, args, cell_dir, cell.name, run_id, ref, opts, process)
    started = time.perf_counter()
    outcome = run_container(client, kwargs, cell_dir, opts.timeout_s, log)
    run_s = time.perf_counter() - started
    if not outcome.ok:
        results.append_records(
            cell_dir,
            [results.harness_row(run_id, cell.name, "run", "failed", outcome.reason, ref, process)],
        )
        return CellResult(cell.name, "failed", outcome.reason, build_s, run_s)
    return finished_cell(cell.name, cell_dir, build_s, run_s)


def record_cell(client: Any, cell: Cell, inputs: BuildInputs, cell_dir: Path, tag: str) -> str:
    """Record the cell's inputs and its image's identity in its folder (what `reproduce`
    rebuilds and compares); returns the image reference its records name."""
    ref = images.identity(client, tag)
    lock_file = cell.lock_path(inputs.locks_dir)
    reproduce.record_inputs(
        cell_dir,
        cell,
        inputs.dockerfile,
        lock_file.read_text(encoding="utf-8") if lock_file.is_file() else "",
        tag,
        ref,
        cell.inputs_hash(inputs.dockerfile, inputs.locks_dir),
        reproduce.base_identity(client, cell.base_image, tag),
    )
    return str(ref)


def image_requirements(client: Any, cell: Cell, inputs: Optional[BuildInputs]) -> Optional[list]:
    """The NVIDIA_REQUIRE_* of the cell's image, or else of its base, where one is on this
    engine (read from its configuration, never pulled); None when neither is."""
    if client is None:
        return None
    refs = ([inputs.tag(cell)] if inputs is not None else []) + [cell.base_image]
    for ref in refs:
        env = images.config_env(client, ref)
        if env is not None:
            return stacks.image_requirements(env)
    return None


class CellVerdict(NamedTuple):
    """Whether a cell can run on this host, and if not why (what `doctor` prints)."""

    cell: Cell
    runnable: bool
    reason: str


def plan_cells(
    cells: list[Cell],
    report: doctor.HostReport,
    gpus: str,
    client: Any = None,
    inputs: Optional[BuildInputs] = None,
    minor_version_compat: bool = False,
) -> list[CellVerdict]:
    """A verdict for every cell: the one plan `doctor` prints and `bench` and
    `run --cell` follow. ``gpus`` is the --gpus as given (auto, not what it resolved to)."""
    plan = []
    for c in cells:
        # Only a CUDA cell on a host with a GPU gets as far as its image's requirements.
        needs = bool(c.torch_cuda and report.driver and report.gpu_runtime and gpus != "none")
        requirements = image_requirements(client, c, inputs) if needs else None
        runnable, why = doctor.cell_verdict(c, report, gpus, requirements, minor_version_compat)
        plan.append(CellVerdict(c, runnable, why))
    return plan


def cells_to_build(client: Any, verdicts: list[CellVerdict], inputs: BuildInputs) -> list[Cell]:
    """The cells of ``verdicts`` that will run and have no image on the engine yet: what a run
    builds first, and what ``doctor.image_disk`` weighs against the engine's free disk."""
    return [c for c, ok, _ in verdicts if ok and not images.exists(client, inputs.tag(c))]


@dataclass
class ContainerLauncher:
    """Cells of a matrix, each in its image on the Docker engine: built when missing (after
    `cudastack check`), then run with the host's GPUs as ``opts`` says."""

    client: Any
    cells: list[Cell]
    inputs: BuildInputs
    args: SuiteArgs
    opts: ContainerOptions
    report: doctor.HostReport
    gpus: str  # --gpus as given: auto stays auto for the plan
    say: Callable[[str], None]
    build_log: Callable[[str], Callable[[str], None]]  # a cell's name -> where its build lines go
    interrupted_note: str = "containers removed, keeping the cells that finished"

    def plan(self) -> list[CellPlan]:
        """A verdict for every cell (``plan_cells``), and a warning before the builds begin
        when the images they make may not fit in the engine's free disk."""
        by_name = plan_cells(
            self.cells,
            self.report,
            self.gpus,
            self.client,
            self.inputs,
            self.opts.minor_version_compat,
        )
        to_build = cells_to_build(self.client, by_name, self.inputs)
        disk = doctor.image_disk(to_build, self.report.disk)
        if to_build and disk.status != "ok":
            self.say(f"warning: {disk.detail}")
        return [CellPlan(c.name, ok, why) for c, ok, why in by_name]

    def run(self, cell: str, process: int, run_dir: Path, run_id: str) -> CellResult:
        (found,) = [c for c in self.cells if c.name == cell]
        return run_cell(
            self.client,
            found,
            self.inputs,
            self.args,
            run_dir,
            run_id,
            self.opts,
            self.say,
            self.build_log(cell),
            process,
        )
