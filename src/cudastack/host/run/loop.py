"""How a run goes, for the run and bench commands: run folders, cells in containers, the end."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
from rich.markup import escape

from cudastack.contract import runfolder
from cudastack.contract.errors import UserError
from cudastack.host.analysis import compare, explain, report, results
from cudastack.host.analysis.display import results_view
from cudastack.host.cells import doctor
from cudastack.host.console import console, echo, err
from cudastack.host.run import permissions, pipeline, resume, state, writer
from cudastack.host.run.launcher import CellPlan, CellResult, Launcher, finished_cell
from cudastack.host.run.local import LocalLauncher, WorkerRefused
from cudastack.host.run.state import INTERRUPTED
from cudastack.host.run.suite_args import DEFAULT_TIMEOUT_S, SuiteArgs


def new_run_dir(out: Optional[Path], results_dir: Path, run_id: str) -> Path:
    """The new run's folder, created. Raises UserError when it exists already or cannot be
    made."""
    run_dir = out or results_dir / run_id
    if run_dir.exists():
        raise UserError(
            f"{run_dir} already exists; a run folder is never overwritten, pick another --out"
        )
    try:
        run_dir.mkdir(parents=True)
        # Whatever the umask: a run folder is never readable by other users (permissions.py).
        os.chmod(run_dir, permissions.folder_mode())
    except OSError as exc:
        raise UserError(f"cannot create run folder {run_dir}: {exc.strerror}") from None
    return run_dir


@dataclass(frozen=True)
class Destination:
    """Where a run writes: a new folder (``out``, else a new run id under ``results_dir``), or,
    with ``resume``, the folder of the interrupted run it finishes. ``options`` are the
    command's options, recorded in run.json for a later --resume."""

    results_dir: Path = Path("results")
    out: Optional[Path] = None
    resume: Optional[Path] = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Writing:
    """A run folder this process writes, holding its lock: the run's id, whether it is
    resumed and, if so, how many worker processes of each cell had finished."""

    run_dir: Path
    run_id: str
    resumed: bool = False
    finished: dict[str, int] = field(default_factory=dict)


# Called when a run is resumed, once this process holds its folder and before its records are
# prepared (resume.prepare): what an interrupted host left running is then no other live
# writer's. Returns the cells whose workers still run and go on (their records are left alone).
OnResume = Callable[[Path, str], set[str]]


@contextmanager
def writing(
    dest: Destination, repeat: int, on_resume: Optional[OnResume] = None
) -> Iterator[Writing]:
    """Create the run's folder (or take the resumed one), hold its lock for the block, and
    record that this process runs it (run.json), then how the block ended. Raises UserError
    when another process writes the folder."""
    if dest.resume is None:
        run_id = runfolder.new_run_id()
        run_dir = new_run_dir(dest.out, dest.results_dir, run_id)
    else:
        run_dir = dest.resume
        run_id = (state.read(run_dir) or {}).get("run_id") or run_dir.name
    begun = False
    try:
        with writer.held(run_dir):
            finished = {}
            if dest.resume is not None:
                going_on = on_resume(run_dir, run_id) if on_resume is not None else set()
                finished = resume.prepare(run_dir, repeat, going_on)
            state.started(run_dir, run_id, dest.options)
            begun = True
            with state.recorded(run_dir):
                yield Writing(run_dir, run_id, dest.resume is not None, finished)
    except OSError:
        if dest.resume is None and not begun:  # a new folder holding nothing: leave none behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: its folder and how it ended, which the command's exit code states."""

    run_dir: Path
    failed: bool  # a cell (its build or its worker) or a case failed
    skipped: bool  # a cell or a case was skipped
    interrupted: bool  # Ctrl-C or SIGTERM ended it before every cell ran


def finish(
    run_dir: Path, run_id: str, outcomes: list[CellResult], verbose: bool = False
) -> RunOutcome:
    """Ingest the run's records into its table, print the summary (each case that did not run
    named when ``verbose``), write the report, then record how the run ended (run.json)."""
    df = results.ingest_run(run_dir)
    if len(df):
        console.print(
            results_view(
                results.case_table(df),
                f"run {run_id}",
                verbose,
                results.bench_kinds(df),
                f"cudastack show {run_dir} --verbose lists them",
            )
        )
    else:
        console.print("no records")
    if len(df):
        side = df.assign(side=compare.label_sides(df))
        envs = {c: explain.load_env(run_dir, c) for c in side["cell"].unique()}
        report.write(run_dir / runfolder.REPORT, report.html_report(side, envs))
    console.print(
        f"results: {run_dir / runfolder.TABLE}, {runfolder.CSV} and report.html", highlight=False
    )
    statuses = {o.status for o in outcomes} | set(df["status"])
    outcome = RunOutcome(
        run_dir,
        failed="failed" in statuses,
        skipped="skipped" in statuses,
        interrupted=any(o.reason == INTERRUPTED for o in outcomes),
    )
    if outcome.interrupted:
        state.ended(run_dir, "interrupted", INTERRUPTED)
    else:
        state.ended(run_dir, "complete", _counts(outcomes, df))
    return outcome


