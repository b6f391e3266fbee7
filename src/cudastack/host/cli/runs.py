"""Commands that run the suite and show what it holds: run, bench, list, show."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.markup import escape

from cudastack.contract.errors import EXIT_FAILED, EXIT_INTERRUPTED, UserError
from cudastack.environment import suite
from cudastack.host.analysis import results
from cudastack.host.analysis.display import results_view
from cudastack.host.cells import doctor, images, matrix
from cudastack.host.cli.app import (
    BenchDirOpt,
    MatrixOpt,
    ResultsOpt,
    RunOptions,
    VerboseOpt,
    check_resumed,
    names,
    run_folder,
    run_rows,
    with_run_options,
)
from cudastack.host.console import console, echo
from cudastack.host.run import loop, permissions, pipeline, slurm, state, task_container
from cudastack.host.run.container import ContainerOptions, remove_run_containers
from cudastack.host.run.local import LOCAL, LocalLauncher
from cudastack.host.run.suite_args import SuiteArgs


@with_run_options
def run(
    opts: RunOptions,
    extra_work: float = typer.Option(
        0.0, hidden=True, help="Testing aid: every timed call this fraction slower, on its clock."
    ),
) -> None:
    """Run the suite here (cell 'local'), or in the containers of --cell cells."""
    opts, dest, own = _destination(opts, "run", extra_work=(extra_work, 0.0))
    _check_launcher(opts)
    args = opts.suite(own["extra_work"])
    if opts.launcher == "slurm":
        _exit_for(_run_on_slurm(args, opts, dest), opts.fail_on_skip)
        return
    if not opts.cell:
        outcome = loop.run_here(args, dest, opts.timeout, opts.verbose)
        _exit_for(outcome, opts.fail_on_skip)
        return
    try:
        outcome = _run_cells_of_matrix(args, opts, dest)
    except images.EngineUnavailable as exc:
        raise UserError(
            f"{exc}; --cell needs a Docker engine (run without --cell to run here)"
        ) from None
    _exit_for(outcome, opts.fail_on_skip)


def _destination(
    opts: RunOptions, command: str, **own: tuple[Any, Any]
) -> tuple[RunOptions, loop.Destination, dict[str, Any]]:
    """The options a run goes with and where it writes: as given, into a new folder; or, with
    --resume RUN, RUN's folder and the options it was started with. ``own`` are the command's
    own options, name -> (given, default). Raises UserError on a RUN started by another command
    or without recorded options, and on an option that contradicts RUN's."""
    given = {name: value for name, (value, _) in own.items()}
    if opts.resume is None:
        # Before anything of the run is written (a build's log, run.json): its files are the
        # invoking user's alone, or their group's too with --shared.
        permissions.apply(opts.shared)
        options = {"command": command, **given, **opts.recorded()}
        return opts, loop.Destination(opts.results_dir, opts.out, None, options), given
    if opts.out is not None:
        raise UserError("--out with --resume: a resumed run writes into its own folder")
    run_dir = run_folder(opts.resume, opts.results_dir)
    record = (state.read(run_dir) or {}).get("options")
    if not isinstance(record, dict) or record.get("command") not in ("run", "bench"):
        raise UserError(
            f"--resume {run_dir}: its run.json records no options (a run of an older cudastack "
            "or not a run folder); start a new run"
        )
    if record.get("command") != command:
        raise UserError(
            f"--resume {run_dir}: it was started by cudastack {record.get('command')}; resume it "
            f"with cudastack {record.get('command')} --resume {opts.resume}"
        )
    for name, (value, default) in own.items():
        was = record.get(name, default)
        if type(was) is not type(default) and not isinstance(default, float):
            raise UserError(f"--resume: run.json records {name} as {was!r}: start a new run")
        check_resumed(f"--{name.replace('_', '-')}", value, default, was)
    resumed = opts.resumed(record)
    permissions.apply(resumed.shared)
    mine = {name: record.get(name, default) for name, (_, default) in own.items()}
    return resumed, loop.Destination(opts.results_dir, None, run_dir, record), mine


SLURM_ONLY = (
    "partition",
    "time",
    "account",
    "qos",
    "constraint",
    "gres",
    "gpus_per_task",
    "image_registry",
    "no_wait",
)


def _check_launcher(opts: RunOptions) -> None:
    """Raise UserError on an unknown --launcher, and on Slurm's options without it."""
    if opts.launcher not in ("auto", "slurm"):
        raise UserError(f"--launcher {opts.launcher!r}: choose auto or slurm")
    given = [name for name in SLURM_ONLY if getattr(opts, name)] + (
        ["sbatch_arg"] if opts.sbatch_arg else []
    )
    given += ["container"] if opts.container != "none" else []
    if opts.launcher != "slurm" and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(f"{flags} for Slurm: add --launcher slurm")


