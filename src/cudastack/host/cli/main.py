"""The cudastack command line: every command, registered here, and the one error handler."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn, Optional

import typer
from typer.exceptions import TyperException

from cudastack.contract import runfolder
from cudastack.contract.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    CudastackError,
)
from cudastack.host.cli import cells, handoff, reading, runs
from cudastack.host.console import err

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Benchmark PyTorch across pinned CUDA / cuDNN / PyTorch stacks.",
)
# Every command, in the order `cudastack --help` lists them.
app.command("run")(runs.run)
app.command("bench")(runs.bench)
app.command("check")(cells.check)
app.command("build")(cells.build)
app.command("doctor")(cells.doctor_cmd)
app.command("list")(runs.list_)
app.command("show")(runs.show)
app.command("compare")(reading.compare_cmd)
app.command("report")(reading.report_cmd)
app.command("lock")(handoff.lock_cmd)
app.command("reproduce")(handoff.reproduce_cmd)
app.command("push")(handoff.push_cmd)
app.command("export")(handoff.export_cmd)
app.command("import")(handoff.import_cmd)
# The words after `--` are the command to run in the cell.
app.command("shell", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    handoff.shell_cmd
)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: containers removed, results kept


def main() -> None:
    """The ``cudastack`` command: every outcome is an exit code of the contract (errors.py) and
    every bad input one ``error:`` line, whether cudastack or the option parser found it. A
    full disk is one ``error:`` line too, and exit code 1: what was written before it is kept
    (whole-file writes are atomic, records are appended a line at a time)."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)  # a closed terminal or ssh session: the same
    threading.excepthook = _thread_died
    try:
        # Not standalone: the parser's errors come back here instead of its multi-line box.
        code = app(standalone_mode=False, prog_name="cudastack")
    except CudastackError as exc:
        _bad_input(str(exc))
    except OSError as exc:
        full = runfolder.disk_full(exc)
        if full is None:
            raise  # any other OSError is a bug: its traceback
        _disk_full(full if full.filename or not _FULL_IN_THREADS else _FULL_IN_THREADS[0])
    except (KeyboardInterrupt, typer.Abort):  # Abort: the parser's word for Ctrl-C
        err.print("interrupted", highlight=False, markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except TyperException as exc:  # the option parser's: a bad value, an unknown option
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # `cudastack` alone: the help, as always
            sys.exit(EXIT_BAD_INPUT)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        context = getattr(exc, "ctx", None)
        command = context.command_path if context is not None else "cudastack"
        _bad_input(f"{message} (see {command} --help)")
    if _FULL_IN_THREADS and code != EXIT_INTERRUPTED:
        _disk_full(_FULL_IN_THREADS[0])  # what the run went on to write fitted, that did not
    sys.exit(code if isinstance(code, int) else 0)


# The full disks that ended a thread of this process (one copying a worker's output into its
# log): main reports them in its one line, as it does its own.
_FULL_IN_THREADS: list[OSError] = []


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception: a full disk is kept for main's one line (the run's own
    writes mostly meet it as well), anything else gets Python's usual traceback."""
    full = runfolder.disk_full(args.exc_value) if args.exc_value is not None else None
    if full is None:
        threading.__excepthook__(args)
    else:
        _FULL_IN_THREADS.append(full)


def _disk_full(exc: OSError) -> NoReturn:
    err.print(f"error: {disk_full_message(exc)}", highlight=False, markup=False)
    sys.exit(EXIT_FAILED)


def _bad_input(message: str) -> NoReturn:
    err.print(f"error: {' '.join(message.split())}", highlight=False, markup=False)
    sys.exit(EXIT_BAD_INPUT)


def disk_full_message(exc: OSError) -> str:
    """The one line for a full disk (or a spent quota): the file it was writing, and how the
    run gets finished once there is room (a run folder that says it did not complete)."""
    what = os.strerror(exc.errno or 0)
    what = what[:1].lower() + what[1:]
    path = Path(os.fsdecode(exc.filename)) if exc.filename else None
    where = f" writing {path}" if path is not None else ""
    found = _unfinished_run(path) if path is not None else None
    if found is None:
        return f"{what}{where}: free some space, then run the command again"
    run_dir, command = found
    return (
        f"{what}{where}: free some space, then cudastack {command} --resume {run_dir} "
        "finishes the run"
    )


def _unfinished_run(path: Path) -> Optional[tuple[Path, str]]:
    """The run folder ``path`` is or lies in (the nearest folder with a run.json) and the
    command that started it, when its run did not complete; else None."""
    for folder in (path, *path.parents):
        state = folder / runfolder.STATE
        if state.is_file():
            try:
                recorded = runfolder.read_json(state)
            except (OSError, CudastackError):
                recorded = {}
            if recorded.get("state") == "complete":
                return None
            return folder, str((recorded.get("options") or {}).get("command", "run"))
    return None
