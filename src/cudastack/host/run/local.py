"""Where a suite runs here: the suite's arguments, and a worker subprocess of this Python.

The worker is a separate process even locally, so the host never imports torch and a crash in a
kernel (a segfault, an abort in a CUDA library) leaves the cases that finished on disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import psutil

from cudastack.contract import runfolder
from cudastack.contract.errors import CudastackError
from cudastack.contract.request import SuiteRequest
from cudastack.contract.schema import PASSED_ENV
from cudastack.environment import suite
from cudastack.environment.envinfo import usable_cores
from cudastack.host.analysis import results
from cudastack.host.cells.doctor import nvml_host
from cudastack.host.run.launcher import CellPlan, CellResult, finished_cell

LOCAL = "local"  # the cell name of this Python environment
EXIT_BAD_INPUT = 2  # the worker's exit code for input it refuses
DEFAULT_TIMEOUT_S = 3 * 3600.0  # per cell, here and in containers (--timeout)
# Host variables a cell gets without --env, when set: NCCL's and torch's own switches, which is
# what anyone debugging a failure in a container reaches for first (NCCL_DEBUG=INFO, TORCH_LOGS,
# TORCH_NCCL_*, CUDA_LAUNCH_BLOCKING=1).
PASSTHROUGH_PREFIXES = ("NCCL_", "TORCH_")
PASSTHROUGH_NAMES = ("CUDA_LAUNCH_BLOCKING",)
# Names of host folders and files (TORCH_HOME, TORCH_EXTENSIONS_DIR, NCCL_TOPO_FILE, ...): the
# paths do not exist in a cell; --env passes one on purpose.
PASSTHROUGH_EXCLUDED_SUFFIXES = ("_HOME", "_DIR", "_FILE", "_PATH")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_env(items: list[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` items as a dict (a later KEY wins). Raises SuiteError on an item
    without ``=`` or whose KEY is not a shell variable name."""
    env = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise suite.SuiteError(f"--env {item!r}: give KEY=VALUE, e.g. --env NCCL_DEBUG=INFO")
        if not _ENV_NAME.fullmatch(key):
            raise suite.SuiteError(
                f"--env {item!r}: {key!r} is not a variable name (letters, digits and _, "
                "not starting with a digit)"
            )
        env[key] = value
    return env


