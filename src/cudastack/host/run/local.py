"""Where a suite runs here: a worker subprocess (or torchrun) of this Python, as the cell local.

The worker is a separate process even locally, so the host never imports torch and a crash in a
kernel (a segfault, an abort in a CUDA library) leaves the cases that finished on disk.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import psutil

from cudastack.contract import lifetime, redact, runfolder
from cudastack.contract.errors import EXIT_BAD_INPUT, CudastackError
from cudastack.host.analysis import results
from cudastack.host.run.launcher import CellLog, CellPlan, CellResult, finished_cell
from cudastack.host.run.suite_args import DEFAULT_TIMEOUT_S, SuiteArgs

LOCAL = "local"  # the cell name of this Python environment


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
        cell_dir.mkdir(parents=True, exist_ok=process > 0 or self.args.resume)
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
                cell_dir,
                [results.harness_row(run_id, cell, "run", "failed", reason, process=process)],
            )
            return CellResult(cell, "failed", reason, run_s=run_s)
        if code == EXIT_BAD_INPUT and not (cell_dir / runfolder.RECORDS).exists():
            raise WorkerRefused("the worker refused its input (see the error above)")
        if code != 0:
            how = f"signal {-code}" if code < 0 else f"code {code}"
            reason = f"the worker exited with {how}; its log is {runfolder.LOG}"
            results.append_records(
                cell_dir,
                [results.harness_row(run_id, cell, "run", "failed", reason, process=process)],
            )
            return CellResult(cell, "failed", reason, run_s=run_s)
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
    # log.txt and the terminal never show a secret the worker was given or prints (a token).
    secrets = redact.secret_values(os.environ, env or {})
    with CellLog(log_path) as log:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
            env=env,
            # torchrun dies with this process as the worker does (its ranks then die with it).
            preexec_fn=functools.partial(lifetime.die_with_parent, os.getpid()),
        )

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = redact.text(raw.rstrip("\n"), secrets)
                log.write(line + "\n")
                if on_line:
                    on_line(line)

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
