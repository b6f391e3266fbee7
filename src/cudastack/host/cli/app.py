"""What the cudastack commands share: the suite's options, declared once, and small helpers."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, get_type_hints

import typer

from cudastack.contract.errors import UserError, shown
from cudastack.environment import suite
from cudastack.host.cells import matrix
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
    shm_size: str = _opt(ShmOpt)
    timeout: float = _opt(TimeoutOpt)
    overrides: Optional[list[str]] = _opt(SetOpt)
    trace: bool = _opt(TraceOpt)
    nproc: int = _opt(NprocOpt)
    repeat: int = _opt(RepeatOpt)
    minor_version_compat: bool = _opt(MinorCompatOpt)
    env: Optional[list[str]] = _opt(EnvOpt)
    fail_on_skip: bool = _opt(FailOnSkipOpt)
    # How the summary is printed, not what runs: no SuiteArgs field.
    verbose: bool = _opt(VerboseOpt)

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
        )


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
