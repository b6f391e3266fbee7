"""Host checks before running cells: engine, GPU runtime, driver vs each cell's CUDA, disk, shm."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from cudastack.environment import nvml
from cudastack.host.cells import stacks
from cudastack.host.cells.matrix import Cell

MIN_SHM_GB = 1.0  # below this, DataLoader workers die with "Bus error"


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    status: str  # ok | warn | fail
    detail: str


class EngineDisk(NamedTuple):
    """The Docker engine's data root (DockerRootDir), where its images' layers go, and the
    space free there."""

    root: str  # '' when the engine did not say
    free_gb: Optional[float]  # None when it cannot be known from here
    why: str  # why it cannot, when free_gb is None


@dataclass
class HostReport:
    """What this host offers to the cells."""

    checks: list = field(default_factory=list)
    driver: str = ""  # the NVIDIA driver, '' when there is none
    gpus: list = field(default_factory=list)
    gpu_runtime: bool = False
    cuda: str = ""  # the highest CUDA the driver supports, e.g. '12.8'
    brand: str = ""  # GPU 0's brand as image requirements name it, e.g. 'tesla'
    arch: str = ""  # GPU 0's compute capability, e.g. '9.0'
    disk: EngineDisk = field(default_factory=lambda: EngineDisk("", None, "no Docker engine"))

    def runtime_properties(self) -> dict:
        """What the NVIDIA container runtime checks an image's NVIDIA_REQUIRE_* against."""
        return {"cuda": self.cuda, "driver": self.driver, "brand": self.brand, "arch": self.arch}


NO_GPU = "no NVIDIA GPU on this host; --gpus none runs CUDA cells on the CPU"
NO_RUNTIME = (
    "the Docker engine has no GPU runtime (see `cudastack doctor`); "
    "--gpus none runs CUDA cells on the CPU"
)
# NVML's brand numbers -> the names NVIDIA's images use in NVIDIA_REQUIRE_CUDA (brand=tesla,...).
_BRANDS = {
    1: "quadro",
    2: "tesla",
    3: "nvs",
    4: "grid",
    5: "geforce",
    6: "titan",
    7: "vapps",
    8: "vpc",
    9: "vcs",
    10: "vws",
    11: "cloudgaming",
    12: "quadrortx",
    13: "nvidiartx",
    14: "nvidia",
    15: "geforcertx",
    16: "titanrtx",
}


class NvmlHost(NamedTuple):
    """What NVML says about this host's NVIDIA driver and GPUs (empties where it cannot)."""

    driver: str  # driver version, e.g. 570.86.15
    cuda: str  # the highest CUDA the driver supports, e.g. 12.8
    gpus: list[str]  # GPU names, in NVML's order


def nvml_host() -> NvmlHost:
    """The driver, the CUDA it supports and the GPUs, through NVML; empties without NVML."""
    with nvml.session() as nv:
        if nv is None:
            return NvmlHost("", "", [])
        driver = nv.nvmlSystemGetDriverVersion()
        cuda = nv.nvmlSystemGetCudaDriverVersion_v2()
        names = [
            nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(i))
            for i in range(nv.nvmlDeviceGetCount())
        ]
    return NvmlHost(
        nvml.text(driver), f"{cuda // 1000}.{cuda % 1000 // 10}", [nvml.text(n) for n in names]
    )


class FirstGpu(NamedTuple):
    """GPU 0 as the container runtime checks it (empties when NVML cannot say)."""

    brand: str
    capability: str  # e.g. 9.0


def nvml_first_gpu() -> FirstGpu:
    """The brand and compute capability of GPU 0, what the container runtime checks."""
    with nvml.session() as nv:
        if nv is None:
            return FirstGpu("", "")
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(0)
            brand = _BRANDS.get(int(nv.nvmlDeviceGetBrand(handle)), "")
            major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
        except Exception:  # an old driver without one of the calls: the verdict assumes less
            return FirstGpu("", "")
        return FirstGpu(brand, f"{major}.{minor}")


class GpuRuntime(NamedTuple):
    """Whether the Docker engine can hand GPUs to containers, and how."""

    configured: bool
    how: str


