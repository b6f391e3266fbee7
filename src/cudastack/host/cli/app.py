"""What the cudastack commands share: the suite's options, declared once, and small helpers."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, get_args, get_type_hints

import pandas as pd
import typer

from cudastack.contract import redact
from cudastack.contract.errors import UserError, shown
from cudastack.environment import suite
from cudastack.host.analysis import results
from cudastack.host.cells import matrix
from cudastack.host.run import state
from cudastack.host.run.suite_args import DEFAULT_TIMEOUT_S, SuiteArgs

BenchOpt = typer.Option("", "--bench", help="Comma-separated bench names (default: all).")
SelectOpt = typer.Option(None, "--select", help="Keep cases with key=value[,value]; repeatable.")
ProfileOpt = typer.Option(
    "auto", help="auto (quick on CPU, standard on GPU) | smoke | quick | standard | full."
)
BenchDirOpt = typer.Option(suite.DEFAULT_BENCH_DIR, help="Folder of bench files.")
ResultsOpt = typer.Option(Path("results"), help="Where run folders are created.")
OutOpt = typer.Option(None, "--out", help="Run folder to create (default: RESULTS_DIR/RUN_ID).")
DeviceOpt = typer.Option("auto", help="Local runs: auto | cpu | cuda | cuda:N")
ThreadsOpt = typer.Option(0, help="CPU threads for torch (default: all usable cores).")
MatrixOpt = typer.Option(matrix.DEFAULT_MATRIX, "--matrix", help="The matrix file of cells.")
CellOpt = typer.Option("", "--cell", help="Comma-separated cell names (default: all).")
WheelhouseOpt = typer.Option(None, help="Folder of wheels for offline builds (pip --no-index).")
CaFileOpt = typer.Option(None, help="CA bundle for pip behind a TLS-intercepting proxy.")
GpusOpt = typer.Option("auto", help="auto | all | none | indices or UUIDs, e.g. 0,1")
MinorCompatOpt = typer.Option(
    False,
    "--minor-version-compat",
    help="Start CUDA cells whose image requires a newer CUDA than the driver supports "
    "(NVIDIA_DISABLE_REQUIRE=true in the container); minor-version compatibility then decides.",
)
IpcHostOpt = typer.Option(False, "--ipc-host", help="Share the host's IPC namespace.")
NetworkOpt = typer.Option(
    "bridge",
    "--network",
    help="Containers' network: bridge (Docker's default) | none | host (the host's own, only "
    "when asked for).",
)
SharedOpt = typer.Option(
    False,
    "--shared",
    help="Make the run folder readable by your group (0750, files 0640); by default only you "
    "can read it (0700, files 0600).",
)
ShmOpt = typer.Option("16g", help="Container /dev/shm size (when not --ipc-host).")
SetOpt = typer.Option(
    None, "--set", help="key=value: replace a parameter's values, e.g. batch=128, weights=DIR."
)
TraceOpt = typer.Option(False, "--trace", help="Save a torch.profiler Chrome trace per case.")
NprocOpt = typer.Option(
    1, "--nproc", help="Data-parallel processes (torchrun): NCCL on GPUs, gloo on CPUs."
)
RepeatOpt = typer.Option(
    1,
    "--repeat",
    help="Worker processes per cell, taking turns across cells; compare tests process "
    "medians from 3 on (steadier verdicts on shared machines).",
)
TimeoutOpt = typer.Option(
    DEFAULT_TIMEOUT_S,
    help="Per-cell time limit in seconds, here (local) and in containers: past it every process "
    "of the cell is killed, its finished cases kept, and the cell failed (default 3 h).",
)

FailOnSkipOpt = typer.Option(
    False,
    "--fail-on-skip",
    help="Exit 1 when a cell or case was skipped, as when one failed (for CI: nothing may be "
    "left out).",
)
VerboseOpt = typer.Option(
    False,
    "--verbose",
    "-v",
    help="Under the results, list each case that did not run (default: a count per reason).",
)
EnvOpt = typer.Option(
    None,
    "--env",
    help="KEY=VALUE: a variable for the cell's worker; repeatable. Passed through when set "
    "here: every NCCL_* and TORCH_* (but *_HOME/_DIR/_FILE/_PATH) and CUDA_LAUNCH_BLOCKING; "
    "--env wins. "
    "Recorded in env.json (env_passed).",
)

LauncherOpt = typer.Option(
    "auto",
    "--launcher",
    help="Where the cells run: auto (here, or in containers with --cell) | slurm (one job array "
    "on a Slurm cluster, a task per cell, in its image with --container, else in the node's "
    "own Python environment; the run folder must be on a filesystem the nodes share).",
)
PartitionOpt = typer.Option("", "--partition", help="Slurm: the partition (sbatch --partition).")
SlurmTimeOpt = typer.Option(
    "",
    "--time",
    help="Slurm: each task's time limit (sbatch --time, e.g. 2:00:00); default --timeout per "
    "worker process of the task, at most the partition's limit.",
)
AccountOpt = typer.Option("", "--account", help="Slurm: the account charged (sbatch --account).")
QosOpt = typer.Option("", "--qos", help="Slurm: the quality of service (sbatch --qos).")
ConstraintOpt = typer.Option(
    "", "--constraint", help="Slurm: node features a task needs (sbatch --constraint)."
)
GresOpt = typer.Option("", "--gres", help="Slurm: generic resources per node, e.g. gpu:h100:1.")
GpusPerTaskOpt = typer.Option(0, "--gpus-per-task", help="Slurm: GPUs per task (sbatch).")
ContainerOpt = typer.Option(
    "none",
    "--container",
    help="Slurm: how a task runs its --cell's image: docker (the node's engine), apptainer, "
    "pyxis (srun --container-image), or none (the node's own Python environment). The image "
    "is built here, then pushed to --image-registry or saved into the run folder.",
)
ImageRegistryOpt = typer.Option(
    "",
    "--image-registry",
    help="Slurm --container: HOST[:PORT]/REPO the nodes pull the cells' images from, by "
    "digest (cudastack pushes them there); without it, each is a docker save archive in the "
    "run folder (docker, apptainer).",
)
NoWaitOpt = typer.Option(
    False,
    "--no-wait",
    help="Slurm: submit the job array and return; show RUN shows what finished, run --resume "
    "RUN follows it to the end.",
)
SbatchArgOpt = typer.Option(
    None,
    "--sbatch-arg",
    help="Slurm: one more sbatch option, as --name=value (e.g. --sbatch-arg=--exclusive); "
    "repeatable.",
)

ResumeOpt = typer.Option(
    None,
    "--resume",
    metavar="RUN",
    help="Finish an interrupted run (a run id or folder): run only what it lacks, with the "
    "options it was started with, into its folder.",
)
# What may differ when a run is resumed: where it is found, how it is shown and judged, and its
# time limit (a cell that ran out of time may get more); never what it measures. What is not
# recorded is as given; what may change is the run's unless given.
NOT_RECORDED = frozenset({"resume", "out", "results_dir", "verbose", "no_wait"})
RESUME_MAY_CHANGE = frozenset({"fail_on_skip", "timeout"})


def _opt(option: Any) -> Any:
    """A RunOptions field whose command-line form is ``option`` (its default is the option's)."""
    return field(default=option.default, metadata={"option": option})


@dataclass(frozen=True)
class RunOptions:
    """The options of the commands that run the suite (run and bench), declared once: each field
    is a keyword of both commands (``with_run_options``). A new suite option is a field here and
    one in SuiteArgs."""

    bench: str = _opt(BenchOpt)
    select: Optional[list[str]] = _opt(SelectOpt)
    profile: str = _opt(ProfileOpt)
    out: Optional[Path] = _opt(OutOpt)
    results_dir: Path = _opt(ResultsOpt)
    bench_dir: Path = _opt(BenchDirOpt)
    device: str = _opt(DeviceOpt)
    threads: int = _opt(ThreadsOpt)
    cell: str = _opt(CellOpt)
    matrix_file: Path = _opt(MatrixOpt)
    wheelhouse: Optional[Path] = _opt(WheelhouseOpt)
    ca_file: Optional[Path] = _opt(CaFileOpt)
    gpus: str = _opt(GpusOpt)
    ipc_host: bool = _opt(IpcHostOpt)
    network: str = _opt(NetworkOpt)
    shared: bool = _opt(SharedOpt)
    shm_size: str = _opt(ShmOpt)
    timeout: float = _opt(TimeoutOpt)
    overrides: Optional[list[str]] = _opt(SetOpt)
    trace: bool = _opt(TraceOpt)
    nproc: int = _opt(NprocOpt)
    repeat: int = _opt(RepeatOpt)
    minor_version_compat: bool = _opt(MinorCompatOpt)
    env: Optional[list[str]] = _opt(EnvOpt)
    fail_on_skip: bool = _opt(FailOnSkipOpt)
    launcher: str = _opt(LauncherOpt)
    partition: str = _opt(PartitionOpt)
    time: str = _opt(SlurmTimeOpt)
    account: str = _opt(AccountOpt)
    qos: str = _opt(QosOpt)
    constraint: str = _opt(ConstraintOpt)
    gres: str = _opt(GresOpt)
    gpus_per_task: int = _opt(GpusPerTaskOpt)
    sbatch_arg: Optional[list[str]] = _opt(SbatchArgOpt)
    container: str = _opt(ContainerOpt)
    image_registry: str = _opt(ImageRegistryOpt)
    no_wait: bool = _opt(NoWaitOpt)
    # How the summary is printed, not what runs: no SuiteArgs field.
    verbose: bool = _opt(VerboseOpt)
    resume: Optional[str] = _opt(ResumeOpt)

    def suite(self, extra_work: float = 0.0) -> SuiteArgs:
        """What every cell's worker processes run."""
        return SuiteArgs(
            benches=names(self.bench),
            select=list(self.select or []),
            profile=self.profile,
            bench_dir=self.bench_dir,
            device=self.device,
            threads=self.threads,
            extra_work=extra_work,
            overrides=list(self.overrides or []),
            trace=self.trace,
            nproc=self.nproc,
            repeat=self.repeat,
            env=list(self.env or []),
            resume=self.resume is not None,
        )

    def recorded(self) -> dict[str, Any]:
        """The options as run.json records them for a resume: paths resolved (a resume may
        start elsewhere) and as text, secret --env values redacted."""
        found = {
            f.name: str(v.resolve()) if isinstance(v, Path) else v
            for f in fields(self)
            if f.name not in NOT_RECORDED
            for v in [getattr(self, f.name)]
        }
        # run.json travels with the results: a token given with --env must not.
        found["env"] = [redact.assignment(item) for item in self.env or []] or None
        return found

    def resumed(self, recorded: dict[str, Any]) -> RunOptions:
        """These options for resuming a run that ``recorded`` them (``recorded()``): the run's,
        but those of RESUME_MAY_CHANGE given here. Raises UserError on an option given here that
        contradicts the run's, and on recorded options that are not what cudastack writes."""
        kinds = get_type_hints(RunOptions)
        values = {}
        for f in fields(self):
            given = values[f.name] = getattr(self, f.name)
            if f.name in NOT_RECORDED or f.name not in recorded:
                continue
            was = recorded[f.name]
            if not _fits(was, kinds[f.name]):
                raise UserError(
                    f"--resume: run.json records {f.name} as {was!r}, which no cudastack "
                    "writes; the folder was changed by hand: start a new run"
                )
            if f.name == "env":
                values[f.name] = _resumed_env(given, was)
                continue
            is_path = Path in (kinds[f.name], *get_args(kinds[f.name]))
            if was is not None and is_path:
                was = Path(was)
            if f.name in RESUME_MAY_CHANGE:
                values[f.name] = given if given != f.default else was
                continue
            shown_given = given.resolve() if is_path and given is not None else given
            check_resumed(flag(f.name, f.metadata["option"]), shown_given, f.default, was)
            values[f.name] = was
        return RunOptions(**values)


def _fits(value: Any, kind: Any) -> bool:
    """Whether a JSON ``value`` is what recorded() writes for a field of type ``kind``."""
    kinds = get_args(kind) or (kind,)
    if value is None:
        return type(None) in kinds
    if isinstance(value, list):
        return any(getattr(k, "__origin__", None) is list for k in kinds) and all(
            isinstance(v, str) for v in value
        )
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int):
        return int in kinds or float in kinds
    if isinstance(value, float):
        return float in kinds
    return isinstance(value, str) and (str in kinds or Path in kinds)


