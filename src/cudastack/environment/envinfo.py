"""The environment fingerprint: what was actually loaded and on what hardware a run measured.

Environment side: standard library and torch; NVML through telemetry's reader of the GPU in use.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cudastack.contract import ospackages
from cudastack.environment import precision

if TYPE_CHECKING:
    from cudastack.environment.telemetry import Nvml

# Variables that change what a kernel does or which devices a run sees.
ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "CUDA_LAUNCH_BLOCKING",
    "NVIDIA_TF32_OVERRIDE",
    "NVIDIA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUBLASLT_WORKSPACE_SIZE",
    "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "TORCH_CUDNN_V8_API_DISABLED",
    "TORCH_BLAS_PREFER_CUBLASLT",
    "TORCHINDUCTOR_MAX_AUTOTUNE",
    "NCCL_DEBUG",
    "NCCL_P2P_DISABLE",
    "NCCL_IB_DISABLE",
)


def format_cudnn(version: Optional[int]) -> str:
    """cuDNN's integer version as text: 8 encodes 8902 = 8.9.2, 9 encodes 90100 = 9.1.0."""
    if not version:
        return ""
    if version >= 90000:
        return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
    return f"{version // 1000}.{version % 1000 // 100}.{version % 100}"


def harness_rev(paths: Iterable[Path]) -> str:
    """A content hash of the harness's Python files: the same inside a container and out of it."""
    digest = hashlib.sha256()
    for root in paths:
        for file in sorted(root.rglob("*.py")):
            digest.update(file.relative_to(root).as_posix().encode())
            digest.update(file.read_bytes())
    return "h" + digest.hexdigest()[:12]


def _git_rev(path: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The Dockerfile copies a locked cell's requirements here; absent or empty means unlocked.
LOCK_FILE = "cudastack-lock.txt"


def lock_info() -> dict[str, str]:
    """The lock this environment was installed from, and its hash, as the build left them."""
    path = Path(sys.prefix) / LOCK_FILE
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest() if text.strip() else ""
    return {"text": text, "hash": digest}


# dpkg's database: what a Debian or Ubuntu system holds (absent on other bases).
DPKG_STATUS = Path("/var/lib/dpkg/status")
APT_INSTALLED = Path(ospackages.APT_INSTALLED)


def parse_dpkg_status(text: str) -> dict[str, str]:
    """OS packages dpkg holds as installed, name -> version, from the text of its status file
    (deb822 paragraphs; see dpkg-query(1)). A package installed for a second architecture is
    keyed ``name:arch``; removed packages whose configuration remains are left out."""
    found: dict[str, str] = {}
    for paragraph in re.split(r"\n\s*\n", text):
        fields = {}
        for line in paragraph.splitlines():
            if line[:1] not in ("", " ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
        name, version = fields.get("package", ""), fields.get("version", "")
        if not name or not version or fields.get("status", "").split()[-1:] != ["installed"]:
            continue
        key = name if name not in found else f"{name}:{fields.get('architecture', '')}"
        found[key] = version
    return dict(sorted(found.items()))


def os_packages(status: Path = DPKG_STATUS) -> dict[str, str]:
    """OS packages installed here (``parse_dpkg_status``); empty where dpkg is not."""
    try:
        return parse_dpkg_status(status.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}


def build_os_packages(path: Path = APT_INSTALLED) -> dict[str, str]:
    """The OS packages this image's build installed or changed with apt, name -> version, as
    the Dockerfile recorded them; a later step's version of a package replaces an earlier one.
    Empty outside a cell image, or where its build installed nothing."""
    try:
        return ospackages.parse(path.read_text(encoding="utf-8"))
    except OSError:
        return {}


def installed_packages() -> dict[str, str]:
    """Every distribution installed in this Python, name -> version."""
    found = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
    return dict(sorted(found.items()))


def _speed_packages(installed: dict[str, str]) -> dict[str, str]:
    # The CUDA libraries pip wheels bring, and triton: these decide speed as much as torch does.
    wanted = ("torch", "torchvision", "triton", "numpy", "nvidia-ml-py")
    return {n: v for n, v in installed.items() if n in wanted or n.startswith("nvidia-")}


def _gpu(torch: Any, device: Any, nvml: Optional[Nvml], nvml_note: str) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    # Read through telemetry's handle, found by UUID: under CUDA_VISIBLE_DEVICES, torch's index
    # is not NVML's. A query NVML cannot answer is left out with the reason, never fatal.
    info = nvml.device_info() if nvml is not None else {"available": False, "reason": nvml_note}
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 2),
        "sm_count": props.multi_processor_count,
        "l2_cache_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        "uuid": str(getattr(props, "uuid", "")),
        "arch_list": torch.cuda.get_arch_list(),
        "nvml": info,
    }


