"""Run a cell's worker in its container: mounts, user, GPUs, network, limits, logs, cleanup."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from cudastack.contract import redact, runfolder
from cudastack.contract.errors import UserError
from cudastack.contract.failures import log_reason
from cudastack.host.cells.stacks import DISABLE_REQUIRE
from cudastack.host.run.launcher import CellLog
from cudastack.host.run.suite_args import DEFAULT_TIMEOUT_S, SuiteArgs

# The cudastack package this process runs, mounted into cells by itself (not the folder holding
# it: in a regular install that is site-packages, whose host packages must not shadow the cell's).
HARNESS_PACKAGE = Path(__file__).resolve().parents[2]
IN_SRC, IN_BENCH, IN_RESULTS = "/harness/src", "/harness/bench", "/results"
IN_INPUTS = "/inputs"
RUN_LABEL = "dev.cudastack.run"  # on every container: which run it belongs to
# --network: Docker's default bridge, no network at all, or the host's (asked for, never implied).
NETWORKS = ("bridge", "none", "host")
NO_GPU_RUNTIME = (
    "the Docker engine has no GPU runtime: install the NVIDIA Container Toolkit, run "
    "`sudo nvidia-ctk runtime configure --runtime=docker` and restart dockerd (or set up CDI); "
    "`cudastack doctor` checks it"
)


@dataclass(frozen=True)
class ContainerOptions:
    """How a cell's container runs."""

    gpus: str = "all"  # none | all | comma-separated indices or UUIDs
    shm_size: str = "16g"  # Docker's default /dev/shm is 64 MB: DataLoader workers die of it
    ipc_host: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S
    # --minor-version-compat: the NVIDIA runtime starts the image even where the driver is older
    # than its NVIDIA_REQUIRE_CUDA (minor-version compatibility then has to carry it).
    minor_version_compat: bool = False
    # uid:gid the worker runs as; empty: the invoking user's, so the results are theirs.
    user: str = ""
    network: str = "bridge"  # one of NETWORKS

    def __post_init__(self) -> None:
        """Checked before a run folder is made or a container started: Docker would refuse a
        bad size or network only when the first cell starts (a traceback and a half-made run)."""
        check_shm_size(self.shm_size)
        if self.network not in NETWORKS:
            raise UserError(f"--network {self.network!r}: give one of {', '.join(NETWORKS)}")


def check_shm_size(size: str) -> None:
    """Raise UserError unless ``size`` is a size Docker takes for /dev/shm: a positive number
    with an optional unit b, k, m or g (bytes without one), e.g. 16g, 512m, 1.5g."""
    # docker-py's parse_bytes takes a trailing b after the unit too (16gb); the engine rejects 0.
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([bkmg]b?)?", size.strip().lower())
    if match is None or float(match[1]) <= 0:
        raise UserError(
            f"--shm-size {size!r}: give a size such as 16g, 512m or 1073741824 (bytes), "
            "units b, k, m or g"
        )


def invoking_user() -> str:
    """uid:gid of the user running cudastack: what cells run as, so that results are theirs."""
    return f"{os.getuid()}:{os.getgid()}"


def harness_volume() -> dict[str, dict[str, str]]:
    """The harness package, read-only at ``IN_SRC/cudastack`` (``IN_SRC`` is on PYTHONPATH)."""
    return {str(HARNESS_PACKAGE): {"bind": f"{IN_SRC}/cudastack", "mode": "ro"}}


