"""Where a suite runs on a Slurm cluster: one job array, a task per cell, followed with squeue.

Slurm does the placing, queuing, accounting and cancelling; cudastack writes one readable batch
script into the run folder (``slurm/job.sbatch``), submits it once, and reads each task's
records from the run folder, which the nodes must share. A task runs its cell's worker
processes one after another, as the local launcher does: they append to one records file, and
a resume counts the processes a cell finished in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from cudastack.contract import redact, runfolder
from cudastack.contract.errors import UserError
from cudastack.host.analysis import results
from cudastack.host.run import resume, task_container
from cudastack.host.run.container import HARNESS_PACKAGE, ContainerOptions
from cudastack.host.run.launcher import CellPlan, CellResult, finished_cell
from cudastack.host.run.suite_args import SuiteArgs
from cudastack.host.run.task_container import NodeImage, task_command

SLURM_DIR = "slurm"  # in the run folder: the batch script, each task's output and exit files
SCRIPT = "job.sbatch"
# The arrays this run submitted: job id -> cell -> [array index, first process], oldest first.
# What a resume follows (a task still queued or running) or submits again (the rest).
ARRAYS = "arrays.json"
# A task's exit code when the run folder it was given is not there on its node: the folder is
# on a disk the nodes do not share.
NOT_SHARED = 97
# ... and when the cudastack package a container mounts is not there: it is installed on a disk
# the nodes do not share.
HARNESS_NOT_SHARED = 98
# timeout(1)'s exit code when the process it ran outlived its time, and how long it waits
# between its SIGTERM and its SIGKILL.
TIMED_OUT = 124
TIMEOUT_GRACE_S = 30
# What a task's default --time leaves for loading or pulling its image before its processes.
IMAGE_MARGIN_S = 300
# In the run folder: each cell's image as the nodes get it (--container), and the archives
# `docker save` wrote when no registry was given.
IMAGES = "images.json"
ARCHIVES = "images"
# How often the host asks squeue about the array: a scheduler serves many users, and a cell
# takes minutes.
POLL_S = 2.0
# How long an ended task's exit file may take to show here (see SlurmLauncher._wait).
EXIT_FILE_GRACE_S = 60.0
# How long Slurm may fail to answer a poll before the run gives up (a busy controller times
# out now and then).
UNANSWERED_S = 600.0
# Where a task ended in Slurm's words (scontrol's JobState), and what that means for its cell.
ENDED = {
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "CANCELLED",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}
# A task neither scontrol nor sacct knows any more (see ended_task).
GONE = "GONE"
ENDED.add(GONE)
_SBATCH_VALUE = re.compile(r"[A-Za-z0-9_.,:=+@%/-]+")
# A case's line in a worker's output ("[  3/64] gemm[dtype=bf16,n=4096]  ok  612.3 TFLOP/s"):
# what the host echoes of a running cell, as a local run prints it.
_CASE_LINE = re.compile(r"\[\s*\d+/\d+\] ")
# A node feature, as --constraint names one (h100, a100-80gb).
_FEATURE = re.compile(r"[A-Za-z0-9_.-]+")
# Between a cell's name and the node feature its task asks for (cell@h100): one task, and one
# folder of results, per cell and GPU type.
AT = "@"


class SlurmError(UserError):
    """Slurm cannot be used as asked (no sbatch, a refused submission)."""


@dataclass(frozen=True)
class SlurmOptions:
    """What the job asks Slurm for: each a ``#SBATCH`` line when given (sbatch's own options)."""

    partition: str = ""
    time: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    gres: str = ""
    gpus_per_task: int = 0
    sbatch_args: tuple[str, ...] = ()
    # The partition's MaxTime in minutes (partition_limit), 0 when it has none: a default
    # --time above it would leave the job pending for ever.
    limit_minutes: int = 0

    def asks_for_gpus(self) -> bool:
        """Whether the job asks for GPUs: --gpus-per-task, a gpu gres, or an sbatch --gpus*
        option (what a task's container must then be given)."""
        gres = [item.split(":")[0] for item in self.gres.split(",") if item]
        extra = [arg.split("=")[0] for arg in self.sbatch_args]
        gpu_flags = ("--gpus", "--gpus-per-node", "--gpus-per-socket", "--gpus-per-task")
        return bool(self.gpus_per_task) or "gpu" in gres or any(f in gpu_flags for f in extra)

    def node_types(self) -> list[str]:
        """The node features a --constraint of alternatives names ("h100|a100"): each is a
        task of its own per cell (a job array's tasks share one constraint, so each is an
        array of its own). [] for any other constraint. Raises UserError on an alternative
        that is not a plain feature name."""
        if "|" not in self.constraint:
            return []
        types = [t.strip() for t in self.constraint.split("|")]
        for t in types:
            if not _FEATURE.fullmatch(t):
                raise UserError(
                    f"--constraint {self.constraint!r}: alternatives are node features (letters, "
                    f"digits, '.', '_', '-'), each a task of its own; {t!r} is not one"
                )
        return list(dict.fromkeys(types))

    def directives(self, timeout_s: float, processes: int, node_type: str = "") -> list[str]:
        """The ``#SBATCH`` options, checked: a value is one word of sbatch's syntax. Without
        --time, a task gets the cell's time limit for each of its processes (whole minutes).
        ``node_type``: the one feature of --constraint's alternatives this array asks for.
        Raises UserError on a value that is not."""
        # Each process may take its --timeout and timeout(1)'s grace; the task first loads or
        # pulls its image.
        minutes = math.ceil((processes * (timeout_s + TIMEOUT_GRACE_S) + IMAGE_MARGIN_S) / 60)
        if self.limit_minutes:
            minutes = min(minutes, self.limit_minutes)
        alternatives = self.node_types()  # checked, whichever array this is
        asked = {
            "--partition": self.partition,
            "--time": self.time or str(minutes),
            "--account": self.account,
            "--qos": self.qos,
            "--constraint": node_type or ("" if alternatives else self.constraint),
            "--gres": self.gres,
            "--gpus-per-task": str(self.gpus_per_task) if self.gpus_per_task else "",
        }
        lines = []
        for flag, value in asked.items():
            if value and not _SBATCH_VALUE.fullmatch(value):
                raise UserError(f"{flag} {value!r}: not a value sbatch takes")
            if value:
                lines.append(f"{flag}={value}")
        for extra in self.sbatch_args:
            if not extra.startswith("--") or not _SBATCH_VALUE.fullmatch(extra):
                raise UserError(
                    f"--sbatch-arg {extra!r}: give one sbatch option as --name=value, "
                    "e.g. --sbatch-arg=--exclusive"
                )
            lines.append(extra)
        return lines