_ARCH = re.compile(r"(sm|compute)_(\d+)(\d)([af]?)")


def _runs_on(entry: str, capability: tuple[int, int]) -> bool:
    """Whether one entry of torch.cuda.get_arch_list() has code a GPU of ``capability`` runs.

    sm_XY is machine code: it runs on X.Y and later minors of major X. compute_XY is PTX, which
    the driver compiles for any GPU of capability X.Y or newer. An ``a`` suffix (sm_90a) is for
    that exact GPU only; ``f`` (sm_100f) for its family, later minors of the same major."""
    m = _ARCH.fullmatch(entry)
    if m is None:
        return False
    kind, major, minor, suffix = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    if suffix == "a":
        return capability == (major, minor)
    if kind == "sm" or suffix == "f":
        return capability[0] == major and capability[1] >= minor
    return capability >= (major, minor)


def arch_problem(
    torch_version: str, cuda: str, capability: tuple[int, int], arch_list: list[str]
) -> str:
    """Why a torch build cannot run its kernels on a GPU of ``capability``; '' where it can, or
    where the build lists no architectures (a CPU or ROCm build)."""
    if not arch_list or any(_runs_on(a, capability) for a in arch_list):
        return ""
    sm = [a for a in arch_list if a.startswith("sm_")]
    ptx = [a for a in arch_list if a.startswith("compute_")]
    built = ", ".join(sm) or "no machine code"
    built += f" (PTX {', '.join(ptx)})" if ptx else " (no PTX)"
    this = f"sm_{capability[0]}{capability[1]}"
    known = [(int(m.group(2)), int(m.group(3))) for m in map(_ARCH.fullmatch, arch_list) if m]
    cuda_version = tuple(int(x) for x in re.findall(r"\d+", cuda)[:2])
    advice = f"use a cell whose torch is built for {this}"
    if known and capability > max(known) and capability[0] in (10, 11, 12):
        if cuda_version < (12, 8):  # Blackwell's first toolkit
            advice = "use a cell with CUDA 12.8 or newer"
    elif known and capability < min(known) and cuda_version >= (13, 0):
        advice = "CUDA 13 dropped it: use a cell with CUDA 12"
    return f"torch {torch_version} was built for {built}; this GPU is {this}: {advice}"


def _loaded_nccl() -> str:
    """The version of the libnccl.so.2 this process loaded (torch loads it at import), from
    ncclGetVersion, which needs no GPU; '' when none is loaded."""
    import ctypes

    try:
        lib = ctypes.CDLL("libnccl.so.2", mode=os.RTLD_NOLOAD)  # never load one of our own
        code = ctypes.c_int(0)
        if lib.ncclGetVersion(ctypes.byref(code)) != 0:
            return ""
    except (OSError, AttributeError):
        return ""
    k = code.value  # NCCL_VERSION_CODE: X*10000 + Y*100 + Z since 2.9, X*1000 + Y*100 + Z before
    parts = (
        (k // 10000, k // 100 % 100, k % 100) if k >= 10000 else (k // 1000, k // 100 % 10, k % 100)
    )
    return ".".join(map(str, parts)) if k else ""


def nccl_version(torch: Any) -> str:
    """The NCCL torch loaded, e.g. '2.27.7', with or without a GPU: asked of the loaded library,
    else the version of torch's nvidia-nccl-cuNN wheel, else torch.cuda.nccl.version() (the
    version torch was compiled against, which a pinned wheel may differ from); '' for a build
    without NCCL."""
    if not torch.version.cuda:
        return ""
    loaded = _loaded_nccl()
    if loaded:
        return loaded
    from importlib import metadata

    try:
        return metadata.version(f"nvidia-nccl-cu{torch.version.cuda.split('.')[0]}")
    except metadata.PackageNotFoundError:
        pass
    try:
        raw = torch.cuda.nccl.version()
        return ".".join(map(str, raw[:3])) if isinstance(raw, tuple) else str(raw)
    except (RuntimeError, AttributeError, ImportError):
        return ""


def torch_versions(torch: Any) -> dict[str, str]:
    """The torch build and the CUDA libraries it actually loaded (not the image's labels)."""
    nccl = nccl_version(torch)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda or "",
        "cudnn": format_cudnn(cudnn),
        "nccl": nccl,
        "git_version": getattr(torch.version, "git_version", ""),
    }


