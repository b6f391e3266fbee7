"""The cudastack command line: every command, registered here, and the one error handler."""

from __future__ import annotations

import signal
import sys

import typer

from cudastack.contract.errors import CudastackError
from cudastack.host.cli import cells, handoff, reading, runs
from cudastack.host.cli.app import EXIT_BAD_INPUT
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
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except CudastackError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(EXIT_BAD_INPUT)