@dataclass
class _Task:
    """One array task: a cell, the processes it runs, and what Slurm last said of it."""

    cell: str
    index: int
    processes: range
    job: str = ""
    state: str = "PENDING"
    node: str = ""
    exit_code: str = ""
    # When the host saw it start running, then its last process end (perf_counter seconds).
    since: Optional[float] = None
    log_read: int = 0  # how much of the cell's log the host has echoed (bytes)


@dataclass
class SlurmLauncher:
    """The cells ``cells`` (each in the node's own Python environment, ``python``) as one job
    array, submitted when the run loop first asks for a cell and followed until each task
    ends. A task that ends without its process's exit file is that process's failed row, with
    Slurm's state and exit code. Ctrl-C cancels the arrays it follows (scancel). A resumed run
    follows the tasks an earlier host submitted that are still queued or running (``adopt``)
    and submits the other cells' missing processes."""

    args: SuiteArgs
    cells: list[str]
    options: SlurmOptions
    timeout_s: float
    echo: Callable[[str], None]
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    # --container: how a task runs its cell (task_container.MODES); for a mode other than
    # none, node_images(run_dir, cells) gives each cell's image as the nodes get it, or the
    # reason it cannot (a failed build); gpus: whether the job asks for GPUs.
    container: str = "none"
    node_images: Optional[Callable[[Path, list[str]], dict[str, Union[NodeImage, str]]]] = None
    gpus: bool = False
    docker: ContainerOptions = task_container.DOCKER_DEFAULTS  # --container docker's containers
    interrupted_note: str = "cancelled the job array (scancel); keeping the cases that finished"
    _tasks: dict[str, _Task] = field(default_factory=dict)
    _images: dict[str, NodeImage] = field(default_factory=dict)
    _refused: dict[str, str] = field(default_factory=dict)  # cell -> why it has no image
    _submitted: bool = False
    _accounting_said: bool = False
    _secrets: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        # The values the progress lines and failure reasons must not show: --env's and this
        # process's secrets, found once.
        self._secrets = redact.secret_values(os.environ, self.env)

    _unanswered_since: float = 0.0

    def plan(self) -> list[CellPlan]:
        return [CellPlan(cell) for cell in self.cells]

    @staticmethod
    def expand(cells: list[str], node_types: list[str]) -> list[str]:
        """The cells the run holds: one per cell and node type (cell@h100) when --constraint
        lists alternatives, else ``cells``."""
        return [f"{cell}{AT}{t}" for cell in cells for t in node_types] if node_types else cells

    def run(self, cell: str, process: int, run_dir: Path, run_id: str) -> CellResult:
        try:
            if not self._submitted:  # every cell not followed yet, at once
                self.submit(run_dir, run_id)
            if cell in self._refused:
                reason = self._refused[cell]
                return self._failed_row(cell, process, run_dir, run_id, reason, 0.0, "build")
            return self._wait(cell, process, run_dir, run_id)
        except KeyboardInterrupt:
            with contextlib.suppress(SlurmError):  # the interrupt is what the user must see
                if self.jobs():
                    self._slurm("scancel", *self.jobs())
            raise

    def jobs(self) -> list[str]:
        """The job arrays this launcher follows."""
        return sorted({task.job for task in self._tasks.values()})

    def adopt(self, run_dir: Path) -> set[str]:
        """The cells whose task of an earlier array of ``run_dir`` is still queued or running,
        now followed by this launcher (their workers write on: a resume leaves their records
        alone). Their exit files and records say what they finish."""
        arrays = submitted_arrays(run_dir)
        if not arrays:
            return set()
        listed = self._listed(list(arrays))
        for job, cells in arrays.items():
            for cell, (index, first) in cells.items():
                if (job, index) in listed and cell in self.cells:
                    task = _Task(cell, index, range(first, self.args.repeat), job)
                    task.log_read = _size(run_dir / cell / runfolder.LOG)
                    self._tasks[cell] = task
        adopted = {task.job for task in self._tasks.values()}
        if adopted:
            self.echo(
                f"following job array {', '.join(sorted(adopted))}, which the interrupted run "
                f"left in Slurm ({', '.join(self._tasks)})"
            )
        return set(self._tasks)

    def submit(self, run_dir: Path, run_id: str) -> str:
        """Write the batch script of the missing processes of every cell this launcher does
        not follow yet, submit it as one array (one per node type, see
        SlurmOptions.node_types), and return the job ids, comma-separated ('' when none is
        missing)."""
        self._submitted = True
        folder = run_dir / SLURM_DIR
        folder.mkdir(exist_ok=True)
        new: dict[str, _Task] = {}
        for cell in self.cells:
            # A resumed run's cell runs only the processes it did not finish; one that
            # finished them all gets no task (the run loop does not ask for it).
            first = resume.finished_processes(run_dir / cell, self.args.repeat)
            if cell not in self._tasks and first < self.args.repeat:
                task = new[cell] = _Task(cell, len(new), range(first, self.args.repeat))
                (run_dir / cell).mkdir(exist_ok=True)
                task.log_read = _size(run_dir / cell / runfolder.LOG)  # an earlier attempt's
                for n in task.processes:  # an earlier attempt's say on a process it did not finish
                    (folder / f"{cell}.{n}.exit").unlink(missing_ok=True)
        if new and self.container != "none":
            new = self._with_images(run_dir, new)
        jobs: list[str] = []
        try:
            for node_type in dict.fromkeys(_node_type(cell) for cell in new):
                tasks = [t for t in new.values() if _node_type(t.cell) == node_type]
                for index, task in enumerate(tasks):  # each array's tasks count from 0
                    task.index = index
                jobs.append(self._submit_array(run_dir, run_id, tasks, node_type))
        except SlurmError:
            # One node type's array refused: the others are not left running unfollowed (a
            # resume submits every cell's tasks again).
            with contextlib.suppress(SlurmError):
                if jobs:
                    self._slurm("scancel", *jobs)
            raise
        return ",".join(jobs)

    def _submit_array(self, run_dir: Path, run_id: str, tasks: list[_Task], node_type: str) -> str:
        """Write ``tasks``' batch script and submit it as one array; returns its job id."""
        folder = run_dir / SLURM_DIR
        new = {task.cell: task for task in tasks}
        script = self.script(run_dir.absolute(), run_id, tasks, node_type)
        # Submitted from a file of its own, which becomes job.sbatch once Slurm has the job:
        # a refused script never takes the place of one that ran.
        submitted = folder / f"{SCRIPT}.new"
        runfolder.atomic_write(submitted, lambda p: p.write_text(script, encoding="utf-8"))
        try:
            # --export=ALL over any SBATCH_EXPORT: the tasks get --env's variables from
            # sbatch's environment (the script never holds their values).
            answer = self._slurm("sbatch", "--parsable", "--export=ALL", str(submitted))
            said = answer.strip().splitlines()
            job = said[-1].split(";")[0] if said else ""
            if not job.isdigit():
                raise SlurmError(f"sbatch answered {' '.join(said)[:200]!r}, not a job id")
        except SlurmError:
            submitted.unlink(missing_ok=True)
            raise
        arrays = submitted_arrays(run_dir)
        if arrays and (folder / SCRIPT).exists():  # what the earlier array ran stays readable
            (folder / SCRIPT).rename(folder / f"job.{list(arrays)[-1]}.sbatch")
        submitted.rename(folder / SCRIPT)
        for task in new.values():
            task.job = job
        self._tasks.update(new)
        arrays[job] = {t.cell: [t.index, t.processes.start] for t in new.values()}
        runfolder.write_json(folder / ARRAYS, arrays)
        on = f" on {node_type} nodes" if node_type else ""
        self.echo(
            f"submitted job array {job} ({len(new)} task{'s' if len(new) != 1 else ''}, "
            f"one per cell{on}): {folder / SCRIPT}"
        )
        if not self._accounting_said:
            self._accounting_said = True
            try:
                self._slurm("sacct", "-n", "-X", "-j", job, "-o", "State")
            except SlurmError as exc:
                self.echo(
                    f"Slurm keeps no accounting here ({exc}): following the array with squeue, "
                    "scontrol and each task's exit file"
                )
        return job

    def _with_images(self, run_dir: Path, new: dict[str, _Task]) -> dict[str, _Task]:
        """``new`` less the cells whose image cannot reach the nodes (their reason kept for
        their failed row); each kept cell's image recorded."""
        assert self.node_images is not None, "a container mode needs node_images"
        handed = self.node_images(run_dir, list(new))
        kept: dict[str, _Task] = {}
        for cell, task in new.items():
            image = handed[cell]
            if isinstance(image, str):
                self._refused[cell] = image
                continue
            self._images[cell] = image
            kept[cell] = task
        path = run_dir / SLURM_DIR / IMAGES
        recorded = runfolder.read_json(path) if path.is_file() else {}
        recorded.update({c: dataclasses.asdict(image) for c, image in self._images.items()})
        runfolder.write_json(path, recorded)
        return kept

    def script(self, run_dir: Path, run_id: str, tasks: list[_Task], node_type: str = "") -> str:
        """The batch script of ``tasks`` (on ``node_type`` nodes, one of --constraint's
        alternatives): readable by an administrator, every path and argument quoted."""
        q = shlex.quote
        slurm_dir = run_dir / SLURM_DIR
        processes = max(len(t.processes) for t in tasks)
        last = len(tasks) - 1
        lines = [
            "#!/bin/bash",
            f"# cudastack run {run_id}: one array task per cell; each runs its cell's worker",
            "# processes one after another (they append to one records file), into the run",
            "# folder, which every node must see at the same path.",
            f"#SBATCH --job-name=cudastack-{run_id}",
            f"#SBATCH --array=0-{last}",
            f"#SBATCH --output={slurm_dir}/%A_%a.out",
            "#SBATCH --ntasks=1",
            "# A requeued task would run finished processes again: it fails instead, and a",
            "# resume submits what did not finish.",
            "#SBATCH --no-requeue",
            *(
                f"#SBATCH {d}"
                for d in self.options.directives(self.timeout_s, max(processes, 1), node_type)
            ),
            "",
            "set -u",
            f"run_dir={q(str(run_dir))}",
            "# The run folder holds this token only if this node sees the host's folder.",
            f'if [ ! -f "$run_dir/{SLURM_DIR}/{self._token(run_dir)}" ]; then',
            '    echo "cudastack: run folder $run_dir is not on this node ($(hostname))" >&2',
            f"    exit {NOT_SHARED}",
            "fi",
            *(
                [
                    f"# --container {self.container}: the harness each container mounts.",
                    f"if [ ! -d {q(str(HARNESS_PACKAGE))} ]; then",
                    '    echo "cudastack: its package is not on this node ($(hostname))" >&2',
                    f"    exit {HARNESS_NOT_SHARED}",
                    "fi",
                ]
                if self.container != "none"
                else []
            ),
            "",
            "# One worker process, in its cell's folder (as in a container): its output to the",
            "# cell's log, its exit code to a file the host reads (Slurm's own accounting may",
            "# not be configured). --timeout holds for each process, as on one host: SIGTERM,",
            f"# then SIGKILL {TIMEOUT_GRACE_S} s later; timeout(1) then exits {TIMED_OUT}.",
            f"timeout_s={math.ceil(self.timeout_s)}",
            "process() {",
            "    local cell=$1 n=$2; shift 2",
            '    (cd "$run_dir/$cell" && exec timeout --kill-after='
            + str(TIMEOUT_GRACE_S)
            + ' "$timeout_s" "$@") >> "$run_dir/$cell/log.txt" 2>&1',
            "    local code=$?",
            f'    local exit_file="$run_dir/{SLURM_DIR}/$cell.$n.exit"',
            '    echo "$code" > "$exit_file.tmp" && mv "$exit_file.tmp" "$exit_file"',
            '    return "$code"',
            "}",
            "",
            'case "$SLURM_ARRAY_TASK_ID" in',
        ]
        for task in tasks:
            lines.append(f"{task.index})  # cell {task.cell}")
            image = self._images.get(task.cell)
            if image is not None:  # into the cell's log, where a failed row's last line is read
                log = f'"$run_dir"/{q(task.cell)}/{runfolder.LOG}'
                setup = task_container.task_setup(self.container, image, log, self.docker)
                lines += [f"    {line}" for line in setup]
            for n in task.processes:
                if image is not None:
                    command = task_command(
                        self.container,
                        image,
                        self.args,
                        run_dir / task.cell,
                        task.cell,
                        run_id,
                        n,
                        self.gpus,
                        self.docker,
                    )
                    lines.append(f"    process {q(task.cell)} {n} {command} || exit $?")
                    continue
                argv = [
                    self.python,
                    *self.args.launcher(),
                    *self.args.worker_argv(
                        run_dir / task.cell,
                        task.cell,
                        run_id,
                        self.args.bench_dir.absolute(),
                        process=n,
                    ),
                ]
                command = " ".join(q(a) for a in argv)
                lines.append(f"    process {q(task.cell)} {n} {command} || exit $?")
            lines.append("    ;;")
        lines += ["esac", ""]
        return "\n".join(lines)

    def _token(self, run_dir: Path) -> str:
        """A file only this run folder holds: the tasks' test that their node sees it."""
        found = sorted((run_dir / SLURM_DIR).glob("visible-*"))
        if found:
            return found[0].name
        token = run_dir / SLURM_DIR / f"visible-{secrets.token_hex(8)}"
        token.touch()
        return token.name

    def _wait(self, cell: str, process: int, run_dir: Path, run_id: str) -> CellResult:
        """Follow the array until ``cell``'s ``process`` has an exit file or its task ended."""
        task = self._tasks[cell]
        exit_file = run_dir / SLURM_DIR / f"{cell}.{process}.exit"
        started = time.perf_counter()
        ended_at: Optional[float] = None
        while not (code := _exit_code(exit_file)):
            self._poll()
            self._echo_progress(run_dir)
            if task.state in ENDED:
                # A file the node wrote may show on this host's view of a shared filesystem
                # only once its attribute cache expires (NFS: up to 60 s).
                ended_at = ended_at if ended_at is not None else time.perf_counter()
                if time.perf_counter() - ended_at > EXIT_FILE_GRACE_S:
                    return self._failed(task, process, run_dir, run_id, started)
            time.sleep(POLL_S)
        self._echo_progress(run_dir)  # the lines it wrote since the last poll
        now = time.perf_counter()
        # The process's time on its node, as the host saw it: from the task's start (or its
        # previous process's end), not from when this call began waiting.
        run_s = now - (task.since if task.since is not None else started)
        task.since = now
        if code == "0":
            done = finished_cell(cell, run_dir / cell, 0.0, run_s)
            # The host sees a start at its polls' granularity; the suite's own time is exact.
            done.run_s = max(done.run_s, done.suite_s)
            return done
        reason = f"the worker exited with code {code} on {task.node or 'its node'}"
        if code == str(TIMED_OUT):
            reason = (
                f"timed out after {self.timeout_s:g} s (--timeout) on {task.node or 'its node'}"
            )
        return self._failed_row(cell, process, run_dir, run_id, reason, run_s)

    def _echo_progress(self, run_dir: Path) -> None:
        """Each cell's new case lines from its log, prefixed with the cell (``a: [ 3/64]
        gemm[...] ok ...``): the host's progress per cell, as a local run prints it. Only whole
        lines; secrets redacted."""
        for task in self._tasks.values():
            log = run_dir / task.cell / runfolder.LOG
            if _size(log) <= task.log_read:
                continue
            with open(log, "rb") as f:
                f.seek(task.log_read)
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            task.log_read += len(whole)
            for line in whole.decode("utf-8", errors="replace").splitlines():
                if _CASE_LINE.match(line):
                    self.echo(f"{task.cell}: {redact.text(line.rstrip(), self._secrets)}")

    def _poll(self) -> None:
        """Every task's state, from squeue while queued or running and from scontrol after
        (once: an ended task is not asked about again). A poll Slurm does not answer is
        skipped, until it has not answered for UNANSWERED_S."""
        following = [task for task in self._tasks.values() if task.state not in ENDED]
        if not following:
            return
        try:
            live = self._listed(sorted({task.job for task in following}))
        except SlurmError as exc:
            now = time.perf_counter()
            self._unanswered_since = self._unanswered_since or now
            if now - self._unanswered_since > UNANSWERED_S:
                raise
            self.echo(f"Slurm did not answer ({exc}); asking again")
            return
        self._unanswered_since = 0.0
        for task in following:
            state, node = live.get((task.job, task.index), ("", ""))
            if not state:
                state, node, task.exit_code = ended_task(task.job, task.index, self.env)
            if state != task.state:
                where = f" on {node}" if node else ""
                self.echo(f"{task.cell}: Slurm task {task.job}_{task.index} {state}{where}")
            if state == "RUNNING" and task.since is None:
                task.since = time.perf_counter()
            task.state, task.node = state, node or task.node

    def _listed(self, jobs: list[str]) -> dict[tuple[str, int], tuple[str, str]]:
        """(job, array index) -> (state, node) of each task of ``jobs`` squeue lists: queued,
        running or completing."""
        try:
            out = self._slurm("squeue", "-h", "-r", "-j", ",".join(jobs), "-o", "%F|%K|%T|%N")
        except SlurmError as exc:
            if "Invalid job id" in str(exc):  # one job asked for, which Slurm has forgotten
                return {}
            raise
        found = {}
        for line in out.splitlines():
            job, index, state, node = [*line.split("|"), "", "", ""][:4]
            if index.strip().isdigit():
                found[(job.strip(), int(index))] = (state.strip(), node.strip())
        return found

    def _failed(
        self, task: _Task, process: int, run_dir: Path, run_id: str, started: float
    ) -> CellResult:
        code = task.exit_code.split(":")[0]
        if code == str(NOT_SHARED):
            reason = (
                f"the run folder is not visible on node {task.node or '?'}: put it on a "
                "filesystem the nodes share (--results-dir or --out)"
            )
        elif code == str(HARNESS_NOT_SHARED):
            reason = (
                f"cudastack's package {HARNESS_PACKAGE} is not visible on node "
                f"{task.node or '?'}, and the containers mount it: install cudastack on a "
                "filesystem the nodes share"
            )
        else:
            reason = f"Slurm task {task.job}_{task.index} ended {task.state}"
            if task.state == GONE:
                reason = (
                    f"Slurm task {task.job}_{task.index} ended without its exit file, and Slurm "
                    "no longer says how (scontrol forgets a job after MinJobAge; no sacct)"
                )
            if task.exit_code:
                reason += f" (exit code {task.exit_code})"
            if task.node:
                reason += f" on {task.node}"
            tail = _tail(run_dir / task.cell / runfolder.LOG, self._secrets)
            if tail:
                reason += f"; last log line: {tail}"
        return self._failed_row(
            task.cell, process, run_dir, run_id, reason, time.perf_counter() - started
        )

    def _failed_row(
        self,
        cell: str,
        process: int,
        run_dir: Path,
        run_id: str,
        reason: str,
        run_s: float,
        step: str = "run",
    ) -> CellResult:
        row = results.harness_row(run_id, cell, step, "failed", reason, process=process)
        results.append_records(run_dir / cell, [row])
        return CellResult(cell, "failed", reason, run_s=run_s)

    def _slurm(self, *argv: str) -> str:
        return slurm_command(*argv, env=self.env)


