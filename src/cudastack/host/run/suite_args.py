"""What every cell's worker processes are asked to run: the suite's options as given, checked
before anything starts, and as each launcher passes them on (worker command line, torchrun,
environment)."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from cudastack.contract.errors import shown
from cudastack.contract.request import SuiteRequest
from cudastack.contract.schema import PASSED_ENV
from cudastack.environment import suite
from cudastack.environment.envinfo import usable_cores
from cudastack.host.cells.doctor import nvml_host

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
    without ``=``, whose KEY is not a shell variable name, or whose VALUE holds a NUL."""
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
        if "\x00" in value:  # no process environment can hold one: the cell would not start
            raise suite.SuiteError(f"--env {item!r}: a value cannot hold a NUL character")
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
    # --resume: each worker process keeps the cases an earlier attempt of it recorded.
    resume: bool = False

    def environment(self) -> dict[str, str]:
        """The variables the cell's worker gets beyond its defaults (see ``cell_env``)."""
        return cell_env(self.env)

    def validate(self) -> int:
        """Raise SuiteError on bad input; return how many cases the largest profile would run."""
        parse_env(self.env)
        suite.check_device(self.device)
        suite.check_threads(self.threads)
        specs = suite.discover(self.bench_dir)
        selection = suite.parse_select(self.select)
        overrides = suite.parse_set(self.overrides, specs)
        for key in suite.PATH_PARAMS:  # folders: they must exist here
            folder = overrides.get(key)
            if folder and not Path(folder).is_dir():
                raise suite.SuiteError(
                    f"--set {shown(f'{key}={folder}')}: no such folder on this host"
                )
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
            resume=self.resume,
            image_digest=image_digest,
        ).to_argv()

    def with_paths(self, rewrite: Callable[[str, Path], str]) -> SuiteArgs:
        """These arguments with each folder parameter's value (--set weights=DIR) replaced by
        ``rewrite(key, DIR)``: where the worker that reads it finds that folder."""
        overrides = []
        for item in self.overrides:
            key, _, value = item.partition("=")
            if key.strip() in suite.PATH_PARAMS and value.strip():
                item = f"{key.strip()}={rewrite(key.strip(), Path(value.strip()))}"
            overrides.append(item)
        return dataclasses.replace(self, overrides=overrides)

    def with_absolute_paths(self) -> SuiteArgs:
        """These arguments with each folder parameter made absolute: a worker that runs in its
        cell's folder (a Slurm task) must find it all the same."""
        return self.with_paths(lambda _, folder: str(folder.absolute()))

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
