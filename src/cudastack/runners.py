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

LOG = "log.txt"


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

    def validate(self) -> int:
        """Raise SuiteError on bad input; return how many cases the largest profile would run."""
        specs = suite.discover(self.bench_dir)
        selection = suite.parse_select(self.select)
        # `auto` becomes quick or standard only where the worker sees its device: the input
        # must make sense for at least one of them.
        profiles = [self.profile] if self.profile != "auto" else ["quick", "standard"]
        counts, errors = [], []
        for name in profiles:
            suite.resolve_profile(name, has_gpu=False)
            try:
                counts.append(len(suite.plan(specs, name, self.benches, selection)))
            except suite.SuiteError as exc:
                errors.append(exc)
        if not counts:
            raise errors[0]
        return max(counts)

    def worker_argv(
        self, out: Path, cell: str, run_id: str, bench_dir: Path, image_digest: str = ""
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
        if image_digest:
            argv += ["--image-digest", image_digest]
        return argv


def run_local(
    args: SuiteArgs, cell_dir: Path, run_id: str, on_line: Optional[Callable[[str], None]] = None
) -> int:
    """Run the worker in this Python; its output goes to <cell_dir>/log.txt and ``on_line``."""
    cell_dir.mkdir(parents=True)
    argv = [
        sys.executable,
        "-m",
        "cudastack.worker",
        *args.worker_argv(cell_dir, "local", run_id, args.bench_dir),
    ]
    with open(cell_dir / LOG, "w", encoding="utf-8") as log:
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