def _node_type(cell: str) -> str:
    """The node feature a run's cell asks for (cell@h100 -> h100), or ''."""
    return cell.partition(AT)[2]


def matrix_cell(cell: str) -> str:
    """The matrix's cell a run's cell runs (cell@h100 -> cell)."""
    return cell.partition(AT)[0]


def ended_task(job: str, index: int, env: dict[str, str]) -> tuple[str, str, str]:
    """(state, node, exit code) of a task squeue no longer lists: from scontrol, which
    keeps a finished job for the controller's MinJobAge (300 s by default), else from the
    accounting database (sacct) where the cluster keeps one, else GONE: its exit files are
    then all that tells how it went."""
    with contextlib.suppress(SlurmError):
        out = slurm_command("scontrol", "show", "job", "-o", f"{job}_{index}", env=env)
        fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
        if "JobState" in fields:
            return fields["JobState"], fields.get("NodeList", ""), fields.get("ExitCode", "")
    with contextlib.suppress(SlurmError):
        out = slurm_command(
            "sacct",
            "-n",
            "-P",
            "-X",
            "-j",
            f"{job}_{index}",
            "-o",
            "State,NodeList,ExitCode",
            env=env,
        )
        for line in out.splitlines():
            state, node, code = [*line.split("|"), "", ""][:3]
            if state:
                # sacct says "CANCELLED by 0": the state is its first word.
                return state.split()[0], node, code
    return GONE, "", ""


