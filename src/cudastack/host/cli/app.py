"""What every cudastack command shares: the app, consoles, options and the bad-input error."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from cudastack.environment import suite
from cudastack.host.cells import matrix
from cudastack.host.run.local import DEFAULT_TIMEOUT_S

EXIT_BAD_INPUT = 2

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Benchmark PyTorch across pinned CUDA / cuDNN / PyTorch stacks.",
)
# soft_wrap: long lines (paths, case ids, errors) stay whole so they can be copied and grepped.
# Piped into a file or CI log there is no terminal width: tables get room instead of 80 columns.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=_WIDTH)


class UserError(ValueError):
    """Bad input found on the host side."""


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

EnvOpt = typer.Option(
    None,
    "--env",
    help="KEY=VALUE: a variable for the cell's worker; repeatable. Passed through when set "
    "here: every NCCL_* and TORCH_* (but *_HOME/_DIR/_FILE/_PATH) and CUDA_LAUNCH_BLOCKING; "
    "--env wins. "
    "Recorded in env.json (env_passed).",
)


def names(text: str) -> list:
    return [n for n in text.split(",") if n]


def echo(line: str) -> None:
    console.print(line, highlight=False, markup=False)


def engine(what: str) -> object:
    """A Docker client, or the one-line error that says what needed it."""
    from cudastack.host.cells import images

    try:
        return images.connect()
    except images.EngineUnavailable as exc:
        raise UserError(f"{exc}; {what} needs a Docker engine") from None