def _resumed_env(given: Optional[list[str]], recorded: Optional[list[str]]) -> Optional[list[str]]:
    """--env for a resumed run: the run's items, of which run.json keeps secret values
    redacted, so those must be given again; what is given must be the run's items."""
    if given:
        if sorted(redact.assignment(item) for item in given) != sorted(recorded or []):
            shown = " ".join(f"--env {redact.assignment(item)}" for item in given)
            raise UserError(
                f"--resume: {shown} contradicts the run's --env items "
                f"({', '.join(recorded or []) or 'none'}); give the run's items (in any order)"
            )
        return given
    hidden = [item.partition("=")[0] for item in recorded or [] if _redacted(item)]
    if hidden:
        raise UserError(
            f"--resume: the run was given --env {', '.join(hidden)} with a secret value, which "
            "run.json does not keep: give the run's --env items again"
        )
    return recorded


def _redacted(item: str) -> bool:
    return redact.REDACTED in item or redact.HIDDEN in item


def flag(name: str, option: Any) -> str:
    """The command-line flag of a parameter ``name`` declared with typer's ``option``."""
    return next(
        (d for d in option.param_decls if d.startswith("--")), "--" + name.replace("_", "-")
    )


def check_resumed(flag: str, given: Any, default: Any, was: Any) -> None:
    """Raise UserError when an option given to --resume (not left at its ``default``) differs
    from the value ``was`` the run was started with."""
    if given != default and given != was:
        started = _given(flag, was) if was not in (None, "", [], False) else f"no {flag}"
        raise UserError(
            f"--resume: {_given(flag, given)} contradicts the run, started with {started}; "
            "leave it out: a resumed run keeps the options it was started with"
        )