def _size(path: Path) -> int:
    """A file's size in bytes, 0 when it is not there."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _exit_code(path: Path) -> str:
    """What a process's exit file says, or '' while it is not there (or not yet whole)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


# A cell's name on Slurm names its folder and its branch of the batch script: a matrix cell
# name's characters, and not the folder the script itself lives in.
_CELL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Characters sbatch's #SBATCH lines or its %-patterns would take apart in the run folder's path.
_UNSAFE_PATH = re.compile(r"[\s%#'\"\\]")


def check_names(cells: list[str], run_folder: Path) -> None:
    """Raise UserError on a cell name that cannot name a task's folder and script branch, and
    on a run folder path the batch script cannot name (whitespace, %, #, quotes)."""
    for cell in cells:
        if not _CELL_NAME.fullmatch(cell) or cell == SLURM_DIR:
            raise UserError(
                f"--cell {cell!r}: on Slurm a cell is named with letters, digits, '.', '_' and "
                f"'-' (not {SLURM_DIR!r})"
            )
    shown = str(run_folder.absolute())
    if _UNSAFE_PATH.search(shown):
        raise UserError(
            f"{shown}: sbatch cannot take a run folder path with whitespace, %, # or quotes; "
            "choose another --out or --results-dir"
        )


def require_cluster(partition: str, env: dict[str, str]) -> None:
    """Raise SlurmError (one line) unless Slurm's commands are on PATH, its controller answers,
    and ``partition`` (when given) is one of its partitions: checked before a run folder is
    made."""
    missing = [
        tool
        for tool in ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
        if not shutil.which(tool)
    ]
    if missing:
        raise SlurmError(
            f"--launcher slurm needs Slurm's commands, and {', '.join(missing)} is not on "
            "PATH: run cudastack on a login node of the cluster"
        )
    try:
        slurm_command("scontrol", "ping", env=env)
    except SlurmError as exc:
        raise SlurmError(f"Slurm's controller does not answer here ({exc})") from None
    if partition and not slurm_command("sinfo", "-h", "-p", partition, "-o", "%P", env=env).strip():
        known = slurm_command("sinfo", "-h", "-o", "%P", env=env).split()
        raise SlurmError(
            f"--partition {partition}: no such partition; this cluster has "
            f"{', '.join(p.rstrip('*') for p in known) or 'none'}"
        )


