"""The environment fingerprint: what was actually loaded and on what hardware a run measured.

Environment side: standard library and torch; NVML (nvidia-ml-py) only when it is importable.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

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


def installed_packages() -> dict[str, str]:
    """Every distribution installed in this Python, name -> version."""
    found = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
    return dict(sorted(found.items()))


def _speed_packages(installed: dict[str, str]) -> dict[str, str]:
    # The CUDA libraries pip wheels bring, and triton: these decide speed as much as torch does.
    wanted = ("torch", "torchvision", "triton", "numpy", "nvidia-ml-py")
    return {n: v for n, v in installed.items() if n in wanted or n.startswith("nvidia-")}


def _nvml(index: int) -> dict[str, Any]:
    try:
        import pynvml  # from nvidia-ml-py
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"available": False, "reason": str(exc)}
    info: dict[str, Any] = {"available": True}

    def read(key: str, call: Any, *args: Any) -> None:
        # Each query may be unsupported on a given board or driver; record what answers.
        try:
            value = call(*args)
            info[key] = value.decode() if isinstance(value, bytes) else value
        except (pynvml.NVMLError, AttributeError):
            info[key] = None

    try:
        read("driver", pynvml.nvmlSystemGetDriverVersion)
        read("cuda_driver_version", pynvml.nvmlSystemGetCudaDriverVersion_v2)
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        read("uuid", pynvml.nvmlDeviceGetUUID, handle)
        read("sm_clock_mhz", pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM)
        read("mem_clock_mhz", pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_MEM)
        read("max_sm_clock_mhz", pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_SM)
        read("max_mem_clock_mhz", pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_MEM)
        read("power_limit_mw", pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        read("persistence_mode", pynvml.nvmlDeviceGetPersistenceMode, handle)
    finally:
        pynvml.nvmlShutdown()
    return info


def _gpu(torch: Any, device: Any) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 2),
        "sm_count": props.multi_processor_count,
        "l2_cache_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        "uuid": str(getattr(props, "uuid", "")),
        "arch_list": torch.cuda.get_arch_list(),
        "nvml": _nvml(index),
    }


def torch_versions(torch: Any) -> dict[str, str]:
    """The torch build and the CUDA libraries it actually loaded (not the image's labels)."""
    nccl = ""
    if torch.cuda.is_available() and hasattr(torch.cuda, "nccl"):
        try:
            raw = torch.cuda.nccl.version()
            nccl = ".".join(map(str, raw)) if isinstance(raw, tuple) else str(raw)
        except (RuntimeError, AttributeError):
            nccl = ""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "version": torch.__version__,
        "cuda": torch.version.cuda or "",
        "cudnn": format_cudnn(cudnn),
        "nccl": nccl,
        "git_version": getattr(torch.version, "git_version", ""),
    }


def fingerprint(torch: Any, device: Any, **extra: Any) -> dict[str, Any]:
    """Everything a comparison may need to explain a difference; ``extra`` adds run identity."""
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
        "cpu": {
            "model": _cpu_model(),
            "logical_cores": os.cpu_count(),
            "usable_cores": usable_cores(),
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
        },
        "torch": torch_versions(torch),
        "device": {"type": device.type, "index": device.index},
        "gpu": _gpu(torch, device) if device.type == "cuda" else None,
        "flags": {
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "packages": _speed_packages(installed),
        "installed": installed,
        "lock": lock_info(),
        "harness_git": _git_rev(here),
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
    """What `cudastack reproduce` compares: packages, torch and its CUDA libraries, the lock."""
    import torch

    return {
        "installed": installed_packages(),
        "torch": torch_versions(torch),
        "lock_hash": lock_info()["hash"],
    }


if __name__ == "__main__":
    print(json.dumps(stack(), sort_keys=True))
