"""Where a suite runs here: the suite's arguments, and a worker subprocess of this Python.

The worker is a separate process even locally, so the host never imports torch and a crash in a
kernel (a segfault, an abort in a CUDA library) leaves the cases that finished on disk.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import suite
from .doctor import nvml_host
from .envinfo import usable_cores

LOG = "log.txt"


def device_limit(device: str) -> tuple[int, str]:
    """How many data-parallel processes this host can give a device each: GPUs, else cores."""
    if device != "cpu":
        gpus = nvml_host()[2]
        if gpus:
            return len(gpus), "GPU(s)"
    return usable_cores(), "CPU cores"


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

    def validate(self) -> int:
        """Raise SuiteError on bad input; return how many cases the largest profile would run."""
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
        argv = [
            "--out",
            str(out),
            "--cell",
            cell,
            "--run-id",
            run_id,
            "--profile",
            self.profile,
            "--bench-dir",
            str(bench_dir),
            "--device",
            self.device,
        ]
        if self.benches:
            argv += ["--bench", ",".join(self.benches)]
        for item in self.select:
            argv += ["--select", item]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        if self.extra_work:
            argv += ["--extra-work", str(self.extra_work)]
        for item in self.overrides:
            argv += ["--set", item]
        if self.trace:
            argv.append("--trace")
        if process:
            argv += ["--process", str(process)]
        if image_digest:
            argv += ["--image-digest", image_digest]
        return argv

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


def run_local(
    args: SuiteArgs, cell_dir: Path, run_id: str, on_line: Optional[Callable[[str], None]] = None
) -> int:
    """Run the worker in this Python, ``args.repeat`` processes one after another; their output
    goes to <cell_dir>/log.txt and ``on_line``. Returns the first non-zero exit code, else 0."""
    cell_dir.mkdir(parents=True)
    for process in range(args.repeat):
        if args.repeat > 1 and on_line:
            on_line(f"process {process + 1} of {args.repeat}")
        argv = [
            sys.executable,
            *args.launcher(),
            *args.worker_argv(cell_dir, "local", run_id, args.bench_dir, process=process),
        ]
        code = _run_worker(argv, cell_dir / LOG, on_line)
        if code != 0:
            return code
    return 0


def _run_worker(argv: list[str], log_path: Path, on_line: Optional[Callable[[str], None]]) -> int:
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if on_line:
                    on_line(line.rstrip("\n"))
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
