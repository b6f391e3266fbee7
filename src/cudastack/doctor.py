"""Host checks before running cells: engine, GPU runtime, driver vs each cell's CUDA, disk, shm."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional

from . import stacks
from .matrix import Cell

MIN_FREE_DISK_GB = 30  # a CUDA cell image with torch is 8-15 GB
MIN_SHM_GB = 1.0  # below this, DataLoader workers die with "Bus error"


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    status: str  # ok | warn | fail
    detail: str


@dataclass
class HostReport:
    """What this host offers to the cells."""

    checks: list = field(default_factory=list)
    driver: str = ""  # the NVIDIA driver, '' when there is none
    gpus: list = field(default_factory=list)
    gpu_runtime: bool = False


def nvml_host() -> tuple:
    """(driver version, highest CUDA the driver supports, GPU names) through NVML, or empties."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver, no device: all mean "no NVIDIA GPU here"
        return "", "", []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        names = [
            pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
    finally:
        pynvml.nvmlShutdown()

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return text(driver), f"{cuda // 1000}.{cuda % 1000 // 10}", [text(n) for n in names]


def gpu_runtime(info: dict) -> tuple:
    """(configured, how): the `nvidia` runtime, or CDI-discovered NVIDIA devices."""
    if "nvidia" in (info.get("Runtimes") or {}):
        return True, "nvidia runtime configured"
    cdi = [
        d.get("ID", "")
        for d in info.get("DiscoveredDevices") or []
        if str(d.get("ID", "")).startswith("nvidia.com/gpu")
    ]
    if cdi:
        return True, f"CDI devices: {', '.join(cdi)}"
    return False, "no nvidia runtime and no CDI nvidia.com/gpu devices"


def inspect(client: Optional[Any]) -> HostReport:
    report = HostReport()
    add = report.checks.append
    info: dict = {}
    if client is None:
        add(Check("docker engine", "fail", "not reachable: start dockerd or set DOCKER_HOST"))
    else:
        version = client.version()
        info = client.info()
        add(
            Check(
                "docker engine", "ok", f"{version.get('Version')} (API {version.get('ApiVersion')})"
            )
        )
    report.driver, cuda, report.gpus = nvml_host()
    if report.driver:
        add(
            Check(
                "nvidia driver",
                "ok",
                f"{report.driver}, supports CUDA up to {cuda}; GPUs: "
                + ", ".join(f"{i}: {n}" for i, n in enumerate(report.gpus)),
            )
        )
    else:
        add(
            Check(
                "nvidia driver",
                "warn",
                "no NVIDIA driver or GPU visible (NVML): CUDA cells "
                "are skipped, CPU cells still run",
            )
        )
    if client is not None:
        report.gpu_runtime, how = gpu_runtime(info)
        status = "ok" if report.gpu_runtime else ("fail" if report.driver else "warn")
        add(
            Check(
                "gpu runtime",
                status,
                how
                if report.gpu_runtime
                else "none: install the NVIDIA Container Toolkit and run `sudo nvidia-ctk runtime "
                "configure --runtime=docker`, then restart dockerd",
            )
        )
        root = info.get("DockerRootDir", "")
        if root and os.path.isdir(root):
            free = shutil.disk_usage(root).free / 1e9
            add(
                Check(
                    "disk for images",
                    "ok" if free >= MIN_FREE_DISK_GB else "warn",
                    f"{free:.0f} GB free under {root}",
                )
            )
        else:
            add(Check("disk for images", "warn", f"cannot see the engine's root {root!r} here"))
    if os.path.isdir("/dev/shm"):
        st = os.statvfs("/dev/shm")
        shm = st.f_frsize * st.f_blocks / 2**30
        add(
            Check(
                "/dev/shm",
                "ok" if shm >= MIN_SHM_GB else "warn",
                f"{shm:.1f} GiB (matters for local runs and --ipc-host; containers get --shm-size)",
            )
        )
    return report


def cell_verdict(cell: Cell, report: HostReport, gpus: str) -> tuple:
    """(runnable, reason) for one cell on this host."""
    if not cell.torch_cuda:
        return True, "CPU build: runs anywhere"
    if gpus == "none":
        return True, "GPUs not requested (--gpus none): the CUDA build runs on the CPU"
    if not report.driver:
        return False, "no NVIDIA GPU on this host (NVML sees no driver)"
    if not report.gpu_runtime:
        return False, "the Docker engine has no GPU runtime (see `cudastack doctor`)"
    status, reason = stacks.driver_verdict(report.driver, cell.torch_cuda)
    return status != "no", reason