def partition_limit(partition: str, env: dict[str, str]) -> int:
    """The time limit of ``partition`` (the cluster's default partition when ''), in whole
    minutes, as sinfo gives it ("1-12:00:00", "2:00:00", "30:00"); 0 when it has none
    (infinite, unlimited) or sinfo does not say."""
    with contextlib.suppress(SlurmError):
        for line in slurm_command("sinfo", "-h", "-o", "%P %l", env=env).splitlines():
            name, _, limit = line.strip().partition(" ")
            if name.rstrip("*") == partition or (not partition and name.endswith("*")):
                return _minutes(limit.strip())
    return 0


def _minutes(limit: str) -> int:
    """Slurm's [days-]hours:minutes:seconds (or minutes:seconds) in whole minutes, rounded
    down (but a limit under a minute is 1); 0 for anything else."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", limit)
    if not m:
        return 0
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return days * 1440 + hours * 60 + minutes or min(seconds, 1)  # under a minute: 1, not none


def submitted_arrays(run_dir: Path) -> dict[str, dict[str, list[int]]]:
    """The job arrays a run submitted, oldest first: job id -> cell -> [array index, first
    process] (empty before any)."""
    path = run_dir / SLURM_DIR / ARRAYS
    return dict(runfolder.read_json(path)) if path.is_file() else {}


def slurm_command(*argv: str, env: dict[str, str]) -> str:
    """A Slurm command's output (``env`` over this process's environment). Raises SlurmError
    with its last line of output when it fails."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=120
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer in 120 s") from None
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise SlurmError(f"{argv[0]} failed: {message[-1] if message else proc.returncode}")
    return proc.stdout


def _tail(log: Path, secrets: frozenset[str]) -> str:
    """The log's last line, ``secrets`` redacted."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return redact.text(lines[-1], secrets)[:200] if lines else ""