def _run_on_slurm(args: SuiteArgs, opts: RunOptions, dest: loop.Destination) -> loop.RunOutcome:
    """The cells --cell names (or the cell local) as one Slurm job array, each task in its
    cell's image (--container) or in its node's own Python environment."""
    args.validate()
    loop.check_timeout(opts.timeout)
    task_container.check_mode(opts.container, opts.image_registry, names(opts.cell))
    docker = _docker_on_slurm(opts)
    cells = names(opts.cell) or [LOCAL]
    slurm.check_names(cells, dest.resume or dest.out or dest.results_dir)
    options = slurm.SlurmOptions(
        opts.partition,
        opts.time,
        opts.account,
        opts.qos,
        opts.constraint,
        opts.gres,
        opts.gpus_per_task,
        tuple(opts.sbatch_arg or ()),
    )
    options.directives(opts.timeout, opts.repeat)  # bad values before anything is written
    slurm.require_cluster(opts.partition, args.environment())
    if not opts.time:  # the default, --timeout per process, within what the partition allows
        limit = slurm.partition_limit(opts.partition, args.environment())
        options = dataclasses.replace(options, limit_minutes=limit)
    node_types = options.node_types()
    if len(node_types) > 1:
        echo(
            f"--constraint names {len(node_types)} node types ({', '.join(node_types)}): each "
            "cell runs once on each, as cell@type"
        )
    launcher = slurm.SlurmLauncher(
        args.with_absolute_paths(),  # a task's worker runs in its cell's folder
        slurm.SlurmLauncher.expand(cells, node_types),
        options,
        opts.timeout,
        echo,
        env=args.environment(),
        container=opts.container,
        node_images=_node_images(opts) if opts.container != "none" else None,
        gpus=options.asks_for_gpus(),
        docker=docker,
    )
    what = f"{len(launcher.cells)} cell{'s' if len(launcher.cells) != 1 else ''} on Slurm"
    if opts.no_wait:
        with loop.writing(dest, args.repeat, lambda run_dir, _: launcher.adopt(run_dir)) as run:
            launcher.submit(run.run_dir, run.run_id)
            jobs = launcher.jobs()
            if not jobs:  # a resumed run with nothing left to run: it ends here
                outcomes = loop.run_cells(launcher, args.repeat, run)
                return loop.finish(run.run_dir, run.run_id, outcomes, opts.verbose)
            state.ended(run.run_dir, "submitted", f"job array {', '.join(jobs)} is in Slurm")
        command = dest.options.get("command", "run")
        echo(
            f"run {run.run_id}: {what}, not waited for: cudastack show {run.run_dir} shows what "
            f"finished; cudastack {command} --resume {run.run_dir} follows it to the end"
        )
        return loop.RunOutcome(run.run_dir, failed=False, skipped=False, interrupted=False)
    return loop.run_matrix(
        launcher,
        what,
        args.repeat,
        dest,
        verbose=opts.verbose,
        on_resume=lambda run_dir, _: launcher.adopt(run_dir),
    )


def _docker_on_slurm(opts: RunOptions) -> ContainerOptions:
    """How --container docker's (and pyxis's) tasks run their containers: --shm-size,
    --ipc-host, --network and --minor-version-compat, checked. Raise UserError on --gpus, which
    picks this host's GPUs, and on each of those options where the mode would not use it: an
    option that would change nothing is refused rather than ignored."""
    if opts.gpus != "auto":
        raise UserError(
            "--gpus picks this host's GPUs: on Slurm a task gets the GPUs its job asks for "
            "(--gpus-per-task N or --gres gpu:TYPE:N)"
        )
    docker = ContainerOptions(
        shm_size=opts.shm_size,
        ipc_host=opts.ipc_host,
        network=opts.network,
        minor_version_compat=opts.minor_version_compat,
    )
    # flag, field, the modes that use it, why the others do not.
    shared = "shares the node's /dev/shm, IPC and network"
    uses = (
        ("--shm-size", "shm_size", ("docker",), shared),
        ("--ipc-host", "ipc_host", ("docker",), shared),
        ("--network", "network", ("docker",), shared),
        (
            "--minor-version-compat",
            "minor_version_compat",
            ("docker", "pyxis"),
            "has no NVIDIA requirement check to turn off",
        ),
    )
    for flag, name, modes, why in uses:
        if getattr(docker, name) != getattr(ContainerOptions, name) and opts.container not in modes:
            raise UserError(
                f"{flag} applies on Slurm to --container {' and '.join(modes)} only (with "
                f"--container {opts.container} a task {why})"
            )
    return docker


