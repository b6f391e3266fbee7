"""The cudastack command line: every command, registered here, and the one error handler."""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

import typer
from typer.exceptions import TyperException

from cudastack.contract.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, CudastackError
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
    every bad input one ``error:`` line, whether cudastack or the option parser found it."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        # Not standalone: the parser's errors come back here instead of its multi-line box.
        code = app(standalone_mode=False, prog_name="cudastack")
    except CudastackError as exc:
        _bad_input(str(exc))
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
    sys.exit(code if isinstance(code, int) else 0)


def _bad_input(message: str) -> NoReturn:
    err.print(f"error: {' '.join(message.split())}", highlight=False, markup=False)
    sys.exit(EXIT_BAD_INPUT)