def base_environment() -> dict[str, str]:
    """The variables every cell container gets, whatever uid it runs as (run, bench, shell)."""
    return {
        "PYTHONPATH": IN_SRC,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # torch and NVML number GPUs alike
        "HOME": "/tmp",  # the invoking uid has no home in the image; caches go to /tmp
        "PYTHONDONTWRITEBYTECODE": "1",
        # torch.compile writes generated kernels here; its defaults sit under the user's name in
        # /tmp or under HOME, and a fixed writable place serves every uid alike.
        "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor",
        "TRITON_CACHE_DIR": "/tmp/triton",
        # The invoking uid has no passwd entry in the image, and Inductor (torch <= 2.9) calls
        # getpass.getuser(), which then raises KeyError and fails every compile=true case;
        # getpass reads LOGNAME, USER, LNAME and USERNAME before it looks the uid up.
        "USER": "cudastack",
        "LOGNAME": "cudastack",
    }


def device_requests(gpus: str) -> list:
    """GPUs as the engine API wants them (docker run --gpus)."""
    from docker.types import DeviceRequest

    if gpus in ("", "none"):
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def inputs_in_container(args: SuiteArgs) -> tuple[SuiteArgs, dict]:
    """Host folders given as parameters (--set weights=DIR) are mounted read-only under /inputs
    and the parameter is rewritten to the path the container sees."""
    mounts = {}

    def mounted(key: str, folder: Path) -> str:
        mounts[str(folder.resolve())] = {"bind": f"{IN_INPUTS}/{key}", "mode": "ro"}
        return f"{IN_INPUTS}/{key}"

    return args.with_paths(mounted), mounts


def container_kwargs(
    image: str,
    args: SuiteArgs,
    cell_dir: Path,
    cell: str,
    run_id: str,
    image_ref: str,
    opts: ContainerOptions,
    process: int = 0,
) -> dict:
    """Everything ``containers.create`` gets: harness read-only, results read-write, the invoking
    user's uid:gid, GPUs, shared memory and the memlock / stack limits NCCL and DataLoader need;
    the environment is ``base_environment()`` with ``args.environment()`` over it.

    Never privileged, no added capabilities, no host PID namespace; the host's network only
    with --network host, its IPC namespace only with --ipc-host: a benchmark needs none of them
    (GPUs come as device requests), and a cell image is code from package indexes."""
    from docker.types import Ulimit

    args, inputs = inputs_in_container(args)
    command = [
        "python",
        *args.launcher(),
        *args.worker_argv(Path(IN_RESULTS), cell, run_id, Path(IN_BENCH), image_ref, process),
    ]
    environment = base_environment()
    if opts.minor_version_compat:
        environment[DISABLE_REQUIRE] = "true"
    environment.update(args.environment())  # --env and the passthrough; --env may replace any
    kwargs = {
        "image": image,
        "command": command,
        "user": opts.user or invoking_user(),
        "volumes": {
            **harness_volume(),
            str(args.bench_dir.resolve()): {"bind": IN_BENCH, "mode": "ro"},
            str(cell_dir.resolve()): {"bind": IN_RESULTS, "mode": "rw"},
            **inputs,
        },
        "environment": environment,
        "working_dir": IN_RESULTS,
        "device_requests": device_requests(opts.gpus),
        "ulimits": [
            Ulimit(name="memlock", soft=-1, hard=-1),
            Ulimit(name="stack", soft=67108864, hard=67108864),
        ],
        "labels": {RUN_LABEL: run_id, "dev.cudastack.cell": cell},
        "network_mode": opts.network,
    }
    if opts.ipc_host:
        kwargs["ipc_mode"] = "host"
    else:
        kwargs["shm_size"] = opts.shm_size
    return kwargs


@dataclass
class Outcome:
    """How a cell's container ended: ok, or failed with a reason."""

    ok: bool
    reason: str = ""