def gpu_runtime(info: dict) -> GpuRuntime:
    """The `nvidia` runtime, or CDI-discovered NVIDIA devices, from ``docker info``."""
    if "nvidia" in (info.get("Runtimes") or {}):
        return GpuRuntime(True, "nvidia runtime configured")
    cdi = [
        d.get("ID", "")
        for d in info.get("DiscoveredDevices") or []
        if str(d.get("ID", "")).startswith("nvidia.com/gpu")
    ]
    if cdi:
        return GpuRuntime(True, f"CDI devices: {', '.join(cdi)}")
    return GpuRuntime(False, "no nvidia runtime and no CDI nvidia.com/gpu devices")


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
    report.driver, report.cuda, report.gpus = nvml_host()
    if report.driver:
        report.brand, report.arch = nvml_first_gpu()
        add(
            Check(
                "nvidia driver",
                "ok",
                f"{report.driver}, supports CUDA up to {report.cuda}; GPUs: "
                + ", ".join(f"{i}: {n}" for i, n in enumerate(report.gpus)),
            )
        )
    else:
        add(
            Check(
                "nvidia driver",
                "warn",
                "no NVIDIA driver or GPU visible (NVML): CUDA cells are skipped "
                "(--gpus none runs them on the CPU), CPU cells still run",
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
        # Whether that is enough depends on the images still to build: image_disk says.
        report.disk = engine_disk(info)
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


def engine_disk(info: dict) -> EngineDisk:
    """Where the engine of ``docker info`` keeps its images, and the space free there when that
    disk is this machine's: an engine on another host (DOCKER_HOST tcp:// or ssh://), or in a
    VM whose data root is not a folder here, has free space this machine cannot see."""
    root = str(info.get("DockerRootDir") or "")
    if not root:
        return EngineDisk("", None, "the engine does not say where it keeps images")
    host = os.environ.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return EngineDisk(root, None, f"the engine ({host}) is on another machine")
    if not os.path.isdir(root):
        return EngineDisk(root, None, f"its data root {root} is not a folder on this machine")
    return EngineDisk(root, shutil.disk_usage(root).free / 1e9, "")


# The disk one cell's image takes on the engine, in GB: an estimate, made here alone. A CUDA
# cell is an nvidia/cuda cuDNN runtime base (a few GB unpacked) plus a CUDA build of torch and
# the nvidia-* wheels it brings (about 6.5 GB installed: README, "Plan for disk"), about 10 GB
# in all; a CPU cell's image measured about 1.1 GB in the Docker tests (README), 2 GB with
# room for the packages a matrix adds. Cells that share a base image share its layers, so a
# matrix needs somewhat less than the sum: the estimate errs on the side of the warning.
CUDA_IMAGE_GB = 10.0
CPU_IMAGE_GB = 2.0


def image_gb(cell: Cell) -> float:
    """The disk a build of ``cell``'s image takes, estimated (CUDA_IMAGE_GB, CPU_IMAGE_GB)."""
    return CUDA_IMAGE_GB if cell.torch_cuda else CPU_IMAGE_GB


def image_disk(to_build: list[Cell], disk: EngineDisk) -> Check:
    """The "disk for images" check: whether the images of ``to_build`` (the cells that will run
    and have no image yet) fit in the space free under the engine's data root. A warning, never
    a failure: the estimate is rough, and a build that fills the disk fails that cell's build."""
    needed = sum(image_gb(c) for c in to_build)
    if len(to_build) == 1:
        need = f"the 1 cell image to build needs about {needed:.0f} GB"
    else:
        need = f"the {len(to_build)} cell images to build need about {needed:.0f} GB"
    if disk.free_gb is None:
        if not to_build:
            return Check("disk for images", "ok", f"no image to build ({disk.why})")
        return Check(
            "disk for images", "warn", f"{need}; the space free cannot be known here: {disk.why}"
        )
    free = f"{disk.free_gb:.0f} GB free under {disk.root}"
    if needed > disk.free_gb:
        return Check(
            "disk for images",
            "warn",
            f"{need}, more than the {free}: free some space (docker image prune), or build "
            "fewer cells (--cell)",
        )
    return Check("disk for images", "ok", f"{free}; {need if to_build else 'no image to build'}")


def cell_verdict(
    cell: Cell,
    report: HostReport,
    gpus: str,
    requirements: Optional[list] = None,
    minor_version_compat: bool = False,
) -> tuple:
    """(runnable, reason) for one cell on this host: what `doctor` prints and `bench` does.

    ``gpus`` is the --gpus the user gave (auto | all | none | ids): only an explicit ``none``
    runs a CUDA cell on the CPU. ``requirements`` are the NVIDIA_REQUIRE_* of the cell's image
    where it is here to read (None: derived from its base image's tag); the container runtime
    refuses a container whose requirements the driver does not meet, so such a cell is skipped
    unless ``minor_version_compat`` (NVIDIA_DISABLE_REQUIRE=true in the container) is asked for.
    Then the driver floors and minor-version compatibility decide."""
    if not cell.torch_cuda:
        return True, "CPU build: runs anywhere"
    if gpus == "none":
        return True, "GPUs not requested (--gpus none): the CUDA build runs on the CPU"
    if not report.driver:
        return False, NO_GPU
    if not report.gpu_runtime:
        return False, NO_RUNTIME
    if requirements is None:
        requirements = stacks.derived_requirements(cell.base_image)
    unmet = stacks.unmet_requirement(requirements, report.runtime_properties())
    if unmet and not minor_version_compat:
        return False, (
            f"driver {report.driver} supports CUDA {report.cuda or '(unknown)'}; this cell's "
            f"image requires {unmet}: upgrade the driver, or --minor-version-compat to start "
            "it anyway"
        )
    status, reason = stacks.driver_verdict(report.driver, cell.torch_cuda)
    if unmet:
        reason = f"{stacks.DISABLE_REQUIRE}=true lifts the image's {unmet}; {reason}"
    return status != "no", reason