def _counts(outcomes: list[CellResult], df: pd.DataFrame) -> str:
    """'2 cells: 1 ok, 1 skipped; 14 cases: 12 ok, 2 skipped': how a finished run's cells and
    cases ended."""
    cells = pd.Series([o.status for o in outcomes], dtype=object).value_counts()
    cases = df[df["bench"] != "harness"].drop_duplicates(["cell", "case"])["status"].value_counts()

    def line(what: str, counts: pd.Series) -> str:
        total = int(counts.sum())
        parts = ", ".join(
            f"{int(counts[s])} {s}" for s in ("ok", "failed", "skipped") if s in counts
        )
        return f"{total} {what}{'s' if total != 1 else ''}" + (f": {parts}" if parts else "")

    return f"{line('cell', cells)}; {line('case', cases)}"


def check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise UserError(f"--timeout {timeout:g}: give a time limit in seconds above 0")


def run_cells(launcher: Launcher, repeat: int, run: Writing) -> list[CellResult]:
    """The one run loop: every cell the launcher offers, ``repeat`` worker processes each, but
    those a resumed run had finished. A cell it cannot run here gets a skipped row with the
    reason; a process that fails ends its cell's repeats; Ctrl-C (or SIGTERM) ends the loop with
    a failed row for the cell it stopped. Raises UserError when the worker refused its input
    (the folder is removed if it holds nothing else)."""
    run_dir, run_id = run.run_dir, run.run_id
    plans = launcher.plan()
    outcomes: dict[str, CellResult] = {}
    current, process = "", 0
    try:
        # With --repeat N the cells take turns (a, b, a, b, ...): a drift of the machine over
        # the run then touches every cell alike instead of whichever ran last.
        for process in range(repeat):
            for plan in plans:
                current = plan.cell
                if process < run.finished.get(plan.cell, 0):
                    outcomes[plan.cell] = finished_cell(plan.cell, run_dir / plan.cell, 0.0, 0.0)
                    continue
                if process == 0 and not plan.runnable:
                    outcomes[plan.cell] = skip_cell(run_dir, run_id, plan)
                if not plan.runnable or (process > 0 and outcomes[plan.cell].status != "ok"):
                    continue
                if len(plans) > 1 or repeat > 1:
                    title = plan.cell if repeat == 1 else f"{plan.cell} ({process + 1}/{repeat})"
                    console.rule(escape(title))
                outcomes[plan.cell] = launcher.run(plan.cell, process, run_dir, run_id)
                _report_cell(run_dir, outcomes[plan.cell])
    except KeyboardInterrupt:
        err.print(f"interrupted: {launcher.interrupted_note}")
        row = results.harness_row(run_id, current, "run", "failed", INTERRUPTED, process=process)
        results.append_records(run_dir / current, [row])
        outcomes[current] = CellResult(current, "failed", INTERRUPTED)
    except WorkerRefused:
        # Leave nothing half-written: a new folder that holds no records goes. A resumed one
        # is the user's, whatever it holds.
        if not run.resumed and not any(run_dir.glob(f"*/{runfolder.RECORDS}")):
            shutil.rmtree(run_dir)
        raise
    return list(outcomes.values())


def skip_cell(run_dir: Path, run_id: str, plan: CellPlan) -> CellResult:
    """A cell that cannot run here: its one skipped row, with the plan's reason."""
    row = results.harness_row(run_id, plan.cell, "doctor", "skipped", plan.reason)
    results.append_records(run_dir / plan.cell, [row])
    console.print(f"[yellow]{escape(plan.cell)}: skipped[/] ({escape(plan.reason)})")
    return CellResult(plan.cell, "skipped", plan.reason)


def run_here(
    args: SuiteArgs,
    dest: Destination,
    timeout: float = DEFAULT_TIMEOUT_S,
    verbose: bool = False,
) -> RunOutcome:
    """The suite in this Python environment, as the cell ``local``, into ``dest``; ``verbose``:
    the summary names each case that did not run."""
    cases = args.validate()
    check_timeout(timeout)
    if importlib.util.find_spec("torch") is None:
        raise UserError(
            f"torch is not installed in {sys.executable}; run `make setup` or pip install torch"
        )
    with writing(dest, args.repeat) as run:
        console.print(
            f"run {run.run_id}: {_doing(run)}up to {cases} cases -> {run.run_dir}", highlight=False
        )
        outcomes = run_cells(LocalLauncher(args, timeout, echo), args.repeat, run)
        return finish(run.run_dir, run.run_id, outcomes, verbose)


