"""`cudastack bench` across the matrix: check the host, build what is missing, run, ingest."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from cudastack.host.analysis import results
from cudastack.host.cells import check, doctor, images, reproduce, stacks
from cudastack.host.cells.matrix import DEFAULT_MATRIX, Cell
from cudastack.host.run.container import ContainerOptions, container_kwargs, run_container
from cudastack.host.run.local import SuiteArgs


@dataclass(frozen=True)
class BuildInputs:
    """Where a cell's image comes from."""

    dockerfile: Path
    locks_dir: Path
    wheelhouse: Optional[Path] = None
    ca_file: Optional[Path] = None

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


def ensure_image(
    client: Any, cell: Cell, inputs: BuildInputs, on_line: Callable[[str], None]
) -> tuple:
    """(tag, built): build the cell's image unless its content-hash tag already exists."""
    tag = inputs.tag(cell)
    if images.exists(client, tag):
        return tag, False
    # `cudastack check` first (cached per process): a cell whose packages cannot install fails
    # in seconds with the conflict named, before a base is pulled or pip runs. A cell built
    # from a wheelhouse is resolved against that folder alone, so offline builds stay offline;
    # a locked cell is judged by its lock's pins, which is what it installs.
    found = check_before_build(cell, inputs)
    if found.problems:
        raise images.BuildFailed(f"build of {cell.name} failed: check: {'; '.join(found.problems)}")
    if found.unreachable:
        on_line(f"check: {found.unreachable}; building without the resolution check")
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
        )
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return tag, True


@dataclass
class CellResult:
    """What happened to one cell in a matrix run."""

    cell: str
    status: str  # ok | skipped | failed
    reason: str = ""
    build_s: float = 0.0
    run_s: float = 0.0  # container start to removal
    suite_s: float = 0.0  # what the worker itself spent on the suite

    @property
    def overhead_s(self) -> float:
        """Orchestration time outside the suite: container start, imports, log and teardown."""
        return self.run_s - self.suite_s


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
    cell_dir.mkdir(parents=True, exist_ok=process > 0)
    started = time.perf_counter()
    try:
        with open(cell_dir / "build.log", "a", encoding="utf-8") as build_log:

            def build_line(line: str) -> None:
                build_log.write(line + "\n")
                log(line)

            tag, built = ensure_image(client, cell, inputs, build_line)
    except images.BaseUnavailable as exc:
        # Like a missing GPU, a base that cannot be had here is a fact about this host.
        results.append_records(
            cell_dir, [results.harness_row(run_id, cell.name, "build", "skipped", str(exc))]
        )
        return CellResult(cell.name, "skipped", str(exc), time.perf_counter() - started)
    except images.BuildFailed as exc:
        reason = exc.headline
        if exc.tail:
            reason += "; last log lines: " + " | ".join(exc.tail[-5:])
        results.append_records(
            cell_dir, [results.harness_row(run_id, cell.name, "build", "failed", reason)]
        )
        return CellResult(cell.name, "failed", reason, time.perf_counter() - started)
    build_s = time.perf_counter() - started
    say(f"{cell.name}: image {tag} {'built' if built else 'up to date'}")
    ref = images.identity(client, tag)
    lock = cell.lock_path(inputs.locks_dir)
    reproduce.record_inputs(
        cell_dir,
        cell,
        inputs.dockerfile,
        lock.read_text(encoding="utf-8") if lock.is_file() else "",
        tag,
        ref,
        cell.inputs_hash(inputs.dockerfile, inputs.locks_dir),
    )
    kwargs = container_kwargs(tag, args, cell_dir, cell.name, run_id, ref, opts, process)
    started = time.perf_counter()
    outcome = run_container(client, kwargs, cell_dir, opts.timeout_s, log)
    run_s = time.perf_counter() - started
    if not outcome.ok:
        results.append_records(
            cell_dir, [results.harness_row(run_id, cell.name, "run", "failed", outcome.reason, ref)]
        )
        return CellResult(cell.name, "failed", outcome.reason, build_s, run_s)
    return finished_cell(cell.name, cell_dir, build_s, run_s)


def finished_cell(name: str, cell_dir: Path, build_s: float, run_s: float) -> CellResult:
    """A cell whose worker exited 0, from its done.json: ok, or skipped as a whole when the
    worker found the cell unfit for this device (its torch not built for the GPU's arch)."""
    done = json.loads((cell_dir / results.DONE).read_text())
    if done.get("cell_skipped"):
        return CellResult(name, "skipped", str(done["cell_skipped"]), build_s, run_s)
    return CellResult(name, "ok", "", build_s, run_s, float(done["suite_s"]))


def skip_cell(run_dir: Path, run_id: str, cell: Cell, reason: str) -> CellResult:
    results.append_records(
        run_dir / cell.name, [results.harness_row(run_id, cell.name, "doctor", "skipped", reason)]
    )
    return CellResult(cell.name, "skipped", reason)


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


def plan_cells(
    cells: list,
    report: doctor.HostReport,
    gpus: str,
    client: Any = None,
    inputs: Optional[BuildInputs] = None,
    minor_version_compat: bool = False,
) -> list:
    """[(cell, runnable, reason)] for every cell: the one plan `doctor` prints and `bench` and
    `run --cell` follow. ``gpus`` is the --gpus as given (auto, not what it resolved to)."""
    plan = []
    for c in cells:
        # Only a CUDA cell on a host with a GPU gets as far as its image's requirements.
        needs = bool(c.torch_cuda and report.driver and report.gpu_runtime and gpus != "none")
        requirements = image_requirements(client, c, inputs) if needs else None
        plan.append((c, *doctor.cell_verdict(c, report, gpus, requirements, minor_version_compat)))
    return plan