# What Slurm tells a task about where it runs (sbatch(1), OUTPUT ENVIRONMENT VARIABLES).
SLURM_VARS = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "node": "SLURMD_NODENAME",
    "partition": "SLURM_JOB_PARTITION",
    "cluster": "SLURM_CLUSTER_NAME",
}


def slurm_task() -> Optional[dict[str, str]]:
    """The Slurm job, array task, node and partition this process runs in; None outside one."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {key: os.environ.get(var, "") for key, var in SLURM_VARS.items()}


def fingerprint(
    torch: Any,
    device: Any,
    *,
    nvml: Optional[Nvml] = None,
    nvml_note: str = "none: NVML not opened",
    **extra: Any,
) -> dict[str, Any]:
    """Everything a comparison may need to explain a difference; ``extra`` adds run identity.
    ``nvml`` is telemetry's reader of the GPU in use, or None and ``nvml_note`` says why."""
    here = Path(__file__).resolve().parent
    installed = installed_packages()
    return {
        **extra,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
        },
        "hostname": platform.node(),
        "slurm": slurm_task(),
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "usable_cores": usable_cores(),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
        },
        "torch": torch_versions(torch),
        "device": {"type": device.type, "index": device.index},
        "gpu": _gpu(torch, device, nvml, nvml_note) if device.type == "cuda" else None,
        "flags": {
            # torch >= 2.9's fp32_precision switches where they exist, else the allow_tf32 flags
            **precision.tf32_record(torch),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
        },
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "packages": _speed_packages(installed),
        "installed": installed,
        "lock": lock_info(),
        "harness_git": _git_rev(here),
        # What `cudastack reproduce` compares and pins; about 5 KB for a cell's ~200 packages.
        "os_packages": os_packages(),
        "os_packages_built": build_os_packages(),
    }


def record_fields(fp: dict[str, Any]) -> dict[str, str]:
    """The part of the fingerprint that every record row carries (see results.COLUMNS)."""
    gpu = fp.get("gpu") or {}
    nvml = gpu.get("nvml") or {}
    return {
        "device": fp["device"]["type"],
        "device_name": gpu.get("name") or fp["cpu"]["model"],
        "gpu_name": gpu.get("name", ""),
        "driver": nvml.get("driver") or "",
        "torch": fp["torch"]["version"],
        "cuda_runtime": fp["torch"]["cuda"],
        "cudnn": fp["torch"]["cudnn"],
        "lock_hash": fp["lock"]["hash"],
    }


def usable_cores() -> int:
    """Cores this process may run on (respects taskset and container CPU sets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def stack() -> dict[str, Any]:
    """What `cudastack reproduce` compares: Python, OS and pip packages, torch and its CUDA
    libraries, the lock. Keys as the fingerprint (env.json) names them, but the lock's hash."""
    import torch

    return {
        "python": {"version": platform.python_version()},
        "os_packages": os_packages(),
        "os_packages_built": build_os_packages(),
        "installed": installed_packages(),
        "torch": torch_versions(torch),
        "lock_hash": lock_info()["hash"],
    }


if __name__ == "__main__":
    print(json.dumps(stack(), sort_keys=True))