@dataclass(frozen=True)
class SmokeCounts:
    """How the smoke profile's cases ended here (what `doctor --deep` reports)."""

    run_dir: Path
    ok: int
    skipped: int
    failed: int


def run_smoke(bench_dir: Path, results_dir: Path) -> SmokeCounts:
    """Run the smoke profile here as `run --profile smoke` does, into a new run folder under
    ``results_dir``, and count its cases by status. A worker that exited with an error counts as
    at least one failed case, since the cases it never reached have no rows."""
    run_dir = results_dir / f"smoke-{runfolder.new_run_id()}"
    permissions.apply(shared=False)  # a run folder like any other: its files are yours alone
    smoke = SuiteArgs(profile="smoke", bench_dir=bench_dir)
    died = run_here(smoke, Destination(results_dir, run_dir)).failed
    statuses = results.load_table(run_dir).drop_duplicates(["cell", "case"])["status"]
    ok, skipped, failed = ((statuses == s).sum() for s in ("ok", "skipped", "failed"))
    return SmokeCounts(run_dir, int(ok), int(skipped), max(int(failed), int(died)))


def build_inputs(
    matrix_file: Path, wheelhouse: Optional[Path], ca_file: Optional[Path]
) -> pipeline.BuildInputs:
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise UserError(f"--wheelhouse {wheelhouse} is not a folder")
    if ca_file is not None and not ca_file.is_file():
        raise UserError(f"--ca-file {ca_file} is not a file")
    return pipeline.BuildInputs.for_matrix(matrix_file, wheelhouse, ca_file)


def build_logger(cell: str) -> Callable[[str], None]:
    def show(line: str) -> None:
        console.print(f"[dim]{escape(cell)} | {escape(line)}[/]", highlight=False)

    return show


def run_matrix(
    launcher: Launcher,
    what: str,
    repeat: int,
    dest: Destination,
    fallback: Optional[Launcher] = None,
    verbose: bool = False,
    on_resume: Optional[OnResume] = None,
) -> RunOutcome:
    """Run the cells ``launcher`` offers (``what`` says which, e.g. "3 cells"), ``repeat``
    processes each, into ``dest``; when none could run, the ``fallback`` launcher's as
    well (bench: something useful on any host). ``verbose``: the summary names each case that
    did not run. ``on_resume``: see OnResume."""
    with writing(dest, repeat, on_resume) as run:
        console.print(f"run {run.run_id}: {_doing(run)}{what} -> {run.run_dir}", highlight=False)
        outcomes = run_cells(launcher, repeat, run)
        if fallback is not None and all(o.status == "skipped" for o in outcomes):
            console.print(
                "cudastack bench: no cell of the matrix could run here (see the reasons "
                "above): running the suite locally in this Python environment as well"
            )
            outcomes += run_cells(fallback, repeat, run)
        return finish(run.run_dir, run.run_id, outcomes, verbose)


def _doing(run: Writing) -> str:
    """'resuming (3 worker processes finished before): ' for a resumed run, else nothing."""
    if not run.finished:
        return ""
    done = sum(run.finished.values())
    return f"resuming ({done} worker process{'es' if done != 1 else ''} finished before): "


def _report_cell(run_dir: Path, res: CellResult) -> None:
    results.ingest_run(run_dir)  # each finished cell is in the table at once
    colour = {"ok": "green", "skipped": "yellow"}.get(res.status, "red")
    timing = f"build {res.build_s:.1f} s, run {res.run_s:.1f} s"
    if res.status == "ok":
        timing += f" (suite {res.suite_s:.1f} s, overhead {res.overhead_s:.1f} s)"
    console.print(f"[{colour}]{escape(res.cell)}: {res.status}[/] {timing} {escape(res.reason)}")
    if res.status == "failed":
        log = run_dir / res.cell / runfolder.LOG
        err.print(f"{res.cell}: {res.reason}; its log is {log}", highlight=False, markup=False)


def resolve_gpus(gpus: str, report: doctor.HostReport) -> str:
    """The GPUs a container asks for. With auto on a host without a usable GPU that is none, for
    the CPU cells; the plan (`pipeline.plan_cells`, given auto) skips the CUDA cells there."""
    if gpus == "auto":
        return "all" if report.driver and report.gpu_runtime else "none"
    if not re.fullmatch(r"all|none|[A-Za-z0-9-]+(,[A-Za-z0-9-]+)*", gpus):
        raise UserError(f"--gpus {gpus!r} is not all, none or a list of indices / UUIDs")
    return gpus
