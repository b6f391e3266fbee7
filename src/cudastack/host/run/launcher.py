"""The launcher protocol: where a cell's worker processes run (here, a container, a cluster).

The run loop (``loop.run_cells``) knows cells, repeats and the run folder; a launcher knows how to
start one worker process of one cell and how that went. ``local`` (this Python environment) and
``container`` (a cell image on the Docker engine) implement it; a scheduler is one more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from cudastack.contract import runfolder


@dataclass(frozen=True)
class CellPlan:
    """One cell a launcher offers: runnable here, or not with the reason (the plan `doctor`
    prints)."""

    cell: str
    runnable: bool = True
    reason: str = ""


@dataclass
class CellResult:
    """How one worker process of a cell went."""

    cell: str
    status: str  # ok | skipped | failed
    reason: str = ""
    build_s: float = 0.0
    run_s: float = 0.0  # process (or container) start to its end
    suite_s: float = 0.0  # what the worker itself spent on the suite

    @property
    def overhead_s(self) -> float:
        """Orchestration time outside the suite: start-up, imports, log and teardown."""
        return self.run_s - self.suite_s


class Launcher(Protocol):
    """Runs worker processes of cells somewhere; every failure is a result, not an exception
    (but Ctrl-C, which the loop handles, and bad input the worker refused, which is an error)."""

    # What the loop prints after Ctrl-C: what the launcher cleaned up.
    interrupted_note: str

    def plan(self) -> list[CellPlan]:
        """The launcher's cells, in run order, each runnable here or not."""
        ...

    def run(self, cell: str, process: int, run_dir: Path, run_id: str) -> CellResult:
        """Run worker process ``process`` (0-based; above 0 a --repeat adding to the cell's
        folder) of ``cell`` into ``run_dir/cell``, and say how it went."""
        ...


def finished_cell(name: str, cell_dir: Path, build_s: float, run_s: float) -> CellResult:
    """A cell whose worker exited 0, from its done.json: ok, or skipped as a whole when the
    worker found the cell unfit for this device (its torch not built for the GPU's arch)."""
    done_file = cell_dir / runfolder.DONE
    if not done_file.is_file():
        reason = f"the worker exited 0 without finishing its suite (no {runfolder.DONE})"
        return CellResult(name, "failed", reason, build_s, run_s)
    done = runfolder.read_json(done_file)
    if done.get("cell_skipped"):
        return CellResult(name, "skipped", str(done["cell_skipped"]), build_s, run_s)
    return CellResult(name, "ok", "", build_s, run_s, float(done.get("suite_s", 0.0)))


class CellLog:
    """A cell's log.txt, appended a line at a time by the thread that follows the worker's
    output. A write that fails (a full disk) ends the writing, never the reading: the output
    still reaches the terminal and the worker never blocks on a full pipe. The error is raised
    when the log is closed, once the worker has ended, naming the log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by __exit__)
        self._error: Optional[OSError] = None

    def write(self, line: str) -> None:
        if self._error is not None:
            return
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            self._error = exc
        except ValueError:  # closed under a process that escaped the kill: nothing to keep
            pass

    def __enter__(self) -> CellLog:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        with runfolder.writing(self.path):
            try:
                self._file.close()
            except OSError as error:
                self._error = self._error or error
            if self._error is not None and kind is None:
                raise self._error