def _given(flag: str, value: Any) -> str:
    """How ``value`` of ``flag`` reads on a command line: --profile quick, --trace."""
    if value is True:
        return flag
    if isinstance(value, (list, tuple)):
        return " ".join(f"{flag} {v}" for v in value)
    return f"{flag} {value}"


def with_run_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command(opts: RunOptions, **own)`` as a typer command that takes every RunOptions field
    as an option besides its own (typer reads the signature made here)."""
    kinds = get_type_hints(RunOptions)
    own = list(inspect.signature(command).parameters.values())[1:]
    own_kinds = get_type_hints(command)
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter(f.name, keyword, default=f.metadata["option"], annotation=kinds[f.name])
        for f in fields(RunOptions)
    ] + [p.replace(kind=keyword, annotation=own_kinds[p.name]) for p in own]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        opts = RunOptions(**{f.name: kwargs.pop(f.name) for f in fields(RunOptions)})
        command(opts, **kwargs)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def run_folder(ref: str, results_dir: Path) -> Path:
    """The run folder ``ref`` names: a folder, or a run id under ``results_dir``. Raises
    UserError when it is neither."""
    run_dir = Path(ref) if Path(ref).is_dir() else results_dir / ref
    if not run_dir.is_dir():
        raise UserError(
            f"no run {shown(ref)}: neither a run folder nor a run id under {results_dir}"
        )
    return run_dir


def run_rows(run_dir: Path) -> pd.DataFrame:
    """A run's rows: its stored table once it is complete, else (running, killed, interrupted)
    read from its records, which may hold cases its table lacks; writing nothing into a folder
    another process may own. Raises ResultsError on a folder with neither."""
    recorded = state.read(run_dir)
    if recorded is None or recorded.get("state") == "complete":
        return results.load_table(run_dir)
    return results.read_run(run_dir)


def names(text: str) -> list[str]:
    """The names of a comma-separated option, each once, in the order given."""
    return list(dict.fromkeys(n for n in text.split(",") if n))


def engine(what: str) -> object:
    """A Docker client, or the one-line error that says what needed it."""
    from cudastack.host.cells import images

    try:
        return images.connect()
    except images.EngineUnavailable as exc:
        raise UserError(f"{exc}; {what} needs a Docker engine") from None