def _node_images(opts: RunOptions) -> Callable[[Path, list[str]], dict]:
    """How the Slurm launcher gets the cells' images to the nodes: built with this host's Docker
    engine, then pushed to --image-registry or saved into the run folder (task_container)."""
    selected = matrix.select(matrix.load(opts.matrix_file), names(opts.cell))
    inputs = loop.build_inputs(opts.matrix_file, opts.wheelhouse, opts.ca_file)
    try:
        client = images.connect()
    except images.EngineUnavailable as exc:
        raise UserError(
            f"{exc}; --container {opts.container} builds the cells' images here first: run "
            "cudastack where Docker runs"
        ) from None

    by_name = {cell.name: cell for cell in selected}

    def hand_off(run_dir: Path, wanted: list[str]) -> dict:
        return task_container.hand_off(
            client,
            {name: by_name[slurm.matrix_cell(name)] for name in wanted},
            inputs,
            run_dir,
            run_dir / slurm.SLURM_DIR / slurm.ARCHIVES,
            opts.image_registry,
            echo,
            loop.build_logger,
        )

    return hand_off


def _exit_for(outcome: loop.RunOutcome, fail_on_skip: bool) -> None:
    """The exit-code contract (contract.errors): 130 interrupted, 1 something failed (or was
    skipped, with --fail-on-skip), else 0."""
    if outcome.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if outcome.failed or (fail_on_skip and outcome.skipped):
        raise typer.Exit(EXIT_FAILED)


@with_run_options
def bench(
    opts: RunOptions,
    local: bool = typer.Option(False, "--local", help="Skip the containers: run here."),
) -> None:
    """The main job (make bench): every compatible cell of the matrix, or here without Docker."""
    opts, dest, own = _destination(opts, "bench", local=(local, False))
    _check_launcher(opts)
    local = own["local"]
    args = opts.suite()
    if opts.launcher == "slurm" and not local:
        _exit_for(_run_on_slurm(args, opts, dest), opts.fail_on_skip)
        return
    args.validate()
    matrix.select(matrix.load(opts.matrix_file), names(opts.cell))  # a bad matrix or cell first
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
            _exit_for(
                _run_cells_of_matrix(args, opts, dest, client, fallback_local=True),
                opts.fail_on_skip,
            )
            return
    else:
        console.print("cudastack bench: --local: running the suite in this Python environment")
    outcome = loop.run_here(args, dest, opts.timeout, opts.verbose)
    _exit_for(outcome, opts.fail_on_skip)


def _run_cells_of_matrix(
    args: SuiteArgs,
    opts: RunOptions,
    dest: loop.Destination,
    client: Optional[object] = None,
    fallback_local: bool = False,
) -> loop.RunOutcome:
    """Run the cells ``opts.cell`` names (all by default) of its matrix in their containers."""
    args.validate()
    loop.check_timeout(opts.timeout)
    cells = matrix.select(matrix.load(opts.matrix_file), names(opts.cell))
    inputs = loop.build_inputs(opts.matrix_file, opts.wheelhouse, opts.ca_file)
    client = client or images.connect()
    report = doctor.inspect(client)
    container = ContainerOptions(
        loop.resolve_gpus(opts.gpus, report),
        opts.shm_size,
        opts.ipc_host,
        opts.timeout,
        opts.minor_version_compat,
        network=opts.network,
    )
    launcher = pipeline.ContainerLauncher(
        client, cells, inputs, args, container, report, opts.gpus, echo, loop.build_logger
    )
    # bench falls back to the suite here, as the cell local, when no cell can run.
    fallback = LocalLauncher(args, opts.timeout, echo) if fallback_local else None

    def remove_left_running(run_dir: Path, run_id: str) -> set[str]:
        # A host killed outright leaves its containers running, writing into the run folder.
        removed = remove_run_containers(client, run_id)
        if removed:
            echo(f"removed {removed} container(s) the interrupted run left running")
        return set()

    what = f"{len(cells)} cells"
    return loop.run_matrix(
        launcher, what, args.repeat, dest, fallback, opts.verbose, remove_left_running
    )


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
    profile = suite.resolve_profile(profile, has_gpu=bool(doctor.nvml_host().gpus)).name
    cells = matrix.load(matrix_file)  # a bad matrix is an error before anything is listed
    for spec in specs.values():
        counts = "  ".join(f"{p}:{len(spec.cases(p))}" for p in suite.PROFILES)
        console.print(f"[bold]{spec.name:<12}[/] {escape(spec.doc)}\n{'':<12} cases {counts}")
        if cases:
            for case in spec.cases(profile):
                console.print(f"{'':<14}{case.id}", highlight=False, markup=False)
    console.print("cells: local (this Python environment)")
    for c in cells:
        console.print(
            f"  {c.name:<28} {c.base_image}  torch {c.torch} ({c.index})",
            highlight=False,
            markup=False,
        )


def show(
    run: str = typer.Argument(..., help="A run id (under --results-dir) or a run folder."),
    results_dir: Path = ResultsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Print the summary of a run: how it went, a table per bench, what did not run under them."""
    run_dir = run_folder(run, results_dir)
    df = run_rows(run_dir)
    if len(df):
        view = results_view(
            results.case_table(df),
            f"run {run_dir.name}",
            verbose,
            results.bench_kinds(df),
            f"cudastack show {run} --verbose lists them",
        )
        console.print(view)
    else:
        echo(f"run {run_dir.name}: no records")
    echo(state.describe(run_dir))