def passthrough_env(host: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The variables of ``host`` (default: this process's environment) that a cell gets without
    --env: every NCCL_* and TORCH_* but those naming host paths (*_HOME, *_DIR, *_FILE, *_PATH),
    and CUDA_LAUNCH_BLOCKING."""
    host = dict(os.environ) if host is None else host
    return {
        k: v
        for k, v in sorted(host.items())
        if (k.startswith(PASSTHROUGH_PREFIXES) or k in PASSTHROUGH_NAMES)
        and not k.endswith(PASSTHROUGH_EXCLUDED_SUFFIXES)
    }


def cell_env(items: list[str], host: Optional[dict[str, str]] = None) -> dict[str, str]:
    """What a cell's worker is given beyond its defaults: the passthrough variables, then the
    --env items over them (an explicit --env wins), and under PASSED_ENV the names of all of
    them, so the worker records in env.json what it was given."""
    env = {**passthrough_env(host), **parse_env(items)}
    if env:
        env[PASSED_ENV] = ",".join(sorted(env))
    return env


class DeviceLimit(NamedTuple):
    processes: int
    what: str  # "GPU(s)" or "CPU cores"


def device_limit(device: str) -> DeviceLimit:
    """How many data-parallel processes this host can give a device each: GPUs, else cores."""
    if device != "cpu":
        gpus = nvml_host().gpus
        if gpus:
            return DeviceLimit(len(gpus), "GPU(s)")
    return DeviceLimit(usable_cores(), "CPU cores")


@dataclass(frozen=True)
class SuiteArgs:
    """What to run, as given on the command line; validated before anything starts."""

    benches: list[str] = field(default_factory=list)
    select: list[str] = field(default_factory=list)
    profile: str = "auto"
    bench_dir: Path = suite.DEFAULT_BENCH_DIR
    device: str = "auto"
    threads: int = 0
    extra_work: float = 0.0
    overrides: list[str] = field(default_factory=list)  # --set key=value
    trace: bool = False
    nproc: int = 1  # data-parallel processes under torchrun
    # Worker processes per cell: a process is the unit `compare` tests with once there are 3+,
    # since on shared machines one process's speed differs from the next one's by more than
    # its samples differ from each other.
    repeat: int = 1
    env: list[str] = field(default_factory=list)  # --env KEY=VALUE

    def environment(self) -> dict[str, str]:
        """The variables the cell's worker gets beyond its defaults (see ``cell_env``)."""
        return cell_env(self.env)

    def validate(self) -> int:
        """Raise SuiteError on bad input; return how many cases the largest profile would run."""
        parse_env(self.env)
        specs = suite.discover(self.bench_dir)
        selection = suite.parse_select(self.select)
        overrides = suite.parse_set(self.overrides, specs)
        for key in suite.PATH_PARAMS:  # folders: they must exist here
            folder = overrides.get(key)
            if folder and not Path(folder).is_dir():
                raise suite.SuiteError(f"--set {key}={folder}: no such folder on this host")
        if self.repeat < 1:
            raise suite.SuiteError(f"--repeat {self.repeat}: give 1 or more processes per cell")
        if self.nproc < 1:
            raise suite.SuiteError(f"--nproc {self.nproc}: give 1 or more processes")
        if self.nproc > 1:
            limit, what = device_limit(self.device)
            if self.nproc > limit:
                raise suite.SuiteError(
                    f"--nproc {self.nproc} is more than the {limit} {what} here; "
                    "data parallel runs one process per device"
                )
        # `auto` becomes quick or standard only where the worker sees its device: the input
        # must make sense for at least one of them.
        profiles = [self.profile] if self.profile != "auto" else ["quick", "standard"]
        counts, errors = [], []
        for name in profiles:
            suite.resolve_profile(name, has_gpu=False)
            try:
                cases = suite.plan(specs, name, self.benches, selection, overrides, self.nproc > 1)
                counts.append(len(cases))
            except suite.SuiteError as exc:
                errors.append(exc)
        if not counts:
            raise errors[0]
        return max(counts)

    def worker_argv(
        self,
        out: Path,
        cell: str,
        run_id: str,
        bench_dir: Path,
        image_digest: str = "",
        process: int = 0,
    ) -> list[str]:
        """The worker's arguments for one process of ``cell``; ``out`` and ``bench_dir`` are
        paths where the worker runs (in a container, its mounts)."""
        return SuiteRequest(
            out=out,
            cell=cell,
            run_id=run_id,
            profile=self.profile,
            bench_dir=bench_dir,
            device=self.device,
            benches=tuple(self.benches),
            select=tuple(self.select),
            threads=self.threads,
            extra_work=self.extra_work,
            overrides=tuple(self.overrides),
            trace=self.trace,
            process=process,
            image_digest=image_digest,
        ).to_argv()

    def launcher(self) -> list[str]:
        """The interpreter's arguments before the worker's: torchrun when data parallel."""
        if self.nproc > 1:
            return [
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={self.nproc}",
                "-m",
                "cudastack.worker",
            ]
        return ["-m", "cudastack.worker"]


class WorkerRefused(CudastackError):
    """The worker exited with the bad-input code before it recorded anything."""


def time_limit_reason(timeout_s: float) -> str:
    return f"the cell ran past its time limit of {timeout_s:g} s (--timeout)"


@dataclass
class LocalLauncher:
    """The cell ``local``: the worker in this Python environment, a subprocess (or torchrun) per
    process. Its output goes to <cell>/log.txt and ``on_line``; it gets this process's
    environment with ``args.environment()`` over it. Each process gets ``timeout_s`` seconds, as
    a container does: past it, the worker and every process it started are killed, the cases
    it finished stay, and the cell gets a failed row."""

    args: SuiteArgs
    timeout_s: float = DEFAULT_TIMEOUT_S
    on_line: Optional[Callable[[str], None]] = None
    interrupted_note: str = "keeping the cases that finished"

    def plan(self) -> list[CellPlan]:
        return [CellPlan(LOCAL)]

    def run(self, cell: str, process: int, run_dir: Path, run_id: str) -> CellResult:
        cell_dir = run_dir / cell
        cell_dir.mkdir(parents=True, exist_ok=process > 0)
        argv = [
            sys.executable,
            *self.args.launcher(),
            *self.args.worker_argv(cell_dir, cell, run_id, self.args.bench_dir, process=process),
        ]
        env = {**os.environ, **self.args.environment()}
        started = time.perf_counter()
        code, timed_out = _run_worker(
            argv, cell_dir / runfolder.LOG, self.on_line, self.timeout_s, env
        )
        run_s = time.perf_counter() - started
        if timed_out:
            reason = time_limit_reason(self.timeout_s)
            results.append_records(
                cell_dir, [results.harness_row(run_id, cell, "run", "failed", reason)]
            )
            return CellResult(cell, "failed", reason, run_s=run_s)
        if code == EXIT_BAD_INPUT and not (cell_dir / runfolder.RECORDS).exists():
            raise WorkerRefused("the worker refused its input (see the error above)")
        if code != 0:
            return CellResult(cell, "failed", f"the worker exited with code {code}", run_s=run_s)
        return finished_cell(cell, cell_dir, 0.0, run_s)


def _run_worker(
    argv: list[str],
    log_path: Path,
    on_line: Optional[Callable[[str], None]],
    timeout_s: float,
    env: Optional[dict[str, str]] = None,
) -> tuple[int, bool]:
    """(exit code, timed out). The worker leads a session of its own, so that it and whatever
    it starts (torchrun's ranks, DataLoader workers) can be found and killed as one."""
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            env=env,
        )

        def pump() -> None:
            assert proc.stdout is not None
            # ValueError: the log was closed under a process that escaped the kill.
            with contextlib.suppress(ValueError):
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if on_line:
                        on_line(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout_s
        try:
            try:
                code = proc.wait(timeout=timeout_s)
                # Its output to the end; a process it left behind may hold the pipe open.
                reader.join(timeout=max(0.0, deadline - time.monotonic()))
                if not reader.is_alive():
                    return code, False
            except subprocess.TimeoutExpired:
                pass
            kill_tree(proc.pid)
            code = proc.wait()
            reader.join(timeout=5)  # one that escaped the kill may still hold it: never hang
            return code, True
        except KeyboardInterrupt:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            kill_tree(proc.pid)
            raise


def kill_tree(pid: int) -> None:
    """Kill a process and every process below it, with the process groups they lead.

    torchrun starts each rank in a session of its own, so the launcher's group alone would leave
    the ranks running. Every process is stopped first, so that none forks while the tree is
    read, then all are killed."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    stopped: dict[int, psutil.Process] = {}
    while True:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:  # the worker itself has ended: what it left is found no more
            tree = []
        new = [p for p in tree if p.pid not in stopped]
        if not new:
            break
        for p in new:
            with contextlib.suppress(psutil.Error):
                p.suspend()
            stopped[p.pid] = p
    groups = set()
    for p in stopped.values():
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(p.pid))
    for group in groups - {os.getpgrp()}:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for p in stopped.values():
        with contextlib.suppress(psutil.Error):
            p.kill()