def run_container(
    client: Any,
    kwargs: dict,
    cell_dir: Path,
    timeout_s: float,
    on_line: Optional[Callable[[str], None]] = None,
) -> Outcome:
    """Run one cell's worker container; stream its output to log.txt; always remove it."""
    from docker.errors import APIError
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import ReadTimeout

    tail: deque = deque(maxlen=15)
    # log.txt, the console and a failure's reason never hold what the worker was given as a
    # secret (--env HF_TOKEN=..., a proxy password) or what the host's environment holds.
    secrets = redact.secret_values(os.environ, kwargs.get("environment") or {})
    try:
        container = _start(client, kwargs, cell_dir, on_line)
    except APIError as exc:
        text = redact.text(str(exc.explanation or exc), secrets)
        if "could not select device driver" in text:
            return Outcome(False, NO_GPU_RUNTIME)
        if "unsatisfied condition" in text:  # the image's NVIDIA_REQUIRE_* against the driver
            return Outcome(
                False,
                f"the NVIDIA container runtime refused the image: {text}; upgrade the driver, "
                "or --minor-version-compat to start it anyway",
            )
        return Outcome(False, f"container did not start: {text}")
    log_thread = threading.Thread(
        target=_follow_logs,
        args=(container, cell_dir / runfolder.LOG, tail, on_line, secrets),
        daemon=True,
    )
    log_thread.start()
    try:
        try:
            code = int(container.wait(timeout=timeout_s)["StatusCode"])
        except (ReadTimeout, RequestsConnectionError):
            container.kill()
            log_thread.join(timeout=10)
            return Outcome(False, f"timed out after {timeout_s:g} s (per-cell limit)" + _tail(tail))
        log_thread.join(timeout=30)
        container.reload()
        if container.attrs["State"].get("OOMKilled"):
            return Outcome(False, f"container was OOM-killed (exit {code})" + _tail(tail))
        if code != 0:
            return Outcome(False, f"container exited with code {code}" + _tail(tail))
        return Outcome(True)
    finally:
        # Ctrl-C lands here too: the container never outlives the run.
        with contextlib.suppress(APIError):
            container.remove(force=True)


def _start(
    client: Any, kwargs: dict, cell_dir: Path, on_line: Optional[Callable[[str], None]]
) -> Any:
    """Create and start the container, removing it again if it does not start.

    An engine whose own limits forbid raising memlock (some sandboxes and rootless engines) refuses
    the ulimits; the run goes on without them, and says so in the log, since only multi-GPU NCCL
    needs them."""
    from docker.errors import APIError

    container = client.containers.create(**kwargs)
    try:
        container.start()
        return container
    except APIError as exc:
        container.remove(force=True)
        if "rlimit" not in str(exc) or "ulimits" not in kwargs:
            raise
    note = (
        "cudastack: the engine refused the memlock/stack ulimits (its own limits are lower); "
        "running without them: NCCL may fail to register memory"
    )
    with open(cell_dir / runfolder.LOG, "a", encoding="utf-8") as log:
        log.write(note + "\n")
    if on_line:
        on_line(note)
    return _start(client, {k: v for k, v in kwargs.items() if k != "ulimits"}, cell_dir, on_line)


def _follow_logs(
    container: Any,
    path: Path,
    tail: deque,
    on_line: Optional[Callable[[str], None]],
    secrets: frozenset[str] = frozenset(),
) -> None:
    with CellLog(path) as log:
        buffer = b""
        for chunk in container.logs(stream=True, follow=True):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = redact.text(raw.decode("utf-8", "replace"), secrets)
                log.write(line + "\n")
                tail.append(line)
                if on_line:
                    on_line(line)
        if buffer:
            line = redact.text(buffer.decode("utf-8", "replace"), secrets)
            log.write(line + "\n")
            tail.append(line)


def _tail(lines: deque) -> str:
    """What the log's last lines say, as one bounded line (the whole log is the cell's)."""
    return f"; last log lines: {log_reason(lines)}" if lines else ""


def remove_run_containers(client: Any, run_id: str) -> int:
    """Remove every container of run ``run_id`` (by its label), running or not; how many.

    Only for a run whose folder this process holds the lock of: its containers then belong to
    a host process that died without removing them."""
    found = client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})
    for container in found:
        container.remove(force=True)
    return len(found)
