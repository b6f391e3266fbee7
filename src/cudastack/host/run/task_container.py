"""How a Slurm task runs a cell's image (--container): docker, apptainer or pyxis, and the way
the image reaches the node (a registry digest, or a `docker save` archive in the run folder).

Inside, a cell is what the container launcher makes of it on one host (container.py): the
harness read-only at IN_SRC, the bench folder read-only, the cell's folder read-write as the
working directory, the invoking user's uid:gid, the same environment. What differs is who
starts it: the node's Docker engine, Apptainer (no daemon, the user's own uid), or pyxis (Slurm's
container plugin: ``srun --container-image``, enroot underneath).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

from cudastack.contract import runfolder
from cudastack.contract.errors import UserError
from cudastack.environment.envinfo import SLURM_VARS
from cudastack.host.cells import handoff, images
from cudastack.host.cells.matrix import Cell
from cudastack.host.cells.stacks import DISABLE_REQUIRE
from cudastack.host.run.container import (
    HARNESS_PACKAGE,
    IN_BENCH,
    IN_RESULTS,
    IN_SRC,
    RUN_LABEL,
    ContainerOptions,
    base_environment,
    inputs_in_container,
    invoking_user,
)
from cudastack.host.run.pipeline import BuildInputs, ensure_logged_image, record_cell
from cudastack.host.run.suite_args import SuiteArgs

MODES = ("none", "docker", "apptainer", "pyxis")
DOCKER_DEFAULTS = ContainerOptions()  # a docker task's container, as one host runs a cell's
# GPUs a Slurm job was given, by the node's own numbering: what `docker run --gpus` must be told
# (a container started by the node's daemon is outside the job's cgroup, so it would otherwise
# see every GPU of the node). Docker reads --gpus as CSV, so a list (device=0,1) is quoted
# inside the value. Expanded by the task's shell, hence not shlex-quoted; a job without GPUs
# stops there with the reason.
JOB_GPUS = (
    '--gpus "\\"device=${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:?'
    'the job was given no GPUs (SLURM_JOB_GPUS and CUDA_VISIBLE_DEVICES are unset)}}\\""'
)
# The memlock and stack limits NCCL and DataLoader need. A node's engine whose own limits are
# lower refuses them (exit 125 before the container starts): a task tries them once on its
# image and goes without them, saying so, as a container run on one host does
# (container._start). A bash array, empty when refused (written so that `set -u` accepts that).
ULIMITS = "--ulimit memlock=-1:-1 --ulimit stack=67108864:67108864"
ULIMITS_EXPANDED = '${ulimits[@]+"${ulimits[@]}"}'
# Apptainer refuses HOME in --env; the caches HOME would hold go to /tmp instead.
APPTAINER_ENV = {"XDG_CACHE_HOME": "/tmp/.cache", "HF_HOME": "/tmp/huggingface"}


@dataclass(frozen=True)
class NodeImage:
    """A cell's image as a node gets it. ``ref``: a registry digest (registry/repo@sha256:...)
    or the absolute path of a `docker save` archive on the shared filesystem; ``tag``: the
    content-hash tag (what an archive loads as); ``identity``: the image as every row names it,
    the same as a container run on one host records (images.identity)."""

    ref: str
    tag: str
    archive: bool
    identity: str = ""


def check_mode(mode: str, registry: str, cells: list[str]) -> None:
    """Raise UserError on an unknown --container, a container without --cell, and pyxis without
    a registry (enroot imports images from registries, not from `docker save` archives)."""
    if mode not in MODES:
        raise UserError(f"--container {mode!r}: choose {', '.join(MODES)}")
    if mode != "none" and not cells:
        raise UserError(
            f"--container {mode} runs cells' images: name them with --cell (without --cell a "
            "task runs the suite in the node's own Python environment)"
        )
    if mode == "none" and registry:
        raise UserError(
            "--image-registry is where --container pushes the cells' images: add --container "
            "docker, apptainer or pyxis"
        )
    if mode == "pyxis" and not registry:
        raise UserError(
            "--container pyxis pulls each cell's image from a registry: give --image-registry "
            "HOST[:PORT][/PATH] that the nodes reach (cudastack pushes the cells there)"
        )


def _mounts(args: SuiteArgs, cell_dir: Path, inputs: dict) -> list[tuple[str, str, str]]:
    """(host path, path inside, ro|rw) of every mount, as the container launcher mounts them."""
    return [
        (str(HARNESS_PACKAGE), f"{IN_SRC}/cudastack", "ro"),
        (str(args.bench_dir.resolve()), IN_BENCH, "ro"),
        (str(cell_dir.resolve()), IN_RESULTS, "rw"),
        *((host, spec["bind"], "ro") for host, spec in inputs.items()),
    ]


def task_command(
    mode: str,
    image: NodeImage,
    args: SuiteArgs,
    cell_dir: Path,
    cell: str,
    run_id: str,
    process: int,
    gpus: bool,
    docker: ContainerOptions = DOCKER_DEFAULTS,
) -> str:
    """The shell command (for the batch script) that runs one worker process of ``cell`` in
    ``image`` by ``mode`` (docker, apptainer or pyxis); ``gpus``: whether the job asked for GPUs;
    ``docker``: the /dev/shm size or host IPC and the network a docker task's container gets,
    as on one host, and minor-version compatibility for docker and pyxis (its gpus, user and
    timeout are not used: Slurm gives the GPUs and the time; Apptainer and pyxis share the
    node's /dev/shm, IPC and network, and Apptainer's --nv checks no CUDA requirement).

    Variables the user gave with --env are not written here (they may be secrets, and the
    script stays in the run folder): sbatch exports them to the task, and each mode passes them
    in by name (docker --env NAME; Apptainer and pyxis pass the task's environment)."""
    args, inputs = inputs_in_container(args)
    worker = [
        "python",
        *args.launcher(),
        *args.worker_argv(Path(IN_RESULTS), cell, run_id, Path(IN_BENCH), image.identity, process),
    ]
    mounts = _mounts(args, cell_dir, inputs)
    fixed = base_environment()
    if docker.minor_version_compat:  # read by the NVIDIA hooks of Docker's runtime and enroot
        fixed[DISABLE_REQUIRE] = "true"
    passed = sorted(args.environment())
    q = shlex.quote
    if mode == "docker":
        # --init: the worker is not PID 1, which would ignore the SIGTERM of timeout(1),
        # scancel or Slurm's time limit (docker run passes it on); the container then ends
        # with its process instead of outliving the job that held its GPUs.
        argv = ["--user", invoking_user(), "--workdir", IN_RESULTS, "--network", docker.network]
        argv += ["--ipc", "host"] if docker.ipc_host else ["--shm-size", docker.shm_size]
        argv += ["--label", f"{RUN_LABEL}={run_id}", "--label", f"dev.cudastack.cell={cell}"]
        for host, inside, how in mounts:
            argv += ["--volume", f"{host}:{inside}:{how}"]
        for name, value in fixed.items():
            argv += ["--env", f"{name}={value}"]
        # By name, from the task's environment: --env items, and Slurm's own variables, which
        # env.json records (job, array task, node, partition).
        for name in [*passed, *sorted(SLURM_VARS.values())]:
            argv += ["--env", name]
        head = f"docker run --rm --init {ULIMITS_EXPANDED} {_join(argv)}"
        head += f" {JOB_GPUS}" if gpus else ""
        return f"{head} {q(image.tag if image.archive else image.ref)} {_join(worker)}"
    if mode == "apptainer":
        # --cleanenv would drop the --env variables sbatch exported: the node's environment is
        # passed (Apptainer's default), and the harness's own variables set over it.
        argv = ["apptainer", "exec", "--no-home", "--pwd", IN_RESULTS]
        argv += ["--nv"] if gpus else []
        for host, inside, how in mounts:
            argv += ["--bind", f"{host}:{inside}:{how}"]
        for name, value in {**fixed, **APPTAINER_ENV}.items():
            if name != "HOME":
                argv += ["--env", f"{name}={value}"]
        source = f"docker-archive:{image.ref}" if image.archive else f"docker://{image.ref}"
        return f"{_join(argv)} {q(source)} {_join(worker)}"
    if mode == "pyxis":
        # enroot names an image REGISTRY#REPOSITORY; srun passes the task's environment in.
        registry, _, repository = image.ref.partition("/")
        argv = ["env", *(f"{name}={value}" for name, value in fixed.items())]
        argv += ["srun", "--ntasks=1", f"--container-image={registry}#{repository}"]
        argv += ["--container-mounts=" + ",".join(f"{h}:{i}:{how}" for h, i, how in mounts)]
        argv += [f"--container-workdir={IN_RESULTS}", "--no-container-mount-home"]
        argv += ["--no-container-remap-root"]
        return f"{_join(argv)} {_join(worker)}"
    raise ValueError(f"no container command for mode {mode!r}")


def task_setup(
    mode: str, image: NodeImage, log: str, docker: ContainerOptions = DOCKER_DEFAULTS
) -> list[str]:
    """What a task runs once before its processes, outside their --timeout, its output appended
    to ``log`` (a shell word): for docker, `docker load` of the archive or `docker pull` of the
    digest, then the limits' trial (see ULIMITS), started as the processes are where the CUDA
    requirement is concerned (``docker``). Apptainer and pyxis fetch the image themselves."""
    if mode != "docker":
        return []
    ref = shlex.quote(image.tag if image.archive else image.ref)
    trial = f"--env {DISABLE_REQUIRE}=true {ref}" if docker.minor_version_compat else ref
    fetch = (
        f"docker load --quiet --input {shlex.quote(image.ref)}"
        if image.archive
        else f"docker pull --quiet {ref}"
    )
    return [
        f"{fetch} >> {log} 2>&1 || exit $?",
        f"ulimits=({ULIMITS})",
        f'if ! docker run --rm "${{ulimits[@]}}" {trial} true >> {log} 2>&1; then',
        '    echo "cudastack: the engine refused the memlock/stack ulimits; running without them"'
        f" >> {log}",
        "    ulimits=()",
        "fi",
    ]


def _join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def hand_off(
    client: Any,
    cells: dict[str, Cell],
    inputs: BuildInputs,
    run_dir: Path,
    archives: Path,
    registry: str,
    say: Callable[[str], None],
    build_log: Callable[[str], Callable[[str], None]],
) -> dict[str, Union[NodeImage, str]]:
    """The image of each of the run's ``cells`` (its name -> the matrix cell it runs; one matrix
    cell per node type may be several) on its way to the nodes: built here when missing (as
    `build` does), then pushed to ``registry`` (the node pulls it by digest) or, without one,
    saved as ``archives/<cell>.<image id>.tar`` (`docker save`, on the shared filesystem;
    kept for a resume); each matrix cell once. A cell whose build, push or save failed gets
    its reason instead. Each run cell's folder records the inputs and image as a container run
    does (what `reproduce` reads)."""
    handed: dict[str, Union[NodeImage, str]] = {}  # by matrix cell
    found: dict[str, Union[NodeImage, str]] = {}
    for name, cell in cells.items():
        cell_dir = run_dir / name
        cell_dir.mkdir(exist_ok=True)
        if cell.name not in handed:
            handed[cell.name] = _hand_off(
                client, cell, inputs, cell_dir, archives, registry, say, build_log(name)
            )
        image = found[name] = handed[cell.name]
        if isinstance(image, NodeImage):
            record_cell(client, cell, inputs, cell_dir, image.tag)
    return found


def _hand_off(
    client: Any,
    cell: Cell,
    inputs: BuildInputs,
    cell_dir: Path,
    archives: Path,
    registry: str,
    say: Callable[[str], None],
    log: Callable[[str], None],
) -> Union[NodeImage, str]:
    """One matrix cell's image built if missing, then pushed or saved (see hand_off); the
    reason when that fails."""
    from docker.errors import APIError

    try:
        tag, built = ensure_logged_image(client, cell, inputs, cell_dir, log)
        say(f"{cell.name}: image {tag} {'built' if built else 'up to date'}")
        identity = str(images.identity(client, tag))
        if registry:
            image = NodeImage(handoff.push(client, tag, registry), tag, False, identity)
        else:
            # Named by the engine's image id (not `identity`, which becomes the registry digest
            # once pushed): a file of that name is that image whole (written atomically), so a
            # resumed run's cells reuse it instead of saving gigabytes again.
            saved = client.images.get(tag)
            image_id = str(saved.id).removeprefix("sha256:")[:16]
            archive = archives / f"{cell.name}.{image_id}.tar"
            if archive.is_file():
                say(f"{cell.name}: {archive.name} is already in the run folder")
            else:
                archive.parent.mkdir(parents=True, exist_ok=True)

                def save(path: Path) -> None:
                    with open(path, "wb") as f:
                        for chunk in saved.save(named=True):
                            f.write(chunk)

                runfolder.atomic_write(archive, save)
            image = NodeImage(str(archive.absolute()), tag, True, identity)
    except images.BuildFailed as exc:
        return exc.headline
    except (images.BaseUnavailable, handoff.HandoffError) as exc:
        return str(exc)
    except OSError as exc:  # a full disk under a multi-GB archive: this cell's, not the run's
        return f"saving {cell.name}'s image for the nodes failed: {exc}"
    except APIError as exc:  # the engine refused to save it
        return f"saving {cell.name}'s image for the nodes failed: {exc.explanation or exc}"
    say(f"{cell.name}: the nodes get {image.ref}")
    return image
